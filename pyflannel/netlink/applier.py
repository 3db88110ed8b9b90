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
    read: bool  # whether the kernel was read (else the previous pass's result was used)

    @property
    def device_gone(self) -> bool:
        """True when the kernel said a device we referred to does not exist."""
        return any(f.code == errno.ENODEV for f in self.failures)


class Reconciler:
    """Diff-and-apply over a :class:`NetlinkOps`, remembering what the kernel holds.

    After a pass without failures the kernel holds the desired state, so the next
    pass may diff against that instead of dumping everything again: a burst of
    lease updates then costs one diff and one batch each. A pass with ``refresh``
    (the periodic resync, a netlink notice, the first pass) reads the kernel; so
    does any pass after a failure or with another scope.
    """

    def __init__(self, ops: NetlinkOps) -> None:
        self._ops = ops
        self._known: tuple[Scope, KernelState] | None = None

    def forget(self) -> None:
        """Read the kernel on the next pass (something may have changed behind us)."""
        self._known = None

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

    async def reconcile(
        self, desired: KernelState, scope: Scope, *, refresh: bool = True
    ) -> Outcome:
        """Make the kernel's entries inside ``scope`` equal ``desired``."""
        started = time.monotonic()
        known, self._known = self._known, None  # until this pass has succeeded
        read = refresh or known is None or known[0] != scope
        actual = await self.read(scope) if read or known is None else known[1]
        changes = plan_changes(desired, actual)
        failures = _real(await self._ops.execute(changes)) if changes else []
        if not failures:
            self._known = (scope, desired)
        outcome = Outcome(changes, tuple(failures), time.monotonic() - started, read)
        _log(outcome, len(desired))
        return outcome


def _real(failures: list[Failure]) -> list[Failure]:
    """Drop refusals that leave the kernel as wanted (deleting what is already gone)."""
    return [f for f in failures if not (f.change.op is Op.DELETE and f.code in HARMLESS_ON_DELETE)]


def _log(outcome: Outcome, desired: int) -> None:
    logger.debug(
        "reconciled %d wanted entries in %.3f s (kernel %s)",
        desired,
        outcome.seconds,
        "read" if outcome.read else "as last left",
    )
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
    """Run ``step()`` when poked and at least every ``period`` seconds, one at a time.

    :attr:`full` tells the step what kind of pass it runs: True for the periodic pass,
    after a failure, and when a poke asked for it (something may have changed in the
    kernel behind our back); the step should then read the kernel rather than trust
    what it remembers.

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
        self._full = False
        self.full = False  # True while a full pass runs (see the class docstring)
        self._timer: asyncio.TimerHandle | None = None
        self.passes = 0

    def poke(self, delay: float = 0.0, *, full: bool = False) -> None:
        """Ask for a pass now, or after ``delay`` seconds (to gather a burst of notices)."""
        self._armed = True
        self._full |= full
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
                elapsed = await self._sleep(self._backoff.delay(failures - 1) if failures else None)
                self.full, self._full = self._full or elapsed or failures > 0, False
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

    async def _sleep(self, retry_in: float | None) -> bool:
        """Until poked, or the period (or retry delay) passes: True in the latter case."""
        if not self._armed:
            await self._wake.wait()
            return False
        timeout = self._period if retry_in is None else min(retry_in, self._period)
        try:  # asyncio.timeout: 3.11's wait_for can swallow a concurrent cancellation
            async with asyncio.timeout(timeout):
                await self._wake.wait()
        except TimeoutError:
            return True
        return False
