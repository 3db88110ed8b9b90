"""A minimal rtnetlink codec for routes, neighbours and FDB entries, by hand.

Why not pyroute2 for these: it spends about half a millisecond of CPU per request
and answers each before sending the next, so programming 1000 peers (3000
requests) would take seconds. Encoded here with ``struct``, thousands of requests
go to the kernel in a few socket writes (see :mod:`pyflannel.netlink.ops`), and a
dump of 5000 routes parses in milliseconds. Links and addresses, which change
rarely and have many attributes, stay with pyroute2.

Everything is in host byte order, as netlink is. Only what the applier needs is
decoded; anything else (multipath routes, IPv6 remotes) is skipped, which keeps it
out of the applier's reach.

Rules of this file: pure code (bytes in, bytes or values out), no I/O.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from pyflannel.core.kernelstate import MAIN_TABLE, Change, FdbEntry, Neighbour, Op, Route

NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP_INTR = 0x10
NLM_F_DUMP = 0x300
NLM_F_REPLACE = 0x100
NLM_F_CREATE = 0x400

RTM_NEWLINK, RTM_DELLINK = 16, 17
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

HEADER = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
RTMSG = struct.Struct(
    "=BBBBBBBBI"
)  # family, dst_len, src_len, tos, table, proto, scope, type, flags
NDMSG = struct.Struct("=BxxxiHBB")  # family, ifindex, state, flags, type
ATTR = struct.Struct("=HH")
U32 = struct.Struct("=I")
I32 = struct.Struct("=i")


@dataclass(frozen=True, slots=True)
class Request:
    """One netlink request without its header's length, sequence number and port."""

    msg_type: int
    flags: int
    body: bytes

    def frame(self, seq: int, extra_flags: int = 0) -> bytes:
        """The complete message with ``seq`` and NLM_F_REQUEST set."""
        flags = self.flags | extra_flags | NLM_F_REQUEST
        return HEADER.pack(HEADER.size + len(self.body), self.msg_type, flags, seq, 0) + self.body


def _attr(kind: int, data: bytes) -> bytes:
    length = ATTR.size + len(data)
    return ATTR.pack(length, kind) + data + b"\0" * (-length % 4)


def _mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def _mac_text(data: bytes) -> str:
    return ":".join(f"{b:02x}" for b in data)


def encode_change(change: Change) -> Request:
    """The request that carries out ``change`` (a create-or-replace, or a delete)."""
    entry = change.entry
    setting = change.op is Op.SET
    if isinstance(entry, Route):
        return _route_set(entry) if setting else _route_delete(entry)
    if isinstance(entry, Neighbour):
        return _neighbour_request(entry, setting)
    return _fdb_request(entry, setting)


def _route_attrs(route: Route) -> bytes:
    attrs = _attr(RTA_TABLE, U32.pack(MAIN_TABLE)) + _attr(
        RTA_DST, route.dst.network_address.packed
    )
    if route.gateway is not None:
        attrs += _attr(RTA_GATEWAY, route.gateway.packed)
    attrs += _attr(RTA_OIF, I32.pack(route.oif))
    if route.metric:
        attrs += _attr(RTA_PRIORITY, U32.pack(route.metric))
    return attrs


def _route_set(route: Route) -> Request:
    flags = RTNH_F_ONLINK if route.onlink else 0
    header = RTMSG.pack(
        AF_INET, route.dst.prefixlen, 0, 0, MAIN_TABLE, route.proto,
        RT_SCOPE_UNIVERSE, RTN_UNICAST, flags,
    )  # fmt: skip
    return Request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, header + _route_attrs(route))


def _route_delete(route: Route) -> Request:
    # Scope "nowhere" matches any scope; the protocol, gateway and device make the
    # match exact, so a route someone else added for the same prefix survives.
    header = RTMSG.pack(
        AF_INET, route.dst.prefixlen, 0, 0, MAIN_TABLE, route.proto, RT_SCOPE_NOWHERE, 0, 0
    )
    return Request(RTM_DELROUTE, 0, header + _route_attrs(route))


def _neighbour_request(entry: Neighbour, setting: bool) -> Request:
    attrs = _attr(NDA_DST, entry.ip.packed)
    if setting:
        header = NDMSG.pack(AF_INET, entry.ifindex, NUD_PERMANENT, 0, RTN_UNICAST)
        attrs += _attr(NDA_LLADDR, _mac_bytes(entry.mac))
        return Request(RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE, header + attrs)
    return Request(RTM_DELNEIGH, 0, NDMSG.pack(AF_INET, entry.ifindex, 0, 0, 0) + attrs)


def _fdb_request(entry: FdbEntry, setting: bool) -> Request:
    # NTF_SELF: the entry belongs to the VXLAN device itself, not to a bridge above it.
    attrs = _attr(NDA_LLADDR, _mac_bytes(entry.mac)) + _attr(NDA_DST, entry.dst.packed)
    if setting:
        header = NDMSG.pack(AF_BRIDGE, entry.ifindex, NUD_PERMANENT | NUD_NOARP, NTF_SELF, 0)
        return Request(RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE, header + attrs)
    header = NDMSG.pack(AF_BRIDGE, entry.ifindex, 0, NTF_SELF, 0)
    return Request(RTM_DELNEIGH, 0, header + attrs)


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


@dataclass(frozen=True, slots=True)
class Message:
    """A received netlink message: header fields and the payload's place in the buffer."""

    msg_type: int
    flags: int
    seq: int
    pid: int
    start: int  # payload offset
    end: int

    def error_code(self, data: bytes | memoryview) -> int:
        """For NLMSG_ERROR: 0 for an acknowledgement, else a positive errno."""
        code: int = I32.unpack_from(data, self.start)[0]
        return -code


def messages(data: bytes | memoryview) -> Iterator[Message]:
    """The messages in one datagram from a netlink socket."""
    offset = 0
    size = len(data)
    while offset + HEADER.size <= size:
        length, msg_type, flags, seq, pid = HEADER.unpack_from(data, offset)
        if length < HEADER.size or offset + length > size:
            return
        yield Message(msg_type, flags, seq, pid, offset + HEADER.size, offset + length)
        offset += (length + 3) & ~3


def _attrs(data: bytes | memoryview, offset: int, end: int) -> dict[int, bytes]:
    found: dict[int, bytes] = {}
    while offset + ATTR.size <= end:
        length, kind = ATTR.unpack_from(data, offset)
        if length < ATTR.size:
            break
        found[kind & 0x3FFF] = bytes(data[offset + ATTR.size : offset + length])
        offset += (length + 3) & ~3
    return found


def parse_route(data: bytes | memoryview, msg: Message) -> Route | None:
    """A main-table IPv4 unicast route with one next hop, else None."""
    family, dst_len, _, _, table, proto, _, rtype, flags = RTMSG.unpack_from(data, msg.start)
    if family != AF_INET or rtype != RTN_UNICAST:
        return None
    attrs = _attrs(data, msg.start + RTMSG.size, msg.end)
    table_id = U32.unpack(attrs[RTA_TABLE])[0] if RTA_TABLE in attrs else table
    if table_id != MAIN_TABLE or RTA_OIF not in attrs:
        return None
    dst = IPv4Network((attrs.get(RTA_DST, b"\0\0\0\0"), dst_len))
    gateway = IPv4Address(attrs[RTA_GATEWAY]) if len(attrs.get(RTA_GATEWAY, b"")) == 4 else None
    metric = U32.unpack(attrs[RTA_PRIORITY])[0] if RTA_PRIORITY in attrs else 0
    oif = I32.unpack(attrs[RTA_OIF])[0]
    return Route(dst, gateway, oif, bool(flags & RTNH_F_ONLINK), proto, metric)


def parse_neighbour(data: bytes | memoryview, msg: Message) -> Neighbour | None:
    """An IPv4 neighbour (its MAC is empty while unresolved), else None."""
    family, ifindex, state, _, _ = NDMSG.unpack_from(data, msg.start)
    attrs = _attrs(data, msg.start + NDMSG.size, msg.end)
    if family != AF_INET or len(attrs.get(NDA_DST, b"")) != 4:
        return None
    mac = _mac_text(attrs.get(NDA_LLADDR, b""))
    return Neighbour(ifindex, IPv4Address(attrs[NDA_DST]), mac, bool(state & NUD_PERMANENT))


def parse_fdb(data: bytes | memoryview, msg: Message) -> FdbEntry | None:
    """A VXLAN FDB entry with an IPv4 remote, else None."""
    family, ifindex, state, _, _ = NDMSG.unpack_from(data, msg.start)
    attrs = _attrs(data, msg.start + NDMSG.size, msg.end)
    if family != AF_BRIDGE or len(attrs.get(NDA_DST, b"")) != 4:
        return None
    if len(attrs.get(NDA_LLADDR, b"")) != 6:
        return None
    mac = _mac_text(attrs[NDA_LLADDR])
    return FdbEntry(ifindex, mac, IPv4Address(attrs[NDA_DST]), bool(state & NUD_PERMANENT))


@dataclass(frozen=True, slots=True)
class Notice:
    """A change the kernel announced: what kind, on which device, caused by whom."""

    kind: str  # "link", "route" or "neigh"
    deleted: bool
    ifindex: int  # the link, the route's device or the neighbour's device (0: unknown)
    proto: int = 0  # routes only
    table: int = 0  # routes only
    pid: int = 0  # the netlink port of the process that caused it (0: the kernel)


def parse_notice(data: bytes | memoryview, msg: Message) -> Notice | None:
    """Decode a multicast notification about links, IPv4 routes or neighbours."""
    kind = msg.msg_type
    if kind in (RTM_NEWLINK, RTM_DELLINK):
        ifindex = I32.unpack_from(data, msg.start + 4)[0]
        return Notice("link", kind == RTM_DELLINK, ifindex, pid=msg.pid)
    if kind in (RTM_NEWNEIGH, RTM_DELNEIGH):
        ifindex = NDMSG.unpack_from(data, msg.start)[1]
        return Notice("neigh", kind == RTM_DELNEIGH, ifindex, pid=msg.pid)
    if kind in (RTM_NEWROUTE, RTM_DELROUTE):
        _, _, _, _, table, proto, _, _, _ = RTMSG.unpack_from(data, msg.start)
        attrs = _attrs(data, msg.start + RTMSG.size, msg.end)
        table = U32.unpack(attrs[RTA_TABLE])[0] if RTA_TABLE in attrs else table
        oif = I32.unpack(attrs[RTA_OIF])[0] if RTA_OIF in attrs else 0
        return Notice("route", kind == RTM_DELROUTE, oif, proto, table, msg.pid)
    return None
