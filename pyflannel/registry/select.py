"""Choosing the etcd API: ``--etcd-api=auto|v3|v2``.

etcd keeps the v2 and the v3 keyspaces apart, so a config written with
``etcdctl set`` (v2, flanneld <= v0.17) is invisible to the v3 API and one written
with ``etcdctl put`` (v3, flanneld >= v0.18) is invisible to the v2 API. Reading the
wrong one is flannel's most reported etcd problem ("Key not found"). With ``v3`` or
``v2`` the registry for that API is used as is. With ``auto`` (the default) the
store that holds ``<prefix>/config`` decides:

- the v3 store first: if the key is there, v3;
- else, only once the v3 API has answered "not found", the v2 store: if the key is
  there, v2. A failing v3 API is never taken as "not there": a cluster that holds a
  config in both stores must not end up on the v2 one during a v3 outage, since
  hosts on different stores would hand out the same subnets;
- else neither: the wait goes on, and the one message says which key was looked for
  under which API and how to write it.

The daemon opens the registry before the config exists and then polls
``get_network_config()`` until it does, so auto-detection is a registry of its own:
:class:`AutoRegistry` probes on each poll, and from the first hit on it is the chosen
registry (the other one is closed). Nothing else may be called before that.

The v2 registry is imported and opened only when it is needed, so a daemon on the
v3 API, by far the common case, does not load its code. With ``auto`` that is at the
first probe of the v2 store.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Callable, Sequence

from pyflannel.errors import ConfigNotFound, RegistryError
from pyflannel.model.lease import Lease, LeaseAttrs, LeaseFormat, WatchBatch
from pyflannel.model.net import SubnetKey
from pyflannel.options import Options
from pyflannel.registry.base import SubnetRegistry
from pyflannel.registry.common import join_key
from pyflannel.registry.etcd3 import Etcd3Registry

logger = logging.getLogger(__name__)


async def open_registry(options: Options) -> SubnetRegistry:
    """The registry for ``--etcd-api`` (see the module docstring)."""
    if options.etcd_api == "v3":
        logger.info("using the etcd v3 API (--etcd-api=v3)")
        return Etcd3Registry.from_options(options)
    if options.etcd_api == "v2":
        logger.info("using the etcd v2 API (--etcd-api=v2)")
        return open_v2(options)
    return AutoRegistry(
        Etcd3Registry.from_options(options), open_v2=functools.partial(open_v2, options),
        config_key=join_key(options.etcd_prefix, "config"),
        endpoints=",".join(options.etcd_endpoints),
    )  # fmt: skip


def open_v2(options: Options) -> SubnetRegistry:
    """The v2 registry, imported on first use (see the module docstring)."""
    from pyflannel.registry.etcd2 import Etcd2Registry

    return Etcd2Registry.from_options(options)


class AutoRegistry:
    """Whichever of two registries holds the config; see the module docstring."""

    def __init__(
        self,
        v3: SubnetRegistry,
        v2: SubnetRegistry | None = None,
        *,
        open_v2: Callable[[], SubnetRegistry] | None = None,
        config_key: str,
        endpoints: str,
    ) -> None:
        """``v2`` is the v2 registry, or None to open it with ``open_v2`` when needed."""
        if v2 is None and open_v2 is None:
            raise ValueError("AutoRegistry needs the v2 registry or a way to open it")
        self._v3 = v3
        self._v2 = v2
        self._open_v2 = open_v2
        self._config_key = config_key
        self._endpoints = endpoints
        self._chosen: SubnetRegistry | None = None

    @property
    def chosen(self) -> SubnetRegistry | None:
        """The registry in use, once the config was found."""
        return self._chosen

    @property
    def lease_format(self) -> LeaseFormat:
        return self._require().lease_format

    def describe(self) -> str:
        if self._chosen is not None:
            return self._chosen.describe()
        return (
            f"etcd at {self._endpoints}, API chosen by where {self._config_key} is"
            " (the v3 store, else the v2 store)"
        )

    async def get_network_config(self) -> str:
        if self._chosen is not None:
            return await self._chosen.get_network_config()
        try:
            text = await self._v3.get_network_config()
        except ConfigNotFound:
            pass
        except RegistryError as exc:
            raise type(exc)(
                f"{exc} (the etcd API is chosen once the v3 API answers; for a server"
                " without it, use --etcd-api=v2)"
            ) from exc
        else:
            await self._choose(self._v3, self._v2, "found in the v3 store")
            return text
        return await self._probe_v2()

    async def _probe_v2(self) -> str:
        v2 = self._v2_registry()
        try:
            text = await v2.get_network_config()
        except ConfigNotFound:
            raise ConfigNotFound(self._neither("not found either")) from None
        except RegistryError as exc:
            raise ConfigNotFound(self._neither(f"failed: {exc}")) from exc
        await self._choose(v2, self._v3, "not in the v3 store, found in the v2 store")
        return text

    def _v2_registry(self) -> SubnetRegistry:
        if self._v2 is None:
            assert self._open_v2 is not None
            self._v2 = self._open_v2()
        return self._v2

    def _neither(self, v2_outcome: str) -> str:
        """One message for the wait: which key, under which APIs, and how to write it."""
        key = self._config_key
        return (
            f"network config {key} not found in etcd at {self._endpoints}: looked for it"
            f" with the v3 API (not found) and with the v2 API ({v2_outcome}). Write it with"
            f" ETCDCTL_API=3 etcdctl put {key} '<json>' (as flanneld >= v0.18 expects), or"
            f" ETCDCTL_API=2 etcdctl set {key} '<json>' for a cluster shared with"
            " flanneld <= v0.17"
        )

    async def _choose(self, chosen: SubnetRegistry, other: SubnetRegistry | None, why: str) -> None:
        self._chosen = chosen
        api = "v3" if chosen is self._v3 else "v2"
        logger.info("using the etcd %s API: %s is %s", api, self._config_key, why)
        if other is not None:
            await other.close()

    def _require(self) -> SubnetRegistry:
        if self._chosen is None:
            raise RuntimeError("the etcd API is not chosen before the network config is found")
        return self._chosen

    async def list_leases(self) -> tuple[list[Lease], int]:
        return await self._require().list_leases()

    async def create_lease(self, key: SubnetKey, attrs: LeaseAttrs, ttl: int) -> float | None:
        return await self._require().create_lease(key, attrs, ttl)

    async def update_lease(self, key: SubnetKey, attrs: LeaseAttrs, ttl: int) -> float | None:
        return await self._require().update_lease(key, attrs, ttl)

    async def delete_lease(self, key: SubnetKey) -> None:
        await self._require().delete_lease(key)

    def watch_leases(self, since: int) -> AsyncIterator[WatchBatch]:
        return self._require().watch_leases(since)

    async def close(self) -> None:
        for registry in _open_ones(self._chosen, self._v3, self._v2):
            await registry.close()


def _open_ones(
    chosen: SubnetRegistry | None, v3: SubnetRegistry, v2: SubnetRegistry | None
) -> Sequence[SubnetRegistry]:
    """What still needs closing: the chosen registry, or both (if opened) before a choice."""
    if chosen is not None:
        return (chosen,)
    return (v3,) if v2 is None else (v3, v2)
