"""Driving a reconciling backend (vxlan, host-gw) from the peer feed and the kernel.

Both backends run the same three things: their reconcile loop; a netlink monitor that
pokes the loop for a full pass when someone else deletes or changes one of our
entries (so an entry deleted by hand is back in well under the periodic resync); and
the peer feed, whose every update goes into the backend's peer book and pokes the
loop at once. Programming starts with the first events of a burst: updates that
arrive while a pass runs are gathered by the channel and make one more pass.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence

from pyflannel.backend import PeerUpdate
from pyflannel.core.kernelstate import Change, Op, Route
from pyflannel.netlink.applier import ReconcileLoop
from pyflannel.netlink.monitor import NetlinkMonitor
from pyflannel.netlink.rtnl import Notice

NOTICE_DELAY = 0.05
"""Gather the notices of one deletion burst (a device going down) into one pass."""
ECHO_WINDOW = 1.0
"""Seconds within which the notices of our own neighbour and FDB deletions arrive."""


async def drive(
    loop: ReconcileLoop,
    feed: AsyncIterator[PeerUpdate],
    *,
    name: str,
    take: Callable[[PeerUpdate], None],
    concerns: Callable[[Notice], bool],
) -> None:
    """Run ``loop`` until cancelled, poked by peer updates and by relevant kernel notices."""
    monitor = NetlinkMonitor()
    monitor.open()
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(loop.run(), name=f"{name}-reconcile")
            group.create_task(_watch_kernel(monitor, loop, concerns), name=f"{name}-netlink")
            async for update in feed:
                take(update)
                loop.poke()
    finally:
        monitor.close()


async def _watch_kernel(
    monitor: NetlinkMonitor, loop: ReconcileLoop, concerns: Callable[[Notice], bool]
) -> None:
    # None means notices were lost (socket overrun): check everything.
    async for notices in monitor.notices():
        if notices is None or any(concerns(notice) for notice in notices):
            loop.poke(NOTICE_DELAY, full=True)


class Echoes:
    """The notices of our own neighbour and FDB deletions, still to come.

    The kernel announces the deletion of a neighbour or of a VXLAN FDB entry without
    the port of whoever asked for it, so our own deletions look like someone else's
    and would each cost a full pass (a dump of every entry) when peers leave. The
    applier reports what it is about to send (:meth:`expect`); that many anonymous
    neighbour deletion notices within ``ECHO_WINDOW`` are ours (:meth:`absorb`). A
    deletion by someone else inside that window waits for the periodic resync.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._count = 0
        self._until = 0.0

    def expect(self, changes: Sequence[Change]) -> None:
        """Count the neighbour and FDB deletions among ``changes``, about to be sent."""
        count = sum(1 for c in changes if c.op is Op.DELETE and not isinstance(c.entry, Route))
        if count:
            self._count += count
            self._until = self._clock() + ECHO_WINDOW

    def absorb(self, notice: Notice) -> bool:
        """Whether ``notice`` is the echo of one of our deletions (it is then used up)."""
        if notice.kind != "neigh" or not notice.deleted or notice.pid:
            return False
        if self._count and self._clock() < self._until:
            self._count -= 1
            return True
        self._count = 0
        return False
