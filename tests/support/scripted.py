"""A scripted, hostile HTTP/1.1 server on loopback, for tests of the HTTP client.

A `Scripted` server reads one request at a time (headers and a ``Content-Length`` body)
and answers it with the next scripted `Reply`: a sequence of steps, each bytes to send,
seconds to wait, or ``None`` to hang up. A script can thus stall, close mid-answer or send
garbage. It records every request and counts the connections it accepted.

`ScriptedServers` starts servers and closes them all at once (the ``scripted`` fixture in
conftest wraps it); `ok` and `chunk` build the usual pieces of an answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

Reply = Sequence[bytes | float | None]  # bytes to send, seconds to wait, None to hang up


@dataclass
class Scripted:
    """A server that answers each request with the next scripted reply."""

    replies: list[Reply]
    port: int = 0
    requests: list[bytes] = field(default_factory=list)
    connections: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while self.replies:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                self.requests.append(head + await reader.readexactly(length))
                if not await self._send(writer, self.replies.pop(0)):
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _send(self, writer: asyncio.StreamWriter, reply: Reply) -> bool:
        for step in reply:
            if step is None:
                return False
            if isinstance(step, float):
                await asyncio.sleep(step)
            else:
                writer.write(step)
                await writer.drain()
        return True


Start = Callable[..., Awaitable[Scripted]]


class ScriptedServers:
    """Starts `Scripted` servers on free loopback ports; `close` stops them all."""

    def __init__(self) -> None:
        self._servers: list[asyncio.Server] = []

    async def start(self, *replies: Reply) -> Scripted:
        """A listening server that answers its requests with `replies`, in order."""
        script = Scripted(list(replies))
        server = await asyncio.start_server(script.handle, "127.0.0.1", 0)
        self._servers.append(server)
        script.port = server.sockets[0].getsockname()[1]
        return script

    def close(self) -> None:
        for server in self._servers:
            server.close()


def ok(body: bytes, *extra: str) -> bytes:
    """A ``200 OK`` answer with `body`, a ``Content-Length`` and the `extra` header lines."""
    headers = "".join(f"{h}\r\n" for h in extra)
    return b"HTTP/1.1 200 OK\r\n%sContent-Length: %d\r\n\r\n%s" % (
        headers.encode(), len(body), body)  # fmt: skip


def chunk(data: bytes) -> bytes:
    """`data` as one chunk of a ``Transfer-Encoding: chunked`` body."""
    return b"%x\r\n%s\r\n" % (len(data), data)
