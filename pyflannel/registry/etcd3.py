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
:mod:`pyflannel.registry.etcdconn`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable
from ipaddress import IPv4Address
from typing import TYPE_CHECKING, Any

from aetcd import rpc

from pyflannel.core.renewal import LEASE_TTL, Backoff
from pyflannel.errors import (
    ConfigNotFound,
    LeaseConflict,
    PeerDataError,
    RegistryError,
    RegistryPermissionError,
    RegistryUnavailable,
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
from pyflannel.registry.etcdconn import EtcdConnection
from pyflannel.registry.etcdsettings import EtcdSettings

if TYPE_CHECKING:
    from pyflannel.options import Options

logger = logging.getLogger(__name__)
_ZERO = IPv4Address(0)
_PUT = 0  # mvccpb.Event.EventType
_TTL_WINDOW = 256  # LeaseTimeToLive calls in flight at once
WATCH_BACKOFF = Backoff(initial=0.1, cap=5.0)


class Etcd3Registry:
    """Leases and config in etcd through the v3 (gRPC) API."""

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
        kv = await self._conn.call(lambda c: c.get(self._config_key.encode()))
        if kv is None:
            raise ConfigNotFound(
                f"network config key {self._config_key} not found in etcd at"
                f" {self._conn.endpoints} (v3 API). Write it with the v3 API, e.g."
                f" ETCDCTL_API=3 etcdctl put {self._config_key} '<json>'; a config written"
                " with 'etcdctl set' (v2 API) lives in a separate keyspace that the v3 API"
                " cannot see (use --etcd-api=v2 for such a cluster)"
            )
        return bytes(kv.value).decode("utf-8", "replace")

    async def list_leases(self) -> tuple[list[Lease], int]:
        result = await self._conn.call(lambda c: c.get_prefix(self._subnets.encode()))
        kvs = list(result.kvs)
        ttls = await self._lease_ttls(kv.lease for kv in kvs)
        now = self._clock()
        leases = [lease for kv in kvs if (lease := self._lease(kv, ttls, now)) is not None]
        return leases, int(result.header.revision)

    async def create_lease(self, key: SubnetKey, attrs: LeaseAttrs, ttl: int) -> float | None:
        path = self._lease_key(key).encode()
        value = encode_attrs(attrs, LeaseFormat.V3).encode()
        lease_id, expiration = await self._grant(ttl)

        async def txn(client: Any) -> bool:
            tx = client.transactions
            compare = [tx.version(path) == 0]
            succeeded, _ = await client.transaction(
                compare=compare, success=[tx.put(path, value, lease=lease_id)], failure=[]
            )
            return bool(succeeded)

        try:
            created = await self._conn.call(txn)
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
        await self._conn.call(lambda c: c.put(path, value, lease=lease_id))
        return expiration

    async def delete_lease(self, key: SubnetKey) -> None:
        path = self._lease_key(key).encode()
        await self._conn.call(lambda c: c.delete(path))

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
                    with contextlib.suppress(RegistryError):
                        await self._conn.reauthenticate()

    async def _watch_from(self, cursor: int, outage: Outage) -> AsyncGenerator[WatchBatch, None]:
        """One watch stream from ``cursor + 1`` until it fails.

        A batch's revision is that of its last event, not the response header: while
        etcd replays history, the header already carries the current revision, and
        resuming from it after a break in the middle of a replay would skip events.
        """
        key = self._subnets.encode()
        async with self._conn.watch_stream() as stream:
            created = await stream.create(key, _prefix_end(key), cursor + 1)
            _check_response(created)
            if created.header.revision < cursor:
                # Watching from a future revision would wait silently for it.
                raise WatchResyncRequired(
                    f"etcd is at revision {created.header.revision}, behind {cursor}"
                    " (restored from a backup?)"
                )
            outage.recovered()
            while True:
                response = await stream.read()
                _check_response(response)
                if response.events:
                    yield await self._batch(response.events)

    async def _batch(self, events: Any) -> WatchBatch:
        # A watch event names the key's etcd lease but not its TTL. Asking etcd for it
        # would cost a round trip per event (most of the time spent on a burst of new
        # hosts), and nothing downstream of the watch needs more than "it has a TTL":
        # a PUT is taken to carry a fresh lease of the standard 24 h.
        now = self._clock()
        out: list[LeaseEvent] = []
        for event in events:
            if event.type == _PUT:
                lease = self._lease(event.kv, {}, now, default_ttl=LEASE_TTL)
                if lease is not None:
                    out.append(LeaseEvent(EventKind.ADDED, lease))
            elif (key := self._parse_key(event.kv)) is not None:
                out.append(LeaseEvent(EventKind.REMOVED, Lease(key, LeaseAttrs(_ZERO), None)))
        return WatchBatch(int(events[-1].kv.mod_revision), tuple(out))

    async def _snapshot(self) -> WatchBatch:
        leases, revision = await self.list_leases()
        return WatchBatch(revision, snapshot=tuple(leases))

    async def _grant(self, ttl: int) -> tuple[int, float | None]:
        if ttl <= 0:
            return 0, None
        lease = await self._conn.call(lambda c: c.lease(ttl))
        return int(lease.id), self._clock() + int(lease.ttl)

    async def _revoke(self, lease_id: int) -> None:
        if not lease_id:
            return
        try:
            await self._conn.call(lambda c: c.revoke_lease(lease_id))
        except RegistryError as exc:  # the grant then just runs out
            logger.debug("could not revoke etcd lease %x: %s", lease_id, exc)

    async def _lease_ttls(self, lease_ids: Iterable[int]) -> dict[int, int]:
        """Remaining TTL per etcd lease, looked up many at a time."""
        ids = sorted({i for i in lease_ids if i})
        ttls: dict[int, int] = {}
        for start in range(0, len(ids), _TTL_WINDOW):
            window = ids[start : start + _TTL_WINDOW]
            ttls.update(await self._conn.call(functools.partial(self._ttl_window, ids=window)))
        return ttls

    async def _ttl_window(self, client: Any, ids: list[int]) -> dict[int, int]:
        # grpc.aio starts each unary call when it is made, so the lookups run
        # concurrently without creating tasks; awaiting them in order collects them.
        calls = [
            client.leasestub.LeaseTimeToLive(
                rpc.LeaseTimeToLiveRequest(ID=i),
                timeout=self._conn.timeout,
                metadata=client.metadata,
            )
            for i in ids
        ]
        try:
            return {i: int((await call).TTL) for i, call in zip(ids, calls, strict=True)}
        finally:
            for call in calls:
                call.cancel()

    def _lease(
        self, kv: Any, ttls: dict[int, int], now: float, default_ttl: int = 0
    ) -> Lease | None:
        key = self._parse_key(kv)
        if key is None:
            return None
        try:
            attrs = decode_attrs(bytes(kv.value))
        except PeerDataError as exc:
            self._warn_once(kv, exc)
            return None
        # An etcd lease that is already gone answers TTL -1: the key is about to go.
        expiration = now + max(ttls.get(kv.lease, default_ttl), 0) if kv.lease else None
        return Lease(key, attrs, expiration)

    def _parse_key(self, kv: Any) -> SubnetKey | None:
        name = bytes(kv.key).decode("utf-8", "replace").removeprefix(self._subnets)
        try:
            return parse_subnet_key(name)
        except PeerDataError as exc:
            self._warn_once(kv, exc)
            return None

    def _warn_once(self, kv: Any, exc: PeerDataError) -> None:
        """Warn about a bad key once per write, not on every listing and event."""
        marker = (bytes(kv.key).decode("utf-8", "replace"), int(kv.mod_revision))
        if marker not in self._warned:
            self._warned.add(marker)
            logger.warning("ignoring malformed lease %s: %s", marker[0], exc)

    def _lease_key(self, key: SubnetKey) -> str:
        return self._subnets + key.name()


def _prefix_end(prefix: bytes) -> bytes:
    """The range end that makes ``[prefix, end)`` cover every key with the prefix."""
    return prefix[:-1] + bytes([prefix[-1] + 1])


def _check_response(response: Any) -> None:
    """Raise for a watch response that ends the watch (compaction, cancellation)."""
    if response.compact_revision:
        raise WatchResyncRequired(f"history compacted up to {response.compact_revision}")
    if response.canceled:
        # The reason is only available as text (etcd's Go client parses it too).
        reason = response.cancel_reason or "no reason given"
        if "permission denied" in reason:
            raise RegistryPermissionError(f"etcd cancelled the watch: {reason}")
        raise RegistryUnavailable(f"etcd cancelled the watch: {reason}")
