"""The codec for devices, addresses and route lookups (pure code).

Requests are compared with messages assembled here by hand with ``struct``, field by
field as the kernel's headers define them, so the codec cannot agree with itself by
accident. Decoders are fed such messages and messages the kernel sent (captured in a
test namespace from ``ip link add flannel.1 ... type vxlan id 1 dstport 8472 dev eth0
local 198.51.100.11 nolearning gbp``, eth0 being ifindex 3).
"""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv4Interface

import pytest

from pyflannel.core.kernelstate import RTPROT_BOOT, Route
from pyflannel.netlink import rtnl
from pyflannel.netlink.rtnl import addrs, links, lookups, wire
from pyflannel.netlink.rtnl.links import Link, VxlanAttrs

MAC = "02:11:22:33:44:55"
LOCAL = IPv4Address("198.51.100.11")
ATTRS = VxlanAttrs(vni=1, lower=3, local=LOCAL, port=8472, learning=False, gbp=True)


def nla(kind: int, data: bytes) -> bytes:
    """struct nlattr + data + padding to four bytes, as NLA_ALIGN does."""
    return struct.pack("=HH", 4 + len(data), kind) + data + bytes(-len(data) % 4)


def ifinfomsg(index: int = 0, flags: int = 0, change: int = 0) -> bytes:
    # family, pad, type, index, flags, change
    return struct.pack("=BBHiII", 0, 0, 0, index, flags, change)


def ifaddrmsg(prefixlen: int, index: int, flags: int = 0) -> bytes:
    return struct.pack("=BBBBI", 2, prefixlen, flags, 0, index)


# IFLA_LINKINFO of flannel.1 as the kernel reported it (236 bytes, about 30 attributes).
KERNEL_LINKINFO = bytes.fromhex(
    "ec0012000a00010076786c616e000000dc0002000800010001000000080003000300000008000400c633640b"
    "050005000000000005001c0000000000050006000000000005001d000000000008001a000000000008002000"
    "00000000050007000000000005000b000000000005000c000000000005000d000000000005000e0000000000"
    "0500190000000000080008002c010000080009000000000006000f0021180000050012000100000005001300"
    "0000000005001400000000000500150000000000050016000000000005001f000100000008000a0000000000"
    "040017000c00210077000000000000ff"
)
# RTM_NEWADDR payloads of a dump: lo, eth0, and flannel.1's /32 (IFA_FLAGS: permanent).
KERNEL_ADDRESSES = [
    "020880fe01000000080001007f000001080002007f000001070003006c6f0000080008008000000014000600"
    "ffffffffffffffff9cfe0b009cfe0b00",
    "021880000300000008000100c633640b08000200c633640b090003006574683000000000080008008000000014"
    "000600ffffffffffffffff9dfe0b009dfe0b00",
    "0220800004000000080001000a050100080002000a0501000e000300666c616e6e656c2e3100000008000800"
    "8000000014000600ffffffffffffffff9ffe0b009ffe0b00",
]
# The answer to ``ip route get 198.51.100.77`` on that host.
KERNEL_ROUTE_GET = bytes.fromhex(
    "02200000fe0000010002000008000f00fe00000008000100c633644d080004000300000008000700c633640b08"
    "0019000000000024000c000200000000000000000000000000000000000000000000000000000000000000"
)


def test_a_vxlan_device_request_matches_the_kernel_layout() -> None:
    request = links.new_vxlan("flannel.1", ATTRS, mac=MAC, mtu=1450)
    data = (
        nla(1, struct.pack("=I", 1))  # IFLA_VXLAN_ID
        + nla(3, struct.pack("=I", 3))  # IFLA_VXLAN_LINK
        + nla(4, bytes([198, 51, 100, 11]))  # IFLA_VXLAN_LOCAL
        + nla(15, struct.pack(">H", 8472))  # IFLA_VXLAN_PORT, network byte order
        + nla(7, b"\0")  # IFLA_VXLAN_LEARNING
        + nla(23, b"")  # IFLA_VXLAN_GBP, a flag
    )
    expected = (
        ifinfomsg()
        + nla(3, b"flannel.1\0")  # IFLA_IFNAME
        + nla(1, bytes.fromhex("021122334455"))  # IFLA_ADDRESS
        + nla(4, struct.pack("=I", 1450))  # IFLA_MTU
        + nla(18, nla(1, b"vxlan") + nla(2, data))  # IFLA_LINKINFO: KIND, DATA
    )
    assert request == (16, 0x600, expected)  # RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL
    frame = request.frame(9)
    assert frame == struct.pack("=IHHII", 16 + len(expected), 16, 0x601, 9, 0) + expected


def test_kernel_defaults_are_left_to_the_kernel() -> None:
    bare = VxlanAttrs(vni=5, lower=0, local=None, port=0, learning=True, gbp=False)
    body = links.new_vxlan("flannel.5", bare, mac=MAC, mtu=1400).body
    data = nla(1, struct.pack("=I", 5)) + nla(7, b"\1")
    assert body.endswith(nla(18, nla(1, b"vxlan") + nla(2, data)))


def test_device_changes_gets_and_deletes() -> None:
    up = links.set_link(7, mtu=1400, up=True)
    assert up == (16, 0, ifinfomsg(7, 1, 1) + nla(4, struct.pack("=I", 1400)))
    mac = links.set_link(7, mac=MAC)
    assert mac == (16, 0, ifinfomsg(7) + nla(1, bytes.fromhex("021122334455")))
    assert links.delete_link(7) == (17, 0, ifinfomsg(7))
    assert links.get_link(name="flannel.1") == (18, 0, ifinfomsg() + nla(3, b"flannel.1\0"))
    assert links.get_link(index=4) == (18, 0, ifinfomsg(4))
    assert links.link_dump() == (18, 0x300, ifinfomsg())


def test_a_device_is_decoded_from_a_kernel_message() -> None:
    data = (
        ifinfomsg(4, 0x11043)  # UP, BROADCAST, RUNNING, MULTICAST, LOWER_UP
        + nla(3, b"flannel.1\0")
        + nla(4, struct.pack("=I", 1450))
        + nla(16, b"\x06")  # IFLA_OPERSTATE: up
        + nla(10, struct.pack("=I", 9))  # IFLA_MASTER
        + nla(1, bytes.fromhex("021122334455"))
        + KERNEL_LINKINFO
    )
    assert links.parse_link(data, 0, len(data)) == Link(
        index=4, name="flannel.1", flags=0x11043, mtu=1450, mac=MAC,
        operstate=links.IF_OPER_UP, master=9, kind="vxlan", vxlan=ATTRS,
    )  # fmt: skip


def test_a_device_without_link_info_or_address() -> None:
    data = ifinfomsg(1, 0x49) + nla(3, b"lo\0") + nla(4, struct.pack("=I", 65536))
    link = links.parse_link(data, 0, len(data))
    assert link is not None
    assert (link.name, link.kind, link.mac, link.vxlan, link.master) == ("lo", "", "", None, 0)
    assert links.parse_link(data, 0, 8) is None  # shorter than ifinfomsg


def test_an_encoded_device_reads_back_with_the_same_attributes() -> None:
    for attrs in (ATTRS, VxlanAttrs(9, 0, None, 4789, True, False, IPv4Address("239.1.1.1"))):
        body = links.new_vxlan("flannel.9", attrs, mac=MAC, mtu=1400).body
        link = links.parse_link(body, 0, len(body))
        assert link is not None
        assert (link.name, link.mac, link.mtu, link.vxlan) == ("flannel.9", MAC, 1400, attrs)


def test_address_requests() -> None:
    address = IPv4Interface("10.5.1.0/32")
    packed = bytes([10, 5, 1, 0])
    body = ifaddrmsg(32, 4) + nla(2, packed) + nla(1, packed)  # IFA_LOCAL, IFA_ADDRESS
    assert addrs.new_address(4, address) == (20, 0x600, body)
    assert addrs.delete_address(4, address) == (21, 0, body)
    assert addrs.address_dump(4) == (22, 0x300, ifaddrmsg(0, 4))


def test_addresses_are_decoded_from_kernel_messages() -> None:
    found = [bytes.fromhex(h) for h in KERNEL_ADDRESSES]
    decoded = [addrs.parse_address(data, 0, len(data)) for data in found]
    assert [(a.index, str(a.interface), a.flags) for a in decoded if a is not None] == [
        (1, "127.0.0.1/8", 0x80),
        (3, "198.51.100.11/24", 0x80),
        (4, "10.5.1.0/32", 0x80),
    ]


def test_an_address_prefers_ifa_local_and_the_32_bit_flags() -> None:
    # A point-to-point link: IFA_ADDRESS is the peer, IFA_LOCAL our own end.
    data = (
        ifaddrmsg(32, 5, flags=0x01) + nla(1, bytes([10, 0, 0, 2])) + nla(2, bytes([10, 0, 0, 1]))
    )
    assert addrs.parse_address(data, 0, len(data)) == addrs.Address(
        5, IPv4Address("10.0.0.1"), 32, 1
    )
    with_flags = data + nla(8, struct.pack("=I", 0x120))  # IFA_FLAGS beyond the 8-bit field
    address = addrs.parse_address(with_flags, 0, len(with_flags))
    assert address is not None and address.flags == 0x120
    ipv6 = struct.pack("=BBBBI", 10, 64, 0, 0, 5) + nla(1, bytes(16))
    assert addrs.parse_address(ipv6, 0, len(ipv6)) is None


def test_a_route_lookup_request_and_the_kernel_answer() -> None:
    rtmsg = struct.pack("=BBBBBBBBI", 2, 32, 0, 0, 0, 0, 0, 0, 0)
    assert lookups.route_get(IPv4Address("198.51.100.77")) == (
        26, 0, rtmsg + nla(1, bytes([198, 51, 100, 77]))
    )  # fmt: skip
    route = lookups.parse_route_info(KERNEL_ROUTE_GET, 0, len(KERNEL_ROUTE_GET))
    assert route == lookups.RouteInfo(32, 254, 1, 3, (), 0, LOCAL)


def test_a_multipath_default_route_names_every_hop() -> None:
    hop = struct.Struct("=HBBi")  # struct rtnexthop: len, flags, hops, ifindex
    gateway = nla(5, bytes([192, 0, 2, 1]))
    hops = hop.pack(8 + len(gateway), 0, 0, 2) + gateway + hop.pack(8, 0, 0, 5)
    rtmsg = struct.pack("=BBBBBBBBI", 2, 0, 0, 0, 254, 3, 0, 1, 0)
    data = rtmsg + nla(6, struct.pack("=I", 100)) + nla(9, hops)
    assert lookups.parse_route_info(data, 0, len(data)) == lookups.RouteInfo(
        0, 254, 1, None, (2, 5), 100, None
    )


def test_a_route_that_must_not_replace_another() -> None:
    request = rtnl.route_add(Route("10.5.0.0/16", "", 4, proto=RTPROT_BOOT))
    assert (request.msg_type, request.flags) == (rtnl.RTM_NEWROUTE, 0x600)  # CREATE | EXCL
    rtmsg = struct.pack("=BBBBBBBBI", 2, 16, 0, 0, 254, 3, 0, 1, 0)  # universe, unicast
    attrs = nla(15, struct.pack("=I", 254)) + nla(1, bytes([10, 5, 0, 0])) + nla(4, b"\4\0\0\0")
    assert request.body == rtmsg + attrs


@pytest.mark.parametrize("capped", [True, False])
def test_a_refusal_carries_the_kernels_explanation(capped: bool) -> None:
    request = struct.pack("=IHHII", 20, 16, 0x605, 7, 0) + b"abcd"
    echoed = request[:16] if capped else request
    reason = nla(1, b"A VXLAN device with the specified VNI already exists\0")
    flags = 0x200 | (0x100 if capped else 0)  # NLM_F_ACK_TLVS, NLM_F_CAPPED
    payload = struct.pack("=i", -17) + echoed + reason
    data = struct.pack("=IHHII", 16 + len(payload), 2, flags, 7, 0) + payload
    (msg,) = wire.messages(data)
    assert msg.error_code(data) == 17
    assert msg.error_text(data) == "A VXLAN device with the specified VNI already exists"


def test_a_plain_refusal_has_no_explanation() -> None:
    payload = struct.pack("=i", -19) + struct.pack("=IHHII", 16, 18, 5, 7, 0)
    data = struct.pack("=IHHII", 16 + len(payload), 2, 0, 7, 0) + payload
    (msg,) = wire.messages(data)
    assert (msg.error_code(data), msg.error_text(data)) == (19, "")


def test_attributes_stop_at_a_truncated_one() -> None:
    data = nla(3, b"eth0\0") + struct.pack("=HH", 40, 4) + b"\0\0\0\0"
    assert wire.attributes(data, 0, len(data)) == {3: b"eth0\0"}
    assert wire.text(b"eth0\0\0\0") == "eth0"
