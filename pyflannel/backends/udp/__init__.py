"""The ``udp`` backend: flanneld's userspace encapsulation over a TUN device.

Design notes
------------
* **Device.** A TUN device ``flannel0`` (``IFF_TUN | IFF_NO_PI``, not persistent: it
  disappears with the process, as flanneld's does), MTU = interface MTU − 28, IPv6 off,
  the own subnet's network address as a /32 and one route for the whole flannel Network
  through it (flanneld v0.28's layout). The local container bridge wins by longest prefix.
* **Wire format.** Each UDP datagram carries exactly one inner IPv4 packet, starting at
  its IP header, with nothing before or after it; the TTL has been decremented by one.
  Datagrams go from ``IfaceAddr:Port`` to ``<peer PublicIP>:Port``: every host must use
  the same port. The lease holds only ``PublicIP`` (no ``BackendType``), so
  ``{"PublicIP":"P"}``, plus ``"PublicIPv6":null`` on the etcd v3 registry.
* **Routes.** Every peer lease, whatever its ``BackendType``, is a route: subnet →
  peer public IP. A packet for a subnet no peer holds gets an ICMP "net unreachable"
  back, as from flanneld, but from the Network's own address (e.g. 10.5.0.0) rather
  than the TUN's: the kernel discards flanneld's, whose source is a local address.
* **Data path.** In the event loop, without an await or callback per packet (see
  :mod:`.proxy`); by default with batching offloads (see :mod:`.batched`), invisible
  on the wire.

Backend options (``"Backend": {"Type": "udp", ...}``; names match case-insensitively)
------------------------------------------------------------------------------------
``Port`` (integer, default 8285)
    The UDP port to listen on and to send to.
``AcceptUnknownPeers`` (boolean, default false)
    flanneld writes every datagram that reaches its port into the TUN, so anyone who can
    reach that port can inject packets into the overlay. pyflannel by default drops, and
    counts, datagrams whose source address is not the ``PublicIP`` of any lease, and
    datagrams that are not one well-formed IPv4 packet for its own subnet (too short,
    not IPv4, bad header or total length, bad header checksum, TTL expiring, destination
    outside the subnet). Set this to true to accept datagrams from any source address,
    as flanneld does, when a peer's datagrams do not come from its advertised public IP:
    a NAT between the hosts that rewrites source addresses, or a host started with a
    ``--public-ip`` other than the address of its ``--iface`` (datagrams leave from the
    interface address). The packet checks stay on either way.
``Offload`` (boolean, default true)
    Move many packets per system call: TCP segmentation offload on the TUN device,
    ``UDP_SEGMENT`` to send and ``UDP_GRO`` to receive. Each datagram on the wire still
    carries one inner packet with valid checksums, so peers running flanneld interoperate.
    When the kernel lacks a feature, the plain path (one packet per system call) is used.
    Set to false to force the plain path.

Counters (packets and bytes each way, the system calls that moved them, drops by
reason) are logged at DEBUG every minute while they change, and at shutdown.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from pyflannel.backend import BackendContext, PeerUpdate, Prepared
from pyflannel.backends.udp import tun as tundev
from pyflannel.backends.udp.proxy import DataPath, icmp_source, open_socket
from pyflannel.backends.udp.routes import RouteTable
from pyflannel.errors import BackendError, ConfigError
from pyflannel.model.config import NetworkConfig
from pyflannel.model.lease import Lease

logger = logging.getLogger(__name__)

DEFAULT_PORT = 8285
ENCAP_OVERHEAD = 28  # outer IPv4 header + UDP header
GRO_HOLD_US = 1000  # plain path: how long GRO may hold a TCP segment written to flannel0
GRO_HOLD_MAX_US = 10_000


def _int_option(
    config: NetworkConfig, name: str, default: int, span: tuple[int, int], meaning: str
) -> int:
    """An integer option within ``span`` (both ends included); ``meaning`` names its unit
    in the error."""
    value: Any = config.backend_option(name, default)
    low, high = span
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(
            f"network config: Backend.{name} {value!r} is invalid: "
            f"it must be {meaning} from {low} to {high}"
        )
    return value


def _bool_option(config: NetworkConfig, name: str, default: bool) -> bool:
    value: Any = config.backend_option(name, default)
    if not isinstance(value, bool):
        raise ConfigError(
            f"network config: Backend.{name} {value!r} is invalid: it must be true or false"
        )
    return value


class UdpBackend:
    """flannel0 + UDP socket; see the module docstring."""

    def __init__(self, ctx: BackendContext) -> None:
        self._ctx = ctx
        self._port = _int_option(ctx.config, "Port", DEFAULT_PORT, (1, 65535), "a port number")
        self._accept_unknown = _bool_option(ctx.config, "AcceptUnknownPeers", False)
        self._offload = _bool_option(ctx.config, "Offload", True)
        self._gro_hold = _int_option(
            ctx.config,
            "GROHold",
            GRO_HOLD_US,
            (0, GRO_HOLD_MAX_US),
            "a whole number of microseconds (0: off)",
        )
        self._mtu = ctx.iface.mtu - ENCAP_OVERHEAD
        self._tun: tundev.Tun | None = None
        self._sock: socket.socket | None = None
        self._path: DataPath | None = None

    async def prepare(self) -> Prepared:
        """Create flannel0 and bind the socket, so a busy port fails before the lease."""
        iface_addr = self._ctx.iface.iface_addr
        try:
            self._sock = open_socket(iface_addr, self._port)
        except OSError as exc:
            raise BackendError(f"cannot listen on UDP {iface_addr}:{self._port}: {exc}") from exc
        batching = self._offload and self._can_batch(self._sock)
        napi = bool(not batching and self._gro_hold and tundev.kernel_features() & tundev.IFF_NAPI)
        self._tun = tundev.open_tun(
            vnet_hdr=batching, offloads=tundev.TUN_F_CSUM | tundev.TUN_F_TSO4, napi=napi
        )
        await tundev.prepare_link(self._tun.name, self._mtu, gso_max_segs=self._tso_segments())
        if napi:
            tundev.hold_gro(self._tun.name, self._gro_hold * 1000)
        logger.info(
            "udp backend: %s (MTU %d), UDP %s:%d, %s",
            self._tun.name,
            self._mtu,
            iface_addr,
            self._port,
            _describe(self._tun, self._offload),
        )
        return Prepared(backend_type="", backend_data=None, mtu=self._mtu)

    def _tso_segments(self) -> int | None:
        """With TSO on the TUN, the most segments one TCP super-packet may hold: as many
        full-sized datagrams as one ``UDP_SEGMENT`` send carries, so that each leaves in
        one send (the kernel's 64 KiB super-packets would take a second one for their
        last one or two segments)."""
        assert self._tun is not None
        if not self._tun.offloads & tundev.TUN_F_TSO4:
            return None
        from pyflannel.backends.udp.batched import segments_per_send

        return segments_per_send(self._mtu)

    @staticmethod
    def _can_batch(sock: socket.socket) -> bool:
        """Whether the kernel has what the offload path needs (else: the plain path).

        The offload path (and NumPy with it) is loaded only here, when it is wanted.
        """
        from pyflannel.backends.udp.batched import enable_socket_offloads

        gso, gro = enable_socket_offloads(sock)
        if not gro:
            logger.info("udp backend: the kernel has no UDP_GRO; receiving one datagram per call")
        if not gso:
            logger.info("udp backend: the kernel has no UDP_SEGMENT; offloads off")
            return False
        if not tundev.kernel_features() & tundev.IFF_VNET_HDR:
            logger.info("udp backend: the TUN driver has no IFF_VNET_HDR; offloads off")
            return False
        return True

    async def run(self, own: Lease, feed: AsyncIterator[PeerUpdate]) -> None:
        """Address flannel0, start the data path, and keep its routes up to date."""
        if self._tun is None or self._sock is None:
            raise BackendError("udp backend: run() before prepare()")
        network = self._ctx.config.network
        await tundev.address_link(self._tun.name, own.subnet.network_address, network)
        routes = RouteTable(self._port)
        path = DataPath
        if self._tun.vnet_hdr:
            from pyflannel.backends.udp.batched import BatchedPath

            path = BatchedPath
        self._path = path(
            self._tun, self._sock, subnet=own.subnet, routes=routes,
            accept_unknown=self._accept_unknown, icmp_source=icmp_source(network),
        )  # fmt: skip
        self._path.start()
        try:
            async for update in feed:
                fresh = self._path.routes.apply(update.events, own.subnet)
                for change in fresh.changes_from(self._path.routes):
                    _log_change(change.subnet, change.peer)
                self._path.routes = fresh
        finally:
            self._path.stop()

    def stats(self) -> dict[str, int]:
        """The data path's counters (empty before ``run()``): traffic and drops by reason."""
        return {} if self._path is None else self._path.counters.as_dict()

    async def close(self) -> None:
        """Close the socket and the TUN (which takes flannel0 with it)."""
        if self._path is not None:
            logger.debug("udp data path: %s", self._path.counters.summary())
        if self._sock is not None:
            self._sock.close()
        if self._tun is not None:
            tundev.close_tun(self._tun)
        self._tun = None
        self._sock = None
        self._path = None


def _describe(tun: tundev.Tun, wanted: bool) -> str:
    if tun.vnet_hdr:
        tso = "TSO" if tun.offloads & tundev.TUN_F_TSO4 else "no TSO"
        return f"offloads on ({tso} on the TUN, UDP_SEGMENT and UDP_GRO on the socket)"
    napi = ", GRO on the TUN" if tun.napi else ""
    return "offloads off" + ("" if wanted else " (Offload: false)") + napi


def _log_change(subnet: IPv4Network, peer: IPv4Address | None) -> None:
    if peer is None:
        logger.info("Subnet removed: %s", subnet)
    else:
        logger.info("Subnet added: %s via %s", subnet, peer)
