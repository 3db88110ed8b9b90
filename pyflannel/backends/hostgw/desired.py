"""What the host-gw backend wants in the kernel: one route per peer subnet.

host-gw sends overlay traffic unencapsulated: a peer's subnet is routed through the
peer host itself, ``<subnet> via <PublicIP> dev <iface>`` (facts §8), with the
route protocol flanneld's netlink library gives it, so a host switched from
flanneld keeps the very same routes. The kernel accepts such a route only when the
gateway lies on a subnet connected to the interface: every host must share one L2
segment and advertise its own interface address, never a NAT address.

Owned routes (the scope the applier reads, diffs and may delete from): main-table
routes through the external interface to a part of the overlay network other than
our own subnet. Nothing outside the overlay network is ever touched.

Rules of this file: pure code, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import partial
from ipaddress import IPv4Address, IPv4Network

from pyflannel.backend import ExternalInterface
from pyflannel.core.kernelstate import Route, Scope
from pyflannel.core.peerbook import Desired, PeerBook, PeerResult, Unusable, Wanted
from pyflannel.errors import ConfigError
from pyflannel.model.lease import EventKind, Lease, LeaseEvent

BACKEND_TYPE = "host-gw"

NAT_REASON = (
    "your PublicIP differs from interface IP, meaning that probably you're on a NAT, "
    "which is not supported by host-gw backend"
)


def check_public_ip(iface: ExternalInterface) -> None:
    """Refuse a public IP other than the interface's address, as flanneld does.

    Peers install ``<our subnet> via <our PublicIP>``: with a NAT address there, the
    next hop is not this host and the traffic goes nowhere.
    """
    if iface.ext_addr != iface.iface_addr:
        raise ConfigError(
            f"host-gw backend: {NAT_REASON} (PublicIP {iface.ext_addr}, address "
            f"{iface.iface_addr} on {iface.name}): peers route this host's subnet via its "
            "PublicIP, which must be the address of the interface on the L2 segment all "
            "hosts share; drop --public-ip, or use the vxlan backend across a NAT"
        )


def host_route(
    lease: Lease, iface: ExternalInterface, connected: tuple[IPv4Network, ...]
) -> PeerResult:
    """The route for one peer lease: via its PublicIP, which must be on a connected subnet.

    ``connected`` are the subnets directly reachable through the interface (its
    addresses' prefixes). Leases of other backend types are ignored, as flanneld
    ignores them; a host-gw peer that cannot have a route is reported with why.
    """
    if lease.attrs.backend_type != BACKEND_TYPE:
        return None
    reason = _unroutable(lease.attrs.public_ip, iface, connected)
    if reason is not None:
        return Unusable(reason)
    return Wanted((Route(str(lease.subnet), str(lease.attrs.public_ip), iface.index),))


def configure(book: PeerBook, iface: ExternalInterface, connected: Sequence[IPv4Network]) -> None:
    """Point ``book`` at the interface's current subnets (every route is made again
    when they changed, and only then)."""
    subnets = tuple(connected)
    book.configure(partial(host_route, iface=iface, connected=subnets), (iface, subnets))


def desired_routes(
    own: Lease,
    peers: Iterable[Lease],
    iface: ExternalInterface,
    connected: Sequence[IPv4Network],
) -> Desired:
    """The route for every host-gw peer whose PublicIP is on a connected subnet.

    The whole state at once, for a one-off check; the backend keeps a
    :class:`~pyflannel.core.peerbook.PeerBook` up to date instead, which gives the same.
    """
    book = PeerBook(own.subnet)
    configure(book, iface, connected)
    book.update(LeaseEvent(EventKind.ADDED, peer) for peer in peers)
    return book.desired()


def route_scope(iface_index: int, network: IPv4Network, own: IPv4Network) -> Scope:
    """The routes host-gw owns (see the module docstring)."""

    def ours(route: Route) -> bool:
        dst = IPv4Network(route.dst)
        return dst.subnet_of(network) and dst not in (network, own)

    return Scope(route_oifs=frozenset({iface_index}), route_filter=ours)


def _unroutable(
    gateway: IPv4Address, iface: ExternalInterface, connected: tuple[IPv4Network, ...]
) -> str | None:
    if gateway == iface.iface_addr:
        return "its PublicIP is this host's own address (a lease left by an earlier run?)"
    if any(gateway in net and net.prefixlen < 32 for net in connected):
        return None
    shown = ", ".join(str(net) for net in connected) or "none"
    return (
        f"its PublicIP {gateway} is not on a subnet connected to {iface.name} ({shown}); "
        "host-gw routes each subnet via the peer host itself, so all hosts must share "
        "one L2 network (use vxlan to cross routers)"
    )
