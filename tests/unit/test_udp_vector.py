"""The NumPy offload helpers give exactly what the scalar ones give, byte for byte."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.packets import SRC, tcp_packet

from pyflannel.backends.udp.offload import (
    TCP_ACK,
    TCP_CWR,
    TCP_FIN,
    TCP_PSH,
    coalesce_runs,
    segment_tcp4,
    segmented_size,
)
from pyflannel.backends.udp.vector import group_key, run_lengths, segment_group, segment_tcp4_vec

FLAGS = st.sampled_from(
    [TCP_ACK, TCP_ACK | TCP_PSH, TCP_ACK | TCP_PSH | TCP_FIN, TCP_ACK | TCP_CWR | TCP_PSH]
)


def both(packet: bytes, mss: int, at: int = 0) -> tuple[bytes, bytes]:
    room = at + segmented_size(len(packet) - 52, mss, 52) + 7
    scalar, vector = bytearray(room), bytearray(room)
    a = segment_tcp4(memoryview(packet), mss, memoryview(scalar), at)
    b = segment_tcp4_vec(memoryview(packet), mss, memoryview(vector), at)
    assert a == b
    return bytes(scalar), bytes(vector)


@settings(max_examples=300, deadline=None)
@given(
    payload=st.binary(min_size=1, max_size=9000),
    mss=st.sampled_from([1448, 1420, 1000, 536, 100, 64, 1399, 7]),
    seq=st.integers(0, 0xFFFFFFFF),
    ident=st.integers(0, 0xFFFF),
    flags=FLAGS,
    at=st.integers(0, 9),
)
def test_segmentation_matches_the_scalar_path(
    *, payload: bytes, mss: int, seq: int, ident: int, flags: int, at: int
) -> None:
    packet = tcp_packet(payload, seq=seq, ident=ident, flags=flags, partial=True)
    scalar, vector = both(packet, mss, at)
    assert scalar == vector


def test_a_full_super_packet_with_wrapping_id_and_sequence() -> None:
    packet = tcp_packet(bytes(range(256)) * 254, seq=0xFFFFFF00, ident=0xFFFE, partial=True)
    scalar, vector = both(packet, 1448)
    assert scalar == vector


def test_no_room_is_refused_like_the_scalar_path() -> None:
    with pytest.raises(ValueError):
        segment_tcp4_vec(tcp_packet(b"x" * 3000), 1000, memoryview(bytearray(3000)))


@settings(max_examples=150, deadline=None)
@given(
    count=st.integers(2, 4),
    segments=st.integers(2, 12),
    mss=st.sampled_from([1420, 1448, 1000, 64, 6]),
    seq=st.integers(0, 0xFFFFFFFF),
    ident=st.integers(0, 0xFFFF),
    running=st.booleans(),
    two_flows=st.booleans(),
    flags=FLAGS,
    seed=st.integers(0, 255),
)
def test_a_group_is_cut_as_each_of_its_packets_alone(
    *,
    count: int,
    segments: int,
    mss: int,
    seq: int,
    ident: int,
    running: bool,
    two_flows: bool,
    flags: int,
    seed: int,
) -> None:
    """IDs and sequence numbers that run on from packet to packet (as Linux sends them),
    or that do not; wrapping or not; one stride apart in a buffer of slots; one flow, or
    two whose IP headers differ (a group is of one size and peer, not of one flow)."""
    stride, payload = 70000, mss * segments
    slots, packets = bytearray(stride * count), list[bytes]()
    for index in range(count):
        step = segments if running else 7 * index + 1
        packet = tcp_packet(
            bytes((seed + index + i) & 0xFF for i in range(payload)),
            seq=(seq + index * (payload if running else 12345)) & 0xFFFFFFFF,
            ident=(ident + index * step) & 0xFFFF,
            flags=flags,
            partial=True,
            src=IPv4Address("10.4.1.9") if two_flows and index % 2 else SRC,
        )
        assert group_key(packet, mss) == group_key(packets[0] if packets else packet, mss)
        slots[index * stride : index * stride + len(packet)] = packet
        packets.append(packet)
    out = bytearray(count * segmented_size(payload, mss, 52) + 3)
    layout = (count, stride, len(packets[0]))
    span = segment_group(memoryview(slots), layout, mss, memoryview(out))
    assert span == segmented_size(payload, mss, 52)
    for index, packet in enumerate(packets):
        alone = bytearray(span)
        segment_tcp4(memoryview(packet), mss, memoryview(alone))
        assert out[index * span : (index + 1) * span] == alone, index
    assert out[count * span :] == bytes(3)


def test_only_whole_numbers_of_even_segments_are_grouped() -> None:
    packet = tcp_packet(b"x" * 3000, flags=TCP_ACK)
    assert group_key(packet, 1000) == (len(packet), 1000, 52 << 8 | 20, TCP_ACK)
    assert group_key(packet, 1500) is not None
    assert group_key(packet, 999) is None  # a shorter last segment
    assert group_key(tcp_packet(b"x" * 3001, flags=TCP_ACK), 1000) is None
    assert group_key(tcp_packet(b"x" * 1000, flags=TCP_ACK), 1000) is None  # one segment
    assert group_key(tcp_packet(b"x" * 21, flags=TCP_ACK), 7) is None  # odd


def stream(count: int, mss: int = 1000, *, seq: int = 0x10000000, sport: int = 40000) -> bytes:
    """``count`` full-sized segments of one flow, laid end to end, ACK only."""
    packet = tcp_packet(b"s" * (mss * count), seq=seq, flags=TCP_ACK, sport=sport)
    out = bytearray(segmented_size(mss * count, mss, 52))
    segment_tcp4(packet, mss, memoryview(out))
    return bytes(out)


def scalar_first_run(data: bytes, size: int) -> int:
    segments = [data[at : at + size] for at in range(0, len(data), size)]
    return coalesce_runs(segments)[0][1]


def test_a_clean_stream_merges_whole() -> None:
    data = stream(40)
    assert run_lengths(memoryview(bytearray(data)), 1052) == 40 == scalar_first_run(data, 1052)


def test_a_run_stops_at_64_kib() -> None:
    data = stream(40, mss=1448) + stream(24, mss=1448, seq=0x10000000 + 40 * 1448)
    assert run_lengths(memoryview(bytearray(data)), 1500) == scalar_first_run(data, 1500) == 45


@pytest.mark.parametrize(
    ("offset", "what"),
    [
        (12, "source address"),
        (20, "source port"),
        (24 + 3, "sequence number"),
        (28, "acknowledgement"),
        (33, "flags: SYN"),
        (34, "window"),
        (40, "TCP option"),
        (1, "TOS"),
    ],
)
def test_a_follower_that_differs_ends_the_run_before_it(offset: int, what: str) -> None:
    data = bytearray(stream(10))
    data[6 * 1052 + offset] ^= 0x02
    assert run_lengths(memoryview(data), 1052) == 6 == scalar_first_run(bytes(data), 1052), what


def test_ip_id_and_checksums_may_differ() -> None:
    data = bytearray(stream(5))
    data[3 * 1052 + 5] ^= 0xFF  # IP ID
    data[3 * 1052 + 10] ^= 0xFF  # IP checksum (the caller recomputes it)
    data[3 * 1052 + 37] ^= 0xFF  # TCP checksum (NEEDS_CSUM on the merged packet)
    assert run_lengths(memoryview(data), 1052) == 5


def test_psh_ends_the_run_with_it_and_a_pushed_head_stands_alone() -> None:
    data = bytearray(stream(8))
    data[4 * 1052 + 33] |= TCP_PSH
    assert run_lengths(memoryview(data), 1052) == 5 == scalar_first_run(bytes(data), 1052)
    data[33] |= TCP_PSH
    assert run_lengths(memoryview(data), 1052) == 1


def test_a_short_trailing_datagram_stays_out_and_pure_acks_never_merge() -> None:
    data = stream(4) + stream(1, mss=500, seq=0x10000000 + 4000)
    assert run_lengths(memoryview(bytearray(data)), 1052) == 4
    ack = tcp_packet(b"", flags=TCP_ACK)
    assert run_lengths(memoryview(bytearray(ack * 3)), len(ack)) == 1


def test_another_flow_is_another_run() -> None:
    data = stream(3) + stream(3, sport=40001)
    assert run_lengths(memoryview(bytearray(data)), 1052) == 3
    assert struct.unpack("!H", data[3 * 1052 + 20 : 3 * 1052 + 22])[0] == 40001


@settings(max_examples=300, deadline=None)
@given(
    count=st.integers(2, 20),
    flips=st.lists(
        st.tuples(st.integers(0, 19), st.integers(0, 51), st.integers(1, 255)), max_size=3
    ),
)
def test_the_merge_rule_is_the_scalar_one_under_any_header_change(
    count: int, flips: list[tuple[int, int, int]]
) -> None:
    """Any byte of any header changed (the payloads do not matter to the rule), but the
    head's IP total length: the caller has checked that one already."""
    data = bytearray(stream(count))
    for row, offset, bits in flips:
        if row < count and (row or offset not in (2, 3)):
            data[row * 1052 + offset] ^= bits
    expected = scalar_first_run(bytes(data), 1052)
    assert run_lengths(memoryview(data), 1052) == expected
