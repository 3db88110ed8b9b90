"""HTTP/1.1 framing for :mod:`pyflannel.httpc.client`: pure code.

Rules of this file: no I/O and no asyncio. Requests are encoded to bytes; answers are
parsed from whatever bytes the caller feeds in (sans-IO, in the manner of h11), so
every framing case (Content-Length, chunked with extensions and trailers, a body that
runs until the connection closes, a truncated or hostile answer) is tested without a
socket. Only what a client of etcd needs is here: no request bodies in chunks, no
``Expect: 100-continue``, no upgrades.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Final, final

MAX_HEAD = 64 * 1024  # status line and headers together
_MAX_CHUNK_LINE = 1024  # size line with its extensions, or one trailer line
_NO_BODY_STATUSES = frozenset({204, 304})


class ProtocolError(Exception):
    """The server broke HTTP/1.1 framing, or hung up in the middle of an answer."""


@dataclasses.dataclass(frozen=True, slots=True)
class Head:
    """Status line and headers of one answer (header names in lower case)."""

    status: int
    reason: str
    headers: Mapping[str, str]
    keep_alive: bool


@final
class _End:
    """The type of :data:`END`."""

    def __repr__(self) -> str:
        return "END"


END: Final = _End()  # the answer is complete
Event = Head | bytes | _End


def encode_request(
    method: str,
    target: str,
    *,
    host: str,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
) -> bytes:
    """One request with a Content-Length body; refuses line breaks in any field, which
    would let a value (a token, a user name) smuggle in headers of its own."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in headers]
    if any("\r" in line or "\n" in line for line in lines):
        raise ValueError("line break inside an HTTP request line or header")
    lines.append(f"Content-Length: {len(body)}\r\n\r\n")
    return "\r\n".join(lines).encode("latin-1") + body


def parse_head(raw: bytes) -> Head:
    """Status line and headers, as found before the blank line ending them."""
    status_line, *header_lines = raw.split(b"\r\n")
    version, _, rest = status_line.partition(b" ")
    code, _, reason = rest.partition(b" ")
    if version not in (b"HTTP/1.1", b"HTTP/1.0") or len(code) != 3 or not code.isdigit():
        raise ProtocolError(f"not an HTTP/1.x status line: {status_line[:80]!r}")
    headers: dict[str, str] = {}
    for line in header_lines:
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip() or line[:1] in (b" ", b"\t"):
            raise ProtocolError(f"malformed header line: {line[:80]!r}")
        key = name.decode("latin-1").lower()
        text = value.strip(b" \t").decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
    keep_alive = "keep-alive" in tokens if version == b"HTTP/1.0" else "close" not in tokens
    return Head(int(code), reason.decode("latin-1"), headers, keep_alive)


class ResponseParser:
    """Turns the bytes of a connection into answers: a :class:`Head`, body pieces
    (``bytes``), then :data:`END`. ``next_event`` returns None when it needs more data.

    Bytes after the end of one answer stay buffered for the next one (pipelining);
    call :meth:`start` before each answer.
    """

    def __init__(self, *, max_head: int = MAX_HEAD) -> None:
        self._buf = bytearray()
        self._eof = False
        self._max_head = max_head
        self._step: Callable[[], Event | None] = self._done
        self._remaining = 0  # bytes left of a Content-Length body or of a chunk
        self._no_body = False
        self._close_delimited = False

    @property
    def reusable(self) -> bool:
        """Whether the connection may carry another request after this answer."""
        return self._step == self._done and not self._close_delimited and not self._eof

    @property
    def buffered(self) -> int:
        """Bytes received and not yet consumed (data of a later answer, if any)."""
        return len(self._buf)

    def start(self, *, head_request: bool = False) -> None:
        """Expect a new answer (to a HEAD request: one without a body)."""
        self._step = self._head
        self._no_body = head_request
        self._close_delimited = False

    def feed(self, data: bytes | memoryview) -> None:
        """Bytes received from the server."""
        self._buf += data

    def feed_eof(self) -> None:
        """The server closed its side of the connection."""
        self._eof = True

    def next_event(self) -> Event | None:
        """The next piece of the answer, or None if more bytes are needed."""
        return self._step()

    def _done(self) -> Event | None:
        return END

    def _head(self) -> Event | None:
        buf = self._buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > self._max_head:
                raise ProtocolError(f"response head longer than {self._max_head} bytes")
            self._need("before a response")
            return None
        if end > self._max_head:
            raise ProtocolError(f"response head longer than {self._max_head} bytes")
        head = parse_head(bytes(buf[:end]))
        del buf[: end + 4]
        if 100 <= head.status < 200:
            return self._head()  # an interim answer (100 Continue): the real one follows
        self._step = self._framing(head)
        self._close_delimited = self._step == self._until_close or not head.keep_alive
        return head

    def _framing(self, head: Head) -> Callable[[], Event | None]:
        """How the body is delimited (RFC 9112, section 6.3)."""
        if self._no_body or head.status in _NO_BODY_STATUSES:
            return self._done
        coding = head.headers.get("transfer-encoding")
        if coding is not None:
            if coding.rsplit(",", 1)[-1].strip().lower() == "chunked":
                return self._chunk_size
            return self._until_close
        length = head.headers.get("content-length")
        if length is None:
            return self._until_close
        values = {v.strip() for v in length.split(",")}
        if len(values) != 1 or not (value := values.pop()).isdigit():
            raise ProtocolError(f"invalid Content-Length: {length!r}")
        self._remaining = int(value)
        return self._length_data

    def _length_data(self) -> Event | None:
        if self._remaining == 0:
            self._step = self._done
            return END
        if not self._buf:
            self._need("in the middle of a body")
            return None
        return self._take()

    def _take(self) -> bytes:
        """Up to ``_remaining`` buffered body bytes."""
        buf = self._buf
        size = min(self._remaining, len(buf))
        piece = bytes(buf[:size])
        del buf[:size]
        self._remaining -= size
        return piece

    def _chunk_size(self) -> Event | None:
        line = self._line()
        if line is None:
            self._need("in a chunked body")
            return None
        digits = line.split(b";", 1)[0].strip(b" \t")
        if not digits or len(digits) > 16 or digits.strip(b"0123456789abcdefABCDEF"):
            raise ProtocolError(f"invalid chunk size line: {line[:80]!r}")
        size = int(digits, 16)
        if size == 0:
            self._step = self._trailers
            return self._trailers()
        self._remaining = size
        self._step = self._chunk_data
        return self._chunk_data()

    def _chunk_data(self) -> Event | None:
        buf = self._buf
        if len(buf) >= self._remaining + 2:  # the whole rest of the chunk: the usual case
            end = self._remaining
            if buf[end : end + 2] != b"\r\n":
                raise ProtocolError("chunk not followed by CRLF")
            piece = bytes(buf[:end])
            del buf[: end + 2]
            self._remaining = 0
            self._step = self._chunk_size
            return piece
        if len(buf) > self._remaining:  # all data is there, its CRLF is not yet
            self._need("in a chunked body")
            return None
        if not buf:
            self._need("in a chunked body")
            return None
        return self._take()

    def _trailers(self) -> Event | None:
        while (line := self._line()) is not None:
            if not line:
                self._step = self._done
                return END
        self._need("in the trailers of a chunked body")
        return None

    def _until_close(self) -> Event | None:
        if self._buf:
            piece = bytes(self._buf)
            self._buf.clear()
            return piece
        if self._eof:
            self._step = self._done
            return END
        return None

    def _line(self) -> bytes | None:
        """One CRLF-terminated line (without the CRLF), if it is all there."""
        buf = self._buf
        end = buf.find(b"\r\n", 0, _MAX_CHUNK_LINE + 2)
        if end < 0:
            if len(buf) > _MAX_CHUNK_LINE:
                raise ProtocolError("chunk size or trailer line too long")
            return None
        line = bytes(buf[:end])
        del buf[: end + 2]
        return line

    def _need(self, where: str) -> None:
        if self._eof:
            raise ProtocolError(f"connection closed {where}")


class LineSplitter:
    """Splits a body into newline-terminated messages, however it was cut into chunks
    (etcd's gateway ends each streamed JSON message with a newline)."""

    def __init__(self) -> None:
        self._partial = b""

    @property
    def partial(self) -> bool:
        """Whether an unterminated message is pending."""
        return bool(self._partial)

    def feed(self, data: bytes) -> list[bytes]:
        """The messages completed by ``data`` (empty lines skipped)."""
        if self._partial:
            data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        return [line for line in lines if line.strip()]
