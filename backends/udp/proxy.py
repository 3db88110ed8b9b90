"""The udp backend's data path: packets between ``flannel0`` and the UDP socket.

Everything runs in the event loop thread, with no await and no callback per packet: one
``loop.add_reader`` callback per file descriptor reads packets into a preallocated buffer
until the kernel has no more (EAGAIN) or a budget is spent, so the other direction and
the control plane get their turn. A send that would block drops the packet (TCP will
retransmit), as a router with a full queue would; nothing is queued in Python.

TUN → UDP: a packet for a subnet no peer holds gets flanneld's ICMP "net unreachable"
back into the TUN; otherwise its TTL is decremented and it is sent, unchanged apart from
that, to the peer's public IP on our port. UDP → TUN: only datagrams from an address
that holds a lease (unless ``accept_unknown``) that are one valid IPv4 packet for our
subnet (see :func:`~pyflannel.backends.udp.packet.check_inbound`) reach the kernel.

Drops are counted by reason, never logged per packet; :meth:`Counters.summary` is
logged at DEBUG periodically and at shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
from ipaddress import IPv4Address, IPv4Network

from pyflannel.backends.udp.offload import (
    F_NEEDS_CSUM,
    GSO_ECN,
    GSO_NONE,
    GSO_TCPV4,
    VNET_HDR,
    VNET_HDR_LEN,
    coalesce_runs,
    complete_checksum,
    merge_headers,
    segment_tcp4,
    segmented_size,
)
from pyflannel.backends.udp.packet import (
    Verdict,
    check_inbound,
    check_outbound,
    decrement_ttl,
    destination,
    icmp_net_unreachable,
)
from pyflannel.backends.udp.routes import RouteTable
from pyflannel.backends.udp.tun import Tun

logger = logging.getLogger(__name__)

BUDGET = 256  # packets (or batches) handled per wake-up and direction
BUFFER_SIZE = 65536  # room for any IPv4 packet, whatever the MTU
SOCKET_BUFFER = 4 << 20  # a burst of TCP segments must not overflow the socket while we wait
SO_SNDBUFFORCE = 32  # Linux: like SO_SNDBUF, beyond net.core.wmem_max (CAP_NET_ADMIN)
SO_RCVBUFFORCE = 33
UDP_SEGMENT = 103  # SOL_UDP options (linux/udp.h); Python does not name them
UDP_GRO = 104
GSO_MAX_SEGMENTS = 64  # UDP_MAX_SEGMENTS before Linux 6.9 (128 since)
GSO_MAX_BYTES = 65507  # the most one IPv4 UDP send may carry, segmented or not
GRO_CMSG_SPACE = socket.CMSG_SPACE(4)
ZERO_VNET_HDR = bytes(VNET_HDR_LEN)


class Counters:
    """Packets and bytes forwarded each way, and drops by :class:`Verdict`."""

    __slots__ = ("drops", "errors", "rx_bytes", "rx_packets", "tx_bytes", "tx_packets")

    def __init__(self) -> None:
        self.tx_packets = 0  # TUN → UDP
        self.tx_bytes = 0
        self.rx_packets = 0  # UDP → TUN
        self.rx_bytes = 0
        self.drops = [0] * len(Verdict)
        self.errors: dict[str, int] = {}  # socket/TUN errors other than EAGAIN, by text

    def drop(self, verdict: Verdict) -> None:
        self.drops[verdict] += 1

    def error(self, verdict: Verdict, exc: OSError) -> None:
        """A send or write failed for a reason worth reporting (not a full buffer)."""
        self.drops[verdict] += 1
        key = exc.strerror or type(exc).__name__
        self.errors[key] = self.errors.get(key, 0) + 1

    def as_dict(self) -> dict[str, int]:
        """Every counter by name (drops by lower-case :class:`Verdict` name)."""
        counts = {
            "tx_packets": self.tx_packets,
            "tx_bytes": self.tx_bytes,
            "rx_packets": self.rx_packets,
            "rx_bytes": self.rx_bytes,
        }
        for verdict, count in zip(Verdict, self.drops, strict=True):
            if verdict is not Verdict.OK:
                counts[verdict.name.lower()] = count
        return counts

    def summary(self) -> str:
        """One line for the log: traffic each way, then every non-zero drop counter."""
        parts = [
            f"tun->udp {self.tx_packets} pkts {self.tx_bytes} B",
            f"udp->tun {self.rx_packets} pkts {self.rx_bytes} B",
        ]
        parts += [
            f"{verdict.name.lower()} {count}"
            for verdict, count in zip(Verdict, self.drops, strict=True)
            if count and verdict is not Verdict.OK
        ]
        parts += [f"error {text!r} {count}" for text, count in sorted(self.errors.items())]
        return ", ".join(parts)


class DataPath:
    """The plain data path: one packet per read, per send and per write."""

    def __init__(
        self,
        tun: Tun,
        sock: socket.socket,
        *,
        subnet: IPv4Network,
        routes: RouteTable,
        accept_unknown: bool = False,
    ) -> None:
        self.routes = routes
        self.counters = Counters()
        self._tun = tun
        self._sock = sock
        self._local = subnet.network_address
        self._network = int(subnet.network_address)
        self._netmask = int(subnet.netmask)
        self._accept_unknown = accept_unknown
        self._out = bytearray(BUFFER_SIZE)
        self._in = bytearray(BUFFER_SIZE)
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Start forwarding (register both readers with the running loop)."""
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._tun.fd, self._from_tun)
        self._loop.add_reader(self._sock.fileno(), self._from_udp)

    def stop(self) -> None:
        """Stop forwarding; packets wait in the kernel queues (or are dropped there)."""
        if self._loop is not None:
            self._loop.remove_reader(self._tun.fd)
            self._loop.remove_reader(self._sock.fileno())
            self._loop = None

    def _from_tun(self) -> None:
        buffers = [self._out]
        view = memoryview(self._out)
        for _ in range(BUDGET):
            try:
                size = os.readv(self._tun.fd, buffers)
            except BlockingIOError:
                return
            except OSError as exc:
                self.counters.error(Verdict.UNSUPPORTED, exc)
                return
            self._forward_out(view[:size])

    def _forward_out(self, pkt: memoryview) -> None:
        verdict = check_outbound(pkt)
        if verdict:
            self.counters.drop(verdict)
            return
        hop = self.routes.lookup(destination(pkt))
        if hop is None:
            self._unreachable(pkt)
            return
        decrement_ttl(pkt)
        try:
            self._sock.sendto(pkt, hop)
        except BlockingIOError:
            self.counters.drop(Verdict.SEND_FAILED)
            return
        except OSError as exc:
            self.counters.error(Verdict.SEND_FAILED, exc)
            return
        self.counters.tx_packets += 1
        self.counters.tx_bytes += len(pkt)

    def _unreachable(self, pkt: memoryview) -> None:
        self.counters.drop(Verdict.NO_ROUTE)
        reply = icmp_net_unreachable(pkt, self._local)
        if reply is not None:
            self._write_tun(reply)

    def _from_udp(self) -> None:
        view = memoryview(self._in)
        recv = self._sock.recvfrom_into
        for _ in range(BUDGET):
            try:
                size, (source, _port) = recv(self._in)
            except BlockingIOError:
                return
            except OSError as exc:
                self.counters.error(Verdict.UNSUPPORTED, exc)
                return
            if not self._accept_unknown and not self.routes.holds_lease(source):
                self.counters.drop(Verdict.UNKNOWN_PEER)
                continue
            self._forward_in(view[:size])

    def _forward_in(self, pkt: memoryview) -> None:
        verdict = check_inbound(pkt, self._network, self._netmask)
        if verdict:
            self.counters.drop(verdict)
            return
        decrement_ttl(pkt)
        if self._write_tun(pkt):
            self.counters.rx_packets += 1
            self.counters.rx_bytes += len(pkt)

    def _write_tun(self, pkt: bytes | memoryview) -> bool:
        try:
            os.write(self._tun.fd, pkt)
        except BlockingIOError:
            self.counters.drop(Verdict.SEND_FAILED)
            return False
        except OSError as exc:
            self.counters.error(Verdict.SEND_FAILED, exc)
            return False
        return True


def open_socket(address: IPv4Address, port: int) -> socket.socket:
    """The non-blocking UDP socket on ``address:port`` (flanneld binds IfaceAddr:Port)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        _grow_buffer(sock, SO_RCVBUFFORCE, socket.SO_RCVBUF)
        _grow_buffer(sock, SO_SNDBUFFORCE, socket.SO_SNDBUF)
        sock.bind((str(address), port))
    except OSError:
        sock.close()
        raise
    return sock


def _grow_buffer(sock: socket.socket, forced: int, plain: int) -> None:
    """A large socket buffer: the event loop cannot read while it is sending a burst.

    The default (about 200 KiB, some 90 full-size packets) overflows under one TCP
    stream and every overflow costs a retransmission; without CAP_NET_ADMIN the kernel
    caps the request at net.core.[rw]mem_max.
    """
    try:
        sock.setsockopt(socket.SOL_SOCKET, forced, SOCKET_BUFFER)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER)


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


class OffloadPath(DataPath):
    """Many packets per system call, one inner packet per datagram on the wire.

    TUN → UDP: frames carry a virtio-net header; a TCP super-packet is cut into segments
    (:func:`~pyflannel.backends.udp.offload.segment_tcp4`) and other packets for the same
    peer and of the same size are gathered; each group leaves with one ``UDP_SEGMENT``
    send. UDP → TUN: one ``UDP_GRO`` receive returns many datagrams of one sender; each
    is checked like on the plain path, and runs of one TCP flow are merged back into a
    super-packet for one TUN write.
    """

    def __init__(
        self,
        tun: Tun,
        sock: socket.socket,
        *,
        subnet: IPv4Network,
        routes: RouteTable,
        accept_unknown: bool = False,
        gso: bool = True,
    ) -> None:
        super().__init__(tun, sock, subnet=subnet, routes=routes, accept_unknown=accept_unknown)
        self._gso = gso
        self._vnet = bytearray(VNET_HDR_LEN)
        self._batch = bytearray(BUFFER_SIZE * 2)
        self._batch_view = memoryview(self._batch)
        self._fill = 0  # bytes gathered in _batch, all for _hop
        self._count = 0
        self._size = 0  # the segment size of the gathered packets
        self._closed = False  # a shorter, final segment has been gathered
        self._hop: tuple[str, int] | None = None

    def _from_tun(self) -> None:
        buffers = [self._vnet, self._out]
        view = memoryview(self._out)
        try:
            for _ in range(BUDGET):
                try:
                    size = os.readv(self._tun.fd, buffers)
                except BlockingIOError:
                    return
                except OSError as exc:
                    self.counters.error(Verdict.UNSUPPORTED, exc)
                    return
                if size > VNET_HDR_LEN:
                    self._frame_out(view[: size - VNET_HDR_LEN])
        finally:
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
            if flags & F_NEEDS_CSUM:
                complete_checksum(pkt, csum_start, csum_offset)
            self._gather(pkt, hop)
        elif gso_type & ~GSO_ECN == GSO_TCPV4 and gso_size:
            self._segment(pkt, gso_size, hop)
        else:
            self.counters.drop(Verdict.UNSUPPORTED)

    def _gather(self, pkt: memoryview, hop: tuple[str, int]) -> None:
        size = len(pkt)
        if self._count and (
            hop != self._hop
            or size > self._size
            or self._closed
            or self._count >= GSO_MAX_SEGMENTS
            or self._fill + size > GSO_MAX_BYTES
        ):
            self._flush()
        if not self._count:
            self._hop = hop
            self._size = size
        self._batch_view[self._fill : self._fill + size] = pkt
        self._fill += size
        self._count += 1
        self._closed = size < self._size
        if not self._gso:
            self._flush()

    def _flush(self) -> None:
        if self._count and self._hop is not None:
            self._send_run(self._batch_view[: self._fill], self._size, self._hop)
        self._fill = self._count = 0
        self._closed = False

    def _segment(self, pkt: memoryview, mss: int, hop: tuple[str, int]) -> None:
        self._flush()
        ihl = (pkt[0] & 0x0F) << 2
        hlen = ihl + ((pkt[ihl + 12] >> 4) << 2)
        if len(pkt) <= hlen or segmented_size(len(pkt) - hlen, mss, hlen) > len(self._batch):
            self.counters.drop(Verdict.UNSUPPORTED)
            return
        size, written = segment_tcp4(pkt, mss, self._batch_view)
        self._send_run(self._batch_view[:written], size, hop)

    def _send_run(self, data: memoryview, size: int, hop: tuple[str, int]) -> None:
        """Send packets of ``size`` bytes laid end to end (the last may be shorter)."""
        per_send = size * min(GSO_MAX_SEGMENTS, GSO_MAX_BYTES // size) if self._gso else size
        for start in range(0, len(data), per_send):
            chunk = data[start : start + per_send]
            count = -(-len(chunk) // size)
            try:
                if count == 1:
                    self._sock.sendto(chunk, hop)
                else:
                    option = [(socket.SOL_UDP, UDP_SEGMENT, size.to_bytes(2, sys.byteorder))]
                    self._sock.sendmsg([chunk], option, 0, hop)
            except BlockingIOError:
                self.counters.drops[Verdict.SEND_FAILED] += count
                continue
            except OSError as exc:
                self.counters.error(Verdict.SEND_FAILED, exc)
                continue
            self.counters.tx_packets += count
            self.counters.tx_bytes += len(chunk)

    def _from_udp(self) -> None:
        view = memoryview(self._in)
        buffers = [self._in]
        for _ in range(BUDGET):
            try:
                size, ancillary, _flags, (source, _port) = self._sock.recvmsg_into(
                    buffers, GRO_CMSG_SPACE
                )
            except BlockingIOError:
                return
            except OSError as exc:
                self.counters.error(Verdict.UNSUPPORTED, exc)
                return
            segment = _gro_size(ancillary) or size
            if not self._accept_unknown and not self.routes.holds_lease(source):
                self.counters.drops[Verdict.UNKNOWN_PEER] += -(-size // segment)
                continue
            self._deliver(view[:size], segment)

    def _deliver(self, data: memoryview, segment: int) -> None:
        packets = []
        for start in range(0, len(data), segment):
            pkt = data[start : start + segment]
            verdict = check_inbound(pkt, self._network, self._netmask)
            if verdict:
                self.counters.drop(verdict)
            else:
                packets.append(pkt)
        if len(packets) == 1:
            decrement_ttl(packets[0])
            self._write_frame([ZERO_VNET_HDR, packets[0]], 1)
            return
        for first, count in coalesce_runs(packets):
            if count == 1:
                decrement_ttl(packets[first])
                self._write_frame([ZERO_VNET_HDR, packets[first]], 1)
            else:
                self._write_merged(packets[first : first + count])

    def _write_merged(self, run: list[memoryview]) -> None:
        head = run[0]
        hlen = 20 + ((head[32] >> 4) << 2)
        total = len(head) + sum(len(pkt) - hlen for pkt in run[1:])
        head[8] -= 1  # the TTL; merge_headers recomputes the header checksum
        vnet = merge_headers(head, total, run[-1][33], len(head) - hlen)
        header = bytearray(VNET_HDR_LEN)
        vnet.pack_into(header)
        self._write_frame([header, head, *(pkt[hlen:] for pkt in run[1:])], len(run))

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
        self.counters.rx_bytes += size - VNET_HDR_LEN

    def _write_tun(self, pkt: bytes | memoryview) -> bool:
        try:
            os.writev(self._tun.fd, [ZERO_VNET_HDR, pkt])
        except OSError as exc:
            self.counters.error(Verdict.SEND_FAILED, exc)
            return False
        return True
