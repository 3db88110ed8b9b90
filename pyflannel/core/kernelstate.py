"""Kernel entries as plain values, the scope a backend owns, and the ordered change list.

A backend's desired-state function returns a :class:`KernelState`; the netlink
applier reads the actual entries inside a :class:`Scope` into the same shape, and
:func:`plan_changes` turns the two into one ordered list of :class:`Change`.

Entries are named tuples of strings and integers, addresses in canonical dotted form
(as ``str(IPv4Address)`` and ``inet_ntoa`` write them), rather than frozen dataclasses
of ``ipaddress`` objects: a pass over 5000 peers builds, hashes and compares some
30 000 of them, and a named tuple does that in C, measured 3 to 6 times faster here.
They are just as immutable; compare them only with entries of the same kind.

Identity follows the kernel's, so that one key never names two kernel objects:
a main-table IPv4 route is ``(dst, metric)``, a neighbour ``(device, IP)``, a VXLAN
FDB entry ``(device, MAC)``. Everything else (gateway, device, flags, protocol, MAC,
remote address, permanence) is a value: a difference there means *replace*.

Order matters (flanneld's, facts §6.2): a route must never exist before the
neighbour and FDB entries it depends on, or the kernel ARPs for the gateway. So the
list goes: stale routes out, stale neighbours/FDB out, neighbours/FDB in, routes in.

Rules of this file: pure code, no I/O.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, NamedTuple

from pyflannel.core.reconcile import Plan, diff

MAIN_TABLE = 254
RTPROT_BOOT = 3
"""The protocol vishvananda/netlink (so flanneld) gives its routes; ``ip route`` hides it."""
RTPROT_PYFLANNEL = 160
"""pyflannel's own route protocol (shown as ``proto 160``), for routes that do not leave
by a device of ours, such as vxlan DirectRouting routes via the external interface: it
lets the daemon find and clean exactly its routes there and nothing else. iproute2
reserves no name for 160; add ``160 pyflannel`` to /etc/iproute2/rt_protos to see one."""


# Identities as C-level getters (the fields named in each ``key`` method): a pass over
# thousands of entries sorts and matches them by key.
_ROUTE_KEY: Callable[[Any], tuple[str, int]] = itemgetter(0, 5)
_DEVICE_KEY: Callable[[Any], tuple[int, str]] = itemgetter(0, 1)


class Route(NamedTuple):
    """An IPv4 unicast route in the main table."""

    dst: str  # "10.5.2.0/24"
    gateway: str  # "10.5.2.0", or "" for a route without one
    oif: int
    onlink: bool = False
    proto: int = RTPROT_BOOT
    metric: int = 0

    def key(self) -> tuple[str, int]:
        return _ROUTE_KEY(self)  # (dst, metric)


class Neighbour(NamedTuple):
    """An IPv4 neighbour (ARP) entry: ``ip`` is reached at link address ``mac``."""

    ifindex: int
    ip: str
    mac: str  # lower-case colon hex ("" while unresolved)
    permanent: bool = True

    def key(self) -> tuple[int, str]:
        return _DEVICE_KEY(self)  # (ifindex, ip)


class FdbEntry(NamedTuple):
    """A VXLAN forwarding entry: frames for ``mac`` are sent to the VTEP at ``dst``."""

    ifindex: int
    mac: str  # lower-case colon hex
    dst: str  # the remote VTEP's IPv4 address
    permanent: bool = True

    def key(self) -> tuple[int, str]:
        return _DEVICE_KEY(self)  # (ifindex, mac)


Entry = Route | Neighbour | FdbEntry


@dataclass(frozen=True, slots=True)
class KernelState:
    """A set of routes, neighbours and FDB entries (desired, or read from the kernel)."""

    routes: frozenset[Route] = frozenset()
    neighbours: frozenset[Neighbour] = frozenset()
    fdb: frozenset[FdbEntry] = frozenset()

    def __len__(self) -> int:
        return len(self.routes) + len(self.neighbours) + len(self.fdb)


def state_of(entries: Iterable[Entry]) -> KernelState:
    """The entries, whatever their kinds, as a :class:`KernelState`."""
    routes: list[Route] = []
    neighbours: list[Neighbour] = []
    fdb: list[FdbEntry] = []
    for entry in entries:
        if isinstance(entry, Route):
            routes.append(entry)
        elif isinstance(entry, Neighbour):
            neighbours.append(entry)
        else:
            fdb.append(entry)
    return KernelState(frozenset(routes), frozenset(neighbours), frozenset(fdb))


def _own_everything(route: Route) -> bool:
    return True


@dataclass(frozen=True, slots=True)
class Scope:
    """The kernel entries a backend owns: nothing outside is read, changed or removed.

    Routes: main-table routes leaving by one of ``route_oifs`` or carrying one of
    ``route_protos``, further narrowed by ``route_filter``. Neighbours and FDB
    entries: those on ``neighbour_ifindex`` / ``fdb_ifindex`` (None: not managed).
    """

    route_oifs: frozenset[int] = frozenset()
    route_protos: frozenset[int] = frozenset()
    route_filter: Callable[[Route], bool] = field(default=_own_everything, compare=False)
    neighbour_ifindex: int | None = None
    fdb_ifindex: int | None = None

    def owns_route(self, route: Route) -> bool:
        """Whether a route read from the main table is one of ours."""
        reachable = route.oif in self.route_oifs or route.proto in self.route_protos
        return reachable and self.route_filter(route)


class Op(enum.Enum):
    """What to do with an entry: ``SET`` creates or replaces it, ``DELETE`` removes it."""

    SET = "set"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class Change:
    """One kernel operation."""

    op: Op
    entry: Entry


def plan_changes(desired: KernelState, actual: KernelState) -> tuple[Change, ...]:
    """The ordered operations that turn ``actual`` into ``desired``.

    Non-permanent neighbours and FDB entries that are not desired are left alone:
    the kernel made them (ARP, learning) and expires them itself.
    """
    routes = diff(desired.routes, actual.routes, key=_ROUTE_KEY)
    neighbours = diff(desired.neighbours, actual.neighbours, key=_DEVICE_KEY)
    fdb = diff(desired.fdb, actual.fdb, key=_DEVICE_KEY)
    return (
        *_deletes(routes.remove, _ROUTE_KEY),
        *_deletes(fdb.remove, _DEVICE_KEY, only_permanent=True),
        *_deletes(neighbours.remove, _DEVICE_KEY, only_permanent=True),
        *_sets(neighbours, _DEVICE_KEY),
        *_sets(fdb, _DEVICE_KEY),
        *_sets(routes, _ROUTE_KEY),
    )


def _deletes(
    entries: Iterable[Entry], key: Callable[[Any], tuple[Any, ...]], only_permanent: bool = False
) -> list[Change]:
    # Sorted by key: comparable within one kind, unlike whole entries (gateway None).
    return [
        Change(Op.DELETE, e)
        for e in sorted(entries, key=key)
        if not only_permanent or getattr(e, "permanent", True)
    ]


def _sets(plan: Plan[Any], key: Callable[[Any], tuple[Any, ...]]) -> list[Change]:
    return [Change(Op.SET, e) for e in sorted((*plan.add, *plan.replace), key=key)]


def summarize(changes: Iterable[Change]) -> str:
    """``+3 -1 routes, +3 neighbours, ...`` for a log line (kinds in order of appearance)."""
    counts: dict[type, list[int]] = {}
    for (kind, op), count in Counter((type(c.entry), c.op) for c in changes).items():
        counts.setdefault(kind, [0, 0])[0 if op is Op.SET else 1] += count
    names = {Route: "routes", Neighbour: "neighbours", FdbEntry: "FDB entries"}
    return ", ".join(f"+{s} -{d} {names[k]}" for k, (s, d) in counts.items()) or "no changes"
