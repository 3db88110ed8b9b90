"""Network devices: create a VXLAN device, change, delete and read devices.

Links change rarely, so clarity wins over speed here: attributes are collected into a
dict and read by type. The VXLAN attributes encoded are the ones flanneld sets
(facts §6.1); the ones decoded are those that decide whether a device left by an
earlier run can be reused.

Rules of this file: bytes in, bytes or values out; no I/O.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv4Address

from pyflannel.netlink.rtnl.wire import (
    BE16,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    U8,
    U32,
    Buffer,
    Request,
    attr,
    attributes,
    nested,
    text,
)

RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
AF_UNSPEC = 0
IFF_UP = 0x1
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_MASTER = 1, 3, 4, 10
IFLA_OPERSTATE, IFLA_LINKINFO = 16, 18
IFLA_GSO_MAX_SEGS = 40
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
IFLA_VXLAN_ID, IFLA_VXLAN_GROUP, IFLA_VXLAN_LINK, IFLA_VXLAN_LOCAL = 1, 2, 3, 4
IFLA_VXLAN_LEARNING, IFLA_VXLAN_PORT, IFLA_VXLAN_GBP = 7, 15, 23
IF_OPER_UP = 6

IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change


@dataclass(frozen=True, slots=True)
class VxlanAttrs:
    """The VXLAN attributes that decide whether an existing device can be reused."""

    vni: int
    lower: int  # the underlay device's index (0: none)
    local: IPv4Address | None
    port: int  # 0 when creating: the kernel's default (8472)
    learning: bool
    gbp: bool
    group: IPv4Address | None = None


@dataclass(frozen=True, slots=True)
class Link:
    """A device as RTM_NEWLINK describes it."""

    index: int
    name: str
    flags: int  # IFF_*
    mtu: int
    mac: str  # lower-case colon hex, "" for devices without a link-layer address
    operstate: int  # IF_OPER_*
    master: int  # the bridge or bond it is enslaved to (0: none)
    kind: str  # IFLA_INFO_KIND: "vxlan", "veth", "tun", ... ("" without link info)
    vxlan: VxlanAttrs | None


def _header(index: int = 0, flags: int = 0, change: int = 0) -> bytes:
    return IFINFOMSG.pack(AF_UNSPEC, 0, index, flags, change)


def get_link(*, name: str = "", index: int = 0) -> Request:
    """Ask for one device, by name or by index (ENODEV when there is none)."""
    body = _header(index)
    if name:
        body += attr(IFLA_IFNAME, name.encode() + b"\0")
    return Request(RTM_GETLINK, 0, body)


def link_dump() -> Request:
    """Ask for every device."""
    return Request(RTM_GETLINK, NLM_F_DUMP, _header())


def new_vxlan(name: str, attrs: VxlanAttrs, *, mac: str, mtu: int) -> Request:
    """Create a VXLAN device (EEXIST when the name is taken).

    Unset options are left out, so the kernel applies its defaults: port 0 means 8472,
    no lower device means any, no local address means any.
    """
    data = [attr(IFLA_VXLAN_ID, U32.pack(attrs.vni))]
    if attrs.lower:
        data.append(attr(IFLA_VXLAN_LINK, U32.pack(attrs.lower)))
    if attrs.local is not None:
        data.append(attr(IFLA_VXLAN_LOCAL, attrs.local.packed))
    if attrs.group is not None:
        data.append(attr(IFLA_VXLAN_GROUP, attrs.group.packed))
    if attrs.port:
        data.append(attr(IFLA_VXLAN_PORT, BE16.pack(attrs.port)))  # network byte order
    data.append(attr(IFLA_VXLAN_LEARNING, U8.pack(int(attrs.learning))))
    if attrs.gbp:
        data.append(attr(IFLA_VXLAN_GBP, b""))  # a flag: present means on
    info = nested(IFLA_LINKINFO, attr(IFLA_INFO_KIND, b"vxlan"), nested(IFLA_INFO_DATA, *data))
    body = (
        _header()
        + attr(IFLA_IFNAME, name.encode() + b"\0")
        + attr(IFLA_ADDRESS, _mac_bytes(mac))
        + attr(IFLA_MTU, U32.pack(mtu))
        + info
    )
    return Request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body)


def set_link(
    index: int,
    *,
    mtu: int | None = None,
    mac: str | None = None,
    up: bool = False,
    gso_max_segs: int | None = None,
) -> Request:
    """Change a device's MTU, MAC or the most segments of one GSO packet sent through it,
    and/or bring it up (a device never goes down here)."""
    flag = IFF_UP if up else 0
    body = _header(index, flag, flag)
    if mtu is not None:
        body += attr(IFLA_MTU, U32.pack(mtu))
    if gso_max_segs is not None:
        body += attr(IFLA_GSO_MAX_SEGS, U32.pack(gso_max_segs))
    if mac is not None:
        body += attr(IFLA_ADDRESS, _mac_bytes(mac))
    return Request(RTM_NEWLINK, 0, body)


def delete_link(index: int) -> Request:
    """Delete a device (ENODEV when it is gone already)."""
    return Request(RTM_DELLINK, 0, _header(index))


def _mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def _u32(value: bytes | None) -> int:
    return int(U32.unpack(value[:4])[0]) if value is not None and len(value) >= 4 else 0


def parse_link(data: Buffer, start: int, end: int) -> Link | None:
    """Decode an RTM_NEWLINK payload (an answer to a get or a dump)."""
    if end - start < IFINFOMSG.size:
        return None
    _, _, index, flags, _ = IFINFOMSG.unpack_from(data, start)
    found = attributes(data, start + IFINFOMSG.size, end)
    info = attributes(*_whole(found.get(IFLA_LINKINFO, b"")))
    kind = text(info.get(IFLA_INFO_KIND))
    vxlan = None
    if kind == "vxlan" and IFLA_INFO_DATA in info:
        vxlan = parse_vxlan(info[IFLA_INFO_DATA])
    operstate = found.get(IFLA_OPERSTATE, b"\0")
    return Link(
        index=index,
        name=text(found.get(IFLA_IFNAME)),
        flags=flags,
        mtu=_u32(found.get(IFLA_MTU)),
        mac=found.get(IFLA_ADDRESS, b"").hex(":"),
        operstate=operstate[0] if operstate else 0,
        master=_u32(found.get(IFLA_MASTER)),
        kind=kind,
        vxlan=vxlan,
    )


def _whole(value: bytes) -> tuple[bytes, int, int]:
    return value, 0, len(value)


def parse_vxlan(value: bytes) -> VxlanAttrs:
    """Decode IFLA_INFO_DATA of a VXLAN device."""
    found = attributes(*_whole(value))
    local, group = found.get(IFLA_VXLAN_LOCAL), found.get(IFLA_VXLAN_GROUP)
    port = found.get(IFLA_VXLAN_PORT)
    learning = found.get(IFLA_VXLAN_LEARNING)
    return VxlanAttrs(
        vni=_u32(found.get(IFLA_VXLAN_ID)),
        lower=_u32(found.get(IFLA_VXLAN_LINK)),
        local=IPv4Address(local) if local is not None and len(local) == 4 else None,
        port=int(BE16.unpack(port[:2])[0]) if port is not None and len(port) >= 2 else 0,
        learning=bool(learning and learning[0]),
        gbp=IFLA_VXLAN_GBP in found,
        group=IPv4Address(group) if group is not None and len(group) == 4 else None,
    )
