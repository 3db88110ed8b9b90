"""The ``vxlan`` backend: the kernel's VXLAN data path, programmed by reconciliation.

Design notes
------------
- ``prepare()`` creates or reuses ``flannel.<VNI>`` (:mod:`.device`) and advertises
  its MAC in the lease's BackendData, with or without ``VNI`` according to the
  registry's lease format. ``run()`` gives the device our subnet's address.
- The kernel state is a pure function of the own lease, the peer leases and the
  options (:mod:`.desired`). One pass reads what the kernel holds on our device
  (and our DirectRouting routes, found by their route protocol), diffs, and applies
  the difference in a few batched netlink writes (:mod:`pyflannel.netlink.applier`).
- Passes run when the peer set changes (the feed always carries the complete set,
  so a burst of lease writes is one pass), when netlink reports a deletion on our
  device or of our routes, and every ``RESYNC_PERIOD`` seconds. So entries deleted
  by hand come back, entries of peers that left while we were down go at start-up,
  and a peer's changed VtepMAC leaves no stale FDB entry (an FDB entry is keyed by
  MAC, so the old one is simply not desired any more).
- Each pass first checks the device; one that vanished or was changed is recreated
  with the MAC our lease advertises, and everything is re-applied.
- The first pass waits for the first peer update, so a restart never removes the
  entries of peers that are still there.
- Nothing is removed on shutdown (as flanneld): traffic flows while we restart.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from ipaddress import IPv4Network

from pyflannel.backend import BackendContext, PeerUpdate, Prepared
from pyflannel.backends.vxlan.desired import (
    BACKEND_TYPE,
    Desired,
    Links,
    backend_data,
    desired_state,
)
from pyflannel.backends.vxlan.device import (
    DeviceSpec,
    configure_device,
    device_spec,
    ensure_device,
    incompatibility,
)
from pyflannel.backends.vxlan.options import parse_settings
from pyflannel.core.kernelstate import MAIN_TABLE, RTPROT_PYFLANNEL, Scope
from pyflannel.errors import BackendError
from pyflannel.model.lease import Lease
from pyflannel.netlink.applier import ReconcileLoop, Reconciler
from pyflannel.netlink.monitor import NetlinkMonitor
from pyflannel.netlink.ops import LinkState, NetlinkOps
from pyflannel.netlink.rtnl import Notice

logger = logging.getLogger(__name__)

RESYNC_PERIOD = 10.0
"""Seconds between full comparisons with the kernel when nothing pokes us."""
NOTICE_DELAY = 0.05
"""Gather the notices of one deletion burst (a device going down) into one pass."""


class VxlanBackend:
    """See the module docstring."""

    def __init__(self, ctx: BackendContext) -> None:
        self._ctx = ctx
        self._settings = parse_settings(ctx.config)
        self._spec: DeviceSpec = device_spec(self._settings, ctx.iface)
        self._ops = NetlinkOps()
        self._reconciler = Reconciler(self._ops)
        self._loop = ReconcileLoop(self._sync, period=RESYNC_PERIOD, transient=(BackendError,))
        self._link: LinkState | None = None
        self._own: Lease | None = None
        self._peers: tuple[Lease, ...] = ()
        self._warned: set[tuple[IPv4Network, str]] = set()
        self._foreign: set[IPv4Network] = set()

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
        await configure_device(self._ops, link, own.subnet, self._ctx.config.network)
        monitor = NetlinkMonitor()
        monitor.open()
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._loop.run(), name="vxlan-reconcile")
                group.create_task(self._watch_kernel(monitor), name="vxlan-netlink-monitor")
                async for update in feed:
                    self._peers = update.leases
                    self._loop.poke()
        finally:
            monitor.close()

    async def close(self) -> None:
        await self._ops.close()

    def _require_link(self) -> LinkState:
        if self._link is None:
            raise BackendError("vxlan backend: run() called before prepare()")
        return self._link

    async def _sync(self) -> None:
        """One pass: check the device, compute the desired state, reconcile."""
        own = self._own
        if own is None:
            return
        link = await self._checked_device(own)
        desired = desired_state(
            own, self._peers, await self._links(link), direct_routing=self._settings.direct_routing
        )
        self._report(desired)
        outcome = await self._reconciler.reconcile(desired.state, self._scope(link))
        if outcome.device_gone:
            self._loop.poke()

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

    async def _links(self, link: LinkState) -> Links:
        connected: tuple[IPv4Network, ...] = ()
        if self._settings.direct_routing:
            addresses = await self._ops.addresses(self._ctx.iface.index)
            connected = tuple(address.network for address in addresses)
        return Links(link.index, link.mac, self._ctx.iface.index, connected)

    def _scope(self, link: LinkState) -> Scope:
        return Scope(
            route_oifs=frozenset({link.index}),
            route_protos=frozenset({RTPROT_PYFLANNEL}),
            neighbour_ifindex=link.index,
            fdb_ifindex=link.index,
        )

    def _report(self, desired: Desired) -> None:
        """Log each unusable or foreign peer lease once (again only after it changes)."""
        skipped = {(peer.subnet, peer.reason) for peer in desired.skipped}
        for subnet, reason in sorted(skipped - self._warned):
            logger.warning("skipping the vxlan lease for %s: %s", subnet, reason)
        self._warned = skipped
        foreign = set(desired.foreign)
        for subnet in sorted(foreign - self._foreign):
            logger.info("ignoring non-vxlan subnet %s", subnet)
        self._foreign = foreign

    async def _watch_kernel(self, monitor: NetlinkMonitor) -> None:
        """Poke the loop when a netlink notice may concern our entries."""
        async for notices in monitor.notices():
            if notices is None or any(self._concerns(notice) for notice in notices):
                self._loop.poke(NOTICE_DELAY)

    def _concerns(self, notice: Notice) -> bool:
        link = self._link
        if link is None:
            return False
        if notice.pid and notice.pid == self._ops.port_id:
            return False  # our own doing
        if notice.kind == "route":
            ours = notice.ifindex == link.index or notice.proto == RTPROT_PYFLANNEL
            return notice.table == MAIN_TABLE and ours
        return notice.ifindex == link.index
