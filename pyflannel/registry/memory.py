"""An in-memory registry with etcd semantics, for tests and dry runs.

Values are stored as JSON text exactly as etcd would hold them, so the lease codec
and its handling of malformed peer data are exercised just as against etcd. Time is
read from an injected clock; ``expire()`` drops leases whose TTL ran out.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from ipaddress import IPv4Address

from pyflannel.errors import ConfigNotFound, LeaseConflict, PeerDataError, WatchResyncRequired
from pyflannel.model.lease import (
    EventKind,
    Lease,
    LeaseAttrs,
    LeaseEvent,
    LeaseFormat,
    WatchBatch,
    decode_attrs,
    encode_attrs,
)
from pyflannel.model.net import SubnetKey, parse_subnet_key

logger = logging.getLogger(__name__)
_ZERO = IPv4Address(0)


@dataclass(slots=True)
class _Entry:
    value: str
    expiration: float | None


class InMemoryRegistry:
    """A complete fake of the etcd registries, including compaction."""

    def __init__(
        self,
        config: str | None = None,
        *,
        clock: Callable[[], float] = time.time,
        lease_format: LeaseFormat = LeaseFormat.V3,
    ) -> None:
        self.config = config
        self._clock = clock
        self._format = lease_format
        self._entries: dict[str, _Entry] = {}
        self._history: list[tuple[int, str, _Entry | None]] = []
        self._revision = 1
        self._compacted = 0
        self._changed = asyncio.Event()
        self.fail_next: list[Exception] = []

    @property
    def lease_format(self) -> LeaseFormat:
        return self._format

    @property
    def revision(self) -> int:
        """The revision of the last change."""
        return self._revision

    def describe(self) -> str:
        return "in-memory registry"

    async def get_network_config(self) -> str:
        self._maybe_fail()
        if self.config is None:
            raise ConfigNotFound("network config key not found in the in-memory registry")
        return self.config

    async def list_leases(self) -> tuple[list[Lease], int]:
        self._maybe_fail()
        self.expire()
        leases = [
            lease for name in sorted(self._entries) if (lease := self._parse(name)) is not None
        ]
        return leases, self._revision

    async def create_lease(self, key: SubnetKey, attrs: LeaseAttrs, ttl: int) -> float | None:
        self._maybe_fail()
        self.expire()
        if key.name() in self._entries:
            raise LeaseConflict(f"lease {key.name()} already exists")
        return self._put(key.name(), encode_attrs(attrs, self._format), ttl)

    async def update_lease(self, key: SubnetKey, attrs: LeaseAttrs, ttl: int) -> float | None:
        self._maybe_fail()
        return self._put(key.name(), encode_attrs(attrs, self._format), ttl)

    async def delete_lease(self, key: SubnetKey) -> None:
        self._maybe_fail()
        self.delete_raw(key.name())

    async def close(self) -> None:
        return None

    def put_raw(self, name: str, value: str, ttl: int = 0) -> None:
        """Write any key/value as another host (or a hostile one) could."""
        self._put(name, value, ttl)

    def delete_raw(self, name: str) -> None:
        """Delete a key as an administrator would."""
        if self._entries.pop(name, None) is not None:
            self._record(name, None)

    def expire(self) -> None:
        """Delete every lease whose expiration has passed."""
        now = self._clock()
        for name, entry in list(self._entries.items()):
            if entry.expiration is not None and entry.expiration <= now:
                self.delete_raw(name)

    def compact(self) -> None:
        """Forget all history, as etcd's compaction does."""
        self._compacted = self._revision
        self._history.clear()

    async def watch_leases(self, since: int) -> AsyncGenerator[WatchBatch, None]:
        cursor = since
        while True:
            try:
                batch = self._events_after(cursor)
            except WatchResyncRequired:
                leases, rev = await self.list_leases()
                batch = WatchBatch(rev, snapshot=tuple(leases))
            if batch is not None:
                cursor = batch.revision
                yield batch
                continue
            self._changed.clear()
            await self._changed.wait()

    def _events_after(self, cursor: int) -> WatchBatch | None:
        if cursor < self._compacted:
            raise WatchResyncRequired(f"revision {cursor} compacted")
        events: list[LeaseEvent] = []
        for rev, name, entry in self._history:
            if rev <= cursor:
                continue
            event = self._event(name, entry)
            if event is not None:
                events.append(event)
        if self._revision <= cursor:
            return None
        return WatchBatch(self._revision, tuple(events))

    def _event(self, name: str, entry: _Entry | None) -> LeaseEvent | None:
        try:
            key = parse_subnet_key(name)
            if entry is None:
                return LeaseEvent(EventKind.REMOVED, Lease(key, LeaseAttrs(_ZERO), None))
            return LeaseEvent(
                EventKind.ADDED, Lease(key, decode_attrs(entry.value), entry.expiration)
            )
        except PeerDataError as exc:
            logger.warning("ignoring malformed lease %s: %s", name, exc)
            return None

    def _parse(self, name: str) -> Lease | None:
        event = self._event(name, self._entries[name])
        return None if event is None else event.lease

    def _put(self, name: str, value: str, ttl: int) -> float | None:
        expiration = self._clock() + ttl if ttl > 0 else None
        entry = _Entry(value, expiration)
        self._entries[name] = entry
        self._record(name, entry)
        return expiration

    def _record(self, name: str, entry: _Entry | None) -> None:
        self._revision += 1
        self._history.append((self._revision, name, entry))
        self._changed.set()

    def _maybe_fail(self) -> None:
        if self.fail_next:
            raise self.fail_next.pop(0)
