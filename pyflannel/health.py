"""The HTTP health endpoint (``--healthz-ip``/``--healthz-port``), as flanneld serves it.

``GET /healthz`` answers 200 ``flanneld is running`` once the daemon runs;
``GET /readyz`` answers 200 ``flanneld is ready`` after subnet.env is written and 503
``flanneld is not ready yet`` before. Anything else is 404. The body texts are kept so
that existing probes and checks keep working.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from pyflannel.errors import ConfigError

logger = logging.getLogger(__name__)


class HealthServer:
    """A tiny HTTP/1.0 server; readiness is flipped by the daemon."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.ready = False
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        """Listen, or raise ConfigError naming the address (flanneld panics here)."""
        try:
            self._server = await asyncio.start_server(self._handle, self.host, self.port)
        except OSError as exc:
            raise ConfigError(
                f"cannot serve health checks on --healthz-ip={self.host} "
                f"--healthz-port={self.port}: {exc.strerror or exc}"
            ) from exc
        logger.info("serving health checks on http://%s:%d/healthz", self.host, self.port)

    async def close(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(3):
                    await self._server.wait_closed()

    def _answer(self, path: str) -> tuple[int, str]:
        if path == "/healthz":
            return 200, "flanneld is running"
        if path == "/readyz":
            return (200, "flanneld is ready") if self.ready else (503, "flanneld is not ready yet")
        return 404, "404 page not found"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5):
                line = await reader.readline()
            parts = line.decode("latin-1").split()
            path = parts[1].split("?", 1)[0] if len(parts) >= 2 else "/"
            status, body = self._answer(path)
            reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}[status]
            data = body.encode()
            writer.write(
                f"HTTP/1.0 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n"
                f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
                + data
            )
            await writer.drain()
        except (TimeoutError, OSError, UnicodeDecodeError):
            pass
        finally:
            writer.close()
