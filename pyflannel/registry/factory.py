"""Choosing the registry implementation from the ``--etcd-*`` flags."""

from __future__ import annotations

from pyflannel.errors import ConfigError
from pyflannel.options import Options
from pyflannel.registry.base import SubnetRegistry
from pyflannel.registry.etcd3 import Etcd3Registry


async def open_registry(options: Options) -> SubnetRegistry:
    """The registry for ``--etcd-api`` (auto and v3 use the etcd v3 API)."""
    if options.etcd_api == "v2":
        raise ConfigError("--etcd-api=v2 is not supported yet; use v3 (the default)")
    return Etcd3Registry.from_options(options)
