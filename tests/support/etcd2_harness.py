"""The registry-contract harness for the etcd v2 registry (see `support.registries`).

The v2 store has no compaction; it keeps the last 1000 events, and a watch from an
older index fails with "event index cleared". `compact` therefore pushes the history
out of that window by writing more than 1000 changes to a key outside the prefix.
"""

from __future__ import annotations

import asyncio
import secrets
import time

import httpx

from pyflannel.registry.base import SubnetRegistry
from pyflannel.registry.common import join_key
from pyflannel.registry.etcd2 import Etcd2Registry
from pyflannel.registry.etcdsettings import EtcdSettings
from support.etcd import EtcdServer

V2_HISTORY = 1000  # events etcd's v2 store remembers


class Etcd2Harness:
    """The etcd v2 registry on a real server (``--enable-v2``), under a prefix of its own."""

    def __init__(self, server: EtcdServer, settings: EtcdSettings | None = None) -> None:
        self.server = server
        self.prefix = f"/pft-{secrets.token_hex(4)}/network"
        self.registry: SubnetRegistry = Etcd2Registry(
            settings or EtcdSettings((server.endpoint,)), self.prefix
        )

    def now(self) -> float:
        return time.time()

    async def etcdctl(self, *args: str) -> str:
        """Run etcdctl with the v2 API off the event loop; its stdout."""
        result = await asyncio.to_thread(self.server.etcdctl, *args, api=2)
        return result.stdout

    async def put_config(self, text: str) -> None:
        await self.etcdctl("set", join_key(self.prefix, "config"), "--", text)

    async def put_raw(self, name: str, value: str) -> None:
        await self.etcdctl("set", join_key(self.prefix, "subnets", name), "--", value)

    async def compact(self) -> None:
        churn = f"/v2/keys{join_key(self.prefix, 'churn')}"
        async with httpx.AsyncClient(base_url=self.server.endpoint, trust_env=False) as client:
            for i in range(V2_HISTORY + 5):
                (await client.put(churn, data={"value": str(i)})).raise_for_status()

    async def expire(self, ttl: float) -> None:
        return None  # etcd deletes the key itself once its TTL runs out

    async def close(self) -> None:
        await self.registry.close()
