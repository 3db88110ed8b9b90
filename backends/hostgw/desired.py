"""What the host-gw backend wants in the kernel: one route per peer subnet.

host-gw sends overlay traffic unencapsulated: a peer's subnet is routed through the
peer host itself, ``<subnet> via <PublicIP> dev <iface>`` (facts §8). The kernel
accepts such a route only when the gateway is on a subnet connected to the
interface, so every host must share one L2 segment and advertise its own interface
address, never a NAT address.

Rules of this file: pure code, no I/O. The shell reads the interface's connected
subnets and the existing routes, and applies what these functions return.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from pyflannel.backend import ExternalInterface
from pyflannel.errors import ConfigError
from pyflannel.model.lease import Lease

BACKEND_TYPE = "host-gw"

NAT_REASON = (
    "your PublicIP differs from interface IP, meaning that probably you're on a NAT, "
    "which is not supported by host-gw backend"
)


@dataclass(frozen=True, slots=True, order=True)
class GatewayRoute:
    """``dst via gateway dev <oif>`` in the main table."""

    dst: IPv4Network
    gateway: IPv4Address
    oif: int


@dataclass(frozen=True, slots=True)
class SkippedPeer:
    """A peer lease that gets no route, and why (for the log)."""

    subnet: IPv4Network
    public_ip: IPv4Address
    reason: str


@dataclass(frozen=True, slots=True)
class HostGwPlan:
    """The routes to keep, and the peers that cannot have one."""

    routes: frozenset[GatewayRoute]
    skipped: tuple[SkippedPeer, ...]


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


def plan_routes(
    own: Lease,
    peers: Iterable[Lease],
    iface: ExternalInterface,
    connected: Sequence[IPv4Network],
) -> HostGwPlan:
    """The route for every host-gw peer whose PublicIP is on a connected subnet.

    ``connected`` are the subnets directly reachable through the interface (its
    addresses' prefixes). Leases of other backend types are ignored without a word,
    as flanneld ignores them; any other peer without a route is reported.
    """
    routes: set[GatewayRoute] = set()
    skipped: list[SkippedPeer] = []
    for lease in sorted(peers, key=lambda lease: lease.subnet):
        if lease.subnet == own.subnet or lease.attrs.backend_type != BACKEND_TYPE:
            continue
        reason = _unroutable(lease.attrs.public_ip, iface, connected)
        if reason is None:
            routes.add(GatewayRoute(lease.subnet, lease.attrs.public_ip, iface.index))
        else:
            skipped.append(SkippedPeer(lease.subnet, lease.attrs.public_ip, reason))
    return HostGwPlan(frozenset(routes), tuple(skipped))


def is_ours(
    dst: IPv4Network, oif: int, network: IPv4Network, own: IPv4Network, iface_index: int
) -> bool:
    """Whether a kernel route looks like one host-gw put there (so a stale one may go).

    That is a route through the external interface to a part of the overlay
    network other than our own subnet; nothing else is ever deleted.
    """
    return oif == iface_index and dst.subnet_of(network) and dst not in (network, own)


def _unroutable(
    gateway: IPv4Address, iface: ExternalInterface, connected: Sequence[IPv4Network]
) -> str | None:
    if gateway == iface.iface_addr:
        return "its PublicIP is this host's own address (a lease left by an earlier subnet?)"
    if any(gateway in net for net in connected):
        return None
    shown = ", ".join(str(net) for net in connected) or "none"
    return (
        f"its PublicIP {gateway} is not on a subnet connected to {iface.name} ({shown}); "
        "host-gw routes each subnet via the peer host itself, so all hosts must share "
        "one L2 network (use vxlan to cross routers)"
    )
