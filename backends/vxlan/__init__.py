"""The ``vxlan`` backend: the kernel's VXLAN data path, programmed by reconciliation.

Design notes
------------
- ``prepare()`` creates or reuses ``flannel.<VNI>`` (:mod:`.device`) and advertises
  its MAC in the lease's BackendData, with or without ``VNI`` according to the
  registry's lease format. ``run()`` gives the device our subnet's address.
- The kernel state is a pure function of the own lease, the peer leases and the
  options (:mod:`.desired`), computed anew for every pass (a memo keeps each
  unchanged lease's entries). The applier (:mod:`pyflannel.netlink.applier`) diffs
  it with what the kernel holds on our device (and our DirectRouting routes, found
  by their route protocol) and applies the difference in a few batched writes.
- Passes run when the peer set changes (the feed always carries the complete set,
  so a burst of lease writes costs a pass or two), when netlink reports a deletion
  on our device or of our routes, and every ``RESYNC_PERIOD`` seconds. So entries
  deleted by hand come back, entries of peers that left while we were down go at
  start-up, and a peer's changed VtepMAC leaves no stale FDB entry (an FDB entry is
  keyed by MAC, so the old one is simply not desired any more).
- A pass for a lease update diffs against what the previous pass left; a *full*
  pass (periodic, after a netlink notice or a failure) first checks the device,
  recreating one that vanished or was changed with the MAC our lease advertises,
  and reads every entry back from the kernel.
- The first pass waits for the first peer update, so a restart never removes the
  entries of peers that are still there.
- Nothing is removed on shutdown (as flanneld): traffic flows while we restart.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from ipaddress import IPv4Network

from pyflannel.backend import BackendContext, PeerUpdate, Prepared
from pyflannel.backends.vxlan.desired import (
    BACKEND_TYPE,
    Desired,
    Links,
    PeerResult,
    backend_data,
    desired_state,
    peer_entries,
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
from pyflannel.netlink.driver import drive
from pyflannel.netlink.ops import LinkState, NetlinkOps
from pyflannel.netlink.rtnl import Notice

logger = logging.getLogger(__name__)

RESYNC_PERIOD = 10.0
"""Seconds between full comparisons with the kernel when nothing pokes us."""


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
        self._links: Links | None = None
        self._memo = PeerMemo()
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
        await drive(self._loop, feed, name="vxlan", take=self._take, concerns=self._concerns)

    def _take(self, update: PeerUpdate) -> None:
        self._peers = update.leases

    async def close(self) -> None:
        await self._ops.close()

    def _require_link(self) -> LinkState:
        if self._link is None:
            raise BackendError("vxlan backend: run() called before prepare()")
        return self._link

    async def _sync(self) -> None:
        """One pass: check the device (on a full pass), compute the desired state, apply.

        A pass for a lease update trusts the device and the entries the previous pass
        left; a full pass (periodic, or after netlink reported a deletion) checks both.
        """
        own = self._own
        if own is None:
            return
        full = self._loop.full
        link = await self._checked_device(own) if full or self._links is None else self._link
        if link is None:
            return
        if full or self._links is None:
            self._links = await self._read_links(link)
        entries_of = self._memo.function(own, self._links, self._settings.direct_routing)
        desired = desired_state(
            own,
            self._peers,
            self._links,
            direct_routing=self._settings.direct_routing,
            entries_of=entries_of,
        )
        self._report(desired)
        outcome = await self._reconciler.reconcile(desired.state, self._scope(link), refresh=full)
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


class PeerMemo:
    """:func:`peer_entries` remembered per lease object, while its other inputs stay.

    The lease table hands over the same ``Lease`` objects until a lease changes, so
    a pass over thousands of peers parses only the new or changed ones. Entries are
    keyed by ``id()`` and checked by identity (the lease is kept alive with them).
    """

    def __init__(self) -> None:
        self._inputs: tuple[Lease, Links, bool] | None = None
        self._cache: dict[int, tuple[Lease, PeerResult]] = {}

    def function(
        self, own: Lease, links: Links, direct_routing: bool
    ) -> Callable[[Lease], PeerResult]:
        """The memoised function for one pass (forgets leases the pass does not ask for)."""
        inputs = (own, links, direct_routing)
        previous = self._cache if inputs == self._inputs else {}
        self._inputs = inputs
        self._cache = current = {}

        def entries_of(lease: Lease) -> PeerResult:
            hit = previous.get(id(lease))
            if hit is not None and hit[0] is lease:
                result = hit[1]
            else:
                result = peer_entries(lease, own, links, direct_routing=direct_routing)
            current[id(lease)] = (lease, result)
            return result

        return entries_of
