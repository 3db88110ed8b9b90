"""Route lookups for choosing the external interface: default routes and ``ip route get``.

Unlike :mod:`.entries`, which only decodes the single-next-hop unicast routes the
applier manages, this decodes any IPv4 route, multipath included, because the
interface choice looks at whatever default routes the host has.

Rules of this file: bytes in, bytes or values out; no I/O.
"""

from __future__ import annotations

import struct
from ipaddress import IPv4Address
from typing import NamedTuple

from pyflannel.netlink.rtnl.entries import (
    AF_INET,
    RTA_DST,
    RTA_OIF,
    RTA_PRIORITY,
    RTA_TABLE,
    RTM_GETROUTE,
    RTMSG,
)
from pyflannel.netlink.rtnl.wire import I32, U32, Buffer, Request, attr, attributes

RTA_PREFSRC, RTA_MULTIPATH = 7, 9
RTNEXTHOP = struct.Struct("=HBBi")  # len, flags, hops, ifindex


class RouteInfo(NamedTuple):
    """An IPv4 route as RTM_NEWROUTE describes it, reduced to what the choice reads."""

    dst_len: int
    table: int
    route_type: int  # RTN_*
    oif: int | None  # RTA_OIF (None for multipath routes)
    hops: tuple[int, ...]  # the devices of a multipath route's next hops
    metric: int
    prefsrc: IPv4Address | None


def route_get(dst: IPv4Address) -> Request:
    """``ip route get <dst>``: the kernel answers with the route it would use."""
    header = RTMSG.pack(AF_INET, 32, 0, 0, 0, 0, 0, 0, 0)
    return Request(RTM_GETROUTE, 0, header + attr(RTA_DST, dst.packed))


def parse_route_info(data: Buffer, start: int, end: int) -> RouteInfo | None:
    """Decode an RTM_NEWROUTE payload; None for other families."""
    if end - start < RTMSG.size:
        return None
    family, dst_len, _, _, table, _, _, route_type, _ = RTMSG.unpack_from(data, start)
    if family != AF_INET:
        return None
    found = attributes(data, start + RTMSG.size, end)
    prefsrc = found.get(RTA_PREFSRC)
    return RouteInfo(
        dst_len=dst_len,
        table=_u32(found.get(RTA_TABLE)) or table,
        route_type=route_type,
        oif=_i32(found.get(RTA_OIF)),
        hops=_hops(found.get(RTA_MULTIPATH, b"")),
        metric=_u32(found.get(RTA_PRIORITY)),
        prefsrc=IPv4Address(prefsrc) if prefsrc is not None and len(prefsrc) == 4 else None,
    )


def _hops(value: bytes) -> tuple[int, ...]:
    hops: list[int] = []
    offset = 0
    while offset + RTNEXTHOP.size <= len(value):
        length, _, _, ifindex = RTNEXTHOP.unpack_from(value, offset)
        if length < RTNEXTHOP.size:
            break
        hops.append(ifindex)
        offset += (length + 3) & ~3
    return tuple(hops)


def _u32(value: bytes | None) -> int:
    return int(U32.unpack(value)[0]) if value is not None and len(value) == 4 else 0


def _i32(value: bytes | None) -> int | None:
    return int(I32.unpack(value)[0]) if value is not None and len(value) == 4 else None
