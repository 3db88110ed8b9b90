"""Routes, neighbours and FDB entries: the requests the applier sends, and dump parsing.

Why by hand: a general netlink library spends about half a millisecond of CPU per
request and answers each before sending the next, so programming 1000 peers (3000
requests) would take seconds. Encoded here with ``struct``, thousands of requests go
to the kernel in a few socket writes (see :mod:`.transport`), and a dump of 5000
routes parses in milliseconds.

Only what the applier needs is decoded; anything else (multipath routes, IPv6
remotes) is skipped, which keeps it out of the applier's reach.

Rules of this file: bytes in, bytes or values out; no I/O (``socket`` only lends
``inet_aton``/``inet_ntoa``, the fastest address conversions in the standard library).
"""

from __future__ import annotations

import struct
from socket import inet_aton, inet_ntoa
from typing import NamedTuple

from pyflannel.core.kernelstate import MAIN_TABLE, Change, FdbEntry, Neighbour, Op, Route
from pyflannel.netlink.rtnl.wire import (
    ATTR,
    I32,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NLM_F_REPLACE,
    U32,
    Buffer,
    Request,
)
from pyflannel.netlink.rtnl.wire import attr as _attr

RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30

AF_INET = 2
AF_BRIDGE = 7
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_TABLE = 1, 4, 5, 6, 15
RTN_UNICAST = 1
RTNH_F_ONLINK = 0x4
RT_SCOPE_UNIVERSE, RT_SCOPE_NOWHERE = 0, 255
NDA_DST, NDA_LLADDR, NDA_IFINDEX = 1, 2, 8
NUD_NOARP, NUD_PERMANENT = 0x40, 0x80
NTF_SELF = 0x2

RTMSG = struct.Struct(
    "=BBBBBBBBI"
)  # family, dst_len, src_len, tos, table, proto, scope, type, flags
NDMSG = struct.Struct("=BxxxiHBB")  # family, ifindex, state, flags, type


def _mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def _prefix(dst: str) -> tuple[bytes, int]:
    address, _, length = dst.partition("/")
    return inet_aton(address), int(length or 32)


def encode_change(change: Change) -> Request:
    """The request that carries out ``change`` (a create-or-replace, or a delete)."""
    entry = change.entry
    setting = change.op is Op.SET
    if isinstance(entry, Route):
        return _route_set(entry) if setting else _route_delete(entry)
    if isinstance(entry, Neighbour):
        return _neighbour_request(entry, setting)
    return _fdb_request(entry, setting)


def _route_attrs(route: Route, dst: bytes) -> bytes:
    attrs = _attr(RTA_TABLE, U32.pack(MAIN_TABLE)) + _attr(RTA_DST, dst)
    if route.gateway:
        attrs += _attr(RTA_GATEWAY, inet_aton(route.gateway))
    attrs += _attr(RTA_OIF, I32.pack(route.oif))
    if route.metric:
        attrs += _attr(RTA_PRIORITY, U32.pack(route.metric))
    return attrs


# The common requests in one struct each: programming thousands of peers encodes
# thousands of them, and one pack() is several times faster than assembling attributes.
_ROUTE_VIA = struct.Struct("=BBBBBBBBI HHI HH4s HH4s HHi")
_NEIGH_SET = struct.Struct("=BxxxiHBB HH4s HH6sxx")
_FDB_SET = struct.Struct("=BxxxiHBB HH6sxx HH4s")
_REPLACE = NLM_F_CREATE | NLM_F_REPLACE


def _route_set(route: Route) -> Request:
    dst, length = _prefix(route.dst)
    flags = RTNH_F_ONLINK if route.onlink else 0
    if route.gateway and not route.metric:
        body = _ROUTE_VIA.pack(
            AF_INET, length, 0, 0, MAIN_TABLE, route.proto, RT_SCOPE_UNIVERSE, RTN_UNICAST, flags,
            8, RTA_TABLE, MAIN_TABLE, 8, RTA_DST, dst, 8, RTA_GATEWAY, inet_aton(route.gateway),
            8, RTA_OIF, route.oif,
        )  # fmt: skip
        return Request(RTM_NEWROUTE, _REPLACE, body)
    header = RTMSG.pack(
        AF_INET, length, 0, 0, MAIN_TABLE, route.proto, RT_SCOPE_UNIVERSE, RTN_UNICAST, flags
    )
    return Request(RTM_NEWROUTE, _REPLACE, header + _route_attrs(route, dst))


def _route_delete(route: Route) -> Request:
    # Scope "nowhere" matches any scope; the protocol, gateway and device make the
    # match exact, so a route someone else added for the same prefix survives.
    dst, length = _prefix(route.dst)
    header = RTMSG.pack(AF_INET, length, 0, 0, MAIN_TABLE, route.proto, RT_SCOPE_NOWHERE, 0, 0)
    return Request(RTM_DELROUTE, 0, header + _route_attrs(route, dst))


def _neighbour_request(entry: Neighbour, setting: bool) -> Request:
    ip = inet_aton(entry.ip)
    if setting:
        body = _NEIGH_SET.pack(
            AF_INET, entry.ifindex, NUD_PERMANENT, 0, RTN_UNICAST,
            8, NDA_DST, ip, 10, NDA_LLADDR, _mac_bytes(entry.mac),
        )  # fmt: skip
        return Request(RTM_NEWNEIGH, _REPLACE, body)
    header = NDMSG.pack(AF_INET, entry.ifindex, 0, 0, 0)
    return Request(RTM_DELNEIGH, 0, header + _attr(NDA_DST, ip))


def _fdb_request(entry: FdbEntry, setting: bool) -> Request:
    # NTF_SELF: the entry belongs to the VXLAN device itself, not to a bridge above it.
    mac, dst = _mac_bytes(entry.mac), inet_aton(entry.dst)
    if setting:
        body = _FDB_SET.pack(
            AF_BRIDGE, entry.ifindex, NUD_PERMANENT | NUD_NOARP, NTF_SELF, 0,
            10, NDA_LLADDR, mac, 8, NDA_DST, dst,
        )  # fmt: skip
        return Request(RTM_NEWNEIGH, _REPLACE, body)
    header = NDMSG.pack(AF_BRIDGE, entry.ifindex, 0, NTF_SELF, 0)
    return Request(RTM_DELNEIGH, 0, header + _attr(NDA_LLADDR, mac) + _attr(NDA_DST, dst))


def route_add(route: Route) -> Request:
    """Create ``route`` only if no route for its prefix and metric exists (EEXIST if one
    does), as ``ip route add`` and flanneld's udp backend do."""
    request = _route_set(route)
    return Request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, request.body)


def route_dump(*, oif: int | None = None, proto: int = 0) -> Request:
    """Dump main-table IPv4 routes, filtered by the kernel by device or protocol.

    The filter needs NETLINK_GET_STRICT_CHK on the socket; the caller filters again,
    so an older kernel that ignores it costs time, not correctness.
    """
    header = RTMSG.pack(AF_INET, 0, 0, 0, MAIN_TABLE, proto, 0, 0, 0)
    attrs = _attr(RTA_TABLE, U32.pack(MAIN_TABLE))
    if oif is not None:
        attrs += _attr(RTA_OIF, I32.pack(oif))
    return Request(RTM_GETROUTE, NLM_F_DUMP, header + attrs)


def neighbour_dump(ifindex: int) -> Request:
    """Dump the IPv4 neighbours of one device."""
    header = NDMSG.pack(AF_INET, 0, 0, 0, 0)
    return Request(RTM_GETNEIGH, NLM_F_DUMP, header + _attr(NDA_IFINDEX, I32.pack(ifindex)))


def fdb_dump(ifindex: int) -> Request:
    """Dump the FDB of one device (with strict checking, ``ifindex`` selects the port)."""
    return Request(RTM_GETNEIGH, NLM_F_DUMP, NDMSG.pack(AF_BRIDGE, ifindex, 0, 0, 0))


def parse_route(data: Buffer, start: int, end: int) -> Route | None:
    """A main-table IPv4 unicast route with one next hop, else None.

    The attribute walk is written out (no dict, no copies): a resync parses thousands.
    """
    family, dst_len, _, _, table, proto, _, rtype, flags = RTMSG.unpack_from(data, start)
    if family != AF_INET or rtype != RTN_UNICAST:
        return None
    dst, gateway, oif, metric = "0.0.0.0", "", -1, 0
    offset = start + RTMSG.size
    while offset + ATTR.size <= end:
        length, kind = ATTR.unpack_from(data, offset)
        if length < ATTR.size:
            break
        value = offset + ATTR.size
        if kind == RTA_DST and length == 8:
            dst = inet_ntoa(data[value : value + 4])
        elif kind == RTA_GATEWAY and length == 8:
            gateway = inet_ntoa(data[value : value + 4])
        elif kind == RTA_OIF:
            oif = I32.unpack_from(data, value)[0]
        elif kind == RTA_PRIORITY:
            metric = U32.unpack_from(data, value)[0]
        elif kind == RTA_TABLE:
            table = U32.unpack_from(data, value)[0]
        offset += (length + 3) & ~3
    if table != MAIN_TABLE or oif < 0:
        return None  # another table, or a multipath route (no RTA_OIF)
    return Route(f"{dst}/{dst_len}", gateway, oif, bool(flags & RTNH_F_ONLINK), proto, metric)


def _neigh_fields(data: Buffer, start: int, end: int) -> tuple[int, int, int, str, str]:
    """(family, ifindex, state, IPv4 destination or "", link address or "")."""
    family, ifindex, state, _, _ = NDMSG.unpack_from(data, start)
    dst = mac = ""
    offset = start + NDMSG.size
    while offset + ATTR.size <= end:
        length, kind = ATTR.unpack_from(data, offset)
        if length < ATTR.size:
            break
        value = offset + ATTR.size
        if kind == NDA_DST and length == 8:
            dst = inet_ntoa(data[value : value + 4])
        elif kind == NDA_LLADDR and length == 10:
            mac = data[value : value + 6].hex(":")
        offset += (length + 3) & ~3
    return family, ifindex, state, dst, mac


def parse_neighbour(data: Buffer, start: int, end: int) -> Neighbour | None:
    """An IPv4 neighbour (its MAC is empty while unresolved), else None."""
    family, ifindex, state, dst, mac = _neigh_fields(data, start, end)
    if family != AF_INET or not dst:
        return None
    return Neighbour(ifindex, dst, mac, bool(state & NUD_PERMANENT))


def parse_fdb(data: Buffer, start: int, end: int) -> FdbEntry | None:
    """A VXLAN FDB entry with an IPv4 remote, else None."""
    family, ifindex, state, dst, mac = _neigh_fields(data, start, end)
    if family != AF_BRIDGE or not dst or not mac:
        return None
    return FdbEntry(ifindex, mac, dst, bool(state & NUD_PERMANENT))


class _Layout(NamedTuple):
    """Two attributes expected right after the ndmsg header, and where they end."""

    first: bytes  # attribute header (length, type) of the first
    second: bytes
    second_at: int  # offset of the second attribute's header from the payload start
    size: int  # bytes from the payload start to the end of the second attribute


def _layout(first: tuple[int, int], second: tuple[int, int]) -> _Layout:
    second_at = NDMSG.size + ((first[0] + 3) & ~3)
    return _Layout(ATTR.pack(*first), ATTR.pack(*second), second_at, second_at + second[0])


_NEIGH_LAYOUT = _layout((8, NDA_DST), (10, NDA_LLADDR))
_FDB_LAYOUT = _layout((10, NDA_LLADDR), (8, NDA_DST))


def route_fingerprint(data: Buffer, start: int, end: int) -> bytes | None:
    """The bytes that decide what :func:`parse_route` returns: the whole payload.

    IPv4 FIB dumps carry nothing that changes over time, so equal bytes mean an
    equal route and a resync can reuse the entry parsed last time.
    """
    return bytes(data[start:end])


def neighbour_fingerprint(data: Buffer, start: int, end: int) -> bytes | None:
    """Header, NDA_DST and NDA_LLADDR when the kernel put them first (it does); else None.

    What follows (timestamps, probe counts) changes without changing the entry.
    """
    return _prefix_fingerprint(data, start, end, _NEIGH_LAYOUT)


def fdb_fingerprint(data: Buffer, start: int, end: int) -> bytes | None:
    """Header, NDA_LLADDR and NDA_DST of a VXLAN FDB entry, when they come first."""
    return _prefix_fingerprint(data, start, end, _FDB_LAYOUT)


def _prefix_fingerprint(data: Buffer, start: int, end: int, layout: _Layout) -> bytes | None:
    if end - start < layout.size:
        return None
    second = start + layout.second_at
    if (
        data[start + NDMSG.size : start + NDMSG.size + ATTR.size] != layout.first
        or data[second : second + ATTR.size] != layout.second
    ):
        return None
    return bytes(data[start : start + layout.size])
