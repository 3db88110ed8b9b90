"""One HTTP/1.1 connection of :mod:`pyflannel.httpc.client`: a socket, the parser of
the answers arriving on it, and the mapping of its failures.

A buffered protocol rather than asyncio's streams: those receive into a fresh 256 KiB
buffer each time, which costs more than parsing a small watch message. Reading can
pause on purpose: when parsed data piles up (TCP then pushes back on the server),
and for a few milliseconds after each read of a stream, so that a burst of small
messages is read many at a time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from collections.abc import Mapping

from pyflannel.errors import RegistryUnavailable
from pyflannel.httpc.wire import END, Event, Head, ProtocolError, ResponseParser
from pyflannel.tlsfree import loaded_ssl

# Probe a quiet connection after 10 s, every 5 s, give up after 3 unanswered probes:
# a peer host that vanished breaks even an idle stream within about 25 s.
KEEPALIVE_OPTIONS: tuple[tuple[int, int, int], ...] = (
    (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
    (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 10),
    (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 5),
    (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3),
)
_READ_SIZE = 64 * 1024
_HIGH_WATER = 1024 * 1024  # received bytes not yet parsed before reading pauses


@dataclasses.dataclass(frozen=True, slots=True)
class Response:
    """One complete answer."""

    status: int
    headers: Mapping[str, str]
    body: bytes


class Connection(asyncio.BufferedProtocol):
    """One socket and the parser of the answers arriving on it."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = ResponseParser()
        self.received = 0  # bytes, to tell a stale keep-alive connection from a failure
        # A memoryview, not the bytearray itself: asyncio's TLS transport (3.11) fills
        # the buffer through slices of it, and a bytearray's slice is a copy, so every
        # TLS record after the first of one read would be lost (zeros in its place).
        self._buffer = memoryview(bytearray(_READ_SIZE))
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._full = False  # reading paused: too much received and not yet parsed
        self._holding = False  # reading paused: letting a burst gather (see coalesce)
        self.coalesce = 0.0  # seconds of not reading after each read (streams)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.received += nbytes
        self.parser.feed(self._buffer[:nbytes])
        transport = self.transport
        assert transport is not None
        if self.parser.buffered > _HIGH_WATER and not self._full:
            self._full = True  # the reader is behind: let TCP push back
            self._pause(transport)
        if self.coalesce and not self._holding:
            self._holding = True
            self._pause(transport)
            asyncio.get_running_loop().call_later(self.coalesce, self._release)
        self._wake()

    def _pause(self, transport: asyncio.Transport) -> None:
        if transport.is_reading():
            transport.pause_reading()

    def _resume(self) -> None:
        transport = self.transport
        if not (self._full or self._holding) and transport and not transport.is_closing():
            transport.resume_reading()

    def _release(self) -> None:
        self._holding = False
        self._resume()

    def eof_received(self) -> bool:
        self.parser.feed_eof()
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self._error = exc
        self.parser.feed_eof()
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def idle_and_open(self) -> bool:
        """Whether it can carry a request: open, and nothing unasked-for arrived."""
        transport = self.transport
        idle = self.parser.reusable and not self.parser.buffered
        return idle and transport is not None and not transport.is_closing()

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def poll_event(self) -> Event | None:
        """The next piece of the current answer if it is all here, else None."""
        try:
            event = self.parser.next_event()
        except ProtocolError:
            if self._error is not None:
                raise self._error from None  # the cause, not its consequence
            raise
        if event is None and self._full and self.parser.buffered < _HIGH_WATER // 2:
            self._full = False
            self._resume()
        return event

    async def next_event(self) -> Event:
        """The next piece of the current answer, waiting for bytes as needed.
        Cancelling the wait loses nothing: received bytes stay in the parser."""
        while (event := self.poll_event()) is None:
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return event

    async def head(self) -> Head:
        """Start reading an answer: its status line and headers."""
        self.parser.start()
        head = await self.next_event()
        assert isinstance(head, Head)
        return head

    async def response(self) -> Response:
        """One whole answer."""
        head = await self.head()
        return Response(head.status, head.headers, await self.body())

    async def body(self) -> bytes:
        """The rest of the current answer, once its head has been read."""
        pieces = []
        while (piece := await self.next_event()) is not END:
            assert isinstance(piece, bytes)
            pieces.append(piece)
        return b"".join(pieces)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


def unavailable_error(name: str, exc: BaseException, tls_hint: str = "") -> RegistryUnavailable:
    """The error for a failure to get an answer from ``name``, saying what an operator
    can act on (``tls_hint`` follows a rejected server certificate)."""
    tls = loaded_ssl()
    if tls is not None and isinstance(exc, tls.SSLCertVerificationError):
        detail = f"TLS certificate not accepted: {exc.verify_message}{tls_hint}"
    elif tls is not None and isinstance(exc, tls.SSLError):
        detail = f"TLS failed: {exc.reason or exc}"
    elif isinstance(exc, ProtocolError):
        detail = f"malformed HTTP answer: {exc}"
    elif isinstance(exc, OSError):
        detail = exc.strerror or str(exc) or type(exc).__name__
    else:
        detail = str(exc) or type(exc).__name__
    return RegistryUnavailable(f"{name} is unavailable: {detail}")
