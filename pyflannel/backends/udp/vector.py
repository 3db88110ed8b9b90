"""Whole-batch versions of the offload path's per-segment work, with NumPy.

Cutting a 64 KiB TCP super-packet into 45 segments costs about 5 µs of interpreter time
per segment in :func:`.offload.segment_tcp4`, most of it the ones'-complement sum of the
payload; that caps one stream near 1 Gbit/s. Here every segment of one super-packet is
handled at once, as rows of one 2-D array: the header template is broadcast, payloads
are copied in one go, and the per-segment fields (IP total length, ID and checksum, TCP
sequence number, flags and checksum) are computed as vectors. The output is byte for
byte that of :func:`.offload.segment_tcp4` (the tests compare them).

:func:`run_lengths` does the same for the receive side's merge rule: it compares the
headers of every datagram of one ``UDP_GRO`` receive with the first one's at once.

NumPy is loaded only by the udp backend's offload path. Rules of this file: pure code,
no I/O; functions write into the buffer they are given.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import numpy as np

from pyflannel.backends.udp.offload import (
    TCP_PSH,
    Segment,
    _flag_sequence,
    _template,
    flow_key,
    segment_tcp4,
    segmented_size,
    write_segment,
)

if TYPE_CHECKING:
    from pyflannel.backends.udp.packet import Packet

Array = Any  # numpy arrays; NumPy's own annotations add nothing these few lines need
_BE16 = np.dtype(">u2")
_BE32 = np.dtype(">u4")
_ALL_IDS = np.arange(0x10000 + 0x10000, dtype=np.uint64) & 0xFFFF  # any ID, then 64 Ki more
_IDS = _ALL_IDS.astype(_BE16)  # as written
_IDS_SHIFTED = _ALL_IDS << 8  # as summed (see _negated)
_U32 = 0xFFFFFFFF
Layout = tuple[int, int, int]  # packets, bytes from one to the next, bytes each
_CACHED = 256  # entries per cache of shapes (the few a stream uses come back all the time)
_SEQ_WORD = 6  # bytes 24-27 of the headers: the TCP sequence number
_FLAGS_WORD = 8  # bytes 32-35: data offset, flags, window
_PSH_BIT = TCP_PSH << 16  # in the flags word, read big-endian
_BIG = 0xFFFF << 40  # a multiple of 0xFFFF larger than any sum of a segment


def segment_tcp4_vec(packet: Packet, mss: int, out: memoryview, at: int = 0) -> tuple[int, int]:
    """:func:`.offload.segment_tcp4`, with every full-sized segment computed at once.

    Same arguments, result and errors. An odd ``mss`` (whose payloads do not split into
    16-bit words) and a packet with a single segment take the scalar path.

    Each NumPy call costs a microsecond or so whatever its size, so they are few. The
    header template carries what full segments share (total length, the middle
    segments' flags); the first and last segments' flags are patched byte by byte. Both
    checksums of every segment come out of one subtraction and one remainder over a
    ``(segments, 2)`` array: what varies between segments but not between packets (the
    sequence steps, the flag differences) is cached per shape as :func:`_negated`, what
    varies between packets is one scalar folded into the payload sums, so only the
    sums themselves are computed per packet.
    """
    ihl = (packet[0] & 0x0F) << 2
    hlen = ihl + ((packet[ihl + 12] >> 4) << 2)
    payload = len(packet) - hlen
    if payload <= 0 or at + segmented_size(payload, mss, hlen) > len(out):
        raise ValueError(f"no room for {payload} bytes in segments of {mss} at {at}")
    full = payload // mss
    if mss & 1 or full < 2:
        return segment_tcp4(packet, mss, out, at)
    size = hlen + mss
    flags = _flag_sequence(packet[ihl + 13], (payload - 1) // mss)
    exact = payload == full * mss  # then the last full segment is the last segment
    header, ip_sum, tcp_sum = _shared(packet, ihl, hlen, size, flags[1])
    seq = int.from_bytes(packet[ihl + 4 : ihl + 8], "big")
    ident = packet[4] << 8 | packet[5]
    rows = np.frombuffer(out, np.uint8, full * size, at).reshape(full, size)
    body = np.frombuffer(packet, np.uint8, full * mss, hlen).reshape(full, mss)
    rows[:, :hlen] = np.frombuffer(header, np.uint8)
    rows[:, hlen:] = body
    sums = np.empty((full, 2), np.uint64)  # per segment: IP sum, TCP sum; then checksums
    np.add(_IDS_SHIFTED[ident : ident + full], ip_sum << 8, out=sums[:, 0])
    words = body.view(np.uint32 if mss & 3 == 0 else np.uint16)
    start = ((tcp_sum + seq) % 0xFFFF) << 8
    np.add.reduce(words, axis=1, dtype=np.uint64, out=sums[:, 1], initial=start)
    np.subtract(_negated(full, mss, flags, exact), sums, out=sums)
    last_seq = seq + (full - 1) * mss
    if last_seq > _U32:  # the sequence number wraps: 2**32 is 1 modulo 0xFFFF, not 0
        sums[(_U32 + 1 - seq + mss - 1) // mss :, 1] += 1 << 8
    # Both checksum fields of every segment, as one strided view (native order: see
    # _negated); the remainder goes straight there.
    fields = np.ndarray((full, 2), np.uint16, out, at + 10, (size, ihl + 6))
    np.remainder(sums, 0xFFFF, out=fields, casting="unsafe")
    rows.view(_BE16)[:, 2] = _IDS[ident : ident + full]
    numbers = np.ndarray((full,), _BE32, out, at + ihl + 4, (size,))
    np.add(_steps32(full, mss), np.uint32(seq), out=numbers)
    out[at + ihl + 13] = flags[0]
    written = full * size
    if exact:
        out[at + written - size + ihl + 13] = flags[2]
        return size, written
    template = (header, (ip_sum - size) % 0xFFFF, (tcp_sum - mss - flags[1]) % 0xFFFF)
    tail = Segment(
        packet[hlen + full * mss :], (ident + full) & 0xFFFF, (seq + full * mss) & _U32, flags[2]
    )
    return size, written + write_segment(out, at + written, template, tail)


def group_key(packet: Packet, mss: int) -> tuple[int, int, int, int] | None:
    """What super-packets cut together by :func:`segment_group` must share, or None when
    ``packet`` is not for it (an odd ``mss``, one segment, or a shorter last one)."""
    ihl = (packet[0] & 0x0F) << 2
    hlen = ihl + ((packet[ihl + 12] >> 4) << 2)
    payload = len(packet) - hlen
    if mss & 1 or payload < 2 * mss or payload % mss:
        return None
    return len(packet), mss, hlen << 8 | ihl, packet[ihl + 13]


def segment_group(packets: memoryview, layout: Layout, mss: int, out: memoryview) -> int:
    """:func:`segment_tcp4_vec` for several super-packets at once, with about as many NumPy
    calls as for one: a TCP stream hands over its super-packets in a row.

    ``layout`` is ``(count, stride, length)``: ``count`` packets of ``length`` bytes,
    ``stride`` bytes apart in ``packets``, with one :func:`group_key`. Packet ``j``'s
    segments go to ``out[j * span:]``; returns ``span``, the bytes of one packet's
    segments. The rows of all segments form one ``(count, full, size)`` array, and what
    differs between the packets is a column of per-packet values.
    """
    count, stride, length = layout
    ihl = (packets[0] & 0x0F) << 2
    hlen = ihl + ((packets[ihl + 12] >> 4) << 2)
    full = (length - hlen) // mss
    size = hlen + mss
    span = full * size
    flags = _flag_sequence(packets[ihl + 13], full - 1)
    headers, ip_sums, starts, idents, seqs = [], [], [], [], []
    for base in range(0, count * stride, stride):
        packet = packets[base : base + length]
        header, ip_sum, tcp_sum = _shared(packet, ihl, hlen, size, flags[1])
        seq = int.from_bytes(packet[ihl + 4 : ihl + 8], "big")
        headers.append(header)
        ip_sums.append(ip_sum << 8)
        starts.append(((tcp_sum + seq) % 0xFFFF) << 8)
        idents.append(packet[4] << 8 | packet[5])
        seqs.append(seq)
    rows = np.ndarray((count, full, size), np.uint8, out, 0, (span, size, 1))
    body = np.ndarray((count, full, mss), np.uint8, packets, hlen, (stride, mss, 1))
    rows[:, :, :hlen] = np.frombuffer(b"".join(headers), np.uint8).reshape(count, 1, hlen)
    rows[:, :, hlen:] = body
    shifted, written = _id_columns(idents, full)
    sums = np.empty((count, full, 2), np.uint64)  # per segment: IP sum, TCP sum (x 256)
    one_ip = ip_sums.count(ip_sums[0]) == count  # one flow: equal IP headers but the ID
    ip_part = ip_sums[0] if one_ip else np.array(ip_sums, np.uint64)[:, None]
    np.add(shifted, ip_part, out=sums[:, :, 0])
    words = body.view(np.uint32 if mss & 3 == 0 else np.uint16)
    np.add.reduce(words, axis=2, dtype=np.uint64, out=sums[:, :, 1])
    sums[:, :, 1] += np.array(starts, np.uint64)[:, None]
    np.subtract(_negated(full, mss, flags, True), sums, out=sums)
    for index, seq in enumerate(seqs):
        if seq + (full - 1) * mss > _U32:  # it wraps: 2**32 is 1 modulo 0xFFFF, not 0
            sums[index, (_U32 + 1 - seq + mss - 1) // mss :, 1] += 1 << 8
    fields = np.ndarray((count, full, 2), np.uint16, out, 10, (span, size, ihl + 6))
    np.remainder(sums, 0xFFFF, out=fields, casting="unsafe")  # native order: see _negated
    np.ndarray((count, full), _BE16, out, 4, (span, size))[:] = written
    numbers = np.ndarray((count, full), _BE32, out, ihl + 4, (span, size))
    if seqs == [(seqs[0] + j * full * mss) & _U32 for j in range(count)]:  # one run
        np.add(_steps32(count * full, mss).reshape(count, full), np.uint32(seqs[0]), out=numbers)
    else:
        np.add(_steps32(full, mss), np.array(seqs, np.uint32)[:, None], out=numbers)
    for base in range(ihl + 13, count * span, span):
        out[base] = flags[0]
        out[base + span - size] = flags[2]
    return span


def _id_columns(idents: list[int], full: int) -> tuple[Array, Array]:
    """Each segment's IP ID, as summed and as written (``(count, full)`` each): views of
    the tables when the IDs run on from packet to packet, as Linux numbers them."""
    first, count = idents[0], len(idents)
    if idents == [(first + j * full) & 0xFFFF for j in range(count)]:
        run = slice(first, first + count * full)
        return _IDS_SHIFTED[run].reshape(count, full), _IDS[run].reshape(count, full)
    index = np.add.outer(np.array(idents, np.intp), np.arange(full, dtype=np.intp))
    return _IDS_SHIFTED[index], _IDS[index]


def _shared(
    packet: Packet, ihl: int, hlen: int, size: int, middle: int
) -> tuple[bytearray, int, int]:
    """The headers every full segment starts from, and their sums (modulo 0xFFFF).

    :func:`.offload._template`'s, with the total length and flags of a full middle
    segment filled in (ID, checksums and the sequence number stay zero); the TCP sum's
    pseudo-header counts the length of a full segment.
    """
    header, ip_base, tcp_base = _template(packet, ihl)
    header[2:4] = size.to_bytes(2, "big")
    header[ihl + 13] = middle
    return header, (ip_base + size) % 0xFFFF, (tcp_base + middle + size - hlen) % 0xFFFF


@functools.lru_cache(maxsize=_CACHED)
def _negated(full: int, mss: int, flags: tuple[int, int, int], exact: bool) -> Array:
    """What the per-packet sums are subtracted from, per segment (cached per shape).

    A ``(full, 2)`` uint64 array: a multiple of 0xFFFF (:data:`_BIG`) above any sum,
    less, in the TCP column, the sequence step ``row * mss`` and the first and last
    segments' flags beyond the template's. Everything is counted times 256: a checksum
    computed so, written as a native (little-endian) 16-bit word, is the big-endian
    checksum, as 256 * 256 is 1 modulo 0xFFFF.
    """
    extra = np.arange(full, dtype=np.uint64) * mss
    extra[0] += flags[0] - flags[1]
    if exact:
        extra[-1] += flags[2] - flags[1]
    found = np.full((full, 2), _BIG, dtype=np.uint64)
    found[:, 1] -= (extra % 0xFFFF) << 8
    return _frozen(found)


@functools.lru_cache(maxsize=_CACHED)
def _steps32(full: int, mss: int) -> Array:
    """``row * mss`` modulo 2**32 as uint32 (cached): add the first sequence number and
    uint32 arithmetic wraps as TCP's does."""
    return _frozen((_index(full) * mss & _U32).astype(np.uint32))


def run_lengths(data: memoryview, segment: int) -> int:
    """How many leading datagrams of one GRO receive merge with the first (at least 1).

    ``data`` holds datagrams of ``segment`` bytes back to back (the last may be shorter,
    and is then left out). The rule is :func:`.offload.coalesce_runs`'s: one TCP flow,
    equal headers apart from ID, checksum, sequence number and PSH, contiguous sequence
    numbers, PSH only on the last, at most 64 KiB in all. The total length must equal
    the first datagram's, which the caller checks to be exactly its size.

    The headers are read in place as rows of 32-bit words; each row's expected sequence
    step is subtracted, so that a follower of the run equals the head on every compared
    bit. Five NumPy calls per receive, whatever its size: their fixed cost, not the
    bytes, is what this takes.
    """
    head = data[:segment]
    if flow_key(head) is None or head[33] & TCP_PSH:
        return 1
    hlen = 20 + ((head[32] >> 4) << 2)
    payload = segment - hlen
    if payload <= 0:
        return 1
    count = min(len(data) // segment, (65535 - segment) // payload + 1)
    if count < 2:
        return 1
    words = hlen >> 2
    rows = np.ndarray((count, words), _BE32, data, 0, (segment, 4))
    diff = np.subtract(rows, _steps(count, words, payload), dtype=np.uint32)
    diff ^= diff[0]
    diff &= _compared_bits(words)
    if not np.count_nonzero(diff):  # (cheaper than any())
        return count
    differ = np.flatnonzero(diff)
    first = int(differ[0])
    run = first // words
    # A follower that differs from the head in PSH alone ends the run and belongs to it.
    alone = len(differ) == 1 or int(differ[1]) // words != run
    if alone and first % words == _FLAGS_WORD and int(diff[run, _FLAGS_WORD]) == _PSH_BIT:
        return run + 1
    return run


@functools.lru_cache(maxsize=_CACHED)
def _compared_bits(words: int) -> Array:
    """Per 32-bit header word, the bits a follower must share with the head of its run:
    all but the IP ID and checksum and the TCP checksum (the sequence number is compared
    after its step is taken off; PSH is told apart by :func:`run_lengths`)."""
    found = np.full(words, 0xFFFFFFFF, dtype=np.uint32)
    found[1] = 0x0000FFFF  # bytes 4-5: IP ID
    found[2] = 0xFFFF0000  # bytes 10-11: IP header checksum
    found[9] = 0x0000FFFF  # bytes 36-37: TCP checksum
    return _frozen(found)


@functools.lru_cache(maxsize=_CACHED)
def _steps(count: int, words: int, payload: int) -> Array:
    """Rows of zeros but for the sequence word: ``row * payload`` (mod 2**32), cached;
    the same few shapes come back all the time."""
    found = np.zeros((count, words), dtype=np.uint32)
    found[:, _SEQ_WORD] = (_index(count) * payload).astype(np.uint32)
    return _frozen(found)


@functools.lru_cache(maxsize=_CACHED)
def _index(count: int) -> Array:
    """``arange(count)`` as uint64, cached: the same few counts come back all the time."""
    return _frozen(np.arange(count, dtype=np.uint64))


def _frozen(array: Array) -> Array:
    """``array``, read-only: a cached array is shared by every later call."""
    array.flags.writeable = False
    return array
