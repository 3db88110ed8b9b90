"""The ``host-gw`` backend: plain routes to each peer subnet via the peer host.

Design notes
------------
- No device and no encapsulation: the lease is ``{"PublicIP":P,"BackendType":"host-gw"}``
  and the MTU is the external interface's own (facts §8). ``prepare()`` refuses a
  ``--public-ip`` other than the interface address, with flanneld's reason.
- The routes are a pure function of the own lease, the peer leases and the subnets
  connected to the interface (:mod:`.desired`), kept per peer in a
  :class:`~pyflannel.core.peerbook.PeerBook` that each lease event updates. A full
  pass reads the routes we own (through the external interface into the overlay
  network, other than our own subnet), diffs and applies the difference with the
  shared netlink applier; a pass for lease events applies just the routes they
  changed.
- Full passes run at start, when netlink reports a route deleted from the interface
  or a change of the interface, and every ``RESYNC_PERIOD`` seconds, as flanneld's
  route check. So routes deleted by hand come back, and routes of peers that left
  while we were down go at start-up (the first pass waits for the first peer
  update, so no route of a live peer is ever removed on a restart). Every pass
  reads the interface's addresses, so a peer becomes routable as soon as an address
  puts it on a connected subnet.
- A host-gw peer whose PublicIP is not on a subnet connected to the interface
  cannot be routed without a router; flanneld fails on it with a bare netlink
  error, we log once why and which subnet, and carry on with the others.
- Nothing is removed on shutdown (as flanneld): traffic flows while we restart.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from pyflannel.backend import BackendContext, PeerUpdate, Prepared
from pyflannel.backends.hostgw.desired import (
    BACKEND_TYPE,
    check_public_ip,
    configure,
    route_scope,
)
from pyflannel.core.kernelstate import MAIN_TABLE
from pyflannel.core.peerbook import PeerBook, PeerNote
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
        self._book: PeerBook | None = None

    async def prepare(self) -> Prepared:
        check_public_ip(self._ctx.iface)
        await self._ops.open()
        return Prepared(BACKEND_TYPE, None, self._ctx.iface.mtu)

    async def run(self, own: Lease, feed: AsyncIterator[PeerUpdate]) -> None:
        self._own = own
        self._book = PeerBook(own.subnet)
        await drive(self._loop, feed, name="hostgw", take=self._take, concerns=self._concerns)

    def _take(self, update: PeerUpdate) -> None:
        if self._book is not None:
            self._book.follow(update.events, update.leases)

    async def close(self) -> None:
        await self._ops.close()

    async def _sync(self) -> None:
        """One pass: read the connected subnets, then apply the routes that changed
        (or compare them all with the kernel's, on a full pass)."""
        own, book = self._own, self._book
        if own is None or book is None:
            return
        iface = self._ctx.iface
        configure(
            book, iface, [address.network for address in await self._ops.addresses(iface.index)]
        )
        scope = route_scope(iface.index, self._ctx.config.network, own.subnet)
        await self._reconciler.program(book, scope, full=self._loop.full, report=_report)

    def _concerns(self, notice: Notice) -> bool:
        if notice.pid and notice.pid == self._ops.port_id:
            return False  # our own doing
        if notice.ifindex != self._ctx.iface.index:
            return False
        return notice.kind == "link" or (notice.kind == "route" and notice.table == MAIN_TABLE)


def _report(notes: tuple[PeerNote, ...]) -> None:
    """Log each unroutable or foreign peer once (again only after it changes)."""
    for note in notes:
        if note.reason is not None:
            logger.warning("no host-gw route for %s: %s", note.subnet, note.reason)
        elif note.foreign:
            logger.info("ignoring non-host-gw subnet %s", note.subnet)
