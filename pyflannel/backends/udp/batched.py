"""The batched data path: many packets per system call, one per datagram on the wire.

The plain path (:class:`~pyflannel.backends.udp.proxy.DataPath`) pays one system call,
and one trip through the kernel's network stack, per packet; that, not Python, is what
bounds it. Here, with the TUN opened with a virtio-net header and TCP segmentation
offload, and the socket with ``UDP_SEGMENT`` and ``UDP_GRO``:

* TUN → UDP: one read returns a whole TCP super-packet (up to 64 KiB), which is cut into
  MSS-sized segments with valid checksums (:func:`.offload.segment_tcp4`) and leaves in
  one ``UDP_SEGMENT`` send: the kernel turns it into one datagram per segment, exactly
  flanneld's wire format. Up to :data:`SLOTS` super-packets of one stream that come in
  a row are read before they are cut, all at once (:func:`.vector.segment_group`).
  Other packets for the same peer and of equal size are gathered in place and leave
  together the same way.
* UDP → TUN: one ``UDP_GRO`` receive returns many datagrams from one sender; the head of
  every run of one TCP flow is checked like on the plain path, the run is merged back
  into one super-packet (:func:`.vector.run_lengths`, :mod:`.rxmerge`), together with
  the runs of later receives that continue it, and written to the TUN at once; anything
  else is written packet by packet.

Peers need none of this: a peer running flanneld receives ordinary datagrams.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import socket
import sys

from pyflannel.backends.udp.offload import (
    F_NEEDS_CSUM,
    GSO_ECN,
    GSO_NONE,
    GSO_TCPV4,
    VNET_HDR,
    VNET_HDR_LEN,
    complete_checksum,
    segmented_size,
)
from pyflannel.backends.udp.packet import (
    Verdict,
    check_inbound,
    check_outbound,
    decrement_ttl,
    destination,
)
from pyflannel.backends.udp.proxy import BUDGET, BUFFER_SIZE, DataPath
from pyflannel.backends.udp.rxmerge import RunMerger
from pyflannel.backends.udp.vector import (
    group_key,
    run_lengths,
    segment_group,
    segment_tcp4_vec,
)

logger = logging.getLogger(__name__)

UDP_SEGMENT = 103  # SOL_UDP options (linux/udp.h); Python does not name them
UDP_GRO = 104
GSO_MAX_SEGMENTS = 64  # UDP_MAX_SEGMENTS before Linux 6.9 (128 since)
GSO_MAX_BYTES = 65507  # the most one IPv4 UDP send may carry, segmented or not
GRO_CMSG_SPACE = socket.CMSG_SPACE(4)
ZERO_VNET_HDR = bytes(VNET_HDR_LEN)
SLOTS = 4  # super-packets read before they are cut together (vector.segment_group)
RX_RING = 4 * BUFFER_SIZE  # receive buffers a merged run may span (a run is ≤ 64 KiB)
MERGE_MIN = 128  # smaller datagrams (ACKs) are written one by one: merging saves nothing


def segments_per_send(size: int) -> int:
    """How many datagrams of ``size`` bytes one ``UDP_SEGMENT`` send may carry."""
    return max(1, min(GSO_MAX_SEGMENTS, GSO_MAX_BYTES // size))


@functools.lru_cache(maxsize=64)
def _segmenting(size: int) -> tuple[int, list[tuple[int, int, bytes]]]:
    """Bytes per ``UDP_SEGMENT`` send of ``size``-byte datagrams, and its control message."""
    option = [(socket.SOL_UDP, UDP_SEGMENT, size.to_bytes(2, sys.byteorder))]
    return size * segments_per_send(size), option


def enable_socket_offloads(sock: socket.socket) -> tuple[bool, bool]:
    """Turn on ``UDP_GRO`` and probe ``UDP_SEGMENT``; returns what the kernel supports."""
    try:
        sock.setsockopt(socket.SOL_UDP, UDP_SEGMENT, 0)  # 0: no default segment size
        gso = True
    except OSError:
        gso = False
    try:
        sock.setsockopt(socket.SOL_UDP, UDP_GRO, 1)
        gro = True
    except OSError:
        gro = False
    return gso, gro


def _gro_size(ancillary: list[tuple[int, int, bytes]]) -> int:
    for level, kind, data in ancillary:
        if level == socket.SOL_UDP and kind == UDP_GRO and len(data) >= 4:
            return int.from_bytes(data[:4], sys.byteorder)
    return 0


class BatchedPath(DataPath):
    """Many packets per system call, one inner packet per datagram on the wire.

    TUN → UDP: frames carry a virtio-net header; a TCP super-packet is cut into segments
    (:func:`~pyflannel.backends.udp.vector.segment_tcp4_vec`) and other packets for the same
    peer and of the same size are gathered; each group leaves with one ``UDP_SEGMENT``
    send. UDP → TUN: one ``UDP_GRO`` receive returns many datagrams of one sender, which
    are cut into runs of one TCP flow; the head of each run is checked like a packet on
    the plain path, and runs are merged back into super-packets (:mod:`.rxmerge`), across
    receives, for one TUN write each.
    """

    def _allocate(self) -> None:
        """Room for a gathered batch, a cut super-packet and a ring of GRO receives."""
        self._vnet = bytearray(VNET_HDR_LEN)
        self._batch_view = memoryview(bytearray(GSO_MAX_BYTES + BUFFER_SIZE))
        self._segments = memoryview(bytearray(SLOTS * BUFFER_SIZE * 2))
        self._slots = memoryview(bytearray(SLOTS * BUFFER_SIZE))
        self._streaming = False  # the last frame was a super-packet: read the next to a slot
        self._group: list[tuple[str, int]] = []  # the hops of the super-packets in slots
        self._group_key: tuple[int, int, int, int] | None = None  # length, mss, ...
        self._fill = 0  # bytes gathered in _batch, all for _hop
        self._count = 0
        self._size = 0  # the segment size of the gathered packets
        self._closed = False  # a shorter, final segment has been gathered
        self._hop: tuple[str, int] | None = None
        self._rx_view = memoryview(bytearray(RX_RING))
        self._merger = RunMerger()

    def _from_tun(self) -> None:
        """Read frames straight where they are used: behind what is gathered, or, while a
        stream's super-packets come in a row, into the next slot of the group."""
        header = self._vnet
        try:
            for _ in range(BUDGET):
                if self._streaming:
                    at = len(self._group) * BUFFER_SIZE
                    into = self._slots[at : at + BUFFER_SIZE]
                else:
                    into = self._batch_view[self._fill : self._fill + BUFFER_SIZE]
                try:
                    size = os.readv(self._tun.fd, [header, into])
                except BlockingIOError:
                    return
                except OSError as exc:
                    self.counters.error(Verdict.UNSUPPORTED, exc)
                    return
                if size > VNET_HDR_LEN:
                    self._frame_out(into[: size - VNET_HDR_LEN])
        finally:
            self._cut_group()
            self._flush()

    def _frame_out(self, pkt: memoryview) -> None:
        verdict = check_outbound(pkt)
        if verdict:
            self.counters.drop(verdict)
            return
        hop = self.routes.lookup(destination(pkt))
        if hop is None:
            self._unreachable(pkt)
            return
        flags, gso_type, _hlen, gso_size, csum_start, csum_offset = VNET_HDR.unpack(self._vnet)
        decrement_ttl(pkt)
        if gso_type == GSO_NONE:
            if self._streaming:  # read into a slot: move it behind what is gathered
                self._streaming = False
                self._cut_group()
                fill = self._fill
                self._batch_view[fill : fill + len(pkt)] = pkt
                pkt = self._batch_view[fill : fill + len(pkt)]
            if flags & F_NEEDS_CSUM:
                complete_checksum(pkt, csum_start, csum_offset)
            self._gather(len(pkt), hop)
        elif gso_type & ~GSO_ECN == GSO_TCPV4 and gso_size:
            self._flush()
            self._super_packet(pkt, gso_size, hop)
        else:
            self.counters.drop(Verdict.UNSUPPORTED)

    def _super_packet(self, pkt: memoryview, mss: int, hop: tuple[str, int]) -> None:
        """Join the group in the slots, or be cut alone (after the group, to keep order)."""
        key = group_key(pkt, mss) if self._streaming else None
        if key is None or (self._group and key != self._group_key):
            self._cut_group()
            self._segment(pkt, mss, hop)
            self._streaming = True
            return
        self._group.append(hop)
        self._group_key = key
        if len(self._group) == SLOTS:
            self._cut_group()

    def _cut_group(self) -> None:
        """Cut and send the super-packets waiting in the slots."""
        group, key = self._group, self._group_key
        if not group or key is None:
            return
        length, mss = key[0], key[1]
        if len(group) == 1:
            self._segment(self._slots[:length], mss, group[0])
        else:
            span = segment_group(
                self._slots, (len(group), BUFFER_SIZE, length), mss, self._segments
            )
            size = (key[2] >> 8) + mss
            for index, hop in enumerate(group):
                self._send_run(self._segments[index * span : (index + 1) * span], size, hop)
        group.clear()

    def _gather(self, size: int, hop: tuple[str, int]) -> None:
        """Add the packet just read (at the gathering offset) to the batch."""
        if self._count and (
            hop != self._hop
            or size > self._size
            or self._closed
            or self._count >= GSO_MAX_SEGMENTS
            or self._fill + size > GSO_MAX_BYTES
        ):
            fill = self._fill
            self._flush()
            self._batch_view[:size] = bytes(self._batch_view[fill : fill + size])
        if not self._count:
            self._hop = hop
            self._size = size
        self._fill += size
        self._count += 1
        self._closed = size < self._size

    def _flush(self) -> None:
        if self._count and self._hop is not None:
            self._send_run(self._batch_view[: self._fill], self._size, self._hop)
        self._fill = self._count = 0
        self._closed = False

    def _segment(self, pkt: memoryview, mss: int, hop: tuple[str, int]) -> None:
        ihl = (pkt[0] & 0x0F) << 2
        hlen = ihl + ((pkt[ihl + 12] >> 4) << 2)
        out = self._segments
        if len(pkt) <= hlen or segmented_size(len(pkt) - hlen, mss, hlen) > len(out):
            self.counters.drop(Verdict.UNSUPPORTED)
            return
        size, written = segment_tcp4_vec(pkt, mss, out)
        self._send_run(out[:written], size, hop)

    def _send_run(self, data: memoryview, size: int, hop: tuple[str, int]) -> None:
        """Send packets of ``size`` bytes laid end to end (the last may be shorter)."""
        per_send, option = _segmenting(size)
        for start in range(0, len(data), per_send):
            chunk = data[start : start + per_send]
            if len(chunk) <= size:
                self._send(chunk, hop, 1, None)
                continue
            if not self._send(chunk, hop, -(-len(chunk) // size), option):
                # The kernel refused the batch (say the path MTU shrank below the segment
                # size): send packet by packet, which it may still fragment.
                for one in range(0, len(chunk), size):
                    self._send(chunk[one : one + size], hop, 1, None)

    def _send(
        self,
        data: memoryview,
        hop: tuple[str, int],
        count: int,
        option: list[tuple[int, int, bytes]] | None,
    ) -> bool:
        """One send of ``count`` packets; False only when a segmented send was refused."""
        peer = self._peer_socks.get(hop[0]) if self._peer_socks is not None else None
        try:
            if peer is not None:
                peer.sendmsg([data], option or ())
            elif option is None:
                self._sock.sendto(data, hop)
            else:
                self._sock.sendmsg([data], option, 0, hop)
        except BlockingIOError:
            self.counters.drops[Verdict.SEND_FAILED] += count
            return True
        except OSError as exc:
            if option is not None and exc.errno in (errno.EINVAL, errno.EMSGSIZE):
                return False
            self.counters.error(Verdict.SEND_FAILED, exc)
            self.counters.drops[Verdict.SEND_FAILED] += count - 1
            return True
        self.counters.tx_packets += count
        self.counters.tx_sends += 1
        self.counters.tx_bytes += len(data)
        return True

    def _prepare_peer_socket(self, sock: socket.socket) -> None:
        """As the main socket: large buffers, and ``UDP_GRO``."""
        super()._prepare_peer_socket(sock)
        enable_socket_offloads(sock)

    def _from_udp(self) -> None:
        """GRO receives on the main socket: from lease holders only, unless
        ``accept_unknown``."""
        self._receive(self._sock, not self._accept_unknown)

    def _from_peer(self, sock: socket.socket) -> None:
        """GRO receives on a peer's connected socket: the kernel matched their source."""
        self._receive(sock, False)

    def _receive(self, sock: socket.socket, check_source: bool) -> None:
        """Drain ``sock`` into a ring of receive buffers, merging runs across receives.

        A run kept pending by the merger points into the ring, so the ring is flushed
        before it wraps, and at the end of every drain. What the kernel answered to the
        frames written (ACKs, or more data for a sender) is forwarded right after, which
        spares the event loop a turn.
        """
        view = self._rx_view
        fill = 0
        delivered = False
        try:
            for _ in range(BUDGET):
                if fill + BUFFER_SIZE > len(view):
                    self._flush_merged()
                    fill = 0
                try:
                    size, ancillary, _flags, (source, _port) = sock.recvmsg_into(
                        [view[fill : fill + BUFFER_SIZE]], GRO_CMSG_SPACE
                    )
                except BlockingIOError:
                    return
                except ConnectionRefusedError as exc:  # an ICMP error for a peer socket
                    self.counters.note(exc)
                    continue
                except OSError as exc:
                    self.counters.error(Verdict.UNSUPPORTED, exc)
                    return
                segment = _gro_size(ancillary) or size
                if check_source and not self.routes.holds_lease(source):
                    self.counters.drops[Verdict.UNKNOWN_PEER] += -(-size // segment)
                    continue
                self._deliver(view[fill : fill + size], segment)
                fill += size
                delivered = True
        finally:
            self._flush_merged()
            if delivered:
                self._from_tun()

    def _deliver(self, data: memoryview, segment: int) -> None:
        """Check the packets of one receive; runs of one TCP flow go to the merger.

        The head of a run is checked in full; the rest share its headers (the merge
        rule, :func:`.vector.run_lengths`, compares them), and their own headers are
        dropped in the merge.
        """
        pos = 0
        end = len(data)
        mergeable = end > segment > MERGE_MIN
        while pos < end:
            count = run_lengths(data[pos:], segment) if mergeable and end - pos > segment else 1
            head = data[pos : pos + segment]
            verdict = check_inbound(head, self._network, self._netmask)
            if verdict:
                self.counters.drops[verdict] += count
            elif count == 1:
                self._flush_merged()
                decrement_ttl(head)
                self._write_frame([ZERO_VNET_HDR, head], 1)
            else:
                ready = self._merger.add(data[pos : pos + count * segment], segment, count)
                if ready is not None:
                    self._write_frame(*ready)
            pos += count * segment

    def _flush_merged(self) -> None:
        ready = self._merger.flush()
        if ready is not None:
            self._write_frame(*ready)

    def _write_frame(self, parts: list[bytes | bytearray | memoryview], count: int) -> None:
        try:
            size = os.writev(self._tun.fd, parts)
        except BlockingIOError:
            self.counters.drops[Verdict.SEND_FAILED] += count
            return
        except OSError as exc:
            self.counters.error(Verdict.SEND_FAILED, exc)
            return
        self.counters.rx_packets += count
        self.counters.rx_writes += 1
        self.counters.rx_bytes += size - VNET_HDR_LEN

    def _write_tun(self, pkt: bytes | memoryview) -> bool:
        try:
            os.writev(self._tun.fd, [ZERO_VNET_HDR, pkt])
        except OSError as exc:
            self.counters.error(Verdict.SEND_FAILED, exc)
            return False
        return True
