"""What the vxlan backend wants in the kernel, as a function of the leases.

For every peer lease of type ``vxlan`` (facts §6.2), on ``flannel.<VNI>``:

- a permanent neighbour: the peer subnet's network address → the peer's VtepMAC;
- an FDB entry: the VtepMAC → the peer's PublicIP (where its VTEP listens);
- an onlink route: the peer subnet via its network address.

With ``DirectRouting`` and a peer whose PublicIP lies in a subnet connected to our
external interface, one plain route via the PublicIP replaces all three.

A peer's entries depend on nothing but its lease, our lease and the devices, so the
backend keeps them in a :class:`~pyflannel.core.peerbook.PeerBook` updated lease by
lease, and the applier can compare the whole with the kernel at any time: on a
periodic resync, after a restart. Two peers claiming one MAC (or one neighbour
address) is settled there: the lower subnet gets it. Peer data that cannot be used is
reported, never raised: one bad lease must not stop the programming of the others.

Rules of this file: pure code, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from pyflannel.core.kernelstate import (
    RTPROT_PYFLANNEL,
    FdbEntry,
    Neighbour,
    Route,
)
from pyflannel.core.peerbook import Desired, PeerBook, PeerResult, Unusable, Wanted
from pyflannel.errors import PeerDataError
from pyflannel.model import gojson
from pyflannel.model.lease import EventKind, Lease, LeaseEvent, LeaseFormat

BACKEND_TYPE = "vxlan"

# The forms Go's net.ParseMAC accepts for a 6-byte address.
_HEX = frozenset("0123456789abcdef")
_MAC_FORMS = (  # one separator throughout, nothing after the last group (as Go)
    re.compile(r"([0-9a-f]{2}):([0-9a-f]{2}):([0-9a-f]{2}):"
               r"([0-9a-f]{2}):([0-9a-f]{2}):([0-9a-f]{2})"),
    re.compile(r"([0-9a-f]{2})-([0-9a-f]{2})-([0-9a-f]{2})-"
               r"([0-9a-f]{2})-([0-9a-f]{2})-([0-9a-f]{2})"),
    re.compile(r"([0-9a-f]{2})([0-9a-f]{2})\.([0-9a-f]{2})([0-9a-f]{2})\."
               r"([0-9a-f]{2})([0-9a-f]{2})"),
)  # fmt: skip


# BackendData in the form flanneld writes it: {"VNI":1,"VtepMAC":"..."} or, before
# v0.15, {"VtepMAC":"..."}; a MAC-like string cannot hold a JSON escape.
_COMMON_DATA = re.compile(r'\{(?:"VNI":-?(?:0|[1-9][0-9]*),)?"VtepMAC":"([0-9A-Fa-f:.-]*)"\}')


@dataclass(frozen=True, slots=True)
class Links:
    """The devices and addresses the desired state refers to."""

    vxlan_index: int  # flannel.<VNI>
    vxlan_mac: str  # its MAC, which no peer may claim
    uplink_index: int  # the external interface
    connected: tuple[IPv4Network, ...] = ()  # the external interface's subnets


def backend_data(vni: int, mac: str, fmt: LeaseFormat) -> str:
    """Our lease's BackendData, byte-exact with flanneld of the lease's generation."""
    if fmt is LeaseFormat.V2:
        return gojson.dumps({"VtepMAC": mac})
    return gojson.dumps({"VNI": vni, "VtepMAC": mac})


def parse_mac(text: str) -> str:
    """A unicast 6-byte MAC in any form Go's ParseMAC reads, as lower-case colon hex."""
    mac = text.lower()
    # The form every flanneld writes (and every watch event carries), without a regex.
    if not (len(mac) == 17 and mac[2::3] == ":::::" and _HEX.issuperset(mac[::3] + mac[1::3])):
        for form in _MAC_FORMS:
            match = form.fullmatch(mac)
            if match:
                mac = ":".join(match.groups())
                break
        else:
            raise PeerDataError(f"VtepMAC {text!r} is not a MAC address")
    if int(mac[:2], 16) & 1:
        raise PeerDataError(f"VtepMAC {text!r} is a multicast address")
    if mac == "00:00:00:00:00:00":
        raise PeerDataError("VtepMAC is all zeros")
    return mac


def peer_vtep_mac(lease: Lease) -> str:
    """The VtepMAC of a vxlan lease; PeerDataError when it is missing or malformed.

    BackendData as flanneld (and pyflanneld) writes it is read with one regular
    expression; anything else goes through the JSON decoder, with the same result.
    """
    text = lease.attrs.backend_data
    if text is not None and (common := _COMMON_DATA.fullmatch(text)) is not None:
        return parse_mac(common.group(1))
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


def peer_entries(lease: Lease, own: Lease, links: Links, *, direct_routing: bool) -> PeerResult:
    """The entries for one peer lease, on its own (keys two peers claim are settled by
    the :class:`~pyflannel.core.peerbook.PeerBook`)."""
    if lease.attrs.backend_type != BACKEND_TYPE:
        return None
    subnet = lease.subnet
    gateway = str(subnet.network_address)
    dst = f"{gateway}/{subnet.prefixlen}"
    public_ip = lease.attrs.public_ip
    if direct_routing and public_ip != own.attrs.public_ip and _on_link(public_ip, links):
        route = Route(dst, str(public_ip), links.uplink_index, proto=RTPROT_PYFLANNEL)
        return Wanted((route,))
    try:
        mac = peer_vtep_mac(lease)
    except PeerDataError as exc:
        return Unusable(str(exc))
    if mac == links.vxlan_mac:
        return Unusable(f"VtepMAC {mac} is the MAC of this host's own VXLAN device")
    index = links.vxlan_index
    return Wanted(
        (
            Neighbour(index, gateway, mac),
            FdbEntry(index, mac, str(public_ip)),
            Route(dst, gateway, index, onlink=True),
        )
    )


def peer_book(own: Lease, links: Links, *, direct_routing: bool) -> PeerBook:
    """An empty book that makes each peer's entries with :func:`peer_entries`."""
    book = PeerBook(own.subnet)
    configure(book, own, links, direct_routing=direct_routing)
    return book


def configure(book: PeerBook, own: Lease, links: Links, *, direct_routing: bool) -> None:
    """Point ``book`` at (possibly new) devices: every peer's entries are made again
    when they changed, and only then."""
    entries_of = partial(peer_entries, own=own, links=links, direct_routing=direct_routing)
    book.configure(entries_of, (own, links, direct_routing))


def desired_state(
    own: Lease, peers: Iterable[Lease], links: Links, *, direct_routing: bool
) -> Desired:
    """Every route, neighbour and FDB entry the peers need (see the module docstring).

    The whole state at once, for a one-off check; the backend keeps a
    :class:`~pyflannel.core.peerbook.PeerBook` up to date instead, which gives the same.
    """
    book = peer_book(own, links, direct_routing=direct_routing)
    book.update(LeaseEvent(EventKind.ADDED, peer) for peer in peers)
    return book.desired()


def _on_link(addr: IPv4Address, links: Links) -> bool:
    """Whether ``addr`` is reachable without a router: inside a connected subnet."""
    return any(addr in net and net.prefixlen < 32 for net in links.connected)
