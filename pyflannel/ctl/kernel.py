"""The kernel half of ``pyflannelctl status``: read this host's entries, compare.

Per backend, the expected entries come from the backend's own pure code
(``backends/vxlan/desired.py``, ``backends/hostgw/desired.py``) fed with the leases
from etcd, and the actual ones are read with the daemon's netlink code, inside the
scope the daemon owns. The comparison and its wording are in :mod:`.kernelcheck`.
It reads the network namespace it runs in: run ``status`` on the host itself.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Interface, IPv4Network

from pyflannel.backend import ExternalInterface
from pyflannel.backends.hostgw import desired as hostgw
from pyflannel.backends.vxlan import desired as vxlan
from pyflannel.backends.vxlan.options import parse_settings
from pyflannel.core.ifacepick import HostSnapshot, LinkInfo
from pyflannel.core.kernelstate import RTPROT_PYFLANNEL, KernelState, Route, Scope
from pyflannel.ctl import kernelcheck
from pyflannel.ctl.kernelcheck import Device
from pyflannel.errors import PyflannelError
from pyflannel.model.config import NetworkConfig
from pyflannel.model.lease import Lease
from pyflannel.netlink.applier import Reconciler
from pyflannel.netlink.hostinfo import read_host
from pyflannel.netlink.ops import NetlinkOps
from pyflannel.netlink.rtnl.transport import RtnlSocket

logger = logging.getLogger(__name__)
UDP_DEVICE = "flannel0"


@dataclass(frozen=True, slots=True)
class Context:
    """What a backend's check works from."""

    config: NetworkConfig
    own: Lease
    peers: tuple[Lease, ...]
    mtu: int | None  # FLANNEL_MTU of subnet.env
    host: HostSnapshot
    ops: NetlinkOps

    def names(self) -> dict[int, str]:
        return {link.index: link.name for link in self.host.links}

    def link(self, name: str) -> LinkInfo | None:
        return next((link for link in self.host.links if link.name == name), None)


Findings = tuple[tuple[str, ...], tuple[str, ...]]  # (summary lines, problems)
Check = Callable[[Context], Awaitable[Findings]]


async def kernel_findings(
    config: NetworkConfig, own: Lease, peers: Sequence[Lease], mtu: int | None
) -> Findings:
    """Summary lines and problems for this host's kernel state under ``config``."""
    check = CHECKS.get(config.backend_type)
    if check is None:
        return (f"kernel: not checked for the {config.backend_type} backend",), ()
    ops = NetlinkOps()
    try:
        await ops.open()
        async with RtnlSocket() as sock:
            host = await read_host(sock)
        return await check(Context(config, own, tuple(peers), mtu, host, ops))
    except (PyflannelError, OSError) as exc:
        return (), (f"cannot read this host's kernel state: {exc}",)
    finally:
        await ops.close()


async def _device(ctx: Context, name: str) -> Device | None:
    info = ctx.link(name)
    state = await ctx.ops.link(name)
    if info is None or state is None:
        return None
    addrs = tuple(IPv4Interface(f"{a.address}/{a.prefixlen}") for a in info.addrs)
    vni = state.vxlan.vni if state.vxlan is not None else None
    return Device(name, state.kind, state.up, state.mtu, addrs, vni)


def _connected(link: LinkInfo | None) -> tuple[IPv4Network, ...]:
    if link is None:
        return ()
    return tuple(IPv4Interface(f"{a.address}/{a.prefixlen}").network for a in link.addrs)


async def check_vxlan(ctx: Context) -> Findings:
    """flannel.<VNI>, and its routes, neighbours and FDB entries (facts §6)."""
    settings = parse_settings(ctx.config)
    name = settings.device_name
    device = await _device(ctx, name)
    problems = kernelcheck.device_problems(
        device, name, kind="vxlan", mtu=ctx.mtu, own=ctx.own.subnet
    )
    state = await ctx.ops.link(name)
    if device is None or state is None:
        return (kernelcheck.summary(None, KernelState(), len(problems)),), tuple(problems)
    if device.vni is not None and device.vni != settings.vni:
        problems.append(f"device {name} has VNI {device.vni} but the config says {settings.vni}")
    lower = state.vxlan.lower if state.vxlan is not None else 0
    uplink = next((link for link in ctx.host.links if link.index == lower), None)
    links = vxlan.Links(state.index, state.mac, lower, _connected(uplink))
    wanted = vxlan.desired_state(ctx.own, ctx.peers, links, direct_routing=settings.direct_routing)
    scope = Scope(
        route_oifs=frozenset({state.index}),
        route_protos=frozenset({RTPROT_PYFLANNEL}),
        neighbour_ifindex=state.index,
        fdb_ifindex=state.index,
    )
    actual = await Reconciler(ctx.ops).read(scope)
    problems += kernelcheck.entry_problems(wanted.state, actual, ctx.names())
    problems += [f"lease {s.subnet} gets no entries: {s.reason}" for s in wanted.skipped]
    return (kernelcheck.summary(device, wanted.state, len(problems)),), tuple(problems)


async def check_udp(ctx: Context) -> Findings:
    """flannel0 and the one route for the whole network through it (facts §7.1)."""
    device = await _device(ctx, UDP_DEVICE)
    problems = kernelcheck.device_problems(
        device, UDP_DEVICE, kind="tun", mtu=ctx.mtu, own=ctx.own.subnet
    )
    link = ctx.link(UDP_DEVICE)
    wanted = KernelState()
    if link is not None:
        network = str(ctx.config.network)
        wanted = KernelState(routes=frozenset({Route(network, "", link.index)}))
        routes = await ctx.ops.routes(oif=link.index)
        have = {(r.dst, r.gateway) for r in routes}
        if (network, "") not in have:
            problems.append(f"missing route {ctx.config.network} dev {UDP_DEVICE}")
    return (kernelcheck.summary(device, wanted, len(problems)),), tuple(problems)


async def check_hostgw(ctx: Context) -> Findings:
    """One route per host-gw peer, via its public IP on the shared segment (facts §8)."""
    public_ip = ctx.own.attrs.public_ip
    holders = (link for link in ctx.host.links if any(a.address == public_ip for a in link.addrs))
    uplink = next(holders, None)
    if uplink is None:
        problem = f"no interface holds this host's public IP {ctx.own.attrs.public_ip}"
        return ("kernel: host-gw routes not checked",), (problem,)
    iface = ExternalInterface(
        uplink.name, uplink.index, uplink.mtu, ctx.own.attrs.public_ip, ctx.own.attrs.public_ip
    )
    wanted = hostgw.desired_routes(ctx.own, ctx.peers, iface, _connected(uplink))
    scope = hostgw.route_scope(uplink.index, ctx.config.network, ctx.own.subnet)
    actual = await Reconciler(ctx.ops).read(scope)
    problems = kernelcheck.entry_problems(wanted.state, actual, ctx.names())
    problems += [f"lease {s.subnet} gets no route: {s.reason}" for s in wanted.skipped]
    return (kernelcheck.summary(None, wanted.state, len(problems)),), tuple(problems)


async def check_alloc(ctx: Context) -> Findings:
    return ("kernel: alloc programs nothing, so there is nothing to compare",), ()


CHECKS: dict[str, Check] = {
    "vxlan": check_vxlan,
    "udp": check_udp,
    "host-gw": check_hostgw,
    "alloc": check_alloc,
}
