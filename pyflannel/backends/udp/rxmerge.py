"""Merging runs of one TCP flow across ``UDP_GRO`` receives, for fewer, larger TUN writes.

One ``UDP_GRO`` receive holds what the peer sent in one ``UDP_SEGMENT`` send, which is
one TCP super-packet of the sending host, often half of 64 KiB. Writing each as its own
super-packet costs the kernel a full TCP receive (and usually an ACK, which travels
back through both forwarders) per receive. :class:`RunMerger` keeps the last run
pending while the next receives continue it (same flow, next sequence number, same
segment size, no PSH yet, at most 64 KiB in all) and hands back one frame to write
when the run ends; the caller flushes whatever is pending before it waits for input,
so nothing is held back longer than one drain of the socket.

A run handed to :meth:`RunMerger.add` has been checked already: its head in full
(:func:`~pyflannel.backends.udp.packet.check_inbound`), its followers against the head
(:func:`~pyflannel.backends.udp.vector.run_lengths`). The memory of a pending run must
stay untouched until it is flushed. Pure code, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pyflannel.backends.udp.offload import TCP_PSH, merge_headers, same_flow

MAX_MERGED = 65535  # an IPv4 total length

Frame = tuple[list[bytes | bytearray | memoryview], int]
"""The buffers of one TUN write (virtio-net header first) and the packets they carry."""


@dataclass(slots=True)
class _Run:
    head: memoryview  # the first segment, headers and payload
    block: memoryview  # the payloads of every later segment, end to end
    filled: int  # bytes of ``block`` in use
    segment: int  # bytes per segment, headers included
    hlen: int
    count: int
    next_seq: int
    last_flags: int

    @property
    def total(self) -> int:
        """Bytes once merged: the head and the payloads after it."""
        return len(self.head) + self.filled


class RunMerger:
    """Pending run of one TCP flow, grown by the runs of later receives that continue it.

    The payloads after the head are copied end to end into one of two blocks (one NumPy
    copy per receive), so that a frame is three buffers for the kernel rather than one
    per segment. A frame handed back stays valid until the next call but one: the
    blocks alternate between runs.
    """

    __slots__ = ("_blocks", "_run")

    def __init__(self) -> None:
        self._run: _Run | None = None
        self._blocks = (memoryview(bytearray(MAX_MERGED)), memoryview(bytearray(MAX_MERGED)))

    def add(self, run: memoryview, segment: int, count: int) -> Frame | None:
        """Take ``count`` segments of ``segment`` bytes; returns a frame to write first, if any."""
        pending = self._run
        if pending is not None and self._continues(pending, run, segment, count):
            payload = segment - pending.hlen
            pending.filled += _copy_payloads(
                run[: count * segment], segment, pending.hlen, pending.block[pending.filled :]
            )
            pending.count += count
            pending.next_seq = (pending.next_seq + count * payload) & 0xFFFFFFFF
            pending.last_flags = run[(count - 1) * segment + 33]
            return None
        ready = self.flush()
        block = (
            self._blocks[0]
            if pending is None or pending.block is self._blocks[1]
            else self._blocks[1]
        )
        self._run = _start(run, segment, count, block)
        return ready

    def flush(self) -> Frame | None:
        """The pending run as one frame to write (None when nothing is pending)."""
        pending, self._run = self._run, None
        if pending is None:
            return None
        head = pending.head
        head[8] -= 1  # the TTL (checked above 1); merge_headers recomputes the checksum
        mss = pending.segment - pending.hlen
        header = merge_headers(head, pending.total, pending.last_flags, mss)
        return [header, head, pending.block[: pending.filled]], pending.count

    @staticmethod
    def _continues(pending: _Run, run: memoryview, segment: int, count: int) -> bool:
        payload = segment - pending.hlen
        return (
            segment == pending.segment
            and not pending.last_flags & TCP_PSH
            and pending.total + count * payload <= MAX_MERGED
            and int.from_bytes(run[24:28], "big") == pending.next_seq
            and same_flow(pending.head, run, pending.hlen)
        )


def _start(run: memoryview, segment: int, count: int, block: memoryview) -> _Run:
    head = run[:segment]
    hlen = 20 + ((head[32] >> 4) << 2)
    payload = segment - hlen
    filled = _copy_payloads(run[segment : count * segment], segment, hlen, block)
    seq = (int.from_bytes(head[24:28], "big") + count * payload) & 0xFFFFFFFF
    last_flags = run[(count - 1) * segment + 33]
    return _Run(head, block, filled, segment, hlen, count, seq, last_flags)


def _copy_payloads(source: memoryview, segment: int, hlen: int, block: memoryview) -> int:
    """Copy the payloads of the segments in ``source`` end to end to ``block``; returns
    the bytes copied."""
    rows = len(source) // segment
    payload = segment - hlen
    if rows:
        copied = np.ndarray((rows, payload), np.uint8, source, hlen, (segment, 1))
        np.ndarray((rows, payload), np.uint8, block)[:] = copied
    return rows * payload
