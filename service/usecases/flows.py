"""Writes that go through Koban, one facade per tenant: `OptionFlows`.

Placement (`placement`), options by rank (`by_rank`) and préréservation
(`prereservation`) share `flow_common`: results, Koban's refusals, the record of what
Koban did while the store was down, the lot's write lease. docs/flows.md has the story.
"""

from __future__ import annotations

from service.usecases.by_rank import ByRank
from service.usecases.flow_common import LOT_WRITE_LEASE_MS, KobanRefusal, Pending, Placed
from service.usecases.placement import Placement
from service.usecases.validated_prereservation import ValidatedPrereservation

__all__ = ["LOT_WRITE_LEASE_MS", "KobanRefusal", "OptionFlows", "Pending", "Placed"]


class OptionFlows(Placement, ByRank, ValidatedPrereservation):
    """Outbound operations of one tenant through Koban."""
