"""Watch batches → backend events (facts §3.7, with the snapshot fix)."""

from __future__ import annotations

from support.factories import lease

from pyflannel.core.leasewatch import LeaseTable
from pyflannel.model.lease import EventKind, LeaseEvent, WatchBatch

OWN = lease("10.5.1.0/24", "192.0.2.1")
A = lease("10.5.2.0/24", "192.0.2.2", backend_type="vxlan")
B = lease("10.5.3.0/24", "192.0.2.3")


def added(x: object) -> LeaseEvent:
    return LeaseEvent(EventKind.ADDED, x)  # type: ignore[arg-type]


def test_first_snapshot_emits_every_peer_but_not_us() -> None:
    table = LeaseTable(OWN.key)
    events = table.apply(WatchBatch(5, snapshot=(OWN, A, B)))
    assert events == [added(A), added(B)]
    assert table.leases == (A, B)


def test_removed_event_carries_the_stored_attributes() -> None:
    table = LeaseTable(OWN.key)
    table.apply(WatchBatch(1, snapshot=(A,)))
    bare = lease("10.5.2.0/24", "0.0.0.0")
    events = table.apply(WatchBatch(2, events=(LeaseEvent(EventKind.REMOVED, bare),)))
    assert events == [LeaseEvent(EventKind.REMOVED, A)]
    assert table.leases == ()


def test_removal_of_an_unknown_lease_passes_the_bare_lease() -> None:
    table = LeaseTable(OWN.key)
    events = table.apply(WatchBatch(2, events=(LeaseEvent(EventKind.REMOVED, B),)))
    assert events == [LeaseEvent(EventKind.REMOVED, B)]


def test_own_lease_events_are_filtered() -> None:
    table = LeaseTable(OWN.key)
    assert table.apply(WatchBatch(2, events=(added(OWN),))) == []


def test_resync_removes_vanished_and_re_emits_changed_leases() -> None:
    table = LeaseTable(OWN.key)
    table.apply(WatchBatch(1, snapshot=(A, B)))
    changed_a = lease("10.5.2.0/24", "192.0.2.22", backend_type="vxlan")
    renewed_b = lease("10.5.3.0/24", "192.0.2.3", expiration=2e9)
    events = table.apply(WatchBatch(9, snapshot=(changed_a, renewed_b)))
    assert events == [added(changed_a)]
    table2 = LeaseTable(OWN.key)
    table2.apply(WatchBatch(1, snapshot=(A, B)))
    assert table2.apply(WatchBatch(9, snapshot=(B,))) == [LeaseEvent(EventKind.REMOVED, A)]


def test_renewals_are_re_emitted_as_added() -> None:
    table = LeaseTable(OWN.key)
    table.apply(WatchBatch(1, snapshot=(A,)))
    assert table.apply(WatchBatch(2, events=(added(A),))) == [added(A)]


def test_set_own_later_forgets_it() -> None:
    table = LeaseTable()
    table.apply(WatchBatch(1, snapshot=(OWN, A)))
    table.set_own(OWN.key)
    assert list(table.leases) == [A]


def test_leases_keep_arrival_order_and_are_built_once_per_change() -> None:
    table = LeaseTable(OWN.key)
    table.apply(WatchBatch(1, snapshot=(B, A)))
    view = table.leases
    assert view == (B, A)
    assert table.leases is view  # nothing changed: no copy
    table.apply(WatchBatch(2, events=(added(OWN),)))
    assert table.leases is view  # our own lease is not a peer
    table.apply(WatchBatch(3, events=(LeaseEvent(EventKind.REMOVED, B),)))
    assert list(table.leases) == [A]
