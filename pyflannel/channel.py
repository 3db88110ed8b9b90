"""A coalescing mailbox between the lease watch and the backend.

The producer publishes every batch at once; the consumer receives one
:class:`~pyflannel.backend.PeerUpdate` holding all events published since it last
looked and the latest full peer set. A backend that is busy programming the kernel
therefore never falls behind a queue of stale intermediate states: the batches that
arrive during one pass collapse into one update. Publishing costs the events only;
the peer set is made once per update, by the lease table, and only if it changed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable

from pyflannel.backend import PeerUpdate
from pyflannel.model.lease import Lease, LeaseEvent


class PeerChannel:
    """Single-producer, single-consumer, coalescing."""

    def __init__(self) -> None:
        self._events: list[LeaseEvent] = []
        self._leases: Callable[[], tuple[Lease, ...]] = tuple
        self._pending = False
        self._ready = asyncio.Event()

    def publish(
        self, events: Iterable[LeaseEvent], leases: Callable[[], tuple[Lease, ...]]
    ) -> None:
        """Add ``events`` and replace the peer set; wakes the consumer.

        ``leases`` is called only when the consumer takes the update, so a burst of
        batches costs one materialisation of the peer set, not one per batch.
        """
        self._events.extend(events)
        self._leases = leases
        self._pending = True
        self._ready.set()

    def take(self) -> PeerUpdate | None:
        """Everything published since the last take, or None when nothing was."""
        if not self._pending:
            return None
        update = PeerUpdate(tuple(self._events), self._leases())
        self._events = []
        self._pending = False
        self._ready.clear()
        return update

    async def __aiter__(self) -> AsyncIterator[PeerUpdate]:
        while True:
            await self._ready.wait()
            update = self.take()
            if update is not None:
                yield update
