"""Driving a reconciling backend (vxlan, host-gw) from the peer feed and the kernel.

Both backends run the same three things: their reconcile loop; a netlink monitor that
pokes the loop when someone else deletes or changes one of our entries (so an entry
deleted by hand is back in well under the periodic resync); and the peer feed, whose
every update replaces the peer set and pokes the loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from pyflannel.backend import PeerUpdate
from pyflannel.netlink.applier import ReconcileLoop
from pyflannel.netlink.monitor import NetlinkMonitor
from pyflannel.netlink.rtnl import Notice

NOTICE_DELAY = 0.05
"""Gather the notices of one deletion burst (a device going down) into one pass."""


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
