"""The ``host-gw`` backend: plain routes to each peer subnet via the peer host.

Design notes
------------
- No device and no encapsulation: the lease is ``{"PublicIP":P,"BackendType":"host-gw"}``
  and the MTU is the external interface's own (facts §8). ``prepare()`` refuses a
  ``--public-ip`` other than the interface address, with flanneld's reason.
- The routes are a pure function of the own lease, the peer leases and the subnets
  connected to the interface (:mod:`.desired`). One pass reads the routes we own
  (through the external interface into the overlay network, other than our own
  subnet), diffs and applies the difference with the shared netlink applier.
- Passes run when the peer set changes, when netlink reports a route deleted from
  the interface or a change of the interface, and every ``RESYNC_PERIOD`` seconds,
  as flanneld's route check. So routes deleted by hand come back, and routes of
  peers that left while we were down go at start-up (the first pass waits for the
  first peer update, so no route of a live peer is ever removed on a restart).
- A host-gw peer whose PublicIP is not on a subnet connected to the interface
  cannot be routed without a router; flanneld fails on it with a bare netlink
  error, we log once why and which subnet, and carry on with the others.
- Nothing is removed on shutdown (as flanneld): traffic flows while we restart.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from ipaddress import IPv4Network

from pyflannel.backend import BackendContext, PeerUpdate, Prepared
from pyflannel.backends.hostgw.desired import (
    BACKEND_TYPE,
    Desired,
    check_public_ip,
    desired_routes,
    route_scope,
)
from pyflannel.core.kernelstate import MAIN_TABLE
from pyflannel.errors import BackendError
from pyflannel.model.lease import Lease
from pyflannel.netlink.applier import ReconcileLoop, Reconciler
from pyflannel.netlink.driver import drive
from pyflannel.netlink.ops import NetlinkOps
from pyflannel.netlink.rtnl import Notice

logger = logging.getLogger(__name__)

RESYNC_PERIOD = 10.0
"""Seconds between full comparisons with the kernel (flanneld's route check period)."""


class HostGwBackend:
    """See the module docstring."""

    def __init__(self, ctx: BackendContext) -> None:
        self._ctx = ctx
        self._ops = NetlinkOps()
        self._reconciler = Reconciler(self._ops)
        self._loop = ReconcileLoop(self._sync, period=RESYNC_PERIOD, transient=(BackendError,))
        self._own: Lease | None = None
        self._peers: tuple[Lease, ...] = ()
        self._skipped: set[tuple[IPv4Network, str]] = set()
        self._foreign: set[IPv4Network] = set()

    async def prepare(self) -> Prepared:
        check_public_ip(self._ctx.iface)
        await self._ops.open()
        return Prepared(BACKEND_TYPE, None, self._ctx.iface.mtu)

    async def run(self, own: Lease, feed: AsyncIterator[PeerUpdate]) -> None:
        self._own = own
        await drive(self._loop, feed, name="hostgw", take=self._take, concerns=self._concerns)

    def _take(self, update: PeerUpdate) -> None:
        self._peers = update.leases

    async def close(self) -> None:
        await self._ops.close()

    async def _sync(self) -> None:
        """One pass: read the connected subnets, compute the routes, reconcile."""
        own = self._own
        if own is None:
            return
        iface = self._ctx.iface
        connected = [address.network for address in await self._ops.addresses(iface.index)]
        desired = desired_routes(own, self._peers, iface, connected)
        self._report(desired)
        scope = route_scope(iface.index, self._ctx.config.network, own.subnet)
        await self._reconciler.reconcile(desired.state, scope)

    def _report(self, desired: Desired) -> None:
        """Log each unroutable or foreign peer once (again only after it changes)."""
        skipped = {(peer.subnet, peer.reason) for peer in desired.skipped}
        for subnet, reason in sorted(skipped - self._skipped):
            logger.warning("no host-gw route for %s: %s", subnet, reason)
        self._skipped = skipped
        foreign = set(desired.foreign)
        for subnet in sorted(foreign - self._foreign):
            logger.info("ignoring non-host-gw subnet %s", subnet)
        self._foreign = foreign

    def _concerns(self, notice: Notice) -> bool:
        if notice.pid and notice.pid == self._ops.port_id:
            return False  # our own doing
        if notice.ifindex != self._ctx.iface.index:
            return False
        return notice.kind == "link" or (notice.kind == "route" and notice.table == MAIN_TABLE)
