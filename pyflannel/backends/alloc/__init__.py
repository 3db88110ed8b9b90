"""The ``alloc`` backend: lease a subnet, program nothing.

Useful when something else builds the data path from subnet.env and the leases in
etcd. Its lease value is ``{"PublicIP":"P"}`` (plus ``"PublicIPv6":null`` on the v3
registry) and its MTU is the interface MTU, as flanneld's.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from pyflannel.backend import BackendContext, PeerUpdate, Prepared
from pyflannel.model.lease import Lease

logger = logging.getLogger(__name__)


class AllocBackend:
    """Lease-only backend."""

    def __init__(self, ctx: BackendContext) -> None:
        self._ctx = ctx

    async def prepare(self) -> Prepared:
        return Prepared(backend_type="", backend_data=None, mtu=self._ctx.iface.mtu)

    async def run(self, own: Lease, feed: AsyncIterator[PeerUpdate]) -> None:
        async for update in feed:
            for event in update.events:
                logger.debug("peer lease %s %s", event.lease.subnet, event.kind.value)

    async def close(self) -> None:
        return None
