"""The kernel calls backends make: links and addresses, and batched entry changes.

Two channels, each suited to its traffic:

- Links and addresses go through pyroute2's ``AsyncIPRoute``: they change rarely and
  have many nested attributes (the VXLAN link info), which pyroute2 encodes well.
- Routes, neighbours and FDB entries go through one raw rtnetlink socket with the
  codec of :mod:`pyflannel.netlink.rtnl`: thousands of requests per socket write,
  only the last one asking for an acknowledgement (the kernel reports errors anyway,
  tagged with the request's sequence number), and dumps filtered by the kernel to one
  device or route protocol. Each chunk's answer is awaited on the event loop.

Errors: a failed entry change is returned as a :class:`Failure` for the caller to
judge (a missing entry on delete is harmless); a socket-level failure raises
:class:`NetlinkUnavailable`, transient; a link operation the kernel refuses raises
:class:`~pyflannel.errors.BackendError`.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface
from typing import Any, TypeVar

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

from pyflannel.core.kernelstate import Change, FdbEntry, Neighbour, Route
from pyflannel.errors import BackendError
from pyflannel.netlink import rtnl

logger = logging.getLogger(__name__)

T = TypeVar("T")
Parser = Callable[[rtnl.Buffer, int, int], T | None]
Fingerprint = Callable[[rtnl.Buffer, int, int], bytes | None]
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NETLINK_GET_STRICT_CHK = 12
SO_RCVBUFFORCE = 33
RECEIVE_BUFFER = 4 << 20  # errors for a whole chunk must fit, or they are lost
CHUNK_BYTES = 64 << 10  # one write; the kernel handles it in one go (well under sndbuf)
DATAGRAM_MAX = 64 << 10  # the kernel's dump datagrams stay under 32 KiB
IFF_UP = 0x1


class NetlinkUnavailable(BackendError):
    """The netlink socket failed (lost messages, closed); the operation may be retried."""


@dataclass(frozen=True, slots=True)
class Failure:
    """A change the kernel refused, with the errno it gave."""

    change: Change
    code: int

    def __str__(self) -> str:
        name = errno.errorcode.get(self.code, str(self.code))
        return f"{self.change.op.value} {self.change.entry}: {name}"


@dataclass(frozen=True, slots=True)
class VxlanAttrs:
    """The VXLAN attributes that decide whether an existing device can be reused."""

    vni: int
    lower: int  # the underlay device's index (0: none)
    local: IPv4Address | None
    port: int
    learning: bool
    gbp: bool
    group: IPv4Address | None = None


@dataclass(frozen=True, slots=True)
class LinkState:
    """A network device as the kernel reports it."""

    index: int
    name: str
    kind: str  # "vxlan", "veth", ... ("" for devices without link info)
    mac: str
    mtu: int
    up: bool
    vxlan: VxlanAttrs | None = None


class NetlinkOps:
    """A channel to rtnetlink: ``open()`` it (in the netns of the calling thread), then
    ``close()`` it at the end."""

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        self._ipr: Any = None
        self._lock = asyncio.Lock()
        self._seq = 0
        self._buffer = bytearray(DATAGRAM_MAX)
        self._parsed: dict[bytes, dict[bytes, Any]] = {}  # per dump request: bytes → entry
        self.port_id = 0

    async def open(self) -> None:
        """Create the sockets (idempotent)."""
        if self._sock is not None:
            return
        sock = socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
            socket.NETLINK_ROUTE,
        )  # fmt: skip
        _tune(sock)
        sock.bind((0, 0))
        self.port_id = sock.getsockname()[0]
        self._sock = sock
        self._ipr = AsyncIPRoute()

    async def close(self) -> None:
        """Close the sockets; kernel state stays as it is."""
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def routes(self, *, oif: int | None = None, proto: int = 0) -> list[Route]:
        """Main-table IPv4 routes through device ``oif`` or with protocol ``proto`` (raw)."""
        request = rtnl.route_dump(oif=oif, proto=proto)
        found = await self._dump(request, rtnl.parse_route, rtnl.route_fingerprint)
        return [
            r for r in found if (oif is None or r.oif == oif) and (not proto or r.proto == proto)
        ]

    async def neighbours(self, ifindex: int) -> list[Neighbour]:
        """The IPv4 neighbour entries of one device."""
        request = rtnl.neighbour_dump(ifindex)
        found = await self._dump(request, rtnl.parse_neighbour, rtnl.neighbour_fingerprint)
        return [n for n in found if n.ifindex == ifindex]

    async def fdb(self, ifindex: int) -> list[FdbEntry]:
        """The FDB entries (with an IPv4 remote) of one VXLAN device."""
        found = await self._dump(rtnl.fdb_dump(ifindex), rtnl.parse_fdb, rtnl.fdb_fingerprint)
        return [f for f in found if f.ifindex == ifindex]

    async def execute(self, changes: Sequence[Change]) -> list[Failure]:
        """Carry out ``changes`` in order, in as few writes as possible; return the refusals."""
        requests = [rtnl.encode_change(change) for change in changes]
        failures: list[Failure] = []
        async with self._lock:
            start = 0
            while start < len(requests):
                end = _chunk_end(requests, start)
                failures += await self._send_chunk(changes[start:end], requests[start:end])
                start = end
        return failures

    async def _send_chunk(
        self, changes: Sequence[Change], requests: Sequence[rtnl.Request]
    ) -> list[Failure]:
        first = self._next_seq(len(requests))
        last = first + len(requests) - 1
        frames = [r.frame(first + i) for i, r in enumerate(requests[:-1])]
        frames.append(requests[-1].frame(last, rtnl.NLM_F_ACK))
        await self._send(b"".join(frames))
        failures: list[Failure] = []
        while True:
            data = await self._receive()
            for msg in rtnl.messages(data):
                if msg.msg_type != rtnl.NLMSG_ERROR or not first <= msg.seq <= last:
                    continue
                code = msg.error_code(data)
                if code:
                    failures.append(Failure(changes[msg.seq - first], code))
                if msg.seq == last:
                    return failures

    async def _dump(
        self, request: rtnl.Request, parse: Parser[T], fingerprint: Fingerprint
    ) -> list[T]:
        """Run a dump; entries whose stable bytes match the previous run are not re-parsed."""
        async with self._lock:
            previous: dict[bytes, Any] = self._parsed.get(request.body, {})
            for _ in range(3):
                found, parsed, interrupted = await self._dump_once(
                    request, parse, fingerprint, previous
                )
                if not interrupted:
                    break
            # Still inconsistent after three tries: the next pass will see the rest.
            self._parsed[request.body] = parsed
            return found

    async def _dump_once(
        self,
        request: rtnl.Request,
        parse: Parser[T],
        fingerprint: Fingerprint,
        previous: dict[bytes, T],
    ) -> tuple[list[T], dict[bytes, T], bool]:
        seq = self._next_seq(1)
        await self._send(request.frame(seq))
        found: list[T] = []
        parsed: dict[bytes, T] = {}
        interrupted = finished = False
        while not finished:
            data = await self._receive()
            try:
                finished, cut = rtnl.read_dump(
                    data, seq, (parse, fingerprint), previous, (found, parsed)
                )
            except rtnl.DumpRefused as exc:
                name = errno.errorcode.get(exc.code, str(exc.code))
                raise NetlinkUnavailable(f"netlink dump refused: {name}") from exc
            interrupted |= cut
        return found, parsed, interrupted

    def _next_seq(self, count: int) -> int:
        if self._seq + count >= 1 << 32:
            self._seq = 0
        first = self._seq + 1
        self._seq += count
        return first

    async def _send(self, data: bytes) -> None:
        try:
            await asyncio.get_running_loop().sock_sendall(self._socket(), data)
        except OSError as exc:
            raise NetlinkUnavailable(f"netlink send failed: {exc}") from exc

    async def _receive(self) -> memoryview:
        try:
            size = await asyncio.get_running_loop().sock_recv_into(self._socket(), self._buffer)
        except OSError as exc:  # ENOBUFS: answers were lost; the caller starts over
            raise NetlinkUnavailable(f"netlink receive failed: {exc}") from exc
        return memoryview(self._buffer)[:size]

    def _socket(self) -> socket.socket:
        if self._sock is None:
            raise NetlinkUnavailable("netlink socket is not open")
        return self._sock

    async def link(self, name: str) -> LinkState | None:
        """The device called ``name``, or None when there is none (pyroute2)."""
        try:
            (msg,) = await self._iproute().link("get", ifname=name)
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return None
            raise BackendError(f"cannot read device {name}: {exc}") from exc
        return _link_state(msg)

    async def create_vxlan(self, name: str, attrs: VxlanAttrs, *, mac: str, mtu: int) -> None:
        """Create a VXLAN device (port 0 leaves the kernel's default, 8472)."""
        spec: dict[str, Any] = {
            "ifname": name, "kind": "vxlan", "address": mac, "mtu": mtu,
            "vxlan_id": attrs.vni, "vxlan_learning": int(attrs.learning),
        }  # fmt: skip
        if attrs.lower:
            spec["vxlan_link"] = attrs.lower
        if attrs.local is not None:
            spec["vxlan_local"] = str(attrs.local)
        if attrs.port:
            spec["vxlan_port"] = attrs.port
        if attrs.gbp:
            spec["vxlan_gbp"] = True
        await self._link_call(f"create device {name}", "add", **spec)

    async def delete_link(self, index: int) -> None:
        """Delete a device; an already missing one is fine."""
        try:
            await self._iproute().link("del", index=index)
        except NetlinkError as exc:
            if exc.code != errno.ENODEV:
                raise BackendError(f"cannot delete device {index}: {exc}") from exc

    async def set_link(
        self, index: int, *, mtu: int | None = None, mac: str | None = None, up: bool = False
    ) -> None:
        """Change a device's MTU or MAC, and/or bring it up."""
        spec: dict[str, Any] = {}
        if mtu is not None:
            spec["mtu"] = mtu
        if mac is not None:
            spec["address"] = mac
        if up:
            spec["state"] = "up"
        if spec:
            await self._link_call(f"configure device {index}", "set", index=index, **spec)

    async def addresses(self, index: int) -> list[IPv4Interface]:
        """The IPv4 addresses of a device."""
        try:
            answer = await self._iproute().addr("dump", family=socket.AF_INET, index=index)
            found = [msg async for msg in answer] if not isinstance(answer, list) else answer
        except NetlinkError as exc:
            raise BackendError(f"cannot read the addresses of device {index}: {exc}") from exc
        return [
            IPv4Interface(
                f"{msg.get_attr('IFA_LOCAL') or msg.get_attr('IFA_ADDRESS')}/{msg['prefixlen']}"
            )
            for msg in found
            if msg["index"] == index
        ]

    async def add_address(self, index: int, address: IPv4Interface) -> None:
        """Add an address to a device (present already: fine)."""
        try:
            await self._iproute().addr(
                "add", index=index, address=str(address.ip), prefixlen=address.network.prefixlen
            )
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise BackendError(
                    f"cannot add address {address} to device {index}: {exc}"
                ) from exc

    async def delete_address(self, index: int, address: IPv4Interface) -> None:
        """Remove an address from a device (absent already: fine)."""
        try:
            await self._iproute().addr(
                "del", index=index, address=str(address.ip), prefixlen=address.network.prefixlen
            )
        except NetlinkError as exc:
            if exc.code not in (errno.EADDRNOTAVAIL, errno.ENODEV):
                raise BackendError(f"cannot remove address {address} from {index}: {exc}") from exc

    async def _link_call(self, what: str, command: str, **spec: Any) -> None:
        try:
            await self._iproute().link(command, **spec)
        except NetlinkError as exc:
            raise BackendError(f"cannot {what}: {exc}") from exc

    def _iproute(self) -> Any:
        if self._ipr is None:
            raise NetlinkUnavailable("netlink socket is not open")
        return self._ipr


def _tune(sock: socket.socket) -> None:
    """Kernel-side dump filters, short acknowledgements, room for a chunk's answers."""
    for option in (NETLINK_GET_STRICT_CHK, NETLINK_CAP_ACK):
        try:
            sock.setsockopt(SOL_NETLINK, option, 1)
        except OSError:  # older kernels: unfiltered dumps (filtered again here), long acks
            logger.debug("netlink socket option %d not supported", option)
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)


def _chunk_end(requests: Sequence[rtnl.Request], start: int) -> int:
    size = 0
    end = start
    while end < len(requests) and (end == start or size + len(requests[end].body) < CHUNK_BYTES):
        size += len(requests[end].body) + rtnl.HEADER.size
        end += 1
    return end


def _link_state(msg: Any) -> LinkState:
    info = msg.get_attr("IFLA_LINKINFO")
    kind = (info.get_attr("IFLA_INFO_KIND") if info is not None else None) or ""
    data = info.get_attr("IFLA_INFO_DATA") if info is not None else None
    return LinkState(
        index=msg["index"],
        name=msg.get_attr("IFLA_IFNAME") or "",
        kind=kind,
        mac=(msg.get_attr("IFLA_ADDRESS") or "").lower(),
        mtu=msg.get_attr("IFLA_MTU") or 0,
        up=bool(msg["flags"] & IFF_UP),
        vxlan=_vxlan_attrs(data) if kind == "vxlan" and data is not None else None,
    )


def _vxlan_attrs(data: Any) -> VxlanAttrs:
    local = data.get_attr("IFLA_VXLAN_LOCAL")
    group = data.get_attr("IFLA_VXLAN_GROUP")
    return VxlanAttrs(
        vni=data.get_attr("IFLA_VXLAN_ID") or 0,
        lower=data.get_attr("IFLA_VXLAN_LINK") or 0,
        local=IPv4Address(local) if local else None,
        port=data.get_attr("IFLA_VXLAN_PORT") or 0,
        learning=bool(data.get_attr("IFLA_VXLAN_LEARNING")),
        gbp=data.get_attr("IFLA_VXLAN_GBP") is not None,
        group=IPv4Address(group) if group else None,
    )
