"""Multicast notifications about links, IPv4 routes and neighbours, decoded.

Rules of this file: bytes in, values out; no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyflannel.netlink.rtnl.entries import (
    NDMSG,
    RTA_OIF,
    RTA_TABLE,
    RTM_DELNEIGH,
    RTM_DELROUTE,
    RTM_NEWNEIGH,
    RTM_NEWROUTE,
    RTMSG,
)
from pyflannel.netlink.rtnl.links import RTM_DELLINK, RTM_NEWLINK
from pyflannel.netlink.rtnl.wire import I32, U32, Buffer, Message, attributes


@dataclass(frozen=True, slots=True)
class Notice:
    """A change the kernel announced: what kind, on which device, caused by whom."""

    kind: str  # "link", "route" or "neigh"
    deleted: bool
    ifindex: int  # the link, the route's device or the neighbour's device (0: unknown)
    proto: int = 0  # routes only
    table: int = 0  # routes only
    pid: int = 0  # the netlink port of the process that caused it (0: the kernel)


def parse_notice(data: Buffer, msg: Message) -> Notice | None:
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
        attrs = attributes(data, msg.start + RTMSG.size, msg.end)
        table = U32.unpack(attrs[RTA_TABLE])[0] if RTA_TABLE in attrs else table
        oif = I32.unpack(attrs[RTA_OIF])[0] if RTA_OIF in attrs else 0
        return Notice("route", kind == RTM_DELROUTE, oif, proto, table, msg.pid)
    return None
