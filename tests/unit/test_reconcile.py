"""The generic diff and the ordered kernel change list (pure code)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyflannel.core.kernelstate import (
    RTPROT_PYFLANNEL,
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
from pyflannel.core.reconcile import Plan, diff


def first(pair: tuple[str, int]) -> str:
    return pair[0]


def test_identical_sets_need_nothing() -> None:
    plan = diff([("a", 1), ("b", 2)], [("b", 2), ("a", 1)], key=first)
    assert plan == Plan()
    assert plan.empty
    assert len(plan) == 0


def test_add_remove_and_replace_by_key() -> None:
    plan = diff([("a", 1), ("b", 2), ("c", 3)], [("b", 2), ("c", 9), ("d", 4)], key=first)
    assert plan.add == (("a", 1),)
    assert plan.replace == (("c", 3),)
    assert plan.remove == (("d", 4),)
    assert len(plan) == 3


def test_duplicates_under_one_key_keep_only_the_desired_entry() -> None:
    plan = diff([("a", 1)], [("a", 7), ("a", 1), ("a", 8)], key=first)
    assert plan == Plan(remove=(("a", 7), ("a", 8)))


def test_duplicates_without_the_desired_entry_are_removed_then_it_is_added() -> None:
    plan = diff([("a", 1)], [("a", 7), ("a", 8)], key=first)
    assert plan == Plan(add=(("a", 1),), remove=(("a", 7), ("a", 8)))


def test_repeated_actual_entries_are_removed_once() -> None:
    plan = diff([], [("a", 7), ("a", 7)], key=first)
    assert plan.remove == (("a", 7),)


def test_conflicting_desired_entries_are_a_caller_error() -> None:
    with pytest.raises(ValueError, match="share the key"):
        diff([("a", 1), ("a", 2)], [], key=first)


def test_equal_desired_repeats_are_accepted() -> None:
    assert diff([("a", 1), ("a", 1)], [], key=first).add == (("a", 1),)


def reference(desired: list[tuple[str, int]], actual: list[tuple[str, int]]) -> Plan[object]:
    """The diff's rules, key by key, without any shortcut."""
    add, remove, replace = set(), set(), set()
    for k in {first(e) for e in desired + actual}:
        wanted = {e for e in desired if first(e) == k}
        present = {e for e in actual if first(e) == k}
        if wanted <= present:
            remove |= present - wanted
        elif len(present) == 1:
            replace |= wanted
        else:
            add |= wanted
            remove |= present
    return Plan(tuple(sorted(add)), tuple(sorted(remove)), tuple(sorted(replace)))


entries = st.lists(st.tuples(st.sampled_from("abcd"), st.integers(0, 2)), max_size=8)


@given(entries, entries)
def test_diff_follows_its_rules_whatever_changed(desired: list[tuple[str, int]],
                                                actual: list[tuple[str, int]]) -> None:  # fmt: skip
    unique = list({first(e): e for e in desired}.values())  # one desired entry per key
    plan = diff(unique, actual, key=first)
    assert Plan(*(tuple(sorted(p)) for p in (plan.add, plan.remove, plan.replace))) == reference(
        unique, actual
    )


VX = 5
NET2 = "10.5.2.0/24"
GW2 = "10.5.2.0"
MAC2 = "02:00:00:00:00:02"
PUB2 = "198.51.100.12"


def peer_state(mac: str = MAC2, public_ip: str = PUB2) -> KernelState:
    return KernelState(
        frozenset({Route(NET2, GW2, VX, onlink=True)}),
        frozenset({Neighbour(VX, GW2, mac)}),
        frozenset({FdbEntry(VX, mac, public_ip)}),
    )


def kinds(changes: tuple[Change, ...]) -> list[tuple[str, str]]:
    return [(c.op.value, type(c.entry).__name__) for c in changes]


def test_adding_a_peer_orders_neighbour_fdb_route() -> None:
    changes = plan_changes(peer_state(), KernelState())
    assert kinds(changes) == [("set", "Neighbour"), ("set", "FdbEntry"), ("set", "Route")]


def test_removing_a_peer_removes_the_route_first() -> None:
    changes = plan_changes(KernelState(), peer_state())
    assert kinds(changes) == [
        ("delete", "Route"),
        ("delete", "FdbEntry"),
        ("delete", "Neighbour"),
    ]


def test_a_changed_mac_replaces_the_neighbour_and_swaps_the_fdb_entry() -> None:
    changes = plan_changes(peer_state(mac="02:00:00:00:00:99"), peer_state())
    assert [(c.op, c.entry) for c in changes] == [
        (Op.DELETE, FdbEntry(VX, MAC2, PUB2)),
        (Op.SET, Neighbour(VX, GW2, "02:00:00:00:00:99")),
        (Op.SET, FdbEntry(VX, "02:00:00:00:00:99", PUB2)),
    ]


def test_a_changed_public_ip_replaces_only_the_fdb_entry() -> None:
    moved = "198.51.100.99"
    changes = plan_changes(peer_state(public_ip=moved), peer_state())
    assert [(c.op, c.entry) for c in changes] == [(Op.SET, FdbEntry(VX, MAC2, moved))]


def test_kernel_made_neighbours_are_left_alone_unless_they_take_our_key() -> None:
    learned = Neighbour(VX, "10.5.9.9", "02:00:00:00:00:09", permanent=False)
    stale_ours = Neighbour(VX, GW2, MAC2, permanent=False)
    actual = KernelState(neighbours=frozenset({learned, stale_ours}))
    desired = KernelState(neighbours=frozenset({Neighbour(VX, GW2, MAC2)}))
    assert [(c.op, c.entry) for c in plan_changes(desired, actual)] == [
        (Op.SET, Neighbour(VX, GW2, MAC2))
    ]


def test_a_route_with_another_gateway_or_protocol_is_replaced() -> None:
    direct = Route(NET2, PUB2, 2, proto=RTPROT_PYFLANNEL)
    actual = KernelState(routes=frozenset({Route(NET2, GW2, VX, onlink=True)}))
    changes = plan_changes(KernelState(routes=frozenset({direct})), actual)
    assert [(c.op, c.entry) for c in changes] == [(Op.SET, direct)]


def test_routes_to_one_prefix_with_other_metrics_are_other_routes() -> None:
    ours = Route(NET2, GW2, VX, onlink=True)
    extra = Route(NET2, "", VX, metric=100)
    changes = plan_changes(
        KernelState(routes=frozenset({ours})), KernelState(routes=frozenset({ours, extra}))
    )
    assert [(c.op, c.entry) for c in changes] == [(Op.DELETE, extra)]


def test_scope_owns_routes_by_device_or_protocol_then_filter() -> None:
    scope = Scope(route_oifs=frozenset({VX}), route_protos=frozenset({RTPROT_PYFLANNEL}))
    assert scope.owns_route(Route(NET2, GW2, VX))
    assert scope.owns_route(Route(NET2, PUB2, 2, proto=RTPROT_PYFLANNEL))
    assert not scope.owns_route(Route(NET2, PUB2, 2))
    narrow = Scope(route_oifs=frozenset({2}), route_filter=lambda r: r.dst.endswith("/24"))
    assert narrow.owns_route(Route(NET2, PUB2, 2))
    assert not narrow.owns_route(Route("0.0.0.0/0", PUB2, 2))


def test_summary_counts_per_kind() -> None:
    changes = plan_changes(peer_state(), KernelState())
    assert summarize(changes) == "+1 -0 neighbours, +1 -0 FDB entries, +1 -0 routes"
    assert summarize(()) == "no changes"
    assert len(peer_state()) == 3
