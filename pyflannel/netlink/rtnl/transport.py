"""The rtnetlink socket: requests, dumps and batches, without blocking the event loop.

One non-blocking ``NETLINK_ROUTE`` socket per owner, driven with the loop's
``sock_sendall``/``sock_recv_into``. Exchanges are serialised by a lock, and answers
are matched to requests by sequence number, so a stray answer (from a request whose
caller was cancelled) is skipped, never taken for another's.

Three kinds of exchange:

- :meth:`RtnlSocket.call`: one request, acknowledged; returns the answer's messages
  (a get) or nothing, and raises :class:`NetlinkRefused` with the kernel's errno.
- :meth:`RtnlSocket.dump`: a dump, parsed as it arrives; entries whose stable bytes
  are those of the previous run are not parsed again; an interrupted dump is retried.
  A dump left unfinished (cancelled, or failed while reading) closes the socket, and
  the next exchange opens a fresh one: the kernel would keep the old dump running.
- :meth:`RtnlSocket.batch`: thousands of requests in a few writes, only the last of
  each write asking for an acknowledgement (the kernel reports errors anyway).

Errors: a request the kernel refuses raises :class:`NetlinkRefused` (``call``) or is
returned (``batch``), for the caller to judge; a socket-level failure raises
:class:`NetlinkUnavailable`, which is transient.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, TypeVar

from pyflannel.errors import BackendError
from pyflannel.netlink.rtnl.wire import (
    HEADER,
    NLM_F_ACK,
    NLMSG_ERROR,
    Buffer,
    DumpRefused,
    Request,
    messages,
    no_fingerprint,
    read_dump,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")
Parser = Callable[[Buffer, int, int], T | None]
Fingerprint = Callable[[Buffer, int, int], bytes | None]
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11
NETLINK_GET_STRICT_CHK = 12
SO_RCVBUFFORCE = 33
RECEIVE_BUFFER = 4 << 20  # errors for a whole batch write must fit, or they are lost
CHUNK_BYTES = 64 << 10  # one write; the kernel handles it in one go (well under sndbuf)
DATAGRAM_MAX = 64 << 10  # the kernel's dump datagrams stay under 32 KiB
DUMP_TRIES = 3


class NetlinkUnavailable(BackendError):
    """The netlink socket failed (lost messages, closed); the operation may be retried."""


class NetlinkRefused(BackendError):
    """The kernel refused a request; ``code`` is the errno, the message says why."""

    def __init__(self, code: int, reason: str = "") -> None:
        name = errno.errorcode.get(code, str(code))
        detail = f"{os.strerror(code)} ({name})" + (f": {reason}" if reason else "")
        super().__init__(detail)
        self.code = code


class RtnlSocket:
    """A channel to rtnetlink: ``open()`` it (in the netns of the calling thread), then
    ``close()`` it at the end; or use it as an async context manager."""

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        self._lock = asyncio.Lock()
        self._seq = 0
        self._buffer = bytearray(DATAGRAM_MAX)
        self._parsed: dict[tuple[bytes, object], dict[bytes, Any]] = {}  # per dump: bytes → entry
        self._reopen = False  # closed by an abandoned dump: the next exchange opens anew
        self.port_id = 0

    def open(self) -> None:
        """Create the socket (idempotent)."""
        if self._sock is None:
            self._attach(_new_socket())

    def close(self) -> None:
        """Close the socket; kernel state stays as it is."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._parsed.clear()
        self._reopen = False

    def _attach(self, sock: socket.socket) -> None:
        self._sock = sock
        self.port_id = sock.getsockname()[0]
        self._reopen = False

    def _abandon(self) -> None:
        """Close the socket of a dump that did not finish; the next exchange opens anew.

        The kernel runs one dump per socket and keeps an unfinished one going: the next
        dump request would be refused (EBUSY), behind the rest of the old dump. Closing
        ends it at once, whereas reading the rest could take long or never end (the
        datagrams may have been lost). The next socket (opened, like the first, in the
        netns of the calling thread) takes the same port when it is free, so that
        notices caused by our earlier requests still carry ``port_id``.
        """
        if self._sock is not None:  # else closed already, by close() or by a failure
            self.close()
            self._reopen = True

    async def __aenter__(self) -> RtnlSocket:
        self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def call(self, request: Request) -> list[bytes]:
        """Send one request and wait for its acknowledgement; return the payloads of the
        messages that came before it (the answer to a get), or raise NetlinkRefused."""
        async with self._lock:
            seq = self._next_seq(1)
            await self._send(request.frame(seq, NLM_F_ACK))
            answers: list[bytes] = []
            while True:
                data = await self._receive()
                for msg in messages(data):
                    if msg.seq != seq:
                        continue
                    if msg.msg_type != NLMSG_ERROR:
                        answers.append(bytes(data[msg.start : msg.end]))
                    elif code := msg.error_code(data):
                        raise NetlinkRefused(code, msg.error_text(data))
                    else:
                        return answers

    async def dump(
        self, request: Request, parse: Parser[T], fingerprint: Fingerprint = no_fingerprint
    ) -> list[T]:
        """Run a dump; entries whose stable bytes match the previous run are not re-parsed."""
        key = (request.body, parse)
        async with self._lock:
            previous: dict[bytes, Any] = self._parsed.get(key, {})
            for _ in range(DUMP_TRIES):
                found, parsed, interrupted = await self._dump_once(
                    request, (parse, fingerprint), previous
                )
                if not interrupted:
                    break
            # Still inconsistent after three tries: the next pass will see the rest.
            if fingerprint is not no_fingerprint:
                self._parsed[key] = parsed
            return found

    async def _dump_once(
        self,
        request: Request,
        decode: tuple[Parser[T], Fingerprint],
        previous: dict[bytes, T],
    ) -> tuple[list[T], dict[bytes, T], bool]:
        seq = self._next_seq(1)
        await self._send(request.frame(seq))
        try:
            return await self._read_dump(seq, decode, previous)
        except BaseException:  # cancelled, lost datagrams, refused, a parser's error
            self._abandon()
            raise

    async def _read_dump(
        self, seq: int, decode: tuple[Parser[T], Fingerprint], previous: dict[bytes, T]
    ) -> tuple[list[T], dict[bytes, T], bool]:
        found: list[T] = []
        parsed: dict[bytes, T] = {}
        interrupted = finished = False
        while not finished:
            data = await self._receive()
            try:
                finished, cut = read_dump(data, seq, decode, previous, (found, parsed))
            except DumpRefused as exc:
                name = errno.errorcode.get(exc.code, str(exc.code))
                raise NetlinkUnavailable(f"netlink dump refused: {name}") from exc
            interrupted |= cut
        return found, parsed, interrupted

    async def batch(self, requests: Sequence[Request]) -> list[tuple[int, int]]:
        """Send ``requests`` in order, in as few writes as possible.

        Returns (position in ``requests``, errno) for each request the kernel refused.
        """
        refused: list[tuple[int, int]] = []
        async with self._lock:
            start = 0
            while start < len(requests):
                end = _chunk_end(requests, start)
                refused += await self._send_chunk(requests, start, end)
                start = end
        return refused

    async def _send_chunk(
        self, requests: Sequence[Request], start: int, end: int
    ) -> list[tuple[int, int]]:
        first = self._next_seq(end - start)
        last = first + end - start - 1
        frames = [requests[i].frame(first + i - start) for i in range(start, end - 1)]
        frames.append(requests[end - 1].frame(last, NLM_F_ACK))
        await self._send(b"".join(frames))
        refused: list[tuple[int, int]] = []
        while True:
            data = await self._receive()
            for msg in messages(data):
                if msg.msg_type != NLMSG_ERROR or not first <= msg.seq <= last:
                    continue
                code = msg.error_code(data)
                if code:
                    refused.append((start + msg.seq - first, code))
                if msg.seq == last:
                    return refused

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
        if self._sock is None and self._reopen:
            try:
                self._attach(_new_socket(self.port_id))
            except OSError as exc:
                raise NetlinkUnavailable(f"netlink socket cannot be reopened: {exc}") from exc
        if self._sock is None:
            raise NetlinkUnavailable("netlink socket is not open")
        return self._sock


def route_socket() -> socket.socket:
    """A new non-blocking, close-on-exec ``NETLINK_ROUTE`` socket (not bound yet), in the
    network namespace of the calling thread."""
    return socket.socket(
        socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
        socket.NETLINK_ROUTE,
    )  # fmt: skip


def _new_socket(port: int = 0) -> socket.socket:
    """A tuned rtnetlink socket, bound to ``port`` if that is free, else to any port."""
    sock = route_socket()
    try:
        _tune(sock)
        _bind(sock, port)
    except OSError:
        sock.close()
        raise
    return sock


def _bind(sock: socket.socket, port: int) -> None:
    if port:
        try:
            sock.bind((port, 0))
            return
        except OSError as exc:  # EADDRINUSE: another socket took it
            logger.debug("netlink port %d not available: %s", port, exc)
    sock.bind((0, 0))


def _tune(sock: socket.socket) -> None:
    """Kernel-side dump filters, short acknowledgements with reasons, room for answers."""
    for option in (NETLINK_GET_STRICT_CHK, NETLINK_CAP_ACK, NETLINK_EXT_ACK):
        try:
            sock.setsockopt(SOL_NETLINK, option, 1)
        except OSError:  # older kernels: unfiltered dumps (filtered again), long acks
            logger.debug("netlink socket option %d not supported", option)
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)


def _chunk_end(requests: Sequence[Request], start: int) -> int:
    size = 0
    end = start
    while end < len(requests) and (end == start or size + len(requests[end].body) < CHUNK_BYTES):
        size += len(requests[end].body) + HEADER.size
        end += 1
    return end
