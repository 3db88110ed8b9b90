"""Making the kernel hold a desired state: read what is there, diff, apply the difference.

:class:`Reconciler` reads the actual routes, neighbours and FDB entries inside a
:class:`~pyflannel.core.kernelstate.Scope` (never anything else), asks
:func:`~pyflannel.core.kernelstate.plan_changes` for the ordered changes and sends
them in batches. Applying twice changes nothing the second time.

:class:`ReconcileLoop` decides *when*: whenever it is poked (a lease update, a
netlink notice that something of ours was deleted) and at least every ``period``
seconds (the safety net for anything the notices missed). Pokes that arrive while
a pass runs are coalesced into one more pass, so a burst costs one or two passes,
never one per event; between passes the loop sleeps on a timer, with no polling.

Both are generic: vxlan gives routes, neighbours and FDB entries; a route-only
backend such as host-gw gives routes and a scope without devices.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from pyflannel.core.kernelstate import (
    Change,
    FdbEntry,
    KernelState,
    Neighbour,
    Op,
    Route,
    Scope,
    plan_changes,
    summarize,
)
from pyflannel.core.renewal import Backoff
from pyflannel.netlink.ops import Failure, NetlinkOps

logger = logging.getLogger(__name__)

HARMLESS_ON_DELETE = frozenset({errno.ENOENT, errno.ESRCH, errno.EADDRNOTAVAIL})
RETRY_BACKOFF = Backoff(initial=0.5, cap=10.0)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one reconciliation pass did."""

    changes: tuple[Change, ...]
    failures: tuple[Failure, ...]
    seconds: float

    @property
    def device_gone(self) -> bool:
        """True when the kernel said a device we referred to does not exist."""
        return any(f.code == errno.ENODEV for f in self.failures)


class Reconciler:
    """Diff-and-apply over a :class:`NetlinkOps`."""

    def __init__(self, ops: NetlinkOps) -> None:
        self._ops = ops

    async def read(self, scope: Scope) -> KernelState:
        """The entries the kernel holds inside ``scope``."""
        routes: set[Route] = set()
        for oif in sorted(scope.route_oifs):
            routes.update(await self._ops.routes(oif=oif))
        for proto in sorted(scope.route_protos):
            routes.update(await self._ops.routes(proto=proto))
        neighbours: list[Neighbour] = []
        if scope.neighbour_ifindex is not None:
            neighbours = await self._ops.neighbours(scope.neighbour_ifindex)
        fdb: list[FdbEntry] = []
        if scope.fdb_ifindex is not None:
            fdb = await self._ops.fdb(scope.fdb_ifindex)
        owned = frozenset(r for r in routes if scope.owns_route(r))
        return KernelState(owned, frozenset(neighbours), frozenset(fdb))

    async def reconcile(self, desired: KernelState, scope: Scope) -> Outcome:
        """Make the kernel's entries inside ``scope`` equal ``desired``."""
        started = time.monotonic()
        actual = await self.read(scope)
        changes = plan_changes(desired, actual)
        failures: list[Failure] = []
        if changes:
            failures = await self._ops.execute(changes)
        outcome = Outcome(changes, tuple(_real(failures)), time.monotonic() - started)
        _log(outcome, len(desired))
        return outcome


def _real(failures: list[Failure]) -> list[Failure]:
    """Drop refusals that leave the kernel as wanted (deleting what is already gone)."""
    return [f for f in failures if not (f.change.op is Op.DELETE and f.code in HARMLESS_ON_DELETE)]


def _log(outcome: Outcome, desired: int) -> None:
    if outcome.changes:
        logger.info(
            "kernel programmed in %.3f s: %s (%d entries wanted)",
            outcome.seconds,
            summarize(outcome.changes),
            desired,
        )
        for change in outcome.changes:
            logger.debug("%s %s", change.op.value, change.entry)
    for failure in outcome.failures:
        logger.warning("kernel refused: %s", failure)


class ReconcileLoop:
    """Run ``step`` when poked and at least every ``period`` seconds, one pass at a time.

    The loop is idle until the first poke (a backend pokes once it knows its peers,
    so a restart never removes entries before the peer list is in). A step that
    raises one of ``transient`` is retried with backoff; anything else ends the loop.
    """

    def __init__(
        self,
        step: Callable[[], Awaitable[None]],
        *,
        period: float,
        transient: tuple[type[BaseException], ...] = (),
        backoff: Backoff = RETRY_BACKOFF,
    ) -> None:
        self._step = step
        self._period = period
        self._transient = transient
        self._backoff = backoff
        self._wake = asyncio.Event()
        self._armed = False
        self._timer: asyncio.TimerHandle | None = None
        self.passes = 0

    def poke(self, delay: float = 0.0) -> None:
        """Ask for a pass now, or after ``delay`` seconds (to gather a burst of notices)."""
        self._armed = True
        if delay <= 0:
            self._wake.set()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(delay, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._wake.set()

    async def run(self) -> None:
        """Run passes until cancelled."""
        failures = 0
        try:
            while True:
                await self._sleep(self._backoff.delay(failures - 1) if failures else None)
                self._wake.clear()
                self.passes += 1
                try:
                    await self._step()
                except self._transient as exc:
                    if failures == 0:
                        logger.warning("kernel programming failed, retrying: %s", exc)
                    failures += 1
                    continue
                if failures:
                    logger.info("kernel programming succeeded after %d retries", failures)
                failures = 0
        finally:
            if self._timer is not None:
                self._timer.cancel()

    async def _sleep(self, retry_in: float | None) -> None:
        """Until poked, or the period (or retry delay) passes, whichever comes first."""
        if not self._armed:
            await self._wake.wait()
            return
        timeout = self._period if retry_in is None else min(retry_in, self._period)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)
