"""Making the kernel hold a desired state: read what is there, diff, apply the difference.

:class:`Reconciler` reads the actual routes, neighbours and FDB entries inside a
:class:`~pyflannel.core.kernelstate.Scope` (never anything else), asks
:func:`~pyflannel.core.kernelstate.plan_changes` for the ordered changes and sends
them in batches. Applying twice changes nothing the second time. Between such full
passes it applies only what a backend's peer book says changed, which is the same
as a full pass would do as long as the kernel holds what the last pass left.

:class:`ReconcileLoop` decides *when*: whenever it is poked (a lease update, a
netlink notice that something of ours was deleted) and periodically (the safety net
for anything the notices missed). A pass starts as soon as
the first poke comes; pokes that arrive while it runs are coalesced into one more
pass, so a burst costs a pass per group of arrivals, never one per event, and each
pass costs what arrived; between passes the loop sleeps on a timer, with no polling.

Both are generic: vxlan gives routes, neighbours and FDB entries; a route-only
backend such as host-gw gives routes and a scope without devices.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

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
from pyflannel.core.peerbook import PeerBook, PeerNote
from pyflannel.core.renewal import Backoff
from pyflannel.netlink.ops import Failure

logger = logging.getLogger(__name__)

HARMLESS_ON_DELETE = frozenset({errno.ENOENT, errno.ESRCH, errno.EADDRNOTAVAIL})
RETRY_BACKOFF = Backoff(initial=0.5, cap=10.0)
SLICE = 256
"""Changes encoded and sent per turn of the event loop."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one reconciliation pass did."""

    changes: tuple[Change, ...]
    failures: tuple[Failure, ...]
    seconds: float
    read: bool  # whether the kernel was read (else the book's delta was applied)

    @property
    def device_gone(self) -> bool:
        """True when the kernel said a device we referred to does not exist."""
        return any(f.code == errno.ENODEV for f in self.failures)


class EntryOps(Protocol):
    """The kernel calls a :class:`Reconciler` makes (met by
    :class:`~pyflannel.netlink.ops.NetlinkOps`)."""

    async def routes(self, *, oif: int | None = None, proto: int = 0) -> list[Route]: ...

    async def neighbours(self, ifindex: int) -> list[Neighbour]: ...

    async def fdb(self, ifindex: int) -> list[FdbEntry]: ...

    async def execute(self, changes: Sequence[Change]) -> list[Failure]: ...


class Reconciler:
    """Diff-and-apply over :class:`EntryOps`, knowing when the kernel holds what we left.

    A *full* pass reads the entries inside the scope and diffs them with the whole
    desired state. After a pass without failures the kernel holds that state, so the
    next pass may apply just what changed since (a :class:`~pyflannel.core.peerbook.Delta`
    of the peer book): a burst of lease updates then costs work in proportion to the
    updates, not to the number of peers. A failure, another scope or :meth:`forget`
    makes the next pass a full one.
    """

    def __init__(
        self, ops: EntryOps, *, on_send: Callable[[Sequence[Change]], None] | None = None
    ) -> None:
        self._ops = ops
        self._on_send = on_send  # told of every batch just before it is sent
        self._synced: Scope | None = None  # the scope the kernel holds our last state in

    def forget(self) -> None:
        """Read the kernel on the next pass (something may have changed behind us)."""
        self._synced = None

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

    async def program(
        self,
        book: PeerBook,
        scope: Scope,
        *,
        full: bool = False,
        report: Callable[[tuple[PeerNote, ...]], None] | None = None,
    ) -> Outcome:
        """Make the kernel's entries inside ``scope`` hold the book's state.

        Applies the book's delta when the kernel is known to hold its previous state;
        reads the kernel and compares it with the whole state when ``full`` or when it
        is not. ``report`` gets the book's notes about skipped and foreign peers.
        """
        delta = book.take()  # take, then state: both describe this moment
        if report is not None and delta.notes:
            report(delta.notes)
        started = time.monotonic()
        read = full or self._synced != scope
        self._synced = None  # until this pass has succeeded
        if read:
            desired = book.state()  # before the first await: the moment of the take
            changes = plan_changes(desired, await self.read(scope))
        else:
            changes = plan_changes(delta.after, delta.before)
        return await self._apply(changes, scope, started, read=read, wanted=book.size)

    async def _apply(
        self, changes: tuple[Change, ...], scope: Scope, started: float, *, read: bool, wanted: int
    ) -> Outcome:
        failures: list[Failure] = []
        # Slices, so that encoding thousands of requests never holds the event loop for
        # long: the loop runs the lease watch between them.
        for start in range(0, len(changes), SLICE):
            batch = changes[start : start + SLICE]
            if self._on_send is not None:
                self._on_send(batch)
            failures += _real(await self._ops.execute(batch))
        if not failures:
            self._synced = scope
        outcome = Outcome(changes, tuple(failures), time.monotonic() - started, read)
        _log(outcome, wanted)
        return outcome


def _real(failures: list[Failure]) -> list[Failure]:
    """Drop refusals that leave the kernel as wanted (deleting what is already gone)."""
    return [f for f in failures if not (f.change.op is Op.DELETE and f.code in HARMLESS_ON_DELETE)]


def _log(outcome: Outcome, wanted: int) -> None:
    logger.debug(
        "reconciled %d wanted entries in %.3f s (%s)",
        wanted,
        outcome.seconds,
        "kernel read" if outcome.read else "changes since the last pass",
    )
    if outcome.changes:
        logger.info(
            "kernel programmed in %.3f s: %s (%d entries wanted)",
            outcome.seconds,
            summarize(outcome.changes),
            wanted,
        )
        if logger.isEnabledFor(logging.DEBUG):
            for change in outcome.changes:
                logger.debug("%s %s", change.op.value, change.entry)
    for failure in outcome.failures:
        logger.warning("kernel refused: %s", failure)


class ReconcileLoop:
    """Run ``step()`` when poked and periodically (see ``full_every``), one at a time.

    :attr:`full` tells the step what kind of pass it runs: True for the periodic pass,
    after a failure, and when a poke asked for it (something may have changed in the
    kernel behind our back); the step should then read the kernel rather than trust
    what it remembers.

    The loop is idle until the first poke (a backend pokes once it knows its peers,
    so a restart never removes entries before the peer list is in). A step that
    raises one of ``transient`` is retried with backoff; anything else ends the loop.

    With ``full_every`` above 1, a backend that hears of every change to its entries
    (netlink notices, which poke the loop) does not need the periodic read each
    time: only every ``full_every``-th period runs, unless :meth:`doubt` said that a
    change may have gone unnoticed, in which case the next period runs. The quiet
    periods in between cost nothing.
    """

    def __init__(
        self,
        step: Callable[[], Awaitable[None]],
        *,
        period: float,
        full_every: int = 1,
        transient: tuple[type[BaseException], ...] = (),
        backoff: Backoff = RETRY_BACKOFF,
    ) -> None:
        self._step = step
        self._period = period
        self._full_every = full_every
        self._quiet = 0  # periods skipped since the last full pass
        self._doubt = False
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

    def doubt(self) -> None:
        """Something may have changed unnoticed: make the next periodic pass run."""
        self._doubt = True

    def _fire(self) -> None:
        self._timer = None
        self._wake.set()

    async def run(self) -> None:
        """Run passes until cancelled."""
        failures = 0
        try:
            while True:
                elapsed = await self._sleep(self._backoff.delay(failures - 1) if failures else None)
                if elapsed and not failures and self._skip_period():
                    continue
                self.full, self._full = self._full or elapsed or failures > 0, False
                if self.full:
                    self._quiet, self._doubt = 0, False
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

    def _skip_period(self) -> bool:
        """Whether this period's pass can be left out (see the class docstring)."""
        if self._full or self._doubt or self._quiet + 1 >= self._full_every:
            return False
        self._quiet += 1
        return True

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
