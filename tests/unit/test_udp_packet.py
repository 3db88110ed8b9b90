"""The udp backend's packet helpers, byte for byte against packets built here by hand."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.packets import word_checksum

from pyflannel.backends.udp.packet import (
    Verdict,
    check_inbound,
    check_outbound,
    checksum,
    decrement_ttl,
    destination,
    header_checksum_ok,
    icmp_net_unreachable,
    ipv4_header_checksum,
    ones_sum,
)

OWN_NET = 0x0A040200  # 10.4.2.0/24
OWN_MASK = 0xFFFFFF00


def ipv4(
    src: str = "10.4.1.5",
    dst: str = "10.4.2.7",
    *,
    proto: int = 6,
    ttl: int = 64,
    payload: bytes = b"x" * 12,
    options: bytes = b"",
    frag: int = 0x4000,
    ident: int = 0x1234,
) -> bytes:
    """An IPv4 packet with a correct header checksum."""
    ihl = 5 + len(options) // 4
    header = (
        struct.pack(
            "!BBHHHBBH4s4s",
            0x40 | ihl,
            0,
            ihl * 4 + len(payload),
            ident,
            frag,
            ttl,
            proto,
            0,
            IPv4Address(src).packed,
            IPv4Address(dst).packed,
        )
        + options
    )
    check = word_checksum(header)
    return header[:10] + struct.pack("!H", check) + header[12:] + payload


def test_checksum_matches_the_word_loop_for_even_and_odd_lengths() -> None:
    for data in (b"", b"\x01", b"\x45\x00\x00\x54", bytes(range(256)) * 3, b"\xff" * 7):
        assert checksum(data) == word_checksum(data)


@given(st.binary(max_size=300))
def test_checksum_matches_the_word_loop(data: bytes) -> None:
    assert checksum(data) == word_checksum(data)
    assert ones_sum(data) == (~word_checksum(data) & 0xFFFF)


def test_ipv4_header_checksum_ignores_the_field() -> None:
    pkt = bytearray(ipv4())
    good = pkt[10] << 8 | pkt[11]
    pkt[10:12] = b"\xde\xad"
    assert ipv4_header_checksum(pkt[:20]) == good
    assert not header_checksum_ok(pkt[:20])


def test_a_good_inbound_packet_is_accepted() -> None:
    assert check_inbound(ipv4(), OWN_NET, OWN_MASK) is Verdict.OK
    assert check_inbound(memoryview(ipv4(options=b"\x01" * 8)), OWN_NET, OWN_MASK) is Verdict.OK


@pytest.mark.parametrize(
    ("packet", "verdict"),
    [
        (ipv4()[:19], Verdict.TOO_SHORT),
        (b"", Verdict.TOO_SHORT),
        (b"\x60" + ipv4()[1:], Verdict.NOT_IPV4),
        (b"\x44" + ipv4()[1:], Verdict.BAD_HEADER_LENGTH),
        (b"\x4f" + ipv4()[1:], Verdict.BAD_HEADER_LENGTH),  # 60 bytes of header > 32 bytes
        (ipv4() + b"\0", Verdict.BAD_TOTAL_LENGTH),
        (ipv4()[:-1], Verdict.BAD_TOTAL_LENGTH),
        (ipv4()[:13] + b"\x05" + ipv4()[14:], Verdict.BAD_CHECKSUM),  # source changed
        (ipv4(dst="10.4.3.7"), Verdict.FOREIGN_DESTINATION),
        (ipv4(dst="192.0.2.1"), Verdict.FOREIGN_DESTINATION),
        (ipv4(ttl=1), Verdict.TTL_EXPIRED),
        (ipv4(ttl=0), Verdict.TTL_EXPIRED),
    ],
)
def test_bad_inbound_packets_are_refused_with_the_reason(packet: bytes, verdict: Verdict) -> None:
    assert check_inbound(packet, OWN_NET, OWN_MASK) is verdict


def test_outbound_checks_are_light() -> None:
    assert check_outbound(ipv4(dst="10.4.9.9")) is Verdict.OK
    assert check_outbound(b"\x60" + bytes(39)) is Verdict.NOT_IPV4
    assert check_outbound(ipv4()[:10]) is Verdict.TOO_SHORT
    assert check_outbound(ipv4(ttl=1)) is Verdict.TTL_EXPIRED
    assert destination(ipv4(dst="10.4.9.8")) == 0x0A040908


@pytest.mark.parametrize("ttl", [2, 3, 64, 128, 255])
@pytest.mark.parametrize("ident", [0, 0x1234, 0xBEEF, 0xFFFF])
def test_ttl_decrement_patches_the_checksum_like_a_full_recompute(ttl: int, ident: int) -> None:
    pkt = bytearray(ipv4(ttl=ttl, ident=ident))
    decrement_ttl(pkt)
    assert pkt[8] == ttl - 1
    assert pkt == bytearray(ipv4(ttl=ttl - 1, ident=ident))


@given(
    st.binary(min_size=20, max_size=20).map(bytearray),
    st.integers(min_value=2, max_value=255),
)
def test_ttl_decrement_equals_recompute_for_any_header(header: bytearray, ttl: int) -> None:
    header[0] = 0x45
    header[8] = ttl
    header[10:12] = ipv4_header_checksum(header).to_bytes(2, "big")
    decrement_ttl(header)
    assert header[10] << 8 | header[11] == ipv4_header_checksum(header)
    assert header_checksum_ok(header)


def test_ttl_decrement_works_on_a_memoryview_slice() -> None:
    buf = bytearray(b"\0" * 4 + ipv4())
    decrement_ttl(memoryview(buf)[4:])
    assert bytes(buf[4:]) == ipv4(ttl=63)


def test_icmp_net_unreachable_exact_bytes() -> None:
    offender = ipv4(src="10.4.2.7", dst="10.9.0.1", proto=17, payload=b"ABCDEFGHIJKLMNOP")
    reply = icmp_net_unreachable(offender, IPv4Address("10.4.2.0"))
    quoted = offender[:28]
    icmp_body = b"\x03\x00\x00\x00" + b"\0\0\0\0" + quoted
    icmp = icmp_body[:2] + struct.pack("!H", word_checksum(icmp_body)) + icmp_body[4:]
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + 8 + 28,
        0,
        0,
        8,
        1,
        0,
        IPv4Address("10.4.2.0").packed,
        IPv4Address("10.4.2.7").packed,
    )
    header = header[:10] + struct.pack("!H", word_checksum(header)) + header[12:]
    assert reply == header + icmp
    assert len(reply) == 56


def test_icmp_quotes_ip_options_and_pads_a_short_offender() -> None:
    offender = ipv4(options=b"\x01\x01\x01\x00", payload=b"abc")
    reply = icmp_net_unreachable(offender, IPv4Address("10.4.2.0"))
    assert reply is not None
    assert len(reply) == 20 + 8 + 24 + 8
    assert reply[28:] == offender + b"\0" * 5
    assert word_checksum(reply[20:]) == 0
    assert word_checksum(reply[:20]) == 0


@pytest.mark.parametrize(
    "offender",
    [
        ipv4(proto=1),  # never an ICMP error about ICMP
        ipv4(frag=0x0010),  # not the first fragment
        ipv4(frag=0x2005),  # MF and an offset
        b"\x43" + ipv4()[1:],  # header length below 20
        b"\x60" + ipv4()[1:],
        ipv4()[:12],
    ],
)
def test_no_icmp_for_icmp_fragments_or_garbage(offender: bytes) -> None:
    assert icmp_net_unreachable(offender, IPv4Address("10.4.2.0")) is None


def test_icmp_for_a_first_fragment_with_more_fragments() -> None:
    assert icmp_net_unreachable(ipv4(frag=0x2000), IPv4Address("10.4.2.0")) is not None


def independent_ok(data: bytes) -> bool:
    """What a valid inbound packet is, written out independently of the parser."""
    if len(data) < 20 or data[0] >> 4 != 4:
        return False
    ihl = (data[0] & 15) * 4
    if ihl < 20 or ihl > len(data) or struct.unpack("!H", data[2:4])[0] != len(data):
        return False
    if word_checksum(data[:ihl]) != 0:
        return False
    dst = struct.unpack("!I", data[16:20])[0]
    return dst & OWN_MASK == OWN_NET and data[8] > 1


@given(st.binary(max_size=80))
def test_parser_never_raises_and_never_accepts_garbage(data: bytes) -> None:
    verdict = check_inbound(data, OWN_NET, OWN_MASK)
    assert isinstance(verdict, Verdict)
    assert (verdict is Verdict.OK) == independent_ok(data)


@st.composite
def nearly_valid(draw: st.DrawFn) -> bytes:
    """Well-formed packets with one field possibly broken, so the parser's deep checks run."""
    pkt = bytearray(
        ipv4(
            dst=draw(st.sampled_from(["10.4.2.7", "10.4.2.255", "10.4.3.1", "8.8.8.8"])),
            ttl=draw(st.integers(0, 255)),
            payload=draw(st.binary(max_size=40)),
            options=draw(st.sampled_from([b"", b"\x01" * 4, b"\x00" * 40])),
        )
    )
    if draw(st.booleans()):
        index = draw(st.integers(0, len(pkt) - 1))
        pkt[index] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        pkt = pkt[: draw(st.integers(0, len(pkt)))]
    return bytes(pkt)


@given(nearly_valid())
def test_parser_agrees_with_the_spec_on_nearly_valid_packets(data: bytes) -> None:
    verdict = check_inbound(memoryview(data), OWN_NET, OWN_MASK)
    assert (verdict is Verdict.OK) == independent_ok(data)
