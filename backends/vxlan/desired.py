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
from collections.abc import Iterable
from dataclasses import dataclass
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


@dataclass(frozen=True, slots=True)
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


def desired_state(
    own: Lease, peers: Iterable[Lease], links: Links, *, direct_routing: bool
) -> Desired:
    """Every route, neighbour and FDB entry the peers need (see the module docstring)."""
    routes: set[Route] = set()
    neighbours: set[Neighbour] = set()
    fdb: set[FdbEntry] = set()
    skipped: list[SkippedPeer] = []
    foreign: list[IPv4Network] = []
    mac_owner: dict[str, IPv4Network] = {links.vxlan_mac: own.subnet}
    for lease in sorted(peers, key=lambda lease: lease.subnet):
        if lease.subnet == own.subnet:
            continue
        if lease.attrs.backend_type != BACKEND_TYPE:
            foreign.append(lease.subnet)
            continue
        public_ip = lease.attrs.public_ip
        if direct_routing and public_ip != own.attrs.public_ip and _on_link(public_ip, links):
            routes.add(_direct_route(lease.subnet, public_ip, links.uplink_index))
            continue
        try:
            mac = _claim_mac(lease, mac_owner, own.subnet)
        except PeerDataError as exc:
            skipped.append(SkippedPeer(lease.subnet, str(exc)))
            continue
        gateway = lease.subnet.network_address
        neighbours.add(Neighbour(links.vxlan_index, gateway, mac))
        fdb.add(FdbEntry(links.vxlan_index, mac, public_ip))
        routes.add(Route(lease.subnet, gateway, links.vxlan_index, onlink=True))
    state = KernelState(frozenset(routes), frozenset(neighbours), frozenset(fdb))
    return Desired(state, tuple(skipped), tuple(foreign))


def _claim_mac(lease: Lease, mac_owner: dict[str, IPv4Network], own_subnet: IPv4Network) -> str:
    """The peer's MAC, unless our device or an earlier peer (by subnet) already has it."""
    mac = peer_vtep_mac(lease)
    holder = mac_owner.setdefault(mac, lease.subnet)
    if holder == own_subnet:
        raise PeerDataError(f"VtepMAC {mac} is the MAC of this host's own VXLAN device")
    if holder != lease.subnet:
        raise PeerDataError(f"VtepMAC {mac} is already used by the lease for {holder}")
    return mac


def _on_link(addr: IPv4Address, links: Links) -> bool:
    """Whether ``addr`` is reachable without a router: inside a connected subnet."""
    return any(addr in net and net.prefixlen < 32 for net in links.connected)


def _direct_route(subnet: IPv4Network, public_ip: IPv4Address, uplink_index: int) -> Route:
    return Route(subnet, public_ip, uplink_index, proto=RTPROT_PYFLANNEL)
