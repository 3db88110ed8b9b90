"""The subnet registry on the etcd v3 API, as flanneld v0.18+ stores it.

Keys are ``<prefix>/config`` and ``<prefix>/subnets/<name>``; lease values are the
v0.15+ JSON (``PublicIPv6`` always present). A lease's lifetime is an etcd lease
granted for its TTL: creation is ``Txn(Version(key) == 0) Then Put(key, lease)`` and
renewal puts the key again on a fresh grant, exactly as flanneld v0.28 does, so the
two can share a cluster. Expirations come from ``LeaseTimeToLive``; a key without an
etcd lease is a reservation (expiration None).

The watch follows the contract in :mod:`pyflannel.registry.base`: it resumes from
the last revision after any failure and turns a compacted history into a snapshot.
Connection, TLS, authentication and error mapping live in
:mod:`pyflannel.registry.etcdconn`, the JSON encoding of etcd's gateway in
:mod:`pyflannel.registry.etcdwire`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Sequence
from ipaddress import IPv4Address
from typing import TYPE_CHECKING, Any

from pyflannel.core.renewal import LEASE_TTL, Backoff
from pyflannel.errors import (
    ConfigNotFound,
    LeaseConflict,
    PeerDataError,
    RegistryError,
    RegistryPermissionError,
    WatchResyncRequired,
)
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
from pyflannel.registry.common import Outage, join_key
from pyflannel.registry.etcdconn import EtcdConnection, WatchStream
from pyflannel.registry.etcdsettings import EtcdSettings
from pyflannel.registry.etcdwire import (
    KeyValue,
    WatchEvent,
    WatchResponse,
    cancel_error,
    create_request,
    delete_request,
    grant_request,
    lease_request,
    parse_grant,
    parse_range,
    parse_ttl,
    parse_txn,
    prefix_end,
    put_request,
    range_request,
    watch_request,
)

if TYPE_CHECKING:
    from pyflannel.options import Options

logger = logging.getLogger(__name__)
_ZERO = IPv4Address(0)
_TTL_WINDOW = 1024  # LeaseTimeToLive calls sent at once (pipelined, a few connections)
WATCH_BACKOFF = Backoff(initial=0.1, cap=5.0)


class Etcd3Registry:
    """Leases and config in etcd through the v3 API (on etcd's JSON gateway)."""

    def __init__(
        self,
        settings: EtcdSettings,
        prefix: str,
        *,
        clock: Callable[[], float] = time.time,
        watch_backoff: Backoff = WATCH_BACKOFF,
    ) -> None:
        self._conn = EtcdConnection(settings)
        self._prefix = prefix
        self._config_key = join_key(prefix, "config")
        self._subnets = join_key(prefix, "subnets") + "/"
        self._clock = clock
        self._backoff = watch_backoff
        self._warned: set[tuple[str, int]] = set()

    @classmethod
    def from_options(cls, options: Options) -> Etcd3Registry:
        """The registry the ``--etcd-*`` flags describe."""
        return cls(EtcdSettings.from_options(options), options.etcd_prefix)

    @property
    def lease_format(self) -> LeaseFormat:
        return LeaseFormat.V3

    def describe(self) -> str:
        tls = ", TLS" if self._conn.tls else ""
        return f"etcd v3 API at {self._conn.endpoints}{tls}, prefix {self._prefix}"

    async def get_network_config(self) -> str:
        request = range_request(self._config_key.encode())
        kvs, _ = await self._conn.call("/kv/range", request, parse_range)
        if not kvs:
            raise ConfigNotFound(
                f"network config key {self._config_key} not found in etcd at"
                f" {self._conn.endpoints} (v3 API). Write it with the v3 API, e.g."
                f" ETCDCTL_API=3 etcdctl put {self._config_key} '<json>'; a config written"
                " with 'etcdctl set' (v2 API) lives in a separate keyspace that the v3 API"
                " cannot see (use --etcd-api=v2 for such a cluster)"
            )
        return kvs[0].value.decode("utf-8", "replace")

    async def list_leases(self) -> tuple[list[Lease], int]:
        prefix = self._subnets.encode()
        request = range_request(prefix, prefix_end(prefix))
        kvs, revision = await self._conn.call("/kv/range", request, parse_range)
        ttls = await self._lease_ttls(kv.lease for kv in kvs)
        now = self._clock()
        leases = [lease for kv in kvs if (lease := self._lease(kv, ttls, now)) is not None]
        return leases, revision

    async def create_lease(self, key: SubnetKey, attrs: LeaseAttrs, ttl: int) -> float | None:
        path = self._lease_key(key).encode()
        value = encode_attrs(attrs, LeaseFormat.V3).encode()
        lease_id, expiration = await self._grant(ttl)
        try:
            created = await self._conn.call(
                "/kv/txn", create_request(path, value, lease_id), parse_txn
            )
        except RegistryError:
            await self._revoke(lease_id)
            raise
        if not created:
            await self._revoke(lease_id)
            raise LeaseConflict(f"lease {key.name()} already exists in etcd")
        return expiration

    async def update_lease(self, key: SubnetKey, attrs: LeaseAttrs, ttl: int) -> float | None:
        """Put the key on a fresh etcd lease (``ttl > 0``) or on none (``ttl == 0``).

        flanneld v0.28 grants 24 h even when renewing a reservation, which silently
        turns the reservation into an ordinary lease; ``ttl == 0`` keeps it one.
        """
        path = self._lease_key(key).encode()
        value = encode_attrs(attrs, LeaseFormat.V3).encode()
        lease_id, expiration = await self._grant(ttl)
        await self._conn.call("/kv/put", put_request(path, value, lease_id), _ignore)
        return expiration

    async def delete_lease(self, key: SubnetKey) -> None:
        path = self._lease_key(key).encode()
        await self._conn.call("/kv/deleterange", delete_request(path), _ignore)

    async def close(self) -> None:
        await self._conn.close()

    async def watch_leases(self, since: int) -> AsyncIterator[WatchBatch]:
        cursor, resync = since, False
        outage = Outage(f"watch of {self._subnets} on etcd at {self._conn.endpoints}", logger)
        while True:
            try:
                if resync:
                    snapshot = await self._snapshot()
                    resync, cursor = False, snapshot.revision
                    yield snapshot
                async with contextlib.aclosing(self._watch_from(cursor, outage)) as batches:
                    async for batch in batches:
                        cursor = batch.revision
                        yield batch
            except WatchResyncRequired as exc:
                logger.info("%s: %s; listing all leases again", outage.what, exc)
                resync = True
            except RegistryError as exc:
                if self._conn.closed:
                    return
                await outage.failed(exc, self._backoff)
                if isinstance(exc, RegistryPermissionError):
                    self._conn.reauthenticate()  # etcd may have forgotten the token

    async def _watch_from(self, cursor: int, outage: Outage) -> AsyncGenerator[WatchBatch, None]:
        """One watch stream from ``cursor + 1`` until it fails.

        A batch's revision is that of its last event, not the response header: while
        etcd replays history, the header already carries the current revision, and
        resuming from it after a break in the middle of a replay would skip events.
        """
        key = self._subnets.encode()
        async with self._conn.watch(watch_request(key, prefix_end(key), cursor + 1)) as stream:
            created = await stream.read(timeout=self._conn.timeout)
            _check_response(created, stream.where)
            if created.revision < cursor:
                # Watching from a future revision would wait silently for it.
                raise WatchResyncRequired(
                    f"etcd is at revision {created.revision}, behind {cursor}"
                    " (restored from a backup?)"
                )
            outage.recovered()
            while True:
                events = await self._read_events(stream)
                if events:
                    yield self._batch(events)

    async def _read_events(self, stream: WatchStream) -> list[WatchEvent]:
        """The events of the next message and of every other one already received: a
        burst becomes one batch. If a later message ends the watch, the events before
        it are dropped with it; the watch resumes from the last batch, so they come
        again."""
        response = await stream.read()
        _check_response(response, stream.where)
        events = list(response.events)
        while stream.ready:
            response = await stream.read()
            _check_response(response, stream.where)
            events.extend(response.events)
        return events

    def _batch(self, events: Sequence[WatchEvent]) -> WatchBatch:
        # A watch event names the key's etcd lease but not its TTL. Asking etcd for it
        # would cost a round trip per event (most of the time spent on a burst of new
        # hosts), and nothing downstream of the watch needs more than "it has a TTL":
        # a PUT is taken to carry a fresh lease of the standard 24 h.
        now = self._clock()
        out: list[LeaseEvent] = []
        for event in events:
            if not event.deleted:
                lease = self._lease(event.kv, {}, now, default_ttl=LEASE_TTL)
                if lease is not None:
                    out.append(LeaseEvent(EventKind.ADDED, lease))
            elif (key := self._parse_key(event.kv)) is not None:
                out.append(LeaseEvent(EventKind.REMOVED, Lease(key, LeaseAttrs(_ZERO), None)))
        return WatchBatch(events[-1].kv.mod_revision, tuple(out))

    async def _snapshot(self) -> WatchBatch:
        leases, revision = await self.list_leases()
        return WatchBatch(revision, snapshot=tuple(leases))

    async def _grant(self, ttl: int) -> tuple[int, float | None]:
        if ttl <= 0:
            return 0, None
        lease_id, granted = await self._conn.call("/lease/grant", grant_request(ttl), parse_grant)
        return lease_id, self._clock() + granted

    async def _revoke(self, lease_id: int) -> None:
        if not lease_id:
            return
        try:
            await self._conn.call("/lease/revoke", lease_request(lease_id), _ignore)
        except RegistryError as exc:  # the grant then just runs out
            logger.debug("could not revoke etcd lease %x: %s", lease_id, exc)

    async def _lease_ttls(self, lease_ids: Iterable[int]) -> dict[int, int]:
        """Remaining TTL per etcd lease, looked up many at a time."""
        ids = sorted({i for i in lease_ids if i})
        ttls: dict[int, int] = {}
        for start in range(0, len(ids), _TTL_WINDOW):
            window = ids[start : start + _TTL_WINDOW]
            requests = [lease_request(i) for i in window]
            found = await self._conn.call_many("/lease/timetolive", requests, parse_ttl)
            ttls.update(zip(window, found, strict=True))
        return ttls

    def _lease(
        self, kv: KeyValue, ttls: dict[int, int], now: float, default_ttl: int = 0
    ) -> Lease | None:
        key = self._parse_key(kv)
        if key is None:
            return None
        try:
            attrs = decode_attrs(kv.value)
        except PeerDataError as exc:
            self._warn_once(kv, exc)
            return None
        # An etcd lease that is already gone answers TTL -1: the key is about to go.
        expiration = now + max(ttls.get(kv.lease, default_ttl), 0) if kv.lease else None
        return Lease(key, attrs, expiration)

    def _parse_key(self, kv: KeyValue) -> SubnetKey | None:
        name = kv.key.decode("utf-8", "replace").removeprefix(self._subnets)
        try:
            return parse_subnet_key(name)
        except PeerDataError as exc:
            self._warn_once(kv, exc)
            return None

    def _warn_once(self, kv: KeyValue, exc: PeerDataError) -> None:
        """Warn about a bad key once per write, not on every listing and event."""
        marker = (kv.key.decode("utf-8", "replace"), kv.mod_revision)
        if marker not in self._warned:
            self._warned.add(marker)
            logger.warning("ignoring malformed lease %s: %s", marker[0], exc)

    def _lease_key(self, key: SubnetKey) -> str:
        return self._subnets + key.name()


def _ignore(answer: Any) -> None:
    """For calls whose answer says nothing beyond success."""


def _check_response(response: WatchResponse, where: str) -> None:
    """Raise for a watch response that ends the watch (compaction, cancellation)."""
    if response.compact_revision:
        raise WatchResyncRequired(f"history compacted up to {response.compact_revision}")
    if response.canceled:
        raise cancel_error(response.cancel_reason, where)
