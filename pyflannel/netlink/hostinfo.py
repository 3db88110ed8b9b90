"""Reading the host's interfaces, IPv4 addresses and routes into plain snapshots.

The snapshot feeds the pure interface choice in ``pyflannel.core.ifacepick``. Messages
are read with one ``AsyncIPRoute`` that the caller owns; ``dump`` requests return async
generators there, while ``get`` returns a list (see the module ``collect`` helper).
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import AsyncIterator, Awaitable
from ipaddress import IPv4Address
from typing import Any

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

from pyflannel.core.ifacepick import AddrInfo, DefaultRoute, HostSnapshot, LinkInfo, RouteLookup

MAIN_TABLE = 254
IFF_UP = 0x1
IFA_F_SECONDARY = 0x01
IFA_F_DEPRECATED = 0x20
IFA_F_PERMANENT = 0x80


async def collect(request: Awaitable[Any]) -> list[Any]:
    """The messages of a request, whether pyroute2 answers with a list or an async generator."""
    answer = await request
    if isinstance(answer, list):
        return answer
    stream: AsyncIterator[Any] = answer
    return [msg async for msg in stream]


async def read_host(ipr: AsyncIPRoute) -> HostSnapshot:
    """Every interface with its IPv4 addresses, and the main table's default routes."""
    addrs: dict[int, list[AddrInfo]] = {}
    for msg in await collect(ipr.addr("dump", family=socket.AF_INET)):
        addr = _addr_info(msg)
        if addr is not None:
            addrs.setdefault(msg["index"], []).append(addr)
    links = [
        _link_info(msg, tuple(addrs.get(msg["index"], ())))
        for msg in await collect(ipr.link("dump"))
    ]
    links.sort(key=lambda link: link.index)
    routes = await collect(ipr.route("dump", family=socket.AF_INET, table=MAIN_TABLE))
    defaults = tuple(_default_route(msg) for msg in routes if _is_main_default(msg))
    return HostSnapshot(links=tuple(links), default_routes=defaults)


async def route_to(ipr: AsyncIPRoute, dst: IPv4Address) -> RouteLookup:
    """What ``ip route get <dst>`` says: outgoing interface and preferred source address."""
    try:
        answer = await collect(ipr.route("get", dst=str(dst)))
    except NetlinkError as err:
        return RouteLookup(oif=None, error=os.strerror(err.code or errno.EINVAL))
    if not answer:
        return RouteLookup(oif=None, error="the kernel returned no route")
    msg = answer[0]
    prefsrc = msg.get_attr("RTA_PREFSRC")
    return RouteLookup(
        oif=msg.get_attr("RTA_OIF"),
        prefsrc=IPv4Address(prefsrc) if prefsrc else None,
    )


def _link_info(msg: Any, addrs: tuple[AddrInfo, ...]) -> LinkInfo:
    return LinkInfo(
        index=msg["index"],
        name=msg.get_attr("IFLA_IFNAME") or f"if{msg['index']}",
        mtu=msg.get_attr("IFLA_MTU") or 0,
        up=bool(msg["flags"] & IFF_UP),
        addrs=addrs,
    )


def _addr_info(msg: Any) -> AddrInfo | None:
    # On point-to-point links IFA_ADDRESS is the peer; IFA_LOCAL is always our own.
    local = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
    if not local:
        return None
    flags = msg.get_attr("IFA_FLAGS")  # 32 bits; the header's ifa_flags only holds 8
    if flags is None:
        flags = msg["flags"]
    return AddrInfo(
        address=IPv4Address(local),
        prefixlen=msg["prefixlen"],
        permanent=bool(flags & IFA_F_PERMANENT),
        secondary=bool(flags & IFA_F_SECONDARY),
        deprecated=bool(flags & IFA_F_DEPRECATED),
    )


def _is_main_default(msg: Any) -> bool:
    table = msg.get_attr("RTA_TABLE") or msg["table"]
    return bool(msg["dst_len"] == 0 and table == MAIN_TABLE)


def _default_route(msg: Any) -> DefaultRoute:
    oif = msg.get_attr("RTA_OIF")
    hops = msg.get_attr("RTA_MULTIPATH") or []
    oifs = (oif,) if oif else tuple(hop["oif"] for hop in hops if hop["oif"])
    return DefaultRoute(
        oifs=oifs,
        metric=msg.get_attr("RTA_PRIORITY") or 0,
        route_type=msg["type"],
    )
