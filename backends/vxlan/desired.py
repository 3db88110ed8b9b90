"""What the vxlan backend wants in the kernel, as a function of the leases.

For every peer lease of type ``vxlan`` (facts §6.2), on ``flannel.<VNI>``:

- a permanent neighbour: the peer subnet's network address → the peer's VtepMAC;
- an FDB entry: the VtepMAC → the peer's PublicIP (where its VTEP listens);
- an onlink route: the peer subnet via its network address.

With ``DirectRouting`` and a peer whose PublicIP lies in a subnet connected to our
external interface, one plain route via the PublicIP replaces all three.

The result depends on nothing but the arguments, so the applier can compare it with
the kernel at any time: on a lease change, on a periodic resync, after a restart.
Peer data that cannot be used is reported, never raised: one bad lease must not
stop the programming of the others.

Rules of this file: pure code, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from functools import partial
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from pyflannel.core.kernelstate import (
    RTPROT_PYFLANNEL,
    FdbEntry,
    KernelState,
    Neighbour,
    Route,
)
from pyflannel.errors import PeerDataError
from pyflannel.model import gojson
from pyflannel.model.lease import Lease, LeaseFormat

BACKEND_TYPE = "vxlan"

# The forms Go's net.ParseMAC accepts for a 6-byte address.
_MAC_FORMS = (
    re.compile(r"^([0-9a-f]{2})[:-]([0-9a-f]{2})[:-]([0-9a-f]{2})[:-]"
               r"([0-9a-f]{2})[:-]([0-9a-f]{2})[:-]([0-9a-f]{2})$"),
    re.compile(r"^([0-9a-f]{2})([0-9a-f]{2})\.([0-9a-f]{2})([0-9a-f]{2})\."
               r"([0-9a-f]{2})([0-9a-f]{2})$"),
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Links:
    """The devices and addresses the desired state refers to."""

    vxlan_index: int  # flannel.<VNI>
    vxlan_mac: str  # its MAC, which no peer may claim
    uplink_index: int  # the external interface
    connected: tuple[IPv4Network, ...] = ()  # the external interface's subnets


@dataclass(frozen=True, slots=True, order=True)
class SkippedPeer:
    """A vxlan peer lease that gets no entries, and why (logged once)."""

    subnet: IPv4Network
    reason: str


@dataclass(frozen=True, slots=True)
class Desired:
    """The kernel state to hold, and the peers left out of it."""

    state: KernelState
    skipped: tuple[SkippedPeer, ...] = ()
    foreign: tuple[IPv4Network, ...] = ()  # peers of another backend type (ignored)


def backend_data(vni: int, mac: str, fmt: LeaseFormat) -> str:
    """Our lease's BackendData, byte-exact with flanneld of the lease's generation."""
    if fmt is LeaseFormat.V2:
        return gojson.dumps({"VtepMAC": mac})
    return gojson.dumps({"VNI": vni, "VtepMAC": mac})


def parse_mac(text: str) -> str:
    """A unicast 6-byte MAC in any form Go's ParseMAC reads, as lower-case colon hex."""
    for form in _MAC_FORMS:
        match = form.match(text.lower())
        if match:
            mac = ":".join(match.groups())
            if int(match.group(1), 16) & 1:
                raise PeerDataError(f"VtepMAC {text!r} is a multicast address")
            if mac == "00:00:00:00:00:00":
                raise PeerDataError("VtepMAC is all zeros")
            return mac
    raise PeerDataError(f"VtepMAC {text!r} is not a MAC address")


def peer_vtep_mac(lease: Lease) -> str:
    """The VtepMAC of a vxlan lease; PeerDataError when it is missing or malformed."""
    try:
        data: Any = lease.attrs.backend_json()
    except ValueError as exc:
        raise PeerDataError(f"BackendData is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise PeerDataError(
            "BackendData is missing" if data is None else "BackendData is not an object"
        )
    value = gojson.fold_keys(data, ("VtepMAC",)).get("VtepMAC")
    if not isinstance(value, str):
        raise PeerDataError("BackendData has no VtepMAC string")
    return parse_mac(value)


@dataclass(frozen=True, slots=True)
class PeerEntries:
    """One peer's share of the state: three entries through the tunnel, or one route."""

    subnet: IPv4Network
    route: Route
    neighbour: Neighbour | None = None
    fdb: FdbEntry | None = None


PeerResult = PeerEntries | SkippedPeer | None
"""What one lease contributes: entries, a reason to skip it, or None (not vxlan)."""


def peer_entries(lease: Lease, own: Lease, links: Links, *, direct_routing: bool) -> PeerResult:
    """The entries for one peer lease, on its own (MAC clashes are settled by the caller)."""
    if lease.attrs.backend_type != BACKEND_TYPE:
        return None
    subnet = lease.subnet
    public_ip = lease.attrs.public_ip
    if direct_routing and public_ip != own.attrs.public_ip and _on_link(public_ip, links):
        route = Route(str(subnet), str(public_ip), links.uplink_index, proto=RTPROT_PYFLANNEL)
        return PeerEntries(subnet, route)
    try:
        mac = peer_vtep_mac(lease)
    except PeerDataError as exc:
        return SkippedPeer(subnet, str(exc))
    gateway = str(subnet.network_address)
    return PeerEntries(
        subnet,
        Route(str(subnet), gateway, links.vxlan_index, onlink=True),
        Neighbour(links.vxlan_index, gateway, mac),
        FdbEntry(links.vxlan_index, mac, str(public_ip)),
    )


def desired_state(
    own: Lease,
    peers: Iterable[Lease],
    links: Links,
    *,
    direct_routing: bool,
    entries_of: Callable[[Lease], PeerResult] | None = None,
) -> Desired:
    """Every route, neighbour and FDB entry the peers need (see the module docstring).

    ``entries_of`` computes one peer's entries; by default :func:`peer_entries`. The
    shell passes a memoised version, so a pass costs little for peers that did not
    change; any function equal to ``peer_entries`` gives the same result.
    """
    entries_of = entries_of or partial(
        peer_entries, own=own, links=links, direct_routing=direct_routing
    )
    own_dst = str(own.subnet)
    chosen: dict[str, PeerEntries] = {}  # by route destination: one route per subnet
    by_mac: dict[str, PeerEntries] = {}
    skipped: list[SkippedPeer] = []
    foreign: list[IPv4Network] = []
    for lease in peers:
        result = entries_of(lease)
        if isinstance(result, PeerEntries):
            if result.route.dst == own_dst:
                continue
            if result.fdb is None:
                chosen[result.route.dst] = result
            elif (loser := _claim(result, result.fdb.mac, by_mac, links.vxlan_mac)) is not None:
                skipped.append(loser)
        elif result is None:
            if lease.subnet != own.subnet:
                foreign.append(lease.subnet)
        elif result.subnet != own.subnet:
            skipped.append(result)
    chosen.update((entries.route.dst, entries) for entries in by_mac.values())
    return Desired(_state(chosen.values()), tuple(sorted(skipped)), tuple(sorted(foreign)))


def _claim(
    entries: PeerEntries, mac: str, by_mac: dict[str, PeerEntries], own_mac: str
) -> SkippedPeer | None:
    """Give ``mac`` to the lower subnet; return the peer that loses it, if any."""
    if mac == own_mac:
        reason = f"VtepMAC {mac} is the MAC of this host's own VXLAN device"
        return SkippedPeer(entries.subnet, reason)
    holder = by_mac.setdefault(mac, entries)
    if holder is entries:
        return None
    winner, loser = (holder, entries) if holder.subnet < entries.subnet else (entries, holder)
    by_mac[mac] = winner
    return SkippedPeer(
        loser.subnet, f"VtepMAC {mac} is already used by the lease for {winner.subnet}"
    )


def _state(peers: Collection[PeerEntries]) -> KernelState:
    tunnelled = [entries for entries in peers if entries.fdb is not None]
    return KernelState(
        frozenset(entries.route for entries in peers),
        frozenset(entries.neighbour for entries in tunnelled if entries.neighbour is not None),
        frozenset(entries.fdb for entries in tunnelled if entries.fdb is not None),
    )


def _on_link(addr: IPv4Address, links: Links) -> bool:
    """Whether ``addr`` is reachable without a router: inside a connected subnet."""
    return any(addr in net and net.prefixlen < 32 for net in links.connected)
