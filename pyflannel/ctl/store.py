"""Reading and writing ``<prefix>/config`` with the etcd API the cluster uses.

The most common flannel support question is "Couldn't fetch network config: 100: Key
not found": the config was written with one etcd API (``etcdctl put``, v3) and the
daemon reads the other (``etcdctl set``, v2), two keyspaces that cannot see each
other. ``pyflannelctl config set`` avoids it by writing where the daemons read:

- ``--etcd-api=v3`` or ``v2``: that API;
- ``--etcd-api=auto`` (the default): where a config already is (v3 first, then v2),
  and the v3 API for a new cluster, since every flanneld since v0.18 reads v3.

The daemon's registries only read the config, so the writes live here, on the same
connection classes (:mod:`pyflannel.registry.etcdconn`, ``etcd2conn``) and therefore
with the same endpoints, TLS and authentication handling. The v2 connection is
imported only when the v2 store is actually looked at.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Protocol

from pyflannel.errors import RegistryError
from pyflannel.options import Options
from pyflannel.registry.common import join_key
from pyflannel.registry.etcdconn import EtcdConnection, EtcdSettings
from pyflannel.registry.etcdwire import parse_range, put_request, range_request

logger = logging.getLogger(__name__)


class ConfigStore(Protocol):
    """One etcd API's view of the config key."""

    api: str
    key: str

    def describe(self) -> str:
        """Where the key lives, for messages."""
        ...

    async def read(self) -> str | None:
        """The stored text, or None when the key does not exist."""
        ...

    async def write(self, text: str) -> None:
        """Store ``text`` unconditionally."""
        ...

    async def close(self) -> None:
        """Release the connection."""
        ...


class V3ConfigStore:
    """The config key through the etcd v3 API."""

    api = "v3"

    def __init__(self, settings: EtcdSettings, prefix: str) -> None:
        self._conn = EtcdConnection(settings)
        self.key = join_key(prefix, "config")

    def describe(self) -> str:
        return f"{self.key} (etcd v3 API at {self._conn.endpoints})"

    async def read(self) -> str | None:
        kvs, _ = await self._conn.call("/kv/range", range_request(self.key.encode()), parse_range)
        return kvs[0].value.decode("utf-8", "replace") if kvs else None

    async def write(self, text: str) -> None:
        request = put_request(self.key.encode(), text.encode())
        await self._conn.call("/kv/put", request, _ignore)

    async def close(self) -> None:
        await self._conn.close()


class V2ConfigStore:
    """The config key through the etcd v2 (HTTP) API."""

    api = "v2"

    def __init__(self, settings: EtcdSettings, prefix: str) -> None:
        from pyflannel.registry.etcd2conn import Etcd2Connection

        self._conn = Etcd2Connection(settings)
        self.key = join_key(prefix, "config")

    def describe(self) -> str:
        return f"{self.key} (etcd v2 API at {self._conn.endpoints})"

    async def read(self) -> str | None:
        from pyflannel.registry.etcd2conn import KEY_NOT_FOUND

        params = {"quorum": "true", "recursive": "false", "sorted": "false"}
        reply = await self._conn.call("GET", self.key, params=params)
        if reply.error_code == KEY_NOT_FOUND:
            return None
        if reply.error_code is not None:
            raise RegistryError(f"etcd refused to read {self.key}: {reply.error_text()}")
        node = reply.body.get("node")
        value = node.get("value") if isinstance(node, dict) else None
        if not isinstance(value, str):
            raise RegistryError(f"{self.key} in the etcd v2 store is a directory, not a value")
        return value

    async def write(self, text: str) -> None:
        reply = await self._conn.call("PUT", self.key, form={"value": text})
        if reply.error_code is not None:
            raise RegistryError(f"etcd refused to write {self.key}: {reply.error_text()}")

    async def close(self) -> None:
        await self._conn.close()


def _ignore(answer: Any) -> None:
    """For a put, whose answer says nothing beyond success."""


@dataclasses.dataclass(frozen=True, slots=True)
class Located:
    """The store the config lives in (or should be written to), and its current text."""

    store: ConfigStore
    text: str | None
    note: str = ""  # why auto chose this store, when that is worth saying


def open_store(options: Options, api: str) -> ConfigStore:
    """A store for one explicit API (``v3`` or ``v2``)."""
    settings = EtcdSettings.from_options(options)
    if api == "v2":
        return V2ConfigStore(settings, options.etcd_prefix)
    return V3ConfigStore(settings, options.etcd_prefix)


async def locate(options: Options) -> Located:
    """The config store ``--etcd-api`` designates (see the module docstring for auto).

    The caller closes ``located.store``.
    """
    if options.etcd_api in ("v3", "v2"):
        store = open_store(options, options.etcd_api)
        return await _read_into(store)
    v3 = await _read_into(open_store(options, "v3"))
    if v3.text is not None:
        return v3
    v2_store = open_store(options, "v2")
    try:
        v2_text = await v2_store.read()
    except RegistryError as exc:  # no v2 API on this server, most likely
        logger.debug("no config in the etcd v2 store: %s", exc)
        v2_text = None
    if v2_text is not None:
        await v3.store.close()
        note = "found in the etcd v2 store (flanneld <= v0.17 and --etcd-api=v2 read it there)"
        return Located(v2_store, v2_text, note)
    await v2_store.close()
    return Located(
        v3.store, None, "no network config in etcd yet (v3 or v2 store): writing it with the v3 API"
    )


async def _read_into(store: ConfigStore) -> Located:
    try:
        return Located(store, await store.read())
    except BaseException:
        await store.close()
        raise
