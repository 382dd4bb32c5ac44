"""Where a subscription may send: URL rules, and the address check made at connect time.

A target URL is ``https://`` (``http://`` only where the tenant allows it), with a host
and no fragment. Every address a connection is about to use — resolved names and IP
literals alike — goes through `refusal` inside the connector's socket factory, that is
after DNS and right before ``connect()``: a name that resolved to a public address when
the subscription was made and to ``127.0.0.1`` now (DNS rebinding) is refused all the same.
Unless the tenant sets ``allow_private_targets``, refused are: loopback, private
(RFC 1918, IPv6 ULA), link-local (``169.254/16``, ``fe80::/10``, cloud metadata), CGNAT
``100.64/10``, unspecified (``0.0.0.0``, ``::``), multicast and reserved ranges, and the
IPv4-mapped / NAT64-embedded forms of those. The session ignores proxy variables.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
from aiohappyeyeballs import AddrInfoType

__all__ = [
    "TargetPolicy",
    "TargetRefused",
    "check_url",
    "guarded_session",
    "refusal",
    "resolve_and_check",
]

MAX_URL = 2048
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class TargetPolicy:
    allow_private: bool = False
    allow_http: bool = False


class TargetRefused(OSError):
    """A target address or URL the policy refuses (raised before any byte is sent)."""


def refusal(address: str) -> str | None:
    """Why `address` may not be connected to without ``allow_private_targets`` (None: ok)."""
    try:
        ip: IPAddress = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return f"{address} is not an IP address"
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or (
            ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) if ip in _NAT64 else None
        )
        if embedded is not None:
            reason = refusal(str(embedded))
            return f"{ip} embeds {reason}" if reason else None
    kinds = (
        ("loopback", ip.is_loopback),
        ("unspecified", ip.is_unspecified),
        ("link-local", ip.is_link_local),
        ("CGNAT", isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT),
        ("private", ip.is_private),
        ("multicast", ip.is_multicast),
        ("reserved", ip.is_reserved),
        ("not globally routable", not ip.is_global),
    )
    for kind, hit in kinds:
        if hit:
            return f"{ip} is a {kind} address"
    return None


def check_url(url: str, policy: TargetPolicy) -> str | None:
    """Why `url` cannot be a target (None: acceptable); its host's addresses are checked
    separately (`resolve_and_check`, and at every connection)."""
    if len(url) > MAX_URL:
        return f"longer than {MAX_URL} characters"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "not a valid URL"
    del port  # parsed only to refuse a bad port
    if parts.scheme not in ("https", "http"):
        return "the scheme must be https (or http where the tenant allows it)"
    if parts.scheme == "http" and not policy.allow_http:
        return "http:// targets are not allowed for this tenant; use https://"
    if not parts.hostname:
        return "the URL has no host"
    if parts.fragment:
        return "the URL must not have a fragment"
    if any(c.isspace() for c in url):
        return "the URL must not contain spaces"
    return None


async def resolve_and_check(url: str, policy: TargetPolicy) -> str | None:
    """The refusal of the first disallowed address `url`'s host resolves to (None when all
    are allowed, or when the name does not resolve now: delivery will tell)."""
    if policy.allow_private:
        return None
    host = urlsplit(url).hostname or ""
    try:
        ipaddress.ip_address(host)
        literal = True
    except ValueError:
        literal = False
    if literal:
        return refusal(host)
    resolver = aiohttp.ThreadedResolver()
    try:
        infos = await resolver.resolve(host, 0, socket.AF_UNSPEC)
    except OSError:
        return None
    finally:
        await resolver.close()
    for info in infos:
        reason = refusal(info["host"])
        if reason is not None:
            return f"{host} resolves to {reason}"
    return None


def _socket_factory(policy: TargetPolicy) -> Callable[[AddrInfoType], socket.socket]:
    def make(addr_info: AddrInfoType) -> socket.socket:
        family, type_, proto, _, address = addr_info
        if not policy.allow_private:
            reason = refusal(str(address[0]))
            if reason is not None:
                raise TargetRefused(f"target refused: {reason}")
        return socket.socket(family=family, type=type_, proto=proto)

    return make


def guarded_session(
    policy: TargetPolicy,
    *,
    limit: int = 100,
    resolver: aiohttp.abc.AbstractResolver | None = None,
) -> aiohttp.ClientSession:
    """A session whose every connection passes the policy's address check; proxies from
    the environment ignored (``trust_env=False``); cookies not kept."""
    connector = aiohttp.TCPConnector(
        limit=limit,
        socket_factory=_socket_factory(policy),
        resolver=resolver,
    )
    return aiohttp.ClientSession(
        connector=connector,
        trust_env=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
    )
