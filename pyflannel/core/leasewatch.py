"""Turning registry watch batches into the lease events a backend consumes.

A port of flanneld's LeaseWatcher with one fix: after a snapshot, a lease whose value
changed while events were being missed is re-emitted as ADDED (flanneld only compares
subnets, so a host that changed its VTEP MAC during a watch outage stayed stale).

Our own lease is never passed to the backend; the lease manager handles it.
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

    @property
    def leases(self) -> tuple[Lease, ...]:
        """Every known peer lease, ordered by subnet."""
        return tuple(self._known[k] for k in sorted(self._known))

    def set_own(self, own: SubnetKey) -> None:
        """Exclude ``own`` from now on (and forget it if it was known)."""
        self._own = own
        self._known.pop(own, None)

    def apply(self, batch: WatchBatch) -> list[LeaseEvent]:
        """Fold a batch into the table and return the events for the backend."""
        if batch.snapshot is not None:
            return self._resync(batch.snapshot)
        return [out for ev in batch.events for out in self._apply_event(ev)]

    def _apply_event(self, event: LeaseEvent) -> Iterable[LeaseEvent]:
        key = event.lease.key
        if key == self._own:
            return ()
        if event.kind is EventKind.ADDED:
            self._known[key] = event.lease
            return (event,)
        stored = self._known.pop(key, None)
        return (LeaseEvent(EventKind.REMOVED, stored or event.lease),)

    def _resync(self, snapshot: Iterable[Lease]) -> list[LeaseEvent]:
        fresh = {lease.key: lease for lease in snapshot if lease.key != self._own}
        events = [
            LeaseEvent(EventKind.REMOVED, lease)
            for key, lease in sorted(self._known.items())
            if key not in fresh
        ]
        for key in sorted(fresh):
            old = self._known.get(key)
            if old is None or old.attrs != fresh[key].attrs:
                events.append(LeaseEvent(EventKind.ADDED, fresh[key]))
        self._known = fresh
        return events
