"""The ``SubnetRegistry`` protocol: storage of the network config and the leases.

Implementations only store and watch; the policy (which subnet, when to renew, what
to do on conflict) lives in :mod:`pyflannel.manager`. Errors are mapped to
:mod:`pyflannel.errors` at this boundary so nothing above it sees gRPC or HTTP.

Watch contract: ``watch_leases(since)`` yields batches for every change after
revision ``since``. It resumes by itself after a dropped connection (reconnecting
with backoff and logging each outage once) and yields a snapshot batch when history
was compacted, so a consumer never misses a change. It ends only when cancelled.
Malformed leases are logged and skipped, never raised. In watch events a lease's
``expiration`` only says whether the key has a TTL (not None) or not: etcd v3 watch
events do not carry the TTL, so it may be approximate there (a fresh 24 h lease is
assumed); ``list_leases`` gives exact expirations.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from pyflannel.model.lease import Lease, LeaseAttrs, LeaseFormat, WatchBatch
from pyflannel.model.net import SubnetKey


class SubnetRegistry(Protocol):
    """Where leases live. See the module docstring for the watch contract."""

    @property
    def lease_format(self) -> LeaseFormat:
        """The lease JSON generation this store holds (v2 or v3 era)."""
        ...

    def describe(self) -> str:
        """Where this registry points, for log lines (endpoints, API, prefix)."""
        ...

    async def get_network_config(self) -> str:
        """The raw config JSON. Raises ConfigNotFound when the key is absent."""
        ...

    async def list_leases(self) -> tuple[list[Lease], int]:
        """Every parseable lease and the revision the listing reflects."""
        ...

    async def create_lease(self, key: SubnetKey, attrs: LeaseAttrs, ttl: int) -> float | None:
        """Create the key only if absent; return its expiration. Raises LeaseConflict."""
        ...

    async def update_lease(self, key: SubnetKey, attrs: LeaseAttrs, ttl: int) -> float | None:
        """Write the key unconditionally with a fresh TTL (``ttl=0``: no expiry)."""
        ...

    async def delete_lease(self, key: SubnetKey) -> None:
        """Delete the key (absent is not an error)."""
        ...

    def watch_leases(self, since: int) -> AsyncIterator[WatchBatch]:
        """Batches of changes after revision ``since`` (see module docstring)."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...
