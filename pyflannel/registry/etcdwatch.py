"""One open etcd v3 Watch call on the JSON gateway: its messages, parsed, and its
liveness.

A watch may rightly stay quiet for hours, and so does a stopped or cut-off etcd; the
gateway offers no pings. So after a quiet ``probe_interval`` the stream's member is
asked a cheap question on another connection, and a member that does not answer
ends the stream (etcd's gRPC clients use HTTP/2 keepalive pings for the same).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from pyflannel.errors import RegistryUnavailable
from pyflannel.httpc.client import Stream
from pyflannel.registry.etcdwire import MalformedAnswer, WatchResponse, parse_watch


class WatchStream:
    """The messages of one Watch call, with errors mapped like any call's."""

    def __init__(
        self,
        stream: Stream,
        where: str,
        probe: Callable[[], Awaitable[None]],
        probe_interval: float,
    ) -> None:
        self.where = where  # the member's URL, for messages
        self._stream = stream
        self._probe = probe  # raises RegistryUnavailable unless the member answers
        self._probe_interval = probe_interval

    @property
    def ready(self) -> bool:
        """Whether the next message is already here (reading it will not wait)."""
        return self._stream.ready

    async def read(self, timeout: float | None = None) -> WatchResponse:
        """The next message. Without ``timeout`` it may wait for hours, probing the
        member whenever the stream was quiet for the probe interval."""
        if self._stream.ready:
            message = await self._stream.next_message()
        elif timeout is not None:
            try:
                async with asyncio.timeout(timeout):
                    message = await self._stream.next_message()
            except TimeoutError:
                raise RegistryUnavailable(f"etcd at {self.where} did not answer in time") from None
        else:
            message = await self._quiet_read()
        if message is None:
            raise RegistryUnavailable(f"etcd at {self.where} ended the watch stream")
        try:
            return parse_watch(message, self.where)
        except MalformedAnswer as exc:
            raise RegistryUnavailable(f"etcd at {self.where} is unavailable: {exc}") from exc

    async def _quiet_read(self) -> Any | None:
        while True:
            try:
                async with asyncio.timeout(self._probe_interval):
                    return await self._stream.next_message()
            except TimeoutError:
                await self._probe()
