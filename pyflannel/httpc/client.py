"""A small asyncio HTTP/1.1 client: keep-alive connections to one server, optional TLS,
a deadline on every call, pipelining, and answers streamed as JSON messages.

A general-purpose async client (with its HTTP core, h11 and anyio) costs several MB of
resident memory in a daemon whose whole budget is 30 MB, while talking to etcd takes
little: POST a JSON body, read a JSON answer, follow one long chunked answer (a watch).
Framing is parsed by the pure :mod:`pyflannel.httpc.wire`, bytes are moved by
:mod:`pyflannel.httpc.connection`; this module keeps connections and makes calls.

Every failure to get an answer (refused or reset connection, TLS failure, deadline,
malformed framing) is a :class:`~pyflannel.errors.RegistryUnavailable` naming the
server; an answer with an error status is returned to the caller, which knows what
the body means.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from pyflannel.errors import RegistryUnavailable
from pyflannel.httpc.connection import KEEPALIVE_OPTIONS, Connection, Response, unavailable_error
from pyflannel.httpc.wire import END, Event, Head, LineSplitter, ProtocolError, encode_request

if TYPE_CHECKING:
    import ssl  # only its types: a daemon without TLS never loads it (see pyflannel.tlsfree)

logger = logging.getLogger(__name__)

Headers = Sequence[tuple[str, str]]
_MIN_SHARE = 32  # requests per connection worth spreading a pipeline for
__all__ = ["Origin", "Response", "Stream", "unavailable_error"]


class Origin:
    """One HTTP server (scheme, host and port), and a few keep-alive connections to it."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        name: str = "",
        tls_hint: str = "",
        max_idle: int = 4,
    ) -> None:
        self.host = host
        self.port = port
        self.name = name or f"{'https' if ssl_context else 'http'}://{_authority(host, port)}"
        self._authority = _authority(host, port)
        self._ssl = ssl_context
        self._tls_hint = tls_hint
        self._max_idle = max_idle
        self._idle: list[Connection] = []
        self._open: set[Connection] = set()
        self.closed = False

    async def request(
        self, method: str, target: str, body: bytes = b"", headers: Headers = (), *, timeout: float
    ) -> Response:
        """Send one request and read its answer, all within ``timeout`` seconds."""
        [response] = await self.pipeline(method, target, [body], headers, timeout=timeout)
        return response

    async def pipeline(
        self,
        method: str,
        target: str,
        bodies: Sequence[bytes],
        headers: Headers = (),
        *,
        timeout: float,
        spread: int = 1,
    ) -> list[Response]:
        """Send several requests at once and read their answers in order: one round
        trip instead of one per request. With ``spread``, they are shared among up to
        that many connections, which the server works on in parallel."""
        requests = [self._encode(method, target, body, headers) for body in bodies]
        size = max(_MIN_SHARE, -(-len(requests) // max(spread, 1)))
        shares = [requests[i : i + size] for i in range(0, len(requests), size)]
        try:
            async with asyncio.timeout(timeout):
                return await self._exchange(shares)
        except TimeoutError:
            raise RegistryUnavailable(f"{self.name} did not answer within {timeout:g} s") from None

    @contextlib.asynccontextmanager
    async def stream(
        self,
        method: str,
        target: str,
        body: bytes = b"",
        headers: Headers = (),
        *,
        timeout: float,
        coalesce: float = 0.0,
    ) -> AsyncIterator[Stream]:
        """Send a request on a connection of its own and hand over the answer once its
        head arrived (within ``timeout``); the body is read as it comes.

        With ``coalesce`` (seconds), the socket is left alone for that long after each
        read, so that a burst of small messages is read (and handled) many at a time
        instead of one wake-up each; the first message of a burst is not delayed.
        """
        try:
            async with asyncio.timeout(timeout):
                conn = await self._connect()
                try:
                    conn.write(self._encode(method, target, body, headers))
                    head = await conn.head()
                except BaseException:
                    self._discard(conn)
                    raise
        except TimeoutError:
            raise RegistryUnavailable(f"{self.name} did not answer within {timeout:g} s") from None
        except (OSError, ProtocolError) as exc:
            raise self._unavailable(exc) from exc
        conn.coalesce = coalesce
        try:
            yield Stream(self, conn, head)
        finally:
            self._discard(conn)

    def drop_idle(self) -> None:
        """Close the idle connections (after a failure, they are suspect too)."""
        while self._idle:
            self._discard(self._idle.pop())

    async def close(self) -> None:
        """Close every connection, streams included; later calls fail."""
        self.closed = True
        self._idle.clear()
        for conn in list(self._open):
            self._discard(conn)

    def _encode(self, method: str, target: str, body: bytes, headers: Headers) -> bytes:
        return encode_request(method, target, host=self._authority, headers=headers, body=body)

    async def _exchange(self, shares: Sequence[Sequence[bytes]]) -> list[Response]:
        """Write each share of requests on a connection of its own, then read the
        answers, one connection after the other."""
        sent: list[tuple[Connection, bool, Sequence[bytes]]] = []
        try:
            for requests in shares:
                conn, reused = await self._checkout()
                sent.append((conn, reused, requests))
                conn.write(b"".join(requests))
        except BaseException:
            for conn, _, _ in sent:
                self._discard(conn)
            raise
        responses: list[Response] = []
        for index, (conn, reused, requests) in enumerate(sent):
            try:
                responses += await self._answers(conn, reused, requests)
            except BaseException:
                for later, _, _ in sent[index + 1 :]:
                    self._discard(later)
                raise
        return responses

    async def _answers(
        self, conn: Connection, reused: bool, requests: Sequence[bytes]
    ) -> list[Response]:
        """The answers to ``requests`` (already written); sent once more on a fresh
        connection if a reused one turns out to have been closed while idle."""
        while True:
            try:
                responses = [await conn.response() for _ in requests]
            except (OSError, ProtocolError) as exc:
                self._discard(conn)
                if not (reused and conn.received == 0):
                    raise self._unavailable(exc) from exc
                logger.debug("%s closed an idle connection; sending again", self.name)
                conn, reused = await self._connect_mapped(), False
                conn.write(b"".join(requests))
                continue
            except BaseException:
                self._discard(conn)
                raise
            self._checkin(conn)
            return responses

    async def _checkout(self) -> tuple[Connection, bool]:
        while self._idle:
            conn = self._idle.pop()
            if conn.idle_and_open():
                conn.received = 0
                return conn, True
            self._discard(conn)
        return await self._connect_mapped(), False

    def _checkin(self, conn: Connection) -> None:
        if conn.parser.reusable and not self.closed and len(self._idle) < self._max_idle:
            self._idle.append(conn)
        else:
            self._discard(conn)

    async def _connect_mapped(self) -> Connection:
        try:
            return await self._connect()
        except OSError as exc:
            raise self._unavailable(exc) from exc

    async def _connect(self) -> Connection:
        if self.closed:
            raise RegistryUnavailable(f"the connection to {self.name} is closed")
        _, conn = await asyncio.get_running_loop().create_connection(
            Connection,
            self.host,
            self.port,
            ssl=self._ssl,
            server_hostname=self.host if self._ssl else None,
        )
        sock = conn.transport.get_extra_info("socket") if conn.transport else None
        if sock is not None:
            for level, option, value in KEEPALIVE_OPTIONS:
                sock.setsockopt(level, option, value)
        self._open.add(conn)
        return conn

    def _discard(self, conn: Connection) -> None:
        self._open.discard(conn)
        conn.abort()

    def _unavailable(self, exc: BaseException) -> RegistryUnavailable:
        return unavailable_error(self.name, exc, self._tls_hint)


class Stream:
    """An answer whose body is read as it arrives: as newline-separated JSON messages."""

    def __init__(self, origin: Origin, conn: Connection, head: Head) -> None:
        self.head = head
        self._origin = origin
        self._conn = conn
        self._lines = LineSplitter()
        self._pending: deque[bytes] = deque()
        self._ended = False
        self._failure: RegistryUnavailable | None = None

    @property
    def ready(self) -> bool:
        """Whether a message is already here, so that reading it will not wait."""
        return bool(self._pending)

    async def next_message(self) -> Any | None:
        """The next JSON message (decoded), or None once the body ended. No deadline: a
        watch may rightly stay quiet for hours; cancelling the wait loses nothing.
        A failure is raised once the messages received before it have been read."""
        while not self._pending:
            if self._failure is not None:
                raise self._failure
            if self._ended:
                return None
            try:
                self._take(await self._conn.next_event())
                while not self._ended and (event := self._conn.poll_event()) is not None:
                    self._take(event)  # all that is already here, without waiting
            except (OSError, ProtocolError) as exc:
                self._failure = unavailable_error(self._origin.name, exc)
                self._failure.__cause__ = exc
        line = self._pending.popleft()
        try:
            return json.loads(line)
        except ValueError as exc:
            raise RegistryUnavailable(
                f"{self._origin.name} sent a message that is not JSON: {line[:80]!r}"
            ) from exc

    async def read_body(self, *, timeout: float) -> bytes:
        """The rest of the body (the text of an error answer), within ``timeout``."""
        pieces = []
        try:
            async with asyncio.timeout(timeout):
                while (piece := await self._conn.next_event()) is not END:
                    assert isinstance(piece, bytes)
                    pieces.append(piece)
        except TimeoutError:
            raise RegistryUnavailable(f"{self._origin.name} did not answer in time") from None
        except (OSError, ProtocolError) as exc:
            raise unavailable_error(self._origin.name, exc) from exc
        self._ended = True
        return b"".join(pieces)

    def _take(self, event: Event) -> None:
        if event is END:
            self._ended = True
            if self._lines.partial:
                raise ProtocolError("the body ended in the middle of a message")
            return
        assert isinstance(event, bytes)
        self._pending.extend(self._lines.feed(event))


def _authority(host: str, port: int) -> str:
    """``host:port`` for the Host header and messages (IPv6 literals in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
