"""The subnet registry on the etcd v2 API, as flanneld up to v0.17 stores it.

Clusters set up with ``etcdctl set`` (the classic flannel walkthrough, etcd 3.4/3.5
with ``--enable-v2``) keep the config and the leases in the v2 store, which the v3
API cannot see. Keys are ``<prefix>/config`` and ``<prefix>/subnets/<name>``, and
lease values are written as flanneld v0.10 writes them (no ``PublicIPv6``), so
v0.10 hosts and this one share the cluster. The HTTP calls are flanneld's own:

- reads are quorum reads; a missing subnets directory is an empty list whose
  revision is the index etcd reports with the error;
- creation is ``PUT ...?prevExist=false`` with ``value`` and ``ttl`` (etcd's
  "node exists" is a lost race); renewal is an unconditional ``PUT`` and
  ``ttl == 0`` leaves the ttl out, which keeps a reservation permanent;
- the watch long-polls ``wait=true&waitIndex=<cursor + 1>`` for one event at a time,
  and asks again from the same cursor when a poll saw no change for
  ``EtcdSettings.long_poll`` seconds (a change is then still found in etcd's history).

A lease's expiration is ``now + node.ttl`` rather than etcd's absolute
``expiration`` time, so clock skew between the hosts and etcd cannot make a lease
look later than it is (an event replayed from history may overstate it by its age,
which the renewal margin absorbs).

The watch follows the contract in :mod:`pyflannel.registry.base`: it resumes from
its cursor after any failure, and "event index cleared" (etcd keeps only the last
1000 events), a cleared watcher or the removal of the whole subnets directory turn
into a snapshot. Connection, TLS, auth and error mapping live in
:mod:`pyflannel.registry.etcd2conn`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from ipaddress import IPv4Address
from typing import TYPE_CHECKING, Any

from pyflannel.core.renewal import Backoff
from pyflannel.errors import (
    ConfigNotFound,
    LeaseConflict,
    PeerDataError,
    RegistryError,
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
from pyflannel.registry.etcd2conn import (
    EVENT_INDEX_CLEARED,
    KEY_NOT_FOUND,
    NODE_EXIST,
    WATCHER_CLEARED,
    Etcd2Connection,
    Reply,
)
from pyflannel.registry.etcdsettings import EtcdSettings

if TYPE_CHECKING:
    from pyflannel.options import Options

logger = logging.getLogger(__name__)
_ZERO = IPv4Address(0)
WATCH_BACKOFF = Backoff(initial=0.1, cap=5.0)
_REMOVALS = frozenset({"delete", "expire", "compareAndDelete"})
_WARNED_MAX = 1024  # remembered malformed writes; forgotten in bulk beyond that
_QUORUM_GET = {"quorum": "true", "recursive": "false", "sorted": "false"}
_QUORUM_LIST = {"quorum": "true", "recursive": "true", "sorted": "false"}

Node = Mapping[str, Any]


class Etcd2Registry:
    """Leases and config in etcd through the v2 (HTTP) API."""

    def __init__(
        self,
        settings: EtcdSettings,
        prefix: str,
        *,
        clock: Callable[[], float] = time.time,
        watch_backoff: Backoff = WATCH_BACKOFF,
    ) -> None:
        self._conn = Etcd2Connection(settings)
        self._prefix = prefix
        self._config_key = join_key(prefix, "config")
        self._subnets_dir = join_key(prefix, "subnets")
        self._subnets = self._subnets_dir + "/"
        self._clock = clock
        self._backoff = watch_backoff
        self._warned: set[tuple[str, int]] = set()

    @classmethod
    def from_options(cls, options: Options) -> Etcd2Registry:
        """The registry the ``--etcd-*`` flags describe."""
        return cls(EtcdSettings.from_options(options), options.etcd_prefix)

    @property
    def lease_format(self) -> LeaseFormat:
        return LeaseFormat.V2

    @property
    def config_key(self) -> str:
        """The key holding the network config."""
        return self._config_key

    def describe(self) -> str:
        tls = ", TLS" if self._conn.tls else ""
        return f"etcd v2 API at {self._conn.endpoints}{tls}, prefix {self._prefix}"

    async def get_network_config(self) -> str:
        reply = await self._conn.call("GET", self._config_key, params=_QUORUM_GET)
        if reply.error_code == KEY_NOT_FOUND:
            raise ConfigNotFound(
                f"network config key {self._config_key} not found in etcd at"
                f" {self._conn.endpoints} (v2 API). Write it with the v2 API, e.g."
                f" ETCDCTL_API=2 etcdctl set {self._config_key} '<json>'; a config written"
                " with 'etcdctl put' (v3 API) lives in a separate keyspace that the v2 API"
                " cannot see (use --etcd-api=v3 for such a cluster)"
            )
        node = self._node(reply, f"read {self._config_key}")
        value = node.get("value")
        if node.get("dir") or not isinstance(value, str):
            raise ConfigNotFound(f"{self._config_key} in etcd (v2 API) is a directory, not a value")
        return value

    async def list_leases(self) -> tuple[list[Lease], int]:
        reply = await self._conn.call("GET", self._subnets_dir, params=_QUORUM_LIST)
        if reply.error_code == KEY_NOT_FOUND:
            return [], reply.index
        node = self._node(reply, f"list {self._subnets_dir}")
        now = self._clock()
        children = node.get("nodes")
        leases = [
            lease
            for child in (children if isinstance(children, list) else [])
            if isinstance(child, dict) and (lease := self._lease(child, now)) is not None
        ]
        return leases, reply.index

    async def create_lease(self, key: SubnetKey, attrs: LeaseAttrs, ttl: int) -> float | None:
        reply = await self._put(key, attrs, ttl, {"prevExist": "false"})
        if reply.error_code == NODE_EXIST:
            raise LeaseConflict(f"lease {key.name()} already exists in etcd")
        return self._expiration(self._node(reply, f"create lease {key.name()}"), self._clock())

    async def update_lease(self, key: SubnetKey, attrs: LeaseAttrs, ttl: int) -> float | None:
        reply = await self._put(key, attrs, ttl, None)
        return self._expiration(self._node(reply, f"write lease {key.name()}"), self._clock())

    async def delete_lease(self, key: SubnetKey) -> None:
        reply = await self._conn.call("DELETE", self._subnets + key.name())
        if reply.error_code != KEY_NOT_FOUND:
            self._node(reply, f"delete lease {key.name()}")

    async def close(self) -> None:
        await self._conn.close()

    async def watch_leases(self, since: int) -> AsyncIterator[WatchBatch]:
        cursor, resync = since, False
        outage = Outage(
            f"watch of {self._subnets} on etcd at {self._conn.endpoints} (v2 API)", logger
        )
        while True:
            try:
                batch = await (self._snapshot() if resync else self._next_event(cursor))
            except WatchResyncRequired as exc:
                logger.info("%s: %s; listing all leases again", outage.what, exc)
                resync = True
                continue
            except RegistryError as exc:
                await outage.failed(exc, self._backoff)
                continue
            outage.recovered()
            if batch is None:
                continue
            resync, cursor = False, batch.revision
            yield batch

    async def _next_event(self, cursor: int) -> WatchBatch | None:
        """Long-poll for the first change after ``cursor`` (one event per request);
        None when there was none within the poll's time."""
        params = {"wait": "true", "waitIndex": str(cursor + 1), "recursive": "true"}
        reply = await self._conn.call("GET", self._subnets_dir, params=params, long_poll=True)
        if reply.expired:
            return None
        if reply.error_code in (EVENT_INDEX_CLEARED, WATCHER_CLEARED):
            raise WatchResyncRequired(f"etcd answered {reply.error_text()}")
        node = self._node(reply, f"watch {self._subnets_dir}")
        index = node.get("modifiedIndex")
        if not isinstance(index, int) or index <= cursor:
            raise RegistryError(f"etcd sent a watch event without a usable index: {reply.body}")
        event = self._event(str(reply.body.get("action")), node, index)
        return WatchBatch(index, () if event is None else (event,))

    def _event(self, action: str, node: Node, index: int) -> LeaseEvent | None:
        path = str(node.get("key", ""))
        if action in _REMOVALS and not path.startswith(self._subnets):
            # The subnets directory itself (or a parent) went away with every lease
            # in it, and etcd reports that as one event for the directory.
            raise WatchResyncRequired(f"{path} was removed ({action})")
        if node.get("dir"):
            return None
        if action in _REMOVALS:
            key = self._parse_key(path, index)
            return None if key is None else LeaseEvent(EventKind.REMOVED, _bare(key))
        lease = self._lease(node, self._clock())
        return None if lease is None else LeaseEvent(EventKind.ADDED, lease)

    async def _snapshot(self) -> WatchBatch:
        leases, revision = await self.list_leases()
        return WatchBatch(revision, snapshot=tuple(leases))

    async def _put(
        self, key: SubnetKey, attrs: LeaseAttrs, ttl: int, params: dict[str, str] | None
    ) -> Reply:
        form = {"value": encode_attrs(attrs, LeaseFormat.V2)}
        if ttl > 0:
            form["ttl"] = str(ttl)
        return await self._conn.call("PUT", self._subnets + key.name(), params=params, form=form)

    def _node(self, reply: Reply, what: str) -> Node:
        """The answer's node; any etcd error left unhandled by the caller is raised."""
        if reply.error_code is not None:
            raise RegistryError(
                f"etcd at {self._conn.endpoints} could not {what}: {reply.error_text()}"
            )
        node = reply.body.get("node")
        if not isinstance(node, dict):
            raise RegistryError(f"etcd answered {what} without a node: {reply.body}")
        return node

    def _lease(self, node: Node, now: float) -> Lease | None:
        path, index = str(node.get("key", "")), _int(node.get("modifiedIndex"))
        if node.get("dir"):
            self._warn_once(path, index, "a directory, not a lease")
            return None
        key = self._parse_key(path, index)
        if key is None:
            return None
        try:
            attrs = decode_attrs(str(node.get("value", "")))
        except PeerDataError as exc:
            self._warn_once(path, index, str(exc))
            return None
        return Lease(key, attrs, self._expiration(node, now))

    def _parse_key(self, path: str, index: int) -> SubnetKey | None:
        try:
            return parse_subnet_key(path.removeprefix(self._subnets))
        except PeerDataError as exc:
            self._warn_once(path, index, str(exc))
            return None

    @staticmethod
    def _expiration(node: Node, now: float) -> float | None:
        ttl = _int(node.get("ttl"))
        return now + ttl if ttl > 0 else None

    def _warn_once(self, path: str, index: int, problem: str) -> None:
        """Warn about a bad key once per write, not on every listing and event."""
        if (path, index) in self._warned:
            return
        if len(self._warned) >= _WARNED_MAX:
            self._warned.clear()
        self._warned.add((path, index))
        logger.warning("ignoring malformed lease %s: %s", path, problem)


def _bare(key: SubnetKey) -> Lease:
    """A removed lease: only the subnet is known (the watch consumer keeps the rest)."""
    return Lease(key, LeaseAttrs(_ZERO), None)


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
