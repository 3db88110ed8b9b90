"""Subnets and their etcd key names.

A lease key is ``<prefix>/subnets/<A.B.C.D>-<len>`` (flanneld v0.15+ may append
``&<ipv6>-<len6>`` for dual-stack leases). The IPv6 part is kept verbatim so that a
key read from etcd can be written back unchanged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from pyflannel.errors import PeerDataError

_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_DOTTED_QUAD = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")
_KEY_RE = re.compile(
    r"^(\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3})-(\d{1,2})(?:&([0-9a-f:]+)-(\d{1,3}))?$"
)


@dataclass(frozen=True, slots=True, order=True)
class SubnetKey:
    """The identity of a lease: its IPv4 subnet and, for dual-stack leases, the IPv6 part."""

    subnet: IPv4Network
    ipv6: str | None = None

    def name(self) -> str:
        """The last path component of the etcd key, e.g. ``10.5.34.0-24``."""
        base = f"{self.subnet.network_address}-{self.subnet.prefixlen}"
        return f"{base}&{self.ipv6}" if self.ipv6 else base


def subnet_key_name(subnet: IPv4Network) -> str:
    """Key name of an IPv4-only lease, as flanneld's MakeSubnetKey writes it."""
    return SubnetKey(subnet).name()


def parse_ipv4(text: str) -> IPv4Address:
    """``IPv4Address(text)``, three times faster for the dotted quads leases carry.

    The pattern accepts exactly what the standard library accepts (four ASCII decimal
    octets up to 255, no leading zeros); anything else goes to ``IPv4Address`` for its
    ``ValueError``. Every watch event parses one or two addresses.
    """
    if _DOTTED_QUAD.fullmatch(text) is None:
        return IPv4Address(text)
    a, b, c, d = text.split(".")
    return IPv4Address(int(a) << 24 | int(b) << 16 | int(c) << 8 | int(d))


def parse_subnet_key(name: str) -> SubnetKey:
    """Parse the last path component of a lease key.

    Stricter than flanneld's unanchored regex: the whole name must match and the
    address must be the subnet's network address; anything else is peer data we
    cannot trust, so it raises :class:`PeerDataError`.
    """
    match = _KEY_RE.match(name)
    if match is None:
        raise PeerDataError(f"lease key {name!r} is not of the form A.B.C.D-LEN")
    addr, plen, v6addr, v6len = match.groups()
    try:
        # An int, not the address object: IPv4Network would format that one as text
        # and parse it again (a third of the cost of every watch event).
        subnet = IPv4Network((int(parse_ipv4(addr)), int(plen)))
    except ValueError as exc:
        raise PeerDataError(f"lease key {name!r} is not a valid IPv4 subnet: {exc}") from exc
    return SubnetKey(subnet, f"{v6addr}-{v6len}" if v6addr else None)


def subnet_gateway(subnet: IPv4Network) -> str:
    """``a.b.c.1/len``: the address a bridge on this subnet gets (FLANNEL_SUBNET)."""
    return f"{subnet.network_address + 1}/{subnet.prefixlen}"


def overlaps(a: IPv4Network, b: IPv4Network) -> bool:
    """True when the two subnets share any address (equal under the shorter mask)."""
    return a.overlaps(b)


def ip_in(addr: IPv4Address, lo: IPv4Address, hi: IPv4Address) -> bool:
    """Inclusive range check used for SubnetMin/SubnetMax."""
    return lo <= addr <= hi
