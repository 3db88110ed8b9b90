"""The ``vxlan`` backend: the kernel's VXLAN data path, programmed by reconciliation.

Design notes
------------
- ``prepare()`` creates or reuses ``flannel.<VNI>`` (:mod:`.device`) and advertises
  its MAC in the lease's BackendData, with or without ``VNI`` according to the
  registry's lease format. ``run()`` gives the device our subnet's address.
- The kernel state is a pure function of the own lease, the peer leases and the
  options (:mod:`.desired`), kept per peer in a
  :class:`~pyflannel.core.peerbook.PeerBook` that each lease event updates. The
  applier (:mod:`pyflannel.netlink.applier`) diffs it with what the kernel holds on
  our device (and our DirectRouting routes, found by their route protocol) and
  applies the difference in a few batched writes.
- Passes run when lease events arrive (events that come in during a pass make one
  more pass), when netlink reports a change on our device or to our routes, and
  periodically: every ``FULL_EVERY * RESYNC_PERIOD`` seconds, or after
  ``RESYNC_PERIOD`` when a notice was ambiguous. So entries deleted by hand come back, entries of
  peers that left while we were down go at start-up, and a peer's changed VtepMAC
  leaves no stale FDB entry (an FDB entry is keyed by MAC, so the old one is simply
  not desired any more).
- A pass for lease events applies only the entries those events changed (the
  book's delta), trusting that the kernel holds what the previous pass left; a
  *full* pass (the first, periodic, after a netlink notice or a failure) first
  checks the device, recreating one that vanished or was changed with the MAC our
  lease advertises, and compares every entry with the kernel's.
- The kernel announces the deletion of a neighbour or FDB entry without naming
  who asked for it; the deletions a pass sends are therefore expected
  (:class:`~pyflannel.netlink.driver.Echoes`), not taken for someone else's, or
  every peer that leaves would cost a full pass.
- The first pass waits for the first peer update, so a restart never removes the
  entries of peers that are still there.
- Nothing is removed on shutdown (as flanneld): traffic flows while we restart.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from ipaddress import IPv4Network

from pyflannel.backend import BackendContext, PeerUpdate, Prepared
from pyflannel.backends.vxlan.desired import BACKEND_TYPE, Links, backend_data, configure
from pyflannel.backends.vxlan.device import (
    DeviceSpec,
    configure_device,
    device_spec,
    ensure_device,
    incompatibility,
)
from pyflannel.backends.vxlan.options import parse_settings
from pyflannel.core.kernelstate import MAIN_TABLE, RTPROT_PYFLANNEL, Scope
from pyflannel.core.peerbook import PeerBook, PeerNote
from pyflannel.errors import BackendError
from pyflannel.model.lease import Lease
from pyflannel.netlink.applier import ReconcileLoop, Reconciler
from pyflannel.netlink.driver import Echoes, drive
from pyflannel.netlink.ops import LinkState, NetlinkOps
from pyflannel.netlink.rtnl import Notice

logger = logging.getLogger(__name__)

RESYNC_PERIOD = 10.0
"""Seconds between checks whether a full comparison with the kernel is due."""
FULL_EVERY = 6
"""Netlink notices report every change to our entries and device, so a quiet host
compares everything only every ``FULL_EVERY`` periods (a minute); after a notice that
may have been someone else's (see :class:`~pyflannel.netlink.driver.Echoes`), at the
next period."""


class VxlanBackend:
    """See the module docstring."""

    def __init__(self, ctx: BackendContext) -> None:
        self._ctx = ctx
        self._settings = parse_settings(ctx.config)
        self._spec: DeviceSpec = device_spec(self._settings, ctx.iface)
        self._ops = NetlinkOps()
        self._echoes = Echoes()
        self._reconciler = Reconciler(self._ops, on_send=self._echoes.expect)
        self._loop = ReconcileLoop(
            self._sync, period=RESYNC_PERIOD, full_every=FULL_EVERY, transient=(BackendError,)
        )
        self._link: LinkState | None = None
        self._own: Lease | None = None
        self._book: PeerBook | None = None
        self._links: Links | None = None

    @property
    def link(self) -> LinkState | None:
        """The device as last seen (None before ``prepare``)."""
        return self._link

    async def prepare(self) -> Prepared:
        await self._ops.open()
        self._link = await ensure_device(self._ops, self._spec, mac=None)
        data = backend_data(self._settings.vni, self._link.mac, self._ctx.lease_format)
        return Prepared(BACKEND_TYPE, data, self._spec.mtu)

    async def run(self, own: Lease, feed: AsyncIterator[PeerUpdate]) -> None:
        link = self._require_link()
        self._own = own
        self._book = PeerBook(own.subnet)
        await configure_device(self._ops, link, own.subnet, self._ctx.config.network)
        await drive(self._loop, feed, name="vxlan", take=self._take, concerns=self._concerns)

    def _take(self, update: PeerUpdate) -> None:
        if self._book is not None:
            self._book.follow(update.events, update.leases)

    async def close(self) -> None:
        await self._ops.close()

    def _require_link(self) -> LinkState:
        if self._link is None:
            raise BackendError("vxlan backend: run() called before prepare()")
        return self._link

    async def _sync(self) -> None:
        """One pass: on a full one, check the device and its addresses first; then apply.

        A pass for lease events trusts the device and the entries the previous pass
        left; a full pass (periodic, or after netlink reported a deletion) checks both.
        """
        own, book = self._own, self._book
        if own is None or book is None:
            return
        full = self._loop.full or self._links is None
        links = self._links
        if full or links is None:
            links = self._links = await self._read_links(await self._checked_device(own))
            configure(book, own, links, direct_routing=self._settings.direct_routing)
        scope = _scope(links.vxlan_index)
        outcome = await self._reconciler.program(book, scope, full=full, report=_report)
        if outcome.device_gone:
            self._links = None
            self._loop.poke(full=True)

    async def _checked_device(self, own: Lease) -> LinkState:
        """The device, recreated and reconfigured if it vanished or was changed."""
        current = await self._ops.link(self._spec.name)
        known = self._require_link()
        if current is None or not self._healthy(current, known):
            logger.warning("device %s was deleted or changed: restoring it", self._spec.name)
            current = await ensure_device(self._ops, self._spec, mac=known.mac)
        await configure_device(self._ops, current, own.subnet, self._ctx.config.network)
        self._link = current
        return current

    def _healthy(self, current: LinkState, known: LinkState) -> bool:
        """Same device as before (not recreated by someone), as wanted, and up."""
        return (
            current.index == known.index
            and current.mac == known.mac
            and current.mtu == self._spec.mtu
            and current.up
            and incompatibility(current, self._spec) is None
        )

    async def _read_links(self, link: LinkState) -> Links:
        connected: tuple[IPv4Network, ...] = ()
        if self._settings.direct_routing:
            addresses = await self._ops.addresses(self._ctx.iface.index)
            connected = tuple(address.network for address in addresses)
        return Links(link.index, link.mac, self._ctx.iface.index, connected)

    def _concerns(self, notice: Notice) -> bool:
        link = self._link
        if link is None:
            return False
        if notice.pid and notice.pid == self._ops.port_id:
            return False  # our own doing
        if notice.kind == "route":
            ours = notice.ifindex == link.index or notice.proto == RTPROT_PYFLANNEL
            return notice.table == MAIN_TABLE and ours
        if notice.ifindex != link.index:
            return False
        if self._echoes.absorb(notice):
            self._loop.doubt()  # most likely our own deletion; if not, the next period sees it
            return False
        return True


def _scope(index: int) -> Scope:
    """What we own: everything on our device, and our DirectRouting routes."""
    return Scope(
        route_oifs=frozenset({index}),
        route_protos=frozenset({RTPROT_PYFLANNEL}),
        neighbour_ifindex=index,
        fdb_ifindex=index,
    )


def _report(notes: tuple[PeerNote, ...]) -> None:
    """Log each unusable or foreign peer lease once (again only after it changes)."""
    for note in notes:
        if note.reason is not None:
            logger.warning("skipping the vxlan lease for %s: %s", note.subnet, note.reason)
        elif note.foreign:
            logger.info("ignoring non-vxlan subnet %s", note.subnet)
