"""One harness per `SubnetRegistry` implementation, for the registry contract suite.

A harness owns a registry and can do to its store what other parties do: write raw
keys (another host, or a hostile one), compact the history (an operator or etcd's
auto-compaction) and let leases run out. Adding a backend to the contract suite means
writing one more harness here and naming it in the suite's fixture.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import Protocol

from pyflannel.aio import spawn
from pyflannel.model.lease import EventKind, WatchBatch
from pyflannel.registry.base import SubnetRegistry
from pyflannel.registry.common import join_key
from pyflannel.registry.etcd3 import Etcd3Registry
from pyflannel.registry.etcdsettings import EtcdSettings
from pyflannel.registry.memory import InMemoryRegistry
from support.etcd import EtcdServer


class RegistryHarness(Protocol):
    """What the contract suite needs besides the registry itself."""

    registry: SubnetRegistry

    def now(self) -> float:
        """The registry's idea of the current time (its clock)."""
        ...

    async def put_config(self, text: str) -> None:
        """Write the network config as an administrator would."""
        ...

    async def put_raw(self, name: str, value: str) -> None:
        """Write ``<prefix>/subnets/<name>`` verbatim, without a TTL."""
        ...

    async def compact(self) -> None:
        """Drop all history up to the current revision."""
        ...

    async def expire(self, ttl: float) -> None:
        """Let every lease granted for ``ttl`` seconds run out (or start to)."""
        ...

    async def close(self) -> None: ...


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.time = start

    def __call__(self) -> float:
        return self.time


class MemoryHarness:
    """The in-memory registry on a fake clock."""

    def __init__(self) -> None:
        self.clock = FakeClock()
        self.memory = InMemoryRegistry(clock=self.clock)
        self.registry: SubnetRegistry = self.memory

    def now(self) -> float:
        return self.clock()

    async def put_config(self, text: str) -> None:
        self.memory.config = text

    async def put_raw(self, name: str, value: str) -> None:
        self.memory.put_raw(name, value)

    async def compact(self) -> None:
        self.memory.compact()

    async def expire(self, ttl: float) -> None:
        self.clock.time += ttl + 1
        self.memory.expire()

    async def close(self) -> None:
        await self.memory.close()


class Etcd3Harness:
    """The etcd v3 registry on a real server, under a prefix of its own."""

    def __init__(self, server: EtcdServer, settings: EtcdSettings | None = None) -> None:
        self.server = server
        self.prefix = f"/pft-{secrets.token_hex(4)}/network"
        self.registry: SubnetRegistry = Etcd3Registry(
            settings or EtcdSettings((server.endpoint,)), self.prefix
        )

    def now(self) -> float:
        return time.time()

    async def etcdctl(self, *args: str) -> str:
        """Run etcdctl (v3 API) off the event loop; its stdout."""
        result = await asyncio.to_thread(self.server.etcdctl, *args)
        return result.stdout

    async def put_config(self, text: str) -> None:
        await self.etcdctl("put", join_key(self.prefix, "config"), "--", text)

    async def put_raw(self, name: str, value: str) -> None:
        await self.etcdctl("put", join_key(self.prefix, "subnets", name), "--", value)

    async def revision(self) -> int:
        """The store's current revision."""
        out = await self.etcdctl("get", "pft-no-such-key", "-w", "json")
        return int(json.loads(out)["header"]["revision"])

    async def compact(self) -> None:
        await self.etcdctl("compact", str(await self.revision()))

    async def expire(self, ttl: float) -> None:
        return None  # etcd deletes the key itself once the lease runs out

    async def close(self) -> None:
        await self.registry.close()


class Collector:
    """Consumes a watch in the background and keeps every batch."""

    def __init__(self, registry: SubnetRegistry, since: int) -> None:
        self.batches: list[WatchBatch] = []
        self._arrived = asyncio.Event()
        self._task = spawn(self._run(registry.watch_leases(since)), name="contract-watch")

    async def _run(self, batches: AsyncIterator[WatchBatch]) -> None:
        async for batch in batches:
            self.batches.append(batch)
            self._arrived.set()

    def events(self) -> list[tuple[EventKind, str]]:
        return [(e.kind, e.lease.key.name()) for b in self.batches for e in b.events]

    async def wait_for(self, done: Callable[[], bool], timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not done():
                self._arrived.clear()
                await self._arrived.wait()

    async def events_after(self, count: int, timeout: float = 10.0) -> list[tuple[EventKind, str]]:
        await self.wait_for(lambda: len(self.events()) >= count, timeout)
        return self.events()

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@contextlib.asynccontextmanager
async def watching(registry: SubnetRegistry, since: int) -> AsyncIterator[Collector]:
    collector = Collector(registry, since)
    try:
        yield collector
    finally:
        await collector.close()
