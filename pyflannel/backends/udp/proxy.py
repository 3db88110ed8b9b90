"""The udp backend's data path: packets between ``flannel0`` and the UDP socket.

Everything runs in the event loop thread, with no await and no callback per packet: one
``loop.add_reader`` callback per file descriptor reads packets into a preallocated buffer
until the kernel has no more (EAGAIN) or a budget is spent, so the other direction and
the control plane get their turn. A send that would block drops the packet (TCP will
retransmit), as a router with a full queue would; nothing is queued in Python.

TUN → UDP: a packet for a subnet no peer holds gets flanneld's ICMP "net unreachable"
back into the TUN (from :func:`icmp_source`); any other has its TTL decremented and is
sent, unchanged apart from that, to the peer's public IP on our port. UDP → TUN: only
datagrams from an address that holds a lease (unless ``accept_unknown``) that are one
valid IPv4 packet for our subnet (:func:`~pyflannel.backends.udp.packet.check_inbound`)
reach the kernel.

:class:`DataPath` here is the plain path, one packet per system call, as flanneld's;
:mod:`.batched` moves many per call. Drops are counted by reason, never logged per
packet; :meth:`Counters.summary` is logged at DEBUG periodically and at shutdown.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import socket
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network

from pyflannel.backends.udp.packet import (
    IPV4_HEADER_MIN,
    Verdict,
    check_inbound,
    check_outbound,
    decrement_ttl,
    icmp_net_unreachable,
)
from pyflannel.backends.udp.peersocks import PeerSockets
from pyflannel.backends.udp.routes import RouteTable, SockAddr
from pyflannel.backends.udp.tun import Tun

logger = logging.getLogger(__name__)

BUDGET = 256  # packets (or batches) handled per wake-up and direction
BUFFER_SIZE = 65536  # room for any IPv4 packet, whatever the MTU
STATS_INTERVAL = 60.0  # seconds between DEBUG lines with the counters (when they changed)
SOCKET_BUFFER = 4 << 20  # a burst of TCP segments must not overflow the socket while we wait
SO_SNDBUFFORCE = 32  # Linux: like SO_SNDBUF, beyond net.core.wmem_max (CAP_NET_ADMIN)
SO_RCVBUFFORCE = 33


class Counters:
    """Packets and bytes forwarded each way, and drops by :class:`Verdict`."""

    __slots__ = (
        "drops",
        "errors",
        "rx_bytes",
        "rx_packets",
        "rx_writes",
        "tx_bytes",
        "tx_packets",
        "tx_sends",
    )

    def __init__(self) -> None:
        self.tx_packets = 0  # TUN → UDP
        self.tx_bytes = 0
        self.tx_sends = 0  # system calls that sent them (fewer than packets when batching)
        self.rx_packets = 0  # UDP → TUN
        self.rx_bytes = 0
        self.rx_writes = 0  # TUN writes that delivered them
        self.drops = [0] * len(Verdict)
        self.errors: dict[str, int] = {}  # socket/TUN errors other than EAGAIN, by text

    def drop(self, verdict: Verdict) -> None:
        self.drops[verdict] += 1

    def error(self, verdict: Verdict, exc: OSError) -> None:
        """A send or write failed for a reason worth reporting (not a full buffer)."""
        self.drops[verdict] += 1
        self.note(exc)

    def note(self, exc: OSError) -> None:
        """An error that cost no packet (say a peer's ICMP "port unreachable")."""
        key = exc.strerror or type(exc).__name__
        self.errors[key] = self.errors.get(key, 0) + 1

    def as_dict(self) -> dict[str, int]:
        """Every counter by name (drops by lower-case :class:`Verdict` name)."""
        counts = {
            "tx_packets": self.tx_packets,
            "tx_bytes": self.tx_bytes,
            "tx_sends": self.tx_sends,
            "rx_packets": self.rx_packets,
            "rx_bytes": self.rx_bytes,
            "rx_writes": self.rx_writes,
        }
        for verdict, count in zip(Verdict, self.drops, strict=True):
            if verdict is not Verdict.OK:
                counts[verdict.name.lower()] = count
        return counts

    def summary(self) -> str:
        """One line for the log: traffic each way, then every non-zero drop counter."""
        parts = [
            f"tun->udp {self.tx_packets} pkts {self.tx_bytes} B in {self.tx_sends} sends",
            f"udp->tun {self.rx_packets} pkts {self.rx_bytes} B in {self.rx_writes} writes",
        ]
        parts += [
            f"{verdict.name.lower()} {count}"
            for verdict, count in zip(Verdict, self.drops, strict=True)
            if count and verdict is not Verdict.OK
        ]
        parts += [f"error {text!r} {count}" for text, count in sorted(self.errors.items())]
        return ", ".join(parts)


class DataPath:
    """The plain data path: one packet per read, per send and per write.

    Packets to and from a peer go through a socket connected to it (:mod:`.peersocks`),
    datagrams from anyone else through the main socket.
    """

    def __init__(
        self,
        tun: Tun,
        sock: socket.socket,
        *,
        subnet: IPv4Network,
        routes: RouteTable,
        accept_unknown: bool = False,
        icmp_source: IPv4Address | None = None,
    ) -> None:
        self._routes = routes
        self.counters = Counters()
        self._tun = tun
        # os.readv wants a list of buffers per call; FileIO.readinto takes one (0.15 µs
        # less per packet). closefd=False: the TUN's fd stays the backend's to close.
        self._tun_file = io.FileIO(tun.fd, "rb", closefd=False)
        self._sock = sock
        self._icmp_source = icmp_source or subnet.network_address
        self._network = int(subnet.network_address)
        self._netmask = int(subnet.netmask)
        self._accept_unknown = accept_unknown
        self._allocate()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._report: asyncio.TimerHandle | None = None
        self._reported = ""
        self._peer_socks: PeerSockets | None = None

    @property
    def routes(self) -> RouteTable:
        """Where packets go; setting it also opens and closes the peers' sockets."""
        return self._routes

    @routes.setter
    def routes(self, table: RouteTable) -> None:
        self._routes = table
        if self._peer_socks is not None:
            self._peer_socks.sync(table.peers)

    def _allocate(self) -> None:
        """The preallocated buffers the readers fill: one packet each way."""
        self._out = bytearray(BUFFER_SIZE)
        self._in = bytearray(BUFFER_SIZE)

    def start(self) -> None:
        """Start forwarding (register both readers with the running loop)."""
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._tun.fd, self._from_tun)
        self._loop.add_reader(self._sock.fileno(), self._from_udp)
        self._report = self._loop.call_later(STATS_INTERVAL, self._log_counters)
        self._peer_socks = PeerSockets(
            self._sock, self._loop, self._from_peer, self._prepare_peer_socket
        )
        self._peer_socks.sync(self._routes.peers)

    def stop(self) -> None:
        """Stop forwarding; packets wait in the kernel queues (or are dropped there)."""
        if self._loop is not None:
            self._loop.remove_reader(self._tun.fd)
            self._loop.remove_reader(self._sock.fileno())
            self._loop = None
        if self._peer_socks is not None:
            self._peer_socks.close()
            self._peer_socks = None
        if self._report is not None:
            self._report.cancel()
            self._report = None

    def _log_counters(self) -> None:
        summary = self.counters.summary()
        if summary != self._reported:
            logger.debug("udp data path: %s", summary)
            self._reported = summary
        if self._loop is not None:
            self._report = self._loop.call_later(STATS_INTERVAL, self._log_counters)

    def _from_tun(self) -> None:
        """Forward what the TUN holds: one flat loop, the per-packet work inlined.

        This and :meth:`_drain` run once per packet at line rate, so they avoid
        calls and attribute lookups per packet; counters are added up per wake-up.
        """
        readinto, buffer, view = self._tun_file.readinto, self._out, memoryview(self._out)
        lookup = self._routes.lookup
        sent = sent_bytes = 0
        last = send = None  # the previous destination and how to send there: streams repeat
        try:
            for _ in range(BUDGET):
                try:
                    size = readinto(buffer)
                except OSError as exc:
                    self.counters.error(Verdict.UNSUPPORTED, exc)
                    return
                if size is None:  # EAGAIN: FileIO says so without an exception
                    return
                if size < IPV4_HEADER_MIN or view[0] >> 4 != 4 or view[8] <= 1:
                    self.counters.drop(check_outbound(view[:size]))
                    continue
                dst = view[16:20].tobytes()
                if dst != last:
                    last, send = dst, self._sender(lookup(int.from_bytes(dst, "big")))
                if send is None:
                    self._unreachable(view[:size])
                    continue
                decrement_ttl(view)
                try:
                    send(view[:size])
                except OSError as exc:
                    self._send_failed(exc)
                    continue
                sent += 1
                sent_bytes += size
        finally:
            self.counters.tx_packets += sent
            self.counters.tx_sends += sent
            self.counters.tx_bytes += sent_bytes

    def _sender(self, hop: SockAddr | None) -> Callable[[memoryview], int] | None:
        """How to send to ``hop``: its peer's socket, else the main socket (None: no route)."""
        if hop is None:
            return None
        peer = self._peer_socks.get(hop[0]) if self._peer_socks is not None else None
        if peer is not None:
            return peer.send
        sendto = self._sock.sendto
        return lambda data: sendto(data, hop)

    def _send_failed(self, exc: OSError) -> None:
        """A send or TUN write was refused: a full buffer is a drop, anything else an error."""
        if isinstance(exc, BlockingIOError):
            self.counters.drop(Verdict.SEND_FAILED)
        else:
            self.counters.error(Verdict.SEND_FAILED, exc)

    def _unreachable(self, pkt: memoryview) -> None:
        self.counters.drop(Verdict.NO_ROUTE)
        reply = icmp_net_unreachable(pkt, self._icmp_source)
        if reply is not None:
            self._write_tun(reply)

    def _prepare_peer_socket(self, sock: socket.socket) -> None:
        """Set up a peer's socket as the main one (before it is bound)."""
        grow_buffers(sock)

    def _from_udp(self) -> None:
        """Datagrams on the main socket: from lease holders only, unless ``accept_unknown``."""
        self._drain(self._sock, None if self._accept_unknown else self._routes.peers)

    def _from_peer(self, sock: socket.socket) -> None:
        """Datagrams on a peer's connected socket: the kernel matched their source."""
        self._drain(sock, None)

    def _drain(self, sock: socket.socket, peers: frozenset[str] | None) -> None:
        """Write what ``sock`` holds into the TUN; ``peers``: the sources to accept (None:
        any, and then the source is not even asked for)."""
        view = memoryview(self._in)
        fd, buffer = self._tun.fd, self._in
        recv, recv_from = sock.recv_into, sock.recvfrom_into
        network, netmask, counters = self._network, self._netmask, self.counters
        written = written_bytes = 0
        try:
            for _ in range(BUDGET):
                try:
                    if peers is None:
                        size = recv(buffer)
                    else:
                        size, (source, _port) = recv_from(buffer)
                        if source not in peers:
                            counters.drops[Verdict.UNKNOWN_PEER] += 1
                            continue
                except BlockingIOError:
                    return
                except ConnectionRefusedError as exc:  # an ICMP error for a connected socket
                    counters.note(exc)
                    continue
                except OSError as exc:
                    counters.error(Verdict.UNSUPPORTED, exc)
                    return
                pkt = view[:size]
                if (  # check_inbound's checks for a header without options, inlined
                    size < IPV4_HEADER_MIN
                    or view[0] != 0x45
                    or (view[2] << 8 | view[3]) != size
                    or int.from_bytes(view[:IPV4_HEADER_MIN], "big") % 0xFFFF
                    or int.from_bytes(view[16:20], "big") & netmask != network
                    or view[8] <= 1
                ):
                    verdict = check_inbound(pkt, network, netmask)
                    if verdict:
                        counters.drops[verdict] += 1
                        continue
                decrement_ttl(pkt)
                try:
                    os.write(fd, pkt)
                except OSError as exc:
                    self._send_failed(exc)
                    continue
                written += 1
                written_bytes += size
        finally:
            counters.rx_packets += written
            counters.rx_writes += written
            counters.rx_bytes += written_bytes
            if written:  # forward the kernel's answers (ACKs) without waiting a loop turn
                self._from_tun()

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


def icmp_source(network: IPv4Network) -> IPv4Address:
    """The source address of the ICMP errors the data path writes into the TUN.

    flanneld uses the own subnet's network address, which is the TUN's own address, so
    the kernel discards every one of them as a martian (a packet arriving from outside
    with a local source address). The flannel Network's own address is used instead: no
    host holds it (subnet allocation starts after the first subnet) and the reverse path
    to it is the TUN. Only a host that leased the first subnet (a ``SubnetMin`` at the
    start of the Network) is back to flanneld's case.
    """
    return network.network_address


def open_socket(address: IPv4Address, port: int) -> socket.socket:
    """The non-blocking UDP socket on ``address:port`` (flanneld binds IfaceAddr:Port)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        grow_buffers(sock)
        sock.bind((str(address), port))
    except OSError:
        sock.close()
        raise
    return sock


def grow_buffers(sock: socket.socket) -> None:
    """Large receive and send buffers (see :func:`_grow_buffer`)."""
    _grow_buffer(sock, SO_RCVBUFFORCE, socket.SO_RCVBUF)
    _grow_buffer(sock, SO_SNDBUFFORCE, socket.SO_SNDBUF)


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
