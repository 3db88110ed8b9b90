"""Turning registry watch batches into the lease events a backend consumes.

A port of flanneld's LeaseWatcher with one fix: after a snapshot, a lease whose value
changed while events were being missed is re-emitted as ADDED (flanneld only compares
subnets, so a host that changed its VTEP MAC during a watch outage stayed stale).

Our own lease is never passed to the backend; the lease manager handles it.

The work per event is a dictionary update: a burst of thousands of lease writes must
not cost a sort or a copy of the whole table per batch.
"""

from __future__ import annotations

from collections.abc import Iterable

from pyflannel.model.lease import EventKind, Lease, LeaseEvent, WatchBatch
from pyflannel.model.net import SubnetKey


class LeaseTable:
    """The set of peer leases currently known, updated batch by batch."""

    def __init__(self, own: SubnetKey | None = None) -> None:
        self._own = own
        self._known: dict[SubnetKey, Lease] = {}
        self._view: tuple[Lease, ...] | None = ()

    @property
    def leases(self) -> tuple[Lease, ...]:
        """Every known peer lease, in the order they were first seen (kept until the
        next change, so asking again after a quiet period costs nothing)."""
        if self._view is None:
            self._view = tuple(self._known.values())
        return self._view

    def set_own(self, own: SubnetKey) -> None:
        """Exclude ``own`` from now on (and forget it if it was known)."""
        self._own = own
        if self._known.pop(own, None) is not None:
            self._view = None

    def apply(self, batch: WatchBatch) -> list[LeaseEvent]:
        """Fold a batch into the table and return the events for the backend."""
        if batch.snapshot is not None:
            return self._resync(batch.snapshot)
        own = self._own
        known = self._known
        out: list[LeaseEvent] = []
        for event in batch.events:
            key = event.lease.key
            if key == own:
                continue
            if event.kind is EventKind.ADDED:
                known[key] = event.lease
                out.append(event)
            else:
                stored = known.pop(key, None)
                out.append(event if stored is None else LeaseEvent(EventKind.REMOVED, stored))
        if out:
            self._view = None
        return out

    def _resync(self, snapshot: Iterable[Lease]) -> list[LeaseEvent]:
        fresh = {lease.key: lease for lease in snapshot if lease.key != self._own}
        events = [
            LeaseEvent(EventKind.REMOVED, lease)
            for key, lease in self._known.items()
            if key not in fresh
        ]
        for key, lease in fresh.items():
            old = self._known.get(key)
            if old is None or old.attrs != lease.attrs:
                events.append(LeaseEvent(EventKind.ADDED, lease))
        self._known = fresh
        self._view = None
        return events
