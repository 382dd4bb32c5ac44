"""The store's failures, named for the layers above it.

Callers outside `service.storage` catch these names and never import the Redis client: a
store that is down, slow or moving slots is told apart from a store that refused a write.
"""

from __future__ import annotations

from redis.exceptions import ClusterError as StoreClusterError
from redis.exceptions import ConnectionError as StoreConnectionError
from redis.exceptions import RedisError as StoreError
from redis.exceptions import ResponseError as StoreResponseError
from redis.exceptions import SlotNotCoveredError as StoreSlotNotCovered
from redis.exceptions import TimeoutError as StoreTimeoutError
from redis.exceptions import TryAgainError as StoreTryAgain

__all__ = [
    "STORE_DOWN",
    "STORE_FAILURES",
    "STORE_FAILURES_OR_TIMEOUT",
    "StoreClusterError",
    "StoreConnectionError",
    "StoreError",
    "StoreResponseError",
    "StoreSlotNotCovered",
    "StoreTimeoutError",
    "StoreTryAgain",
]

# The store could not be reached (the write may or may not have happened).
STORE_DOWN: tuple[type[Exception], ...] = (StoreConnectionError, StoreTimeoutError)
# Anything the store or the socket under it raised.
STORE_FAILURES: tuple[type[Exception], ...] = (StoreError, OSError)
# The same, or a deadline of the caller's (`asyncio.timeout`) passed first.
STORE_FAILURES_OR_TIMEOUT: tuple[type[Exception], ...] = (*STORE_FAILURES, TimeoutError)
