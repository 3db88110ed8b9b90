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
_INDEXES: dict[int, Array] = {}
_COLUMNS: dict[int, Array] = {}
_FLAG_WORDS: dict[tuple[int, tuple[int, int, int], bool, int], tuple[Array, Array]] = {}
_IDS = np.arange(0x10000 + 0x10000, dtype=np.uint64) & 0xFFFF  # any ID, then 64 Ki more
_U32 = 0xFFFFFFFF
_OFFSETS: dict[tuple[int, int], Array] = {}
_CACHED = 256  # entries per cache of shapes; cleared when full
_COMPARED: dict[int, Array] = {}
_STEPS: dict[tuple[int, int, int], Array] = {}
_SEQ_WORD = 6  # bytes 24-27 of the headers: the TCP sequence number
_FLAGS_WORD = 8  # bytes 32-35: data offset, flags, window
_PSH_BIT = TCP_PSH << 16  # in the flags word, read big-endian
_BIG = 0xFFFF << 40  # a multiple of 0xFFFF larger than any sum of a segment


def segment_tcp4_vec(packet: Packet, mss: int, out: memoryview, at: int = 0) -> tuple[int, int]:
    """:func:`.offload.segment_tcp4`, with every full-sized segment computed at once.

    Same arguments, result and errors. An odd ``mss`` (whose payloads do not split into
    16-bit words) and a packet with a single segment take the scalar path.

    Each NumPy call costs a microsecond or two whatever its size, so the calls are
    few: the per-segment 16-bit fields are the columns of one array, written with one
    assignment, and the sequence numbers go in as one column of 32-bit words (for the
    checksum, a 32-bit word counts as the sum of its halves, 2**16 being 1 modulo
    0xFFFF).
    """
    ihl = (packet[0] & 0x0F) << 2
    hlen = ihl + ((packet[ihl + 12] >> 4) << 2)
    payload = len(packet) - hlen
    if payload <= 0 or at + segmented_size(payload, mss, hlen) > len(out):
        raise ValueError(f"no room for {payload} bytes in segments of {mss} at {at}")
    full = payload // mss
    if mss & 1 or full < 2:
        return segment_tcp4(packet, mss, out, at)
    header, ip_base, tcp_base = _template(packet, ihl)
    size = hlen + mss
    header[2:4] = size.to_bytes(2, "big")  # every full segment's total length
    rows = np.frombuffer(out, np.uint8, full * size, at).reshape(full, size)
    body = np.frombuffer(packet, np.uint8, full * mss, hlen)
    rows[:, :hlen] = np.frombuffer(header, np.uint8)
    rows[:, hlen:] = body.reshape(full, mss)
    exact = payload == full * mss  # then the last full segment is the last segment
    flags = _flag_sequence(packet[ihl + 13], (payload - 1) // mss)
    bits, words = _flag_words(full, flags, exact, packet[ihl + 12])
    first_id = packet[4] << 8 | packet[5]
    ident = _IDS[first_id : first_id + full]  # IP IDs, wrapping after 0xFFFF
    number = (_offsets(full, mss) + int.from_bytes(packet[ihl + 4 : ihl + 8], "big")) & _U32
    tcp_sum = _payload_sums(body, full) + number + bits  # number ≡ its halves' sum
    fields = np.empty((full, 4), np.uint64)  # the 16-bit fields of _columns(ihl)
    fields[:, 0] = ident
    np.remainder(_BIG - (ip_base + size) - ident, 0xFFFF, out=fields[:, 1])
    fields[:, 2] = words
    np.remainder(_BIG - (tcp_base + mss) - tcp_sum, 0xFFFF, out=fields[:, 3])
    rows.view(_BE16)[:, _columns(ihl)] = fields
    np.ndarray((full,), _BE32, out, at + ihl + 4, (size,))[:] = number  # sequence numbers
    written = full * size
    if not exact:
        template = (header, ip_base, tcp_base)
        written += _tail(packet, mss, out[at + written :], template, flags[2])
    return size, written


def _payload_sums(body: Array, count: int) -> Array:
    """Each row's payload sum, as big-endian 16-bit words, congruent modulo 0xFFFF (uint64).

    Words are summed in native order, 32 bits at a time when the rows allow (2**16 is 1
    modulo 0xFFFF, so a 32-bit word counts as its two halves); multiplying by 256 then
    swaps the bytes of the ones'-complement sum, which makes it the big-endian one. Not
    reduced: a row of at most 2**14 32-bit words sums below 2**46, so the shifted sum
    and what is added to it stay below :data:`_BIG` (about 2**56).
    """
    wide = np.uint32 if body.size % (4 * count) == 0 else np.uint16
    return np.add.reduce(body.view(wide).reshape(count, -1), axis=1, dtype=np.uint64) << 8


def _columns(ihl: int) -> Array:
    """Where the per-segment 16-bit fields go among a segment's 16-bit words: IP ID, IP
    checksum, TCP data offset and flags, TCP checksum.

    A checksum field is ``(-sum) mod 0xFFFF``, computed as ``(K - sum) % 0xFFFF`` with
    ``K`` (:data:`_BIG`) a multiple of 0xFFFF above any sum here, which also maps a sum
    of 0xFFFF (or 0) to the field 0, as :func:`.offload.finish` does.
    """
    found = _COLUMNS.get(ihl)
    if found is None:
        tcp = ihl >> 1
        found = _COLUMNS[ihl] = np.array([2, 5, tcp + 6, tcp + 8])
    return found


def _flag_words(
    full: int, flags: tuple[int, int, int], exact: bool, offset: int
) -> tuple[Array, Array]:
    """The TCP flags of each full segment, alone and as the 16-bit word they share with
    the data ``offset`` byte (uint64 each), cached: one stream repeats them."""
    key = (full, flags, exact, offset)
    found = _FLAG_WORDS.get(key)
    if found is None:
        if len(_FLAG_WORDS) >= _CACHED:
            _FLAG_WORDS.clear()
        bits = np.full(full, flags[1], dtype=np.uint64)
        bits[0] = flags[0]
        if exact:
            bits[-1] = flags[2]
        found = _FLAG_WORDS[key] = (bits, bits + (offset << 8))
    return found


def _offsets(full: int, mss: int) -> Array:
    """``arange(full) * mss`` as uint64, cached."""
    key = (full, mss)
    found = _OFFSETS.get(key)
    if found is None:
        if len(_OFFSETS) >= _CACHED:
            _OFFSETS.clear()
        found = _OFFSETS[key] = _index(full) * mss
    return found


def _tail(
    packet: Packet, mss: int, out: memoryview, template: tuple[bytearray, int, int], last: int
) -> int:
    """Write the last, shorter segment (after the full ones, with TCP flags ``last``) at
    ``out[0]`` through the scalar code, from the same template; returns its size."""
    ihl = (packet[0] & 0x0F) << 2
    full = (len(packet) - len(template[0])) // mss
    segment = Segment(
        packet[len(template[0]) + full * mss :],
        ((packet[4] << 8 | packet[5]) + full) & 0xFFFF,
        (int.from_bytes(packet[ihl + 4 : ihl + 8], "big") + full * mss) & 0xFFFFFFFF,
        last,
    )
    return write_segment(out, 0, template, segment)


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
    differ = np.flatnonzero(diff)
    if not len(differ):
        return count
    first = int(differ[0])
    run = first // words
    # A follower that differs from the head in PSH alone ends the run and belongs to it.
    alone = len(differ) == 1 or int(differ[1]) // words != run
    if alone and first % words == _FLAGS_WORD and int(diff[run, _FLAGS_WORD]) == _PSH_BIT:
        return run + 1
    return run


def _compared_bits(words: int) -> Array:
    """Per 32-bit header word, the bits a follower must share with the head of its run:
    all but the IP ID and checksum and the TCP checksum (the sequence number is compared
    after its step is taken off; PSH is told apart by :func:`run_lengths`)."""
    found = _COMPARED.get(words)
    if found is None:
        found = np.full(words, 0xFFFFFFFF, dtype=np.uint32)
        found[1] = 0x0000FFFF  # bytes 4-5: IP ID
        found[2] = 0xFFFF0000  # bytes 10-11: IP header checksum
        found[9] = 0x0000FFFF  # bytes 36-37: TCP checksum
        _COMPARED[words] = found
    return found


def _steps(count: int, words: int, payload: int) -> Array:
    """Rows of zeros but for the sequence word: ``row * payload`` (mod 2**32), cached;
    the same few shapes come back all the time."""
    key = (count, words, payload)
    found = _STEPS.get(key)
    if found is None:
        if len(_STEPS) >= _CACHED:
            _STEPS.clear()
        found = np.zeros((count, words), dtype=np.uint32)
        found[:, _SEQ_WORD] = (_index(count) * payload).astype(np.uint32)
        _STEPS[key] = found
    return found


def _index(count: int) -> Array:
    """``arange(count)`` as uint64, cached: the same few counts come back all the time."""
    found = _INDEXES.get(count)
    if found is None:
        found = _INDEXES[count] = np.arange(count, dtype=np.uint64)
    return found
