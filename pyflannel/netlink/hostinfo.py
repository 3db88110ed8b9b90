"""Reading the host's interfaces, IPv4 addresses and routes into plain snapshots.

The snapshot feeds the pure interface choice in ``pyflannel.core.ifacepick``. Messages
are read over one :class:`~pyflannel.netlink.rtnl.transport.RtnlSocket` that the
caller owns, and decoded by our codec; this module only turns them into the choice's
value types.
"""

from __future__ import annotations

import os
from ipaddress import IPv4Address

from pyflannel.core.ifacepick import AddrInfo, DefaultRoute, HostSnapshot, LinkInfo, RouteLookup
from pyflannel.netlink.rtnl import addrs, links, lookups, route_dump
from pyflannel.netlink.rtnl.addrs import IFA_F_DEPRECATED, IFA_F_PERMANENT, IFA_F_SECONDARY
from pyflannel.netlink.rtnl.links import IFF_UP
from pyflannel.netlink.rtnl.lookups import RouteInfo
from pyflannel.netlink.rtnl.transport import NetlinkRefused, RtnlSocket

MAIN_TABLE = 254


async def read_host(sock: RtnlSocket) -> HostSnapshot:
    """Every interface with its IPv4 addresses, and the main table's default routes."""
    found: dict[int, list[AddrInfo]] = {}
    for address in await sock.dump(addrs.address_dump(), addrs.parse_address):
        found.setdefault(address.index, []).append(_addr_info(address))
    devices = await sock.dump(links.link_dump(), links.parse_link)
    infos = sorted(
        (_link_info(link, tuple(found.get(link.index, ()))) for link in devices),
        key=lambda info: info.index,
    )
    routes = await sock.dump(route_dump(), lookups.parse_route_info)
    defaults = tuple(_default_route(route) for route in routes if _is_main_default(route))
    return HostSnapshot(links=tuple(infos), default_routes=defaults)


async def route_to(sock: RtnlSocket, dst: IPv4Address) -> RouteLookup:
    """What ``ip route get <dst>`` says: outgoing interface and preferred source address."""
    try:
        answer = await sock.call(lookups.route_get(dst))
    except NetlinkRefused as err:
        return RouteLookup(oif=None, error=os.strerror(err.code))
    routes = [lookups.parse_route_info(payload, 0, len(payload)) for payload in answer]
    route = next((route for route in routes if route is not None), None)
    if route is None:
        return RouteLookup(oif=None, error="the kernel returned no route")
    return RouteLookup(oif=route.oif, prefsrc=route.prefsrc)


def _link_info(link: links.Link, addresses: tuple[AddrInfo, ...]) -> LinkInfo:
    return LinkInfo(
        index=link.index,
        name=link.name or f"if{link.index}",
        mtu=link.mtu,
        up=bool(link.flags & IFF_UP),
        addrs=addresses,
    )


def _addr_info(address: addrs.Address) -> AddrInfo:
    # The codec took IFA_LOCAL (our own end, also on point-to-point links) and the
    # 32-bit IFA_FLAGS when present.
    return AddrInfo(
        address=address.address,
        prefixlen=address.prefixlen,
        permanent=bool(address.flags & IFA_F_PERMANENT),
        secondary=bool(address.flags & IFA_F_SECONDARY),
        deprecated=bool(address.flags & IFA_F_DEPRECATED),
    )


def _is_main_default(route: RouteInfo) -> bool:
    return route.dst_len == 0 and route.table == MAIN_TABLE


def _default_route(route: RouteInfo) -> DefaultRoute:
    oifs = (route.oif,) if route.oif else tuple(hop for hop in route.hops if hop)
    return DefaultRoute(oifs=oifs, metric=route.metric, route_type=route.route_type)
