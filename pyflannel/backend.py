"""The backend contract: how the daemon drives a data path.

1. ``prepare()`` runs before the lease is acquired: it creates devices and returns the
   lease attributes only the backend knows (``BackendType``, ``BackendData`` such as
   the VTEP MAC) and the MTU for subnet.env.
2. ``run(own, feed)`` runs until cancelled. ``feed`` yields :class:`PeerUpdate` objects:
   the events since the last update *and* the complete current set of peer leases, so
   an event-driven backend (udp) and a reconciling one (vxlan, host-gw) are both served
   without either replaying history.
3. ``close()`` releases file descriptors and sockets. Kernel state (devices, routes,
   FDB and neighbour entries) is deliberately left in place, as flanneld leaves it, so
   a restart does not interrupt traffic.

Backends are looked up by ``Backend.Type`` in :data:`pyflannel.backends.BACKENDS`.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Protocol

from pyflannel.errors import ConfigError
from pyflannel.model.config import NetworkConfig
from pyflannel.model.lease import Lease, LeaseEvent, LeaseFormat
from pyflannel.options import Options


@dataclass(frozen=True, slots=True)
class ExternalInterface:
    """The host interface that carries overlay traffic, and the address peers use."""

    name: str
    index: int
    mtu: int
    iface_addr: IPv4Address  # the IPv4 address on the interface
    ext_addr: IPv4Address  # the public IP advertised in the lease (--public-ip)


@dataclass(frozen=True, slots=True)
class BackendContext:
    """Everything a backend may depend on, fixed for the life of the process."""

    config: NetworkConfig
    iface: ExternalInterface
    options: Options
    lease_format: LeaseFormat


@dataclass(frozen=True, slots=True)
class Prepared:
    """What ``prepare()`` contributes to the lease and to subnet.env."""

    backend_type: str
    backend_data: str | None
    mtu: int


@dataclass(frozen=True, slots=True)
class PeerUpdate:
    """Changes since the previous update and every peer lease known after them."""

    events: tuple[LeaseEvent, ...]
    leases: tuple[Lease, ...]


class Backend(Protocol):
    """A data path. See the module docstring for the life cycle."""

    async def prepare(self) -> Prepared:
        """Create devices; return the lease attributes and the MTU."""
        ...

    async def run(self, own: Lease, feed: AsyncIterator[PeerUpdate]) -> None:
        """Program the data path from the peer feed until cancelled."""
        ...

    async def close(self) -> None:
        """Release file descriptors and sockets; leave kernel state in place."""
        ...


class BackendFactory(Protocol):
    """A backend class: constructed from the context."""

    def __call__(self, ctx: BackendContext) -> Backend: ...


def load_backend(backend_type: str) -> BackendFactory:
    """The backend class for a config's ``Backend.Type``; unknown types are a ConfigError."""
    from pyflannel.backends import BACKENDS

    target = BACKENDS.get(backend_type.lower())
    if target is None:
        known = ", ".join(sorted(BACKENDS))
        shown = backend_type or "(empty: the Backend object has no Type)"
        raise ConfigError(
            f'network config: unknown backend type {shown!r} in "Backend.Type"; '
            f"known types: {known}"
        )
    module_name, _, attr = target.partition(":")
    factory: BackendFactory = getattr(importlib.import_module(module_name), attr)
    return factory
