"""The udp backend's route table: which peer host holds the subnet of an inner destination.

flanneld's C proxy keeps an array of ``{network, mask, next hop}`` fed by lease events:
*set* replaces the entry with the same network and mask or appends one, *delete* removes
it, and a lookup returns the first entry that contains the destination. Every lease is a
route, whatever its ``BackendType`` (a udp lease has none), except our own.

This table holds the same mapping as an immutable value: ``apply`` returns a new table, so
the data path can swap tables between two packets without locks. A lookup is one dict
probe per distinct prefix length (all leases of a network normally share one length),
longest prefix first, on the destination as an integer in host byte order, and returns a
ready-made ``(ip, port)`` tuple for ``sendto``.

Rules of this file: pure code, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from types import MappingProxyType

from pyflannel.model.lease import EventKind, Lease, LeaseEvent

SockAddr = tuple[str, int]
_Level = tuple[int, dict[int, SockAddr]]  # (netmask, network -> next hop)


@dataclass(frozen=True, slots=True)
class RouteChange:
    """One difference between two tables, for the log: ``peer`` is None for a deletion."""

    subnet: IPv4Network
    peer: IPv4Address | None


@dataclass(frozen=True, slots=True)
class RouteTable:
    """Subnet → peer public IP; datagrams go to ``peer:port`` (the port is ours, as in flanneld)."""

    port: int
    routes: Mapping[IPv4Network, IPv4Address] = field(default_factory=lambda: MappingProxyType({}))
    _levels: tuple[_Level, ...] = field(init=False, repr=False, compare=False)
    _peers: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "routes", MappingProxyType(dict(self.routes)))
        object.__setattr__(self, "_levels", _compile(self.routes, self.port))
        object.__setattr__(self, "_peers", frozenset(str(ip) for ip in self.routes.values()))

    @classmethod
    def from_leases(
        cls, leases: Iterable[Lease], port: int, own: IPv4Network | None = None
    ) -> RouteTable:
        """The table for a complete set of peer leases (our own subnet is skipped)."""
        routes = {lease.subnet: lease.attrs.public_ip for lease in leases if lease.subnet != own}
        return cls(port, routes)

    def apply(self, events: Iterable[LeaseEvent], own: IPv4Network | None = None) -> RouteTable:
        """The table after ``events``, in order: ADDED sets a route, REMOVED deletes it."""
        routes = dict(self.routes)
        for event in events:
            subnet = event.lease.subnet
            if subnet == own:
                continue
            if event.kind is EventKind.ADDED:
                routes[subnet] = event.lease.attrs.public_ip
            else:
                routes.pop(subnet, None)
        return self if routes == self.routes else RouteTable(self.port, routes)

    def lookup(self, dst: int) -> SockAddr | None:
        """The ``(ip, port)`` to send a packet for ``dst`` (an int) to, or None."""
        for mask, nets in self._levels:
            hop = nets.get(dst & mask)
            if hop is not None:
                return hop
        return None

    @property
    def peers(self) -> frozenset[str]:
        """The public IPs (dotted quads) of all peer leases: the senders the data path accepts."""
        return self._peers

    def holds_lease(self, source_ip: str) -> bool:
        """Whether ``source_ip`` (dotted quad) is the public IP of some peer lease."""
        return source_ip in self._peers

    def changes_from(self, old: RouteTable) -> list[RouteChange]:
        """What changed since ``old``: routes set or moved, then routes deleted."""
        changed = [
            RouteChange(subnet, peer)
            for subnet, peer in sorted(self.routes.items())
            if old.routes.get(subnet) != peer
        ]
        gone = [
            RouteChange(subnet, None) for subnet in sorted(old.routes) if subnet not in self.routes
        ]
        return changed + gone


def _compile(routes: Mapping[IPv4Network, IPv4Address], port: int) -> tuple[_Level, ...]:
    by_len: dict[int, dict[int, SockAddr]] = {}
    for subnet, peer in routes.items():
        by_len.setdefault(subnet.prefixlen, {})[int(subnet.network_address)] = (str(peer), port)
    return tuple(
        (int(IPv4Network(f"0.0.0.0/{plen}").netmask), by_len[plen])
        for plen in sorted(by_len, reverse=True)
    )
