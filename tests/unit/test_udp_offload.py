"""TCP segmentation and coalescing for the udp backend's offload path, checked by hand."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.packets import DST, SRC, pseudo, tcp_packet, word_checksum

from pyflannel.backends.udp.offload import (
    F_NEEDS_CSUM,
    GSO_TCPV4,
    TCP_ACK,
    TCP_CWR,
    TCP_FIN,
    TCP_PSH,
    TCP_SYN,
    VnetHeader,
    coalesce_runs,
    complete_checksum,
    flow_key,
    merge_headers,
    same_flow,
    segment_tcp4,
)


def split(out: bytearray, written: int) -> list[bytes]:
    """The packets laid end to end in ``out``, by their IP total lengths."""
    packets, pos = [], 0
    while pos < written:
        size = struct.unpack("!H", out[pos + 2 : pos + 4])[0]
        packets.append(bytes(out[pos : pos + size]))
        pos += size
    assert pos == written
    return packets


def segment(packet: bytes, mss: int) -> list[bytes]:
    out = bytearray(len(packet) * 60)
    _size, written = segment_tcp4(packet, mss, memoryview(out))
    return split(out, written)


def assert_valid_tcp(packet: bytes) -> None:
    assert word_checksum(packet[:20]) == 0, "IP header checksum"
    ph = pseudo(packet[12:16], packet[16:20], 6, len(packet) - 20)
    assert word_checksum(ph + packet[20:]) == 0, "TCP checksum"


def test_vnet_header_round_trip() -> None:
    header = VnetHeader(F_NEEDS_CSUM, GSO_TCPV4, 52, 1448, 20, 16)
    buf = bytearray(12)
    header.pack_into(buf, 2)
    assert buf[2:] == bytes([1, 1, 52, 0, 0xA8, 0x05, 20, 0, 16, 0])
    assert VnetHeader.parse(buf[2:]) == header


def test_super_packet_is_cut_into_valid_segments() -> None:
    payload = bytes(range(256)) * 20  # 5120 bytes: 3 full segments of 1448 and 776
    sup = tcp_packet(payload, flags=TCP_ACK | TCP_PSH | TCP_CWR | TCP_FIN, partial=True)
    segs = segment(sup, 1448)
    assert [len(s) for s in segs] == [1500, 1500, 1500, 52 + 776]
    for index, seg in enumerate(segs):
        assert_valid_tcp(seg)
        assert struct.unpack("!H", seg[2:4])[0] == len(seg)
        assert struct.unpack("!H", seg[4:6])[0] == 0x0100 + index
        assert struct.unpack("!I", seg[24:28])[0] == 0x10000000 + 1448 * index
        assert seg[:2] == sup[:2] and seg[6:10] == sup[6:10] and seg[12:24] == sup[12:24]
        assert seg[28:33] == sup[28:33] and seg[34:36] == sup[34:36] and seg[38:52] == sup[38:52]
        assert seg[52:] == payload[1448 * index : 1448 * (index + 1)]
    flags = [seg[33] for seg in segs]
    assert flags == [
        TCP_ACK | TCP_CWR,
        TCP_ACK,
        TCP_ACK,
        TCP_ACK | TCP_PSH | TCP_FIN,
    ]


def test_segment_size_is_returned_and_exact_multiples_leave_no_runt() -> None:
    sup = tcp_packet(b"z" * 3000, options=b"")
    out = bytearray(4000)
    size, written = segment_tcp4(sup, 1000, memoryview(out), at=0)
    assert (size, written) == (1040, 3 * 1040)
    assert [len(s) for s in split(out, written)] == [1040, 1040, 1040]


def test_segmenting_into_too_small_a_buffer_is_refused() -> None:
    with pytest.raises(ValueError, match="room"):
        segment_tcp4(tcp_packet(b"x" * 3000), 1000, memoryview(bytearray(3000)))


def test_sequence_numbers_wrap() -> None:
    segs = segment(tcp_packet(b"q" * 300, seq=0xFFFFFFA0), 200)
    assert [struct.unpack("!I", s[24:28])[0] for s in segs] == [0xFFFFFFA0, 0x00000068]
    for seg in segs:
        assert_valid_tcp(seg)


@given(
    payload=st.binary(min_size=1, max_size=3000),
    mss=st.integers(min_value=1, max_value=1500),
    seq=st.integers(min_value=0, max_value=0xFFFFFFFF),
    ident=st.integers(min_value=0, max_value=0xFFFF),
    partial=st.booleans(),
)
def test_segmentation_invariants(
    payload: bytes, mss: int, seq: int, ident: int, partial: bool
) -> None:
    sup = tcp_packet(payload, seq=seq, ident=ident, partial=partial)
    segs = segment(sup, mss)
    assert len(segs) == -(-len(payload) // mss)
    assert b"".join(s[52:] for s in segs) == payload
    for index, seg in enumerate(segs):
        assert_valid_tcp(seg)
        assert struct.unpack("!I", seg[24:28])[0] == (seq + mss * index) & 0xFFFFFFFF
        assert struct.unpack("!H", seg[4:6])[0] == (ident + index) & 0xFFFF
        assert bool(seg[33] & TCP_PSH) == (index == len(segs) - 1)


@pytest.mark.parametrize("proto", [6, 17])
def test_complete_checksum_fills_in_a_partial_one(proto: int) -> None:
    body = b"hello, odd length"
    l4_len = 8 + len(body) if proto == 17 else 20 + len(body)
    ph = pseudo(SRC.packed, DST.packed, proto, l4_len)
    offset = 6 if proto == 17 else 16
    l4 = bytearray(l4_len - len(body)) + body
    l4[offset : offset + 2] = struct.pack("!H", ~word_checksum(ph) & 0xFFFF)
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + l4_len, 1, 0, 64, proto, 0, SRC.packed, DST.packed
    )
    packet = bytearray(ip + l4)
    complete_checksum(packet, 20, offset)
    expected_l4 = bytearray(l4)
    expected_l4[offset : offset + 2] = b"\0\0"
    assert struct.unpack("!H", packet[20 + offset : 22 + offset])[0] == word_checksum(
        ph + bytes(expected_l4)
    )


def test_segments_of_one_super_packet_coalesce_back_into_it() -> None:
    payload = bytes(range(200)) * 30
    sup = tcp_packet(payload, flags=TCP_ACK | TCP_PSH)
    segs = segment(sup, 1448)
    assert coalesce_runs(segs) == [(0, len(segs))]
    first = bytearray(segs[0][:52])
    merged_len = 52 + len(payload)
    header = merge_headers(memoryview(first), merged_len, segs[-1][33], 1448)
    assert VnetHeader.parse(header) == VnetHeader(F_NEEDS_CSUM, GSO_TCPV4, 52, 1448, 20, 16)
    merged = bytes(first) + b"".join(s[52:] for s in segs)
    assert len(merged) == merged_len
    assert word_checksum(merged[:20]) == 0
    assert merged[:10] == sup[:10] and merged[12:36] == sup[12:36] and merged[38:] == sup[38:]
    # The TCP checksum field holds the pseudo-header sum, as the kernel wants with NEEDS_CSUM.
    ph = pseudo(SRC.packed, DST.packed, 6, merged_len - 20)
    assert struct.unpack("!H", merged[36:38])[0] == ~word_checksum(ph) & 0xFFFF
    # Segmenting the merged packet again gives the very same segments.
    assert segment(merged, 1448) == segs


def test_runs_break_at_flow_changes_gaps_and_odd_segments() -> None:
    a = segment(tcp_packet(b"a" * 3000, flags=TCP_ACK), 1000)  # 3 x 1000
    b = segment(tcp_packet(b"b" * 2000, sport=40001, flags=TCP_ACK), 1000)  # another flow
    gap = tcp_packet(b"c" * 1000, seq=0x10000000 + 5000, flags=TCP_ACK)
    syn = tcp_packet(b"", flags=TCP_SYN)
    assert coalesce_runs([*a, *b]) == [(0, 3), (3, 2)]
    assert coalesce_runs([*a, gap]) == [(0, 3), (3, 1)]
    assert coalesce_runs([syn, *a]) == [(0, 1), (1, 3)]


def test_a_run_ends_after_push_or_a_short_segment() -> None:
    full = [tcp_packet(b"x" * 100, seq=0x10000000 + 100 * i, flags=TCP_ACK) for i in range(4)]
    pushed = tcp_packet(b"x" * 100, seq=0x10000000 + 100, flags=TCP_ACK | TCP_PSH)
    short = tcp_packet(b"x" * 50, seq=0x10000000 + 100, flags=TCP_ACK)
    after_short = tcp_packet(b"x" * 50, seq=0x10000000 + 150, flags=TCP_ACK)
    assert coalesce_runs(full) == [(0, 4)]
    assert coalesce_runs([full[0], pushed, full[2]]) == [(0, 2), (2, 1)]
    assert coalesce_runs([full[0], short, after_short]) == [(0, 2), (2, 1)]
    assert coalesce_runs([pushed]) == [(0, 1)]


def test_a_bigger_later_segment_or_different_options_do_not_merge() -> None:
    first = tcp_packet(b"x" * 100, flags=TCP_ACK)
    bigger = tcp_packet(b"x" * 200, seq=0x10000000 + 100, flags=TCP_ACK)
    other_ts = tcp_packet(
        b"x" * 100,
        seq=0x10000000 + 100,
        flags=TCP_ACK,
        options=b"\x01\x01\x08\x0a" + struct.pack("!II", 1001, 2000),
    )
    assert coalesce_runs([first, bigger]) == [(0, 1), (1, 1)]
    assert coalesce_runs([first, other_ts]) == [(0, 1), (1, 1)]


def test_flow_key_refuses_what_gro_would_not_merge() -> None:
    good = tcp_packet(b"x" * 10, flags=TCP_ACK)
    assert flow_key(good) is not None
    assert flow_key(tcp_packet(b"x" * 10, flags=TCP_ACK | TCP_FIN)) is None
    assert flow_key(tcp_packet(b"x" * 10, flags=TCP_CWR | TCP_ACK)) is None
    assert flow_key(tcp_packet(b"x" * 10, flags=0)) is None
    udp = bytearray(good)
    udp[9] = 17
    assert flow_key(udp) is None
    fragment = bytearray(good)
    fragment[6] = 0x20  # MF
    assert flow_key(fragment) is None
    assert flow_key(good[:39]) is None


def test_a_follower_across_receives_shares_all_but_id_checksums_sequence_and_psh() -> None:
    head = tcp_packet(b"a" * 100, flags=TCP_ACK)
    same = tcp_packet(b"b" * 100, seq=0x20000000, ident=7, flags=TCP_ACK | TCP_PSH)
    assert same_flow(head, same, 52)
    assert not same_flow(head, tcp_packet(b"a" * 100, flags=TCP_ACK, sport=40001), 52)
    assert not same_flow(head, tcp_packet(b"a" * 99, flags=TCP_ACK), 52)  # total length
    assert not same_flow(head, tcp_packet(b"a" * 100, flags=TCP_ACK | TCP_FIN), 52)
