"""Runs of one TCP flow merged across receives: one frame, exactly the original stream."""

from __future__ import annotations

import struct

from support.packets import DST, SRC, pseudo, tcp_packet, word_checksum

from pyflannel.backends.udp.offload import (
    F_NEEDS_CSUM,
    GSO_TCPV4,
    TCP_ACK,
    TCP_PSH,
    VnetHeader,
    segment_tcp4,
    segmented_size,
)
from pyflannel.backends.udp.rxmerge import RunMerger

MSS = 1000
SEGMENT = 52 + MSS
SEQ = 0x10000000


def run(count: int, *, seq: int = SEQ, sport: int = 40000, last_flags: int = TCP_ACK) -> memoryview:
    """``count`` segments of one flow as one receive would hold them."""
    payload = bytes((seq + i) & 0xFF for i in range(MSS * count))
    packet = tcp_packet(payload, seq=seq, flags=last_flags, sport=sport)
    out = bytearray(segmented_size(MSS * count, MSS, 52))
    segment_tcp4(packet, MSS, memoryview(out))
    return memoryview(out)


def joined(frame: tuple[list[bytes | bytearray | memoryview], int]) -> bytes:
    parts, _count = frame
    return b"".join(bytes(part) for part in parts)


def test_two_receives_of_one_flow_become_one_frame() -> None:
    merger = RunMerger()
    first, second = run(3), run(4, seq=SEQ + 3 * MSS)
    assert merger.add(first, SEGMENT, 3) is None
    assert merger.add(second, SEGMENT, 4) is None
    frame = merger.flush()
    assert frame is not None and frame[1] == 7
    data = joined(frame)
    vnet = VnetHeader.parse(data)
    assert vnet == VnetHeader(F_NEEDS_CSUM, GSO_TCPV4, 52, MSS, 20, 16)
    packet = data[10:]
    assert len(packet) == struct.unpack("!H", packet[2:4])[0] == 52 + 7 * MSS
    assert word_checksum(packet[:20]) == 0 and packet[8] == 63  # TTL decremented once
    body = b"".join(bytes(seg[52:]) for part in (first, second) for seg in _split(part))
    assert packet[52:] == body
    ph = pseudo(SRC.packed, DST.packed, 6, 32 + 7 * MSS)
    assert struct.unpack("!H", packet[36:38])[0] == ~word_checksum(ph) & 0xFFFF
    assert merger.flush() is None


def _split(data: memoryview) -> list[memoryview]:
    return [data[at : at + SEGMENT] for at in range(0, len(data), SEGMENT)]


def test_a_gap_another_flow_or_a_push_starts_a_new_frame() -> None:
    merger = RunMerger()
    assert merger.add(run(3), SEGMENT, 3) is None
    gap = merger.add(run(3, seq=SEQ + 4 * MSS), SEGMENT, 3)
    assert gap is not None and gap[1] == 3
    other = merger.add(run(2, seq=SEQ + 7 * MSS, sport=40001), SEGMENT, 2)
    assert other is not None and other[1] == 3
    pushed = RunMerger()
    pushed.add(run(2, last_flags=TCP_ACK | TCP_PSH), SEGMENT, 2)
    after_push = pushed.add(run(2, seq=SEQ + 2 * MSS), SEGMENT, 2)
    assert after_push is not None and after_push[1] == 2


def test_a_merge_never_exceeds_64_kib() -> None:
    merger = RunMerger()
    frames = [merger.add(run(20, seq=SEQ + i * 20 * MSS), SEGMENT, 20) for i in range(4)]
    done = [frame for frame in [*frames, merger.flush()] if frame is not None]
    sizes = [len(joined(frame)) - 10 for frame in done]
    assert all(size <= 65535 for size in sizes)
    assert sum(frame[1] for frame in done) == 80
