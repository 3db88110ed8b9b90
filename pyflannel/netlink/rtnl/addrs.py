"""IPv4 addresses of devices: add, remove, list.

Rules of this file: bytes in, bytes or values out; no I/O.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface

from pyflannel.netlink.rtnl.wire import (
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    U32,
    Buffer,
    Request,
    attr,
    attributes,
)

RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
AF_INET = 2
IFA_ADDRESS, IFA_LOCAL, IFA_FLAGS = 1, 2, 8
IFA_F_SECONDARY = 0x01
IFA_F_DEPRECATED = 0x20
IFA_F_PERMANENT = 0x80

IFADDRMSG = struct.Struct("=BBBBi")  # family, prefixlen, flags, scope, index


@dataclass(frozen=True, slots=True)
class Address:
    """An IPv4 address as RTM_NEWADDR describes it."""

    index: int
    address: IPv4Address  # IFA_LOCAL: our own end, also on point-to-point links
    prefixlen: int
    flags: int  # IFA_F_*, all 32 bits (the header only holds the low 8)

    @property
    def interface(self) -> IPv4Interface:
        return IPv4Interface((self.address, self.prefixlen))


def address_dump(index: int = 0) -> Request:
    """Ask for the IPv4 addresses of one device (0: of every device).

    The kernel filters by device only with NETLINK_GET_STRICT_CHK; callers filter again.
    """
    return Request(RTM_GETADDR, NLM_F_DUMP, IFADDRMSG.pack(AF_INET, 0, 0, 0, index))


def new_address(index: int, address: IPv4Interface) -> Request:
    """Add ``address`` to a device (EEXIST when it has it already)."""
    return Request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, _body(index, address))


def delete_address(index: int, address: IPv4Interface) -> Request:
    """Remove ``address`` from a device (EADDRNOTAVAIL when it does not have it)."""
    return Request(RTM_DELADDR, 0, _body(index, address))


def _body(index: int, address: IPv4Interface) -> bytes:
    # IFA_LOCAL is the address itself; IFA_ADDRESS, the peer on point-to-point links,
    # is the same address elsewhere. iproute2 sends both.
    packed = address.ip.packed
    header = IFADDRMSG.pack(AF_INET, address.network.prefixlen, 0, 0, index)
    return header + attr(IFA_LOCAL, packed) + attr(IFA_ADDRESS, packed)


def parse_address(data: Buffer, start: int, end: int) -> Address | None:
    """Decode an RTM_NEWADDR payload; None for other families or without an address."""
    if end - start < IFADDRMSG.size:
        return None
    family, prefixlen, flags, _, index = IFADDRMSG.unpack_from(data, start)
    found = attributes(data, start + IFADDRMSG.size, end)
    local = found.get(IFA_LOCAL) or found.get(IFA_ADDRESS)
    if family != AF_INET or local is None or len(local) != 4:
        return None
    extended = found.get(IFA_FLAGS)
    if extended is not None and len(extended) == 4:
        flags = U32.unpack(extended)[0]
    return Address(index, IPv4Address(local), prefixlen, flags)
