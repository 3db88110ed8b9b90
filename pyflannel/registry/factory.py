"""Choosing the registry implementation from the ``--etcd-*`` flags."""

from __future__ import annotations

from pyflannel.options import Options
from pyflannel.registry import select
from pyflannel.registry.base import SubnetRegistry


async def open_registry(options: Options) -> SubnetRegistry:
    """The registry for ``--etcd-api`` (see :mod:`pyflannel.registry.select`)."""
    return await select.open_registry(options)
