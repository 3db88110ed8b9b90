"""The peer book: per-peer desired entries, claims, deltas and notes (pure code).

The property test at the end is the contract that lets the backends program the
kernel from deltas: for any sequence of lease events, applying each delta to a
kernel that holds the previous state gives exactly what a full diff gives.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from support.factories import lease

from pyflannel.backends.vxlan.desired import Links, configure, desired_state, peer_book
from pyflannel.core.kernelstate import (
    Change,
    FdbEntry,
    KernelState,
    Neighbour,
    Op,
    Route,
    plan_changes,
)
from pyflannel.core.peerbook import PeerBook, Unusable, Wanted
from pyflannel.model.lease import EventKind, Lease, LeaseAttrs, LeaseEvent
from pyflannel.model.net import SubnetKey

VX = 7
OWN_MAC = "0a:00:00:00:00:01"
LINKS = Links(VX, OWN_MAC, 2, (IPv4Network("198.51.100.0/24"),))
OWN = lease("10.5.1.0/24", "198.51.100.11", backend_type="vxlan")


def peer(subnet: str, mac: str | None = "02:00:00:00:00:02", public_ip: str = "203.0.113.2",
         backend_type: str = "vxlan", ipv6: str | None = None) -> Lease:  # fmt: skip
    data = None if mac is None else f'{{"VNI":1,"VtepMAC":"{mac}"}}'
    attrs = LeaseAttrs(IPv4Address(public_ip), backend_type, data)
    return Lease(SubnetKey(IPv4Network(subnet), ipv6), attrs, 1e9)


def added(*leases: Lease) -> list[LeaseEvent]:
    return [LeaseEvent(EventKind.ADDED, x) for x in leases]


def removed(*leases: Lease) -> list[LeaseEvent]:
    return [LeaseEvent(EventKind.REMOVED, x) for x in leases]


def tunnel(subnet: str, mac: str, public_ip: str = "203.0.113.2") -> KernelState:
    gateway = subnet.split("/", maxsplit=1)[0]
    return KernelState(
        frozenset({Route(subnet, gateway, VX, onlink=True)}),
        frozenset({Neighbour(VX, gateway, mac)}),
        frozenset({FdbEntry(VX, mac, public_ip)}),
    )


def book() -> PeerBook:
    return peer_book(OWN, LINKS, direct_routing=False)


def test_a_new_peer_is_in_the_delta_once() -> None:
    b = book()
    b.update(added(peer("10.5.2.0/24")))
    delta = b.take()
    assert (delta.before, delta.after) == (
        KernelState(),
        tunnel("10.5.2.0/24", "02:00:00:00:00:02"),
    )
    assert b.take().after == KernelState()
    assert b.size == 3
    assert len(b) == 1


def test_a_removed_peer_takes_its_entries_along() -> None:
    b = book()
    b.update(added(peer("10.5.2.0/24")))
    b.take()
    b.update(removed(peer("10.5.2.0/24", mac=None)))  # removals carry what the table had
    delta = b.take()
    assert (delta.before, delta.after) == (
        tunnel("10.5.2.0/24", "02:00:00:00:00:02"),
        KernelState(),
    )
    assert b.size == 0


def test_a_renewal_changes_nothing_and_a_new_mac_replaces_the_entries() -> None:
    b = book()
    b.update(added(peer("10.5.2.0/24")))
    b.take()
    b.update(added(peer("10.5.2.0/24")))
    assert b.take().after == KernelState()
    b.update(added(peer("10.5.2.0/24", mac="02:00:00:00:00:22")))
    delta = b.take()
    assert delta.after == tunnel("10.5.2.0/24", "02:00:00:00:00:22")
    assert delta.before == tunnel("10.5.2.0/24", "02:00:00:00:00:02")


def test_changes_that_cancel_out_between_takes_leave_an_empty_delta() -> None:
    b = book()
    b.update(added(peer("10.5.2.0/24")))
    b.take()
    b.update(removed(peer("10.5.2.0/24")) + added(peer("10.5.2.0/24")))
    assert b.take().after == KernelState()


def test_our_own_subnet_is_never_a_peer() -> None:
    b = book()
    b.update(added(OWN, peer("10.5.1.0/24", ipv6="fd00::-64")))
    delta = b.take()
    assert delta.after == KernelState()
    assert delta.notes == ()
    assert len(b) == 2  # known, never programmed


def test_a_contested_mac_goes_to_the_lower_subnet_and_passes_on_when_it_leaves() -> None:
    b = book()
    low, high = peer("10.5.2.0/24"), peer("10.5.9.0/24", public_ip="203.0.113.9")
    b.update(added(high, low))
    delta = b.take()
    assert delta.after == tunnel("10.5.2.0/24", "02:00:00:00:00:02")
    (note,) = delta.notes
    assert note.subnet == IPv4Network("10.5.9.0/24")
    assert note.reason == "VtepMAC 02:00:00:00:00:02 is already used by the lease for 10.5.2.0/24"
    b.update(removed(low))
    delta = b.take()
    assert delta.after == tunnel("10.5.9.0/24", "02:00:00:00:00:02", "203.0.113.9")
    assert delta.before == tunnel("10.5.2.0/24", "02:00:00:00:00:02")
    assert [(n.subnet, n.reason) for n in delta.notes] == [(IPv4Network("10.5.9.0/24"), None)]


def test_overlapping_subnets_on_one_network_address_keep_one_neighbour() -> None:
    b = book()
    wide, narrow = peer("10.5.2.0/23"), peer("10.5.2.0/24", mac="02:00:00:00:00:03")
    b.update(added(narrow, wide))
    delta = b.take()
    assert delta.after == tunnel("10.5.2.0/23", "02:00:00:00:00:02")
    assert "neighbour address 10.5.2.0 is already used by the lease for 10.5.2.0/23" in (
        delta.notes[0].reason or ""
    )


def test_two_keys_for_one_ipv4_subnet_keep_one_route() -> None:
    b = book()
    plain = peer("10.5.2.0/24")
    dual = peer("10.5.2.0/24", mac="02:00:00:00:00:03", ipv6="fd00::-64")
    b.update(added(dual, plain))
    delta = b.take()
    assert delta.after == tunnel("10.5.2.0/24", "02:00:00:00:00:02")
    (note,) = delta.notes
    assert note.key == dual.key
    assert "is already used by the lease for 10.5.2.0/24" in (note.reason or "")


def test_notes_come_once_per_change_of_status() -> None:
    b = book()
    bad = peer("10.5.7.0/24", mac="zz")
    other = peer("10.5.8.0/24", backend_type="udp")
    b.update(added(bad, other))
    notes = b.take().notes
    assert [(n.subnet, n.foreign) for n in notes] == [
        (IPv4Network("10.5.7.0/24"), False),
        (IPv4Network("10.5.8.0/24"), True),
    ]
    assert "is not a MAC address" in (notes[0].reason or "")
    b.update(added(peer("10.5.7.0/24", mac="zz", public_ip="203.0.113.77"), other))
    assert b.take().notes == ()  # the same reason: nothing new to say
    b.update(removed(bad))
    assert [n.reason for n in b.take().notes] == [None]


def test_events_before_configure_are_kept_until_the_devices_are_known() -> None:
    b = PeerBook(OWN.subnet)
    b.update(added(peer("10.5.2.0/24")))
    assert b.take().after == KernelState()
    configure(b, OWN, LINKS, direct_routing=False)
    assert b.take().after == tunnel("10.5.2.0/24", "02:00:00:00:00:02")


def test_new_devices_make_every_entry_again_and_same_ones_nothing() -> None:
    b = book()
    b.update(added(peer("10.5.2.0/24")))
    b.take()
    configure(b, OWN, LINKS, direct_routing=False)
    assert b.take().after == KernelState()
    configure(b, OWN, Links(8, OWN_MAC, 2, LINKS.connected), direct_routing=False)
    delta = b.take()
    assert {r.oif for r in delta.after.routes} == {8}
    assert delta.before == tunnel("10.5.2.0/24", "02:00:00:00:00:02")


def test_an_update_with_only_the_whole_set_is_compared_with_what_is_known() -> None:
    b = book()
    two, three = peer("10.5.2.0/24"), peer("10.5.3.0/24", mac="02:00:00:00:00:03")
    b.follow([], [two, OWN])
    assert b.take().after == tunnel("10.5.2.0/24", "02:00:00:00:00:02")
    b.follow([], [three])
    delta = b.take()
    assert delta.before == tunnel("10.5.2.0/24", "02:00:00:00:00:02")
    assert delta.after == tunnel("10.5.3.0/24", "02:00:00:00:00:03")
    b.follow(added(two), [three])  # events that do not account for the set: the set wins
    assert b.take().after == KernelState()
    assert len(b) == 1


def test_a_generic_backend_result() -> None:
    def entries_of(x: Lease) -> Wanted | Unusable | None:
        if x.attrs.backend_type != "test":
            return None
        if x.attrs.public_ip == IPv4Address("192.0.2.99"):
            return Unusable("unreachable")
        return Wanted((Route(str(x.subnet), str(x.attrs.public_ip), 2),))

    b = PeerBook(OWN.subnet)
    b.configure(entries_of, "inputs")
    b.update(added(lease("10.5.2.0/24", "192.0.2.2", backend_type="test")))
    b.update(added(lease("10.5.3.0/24", "192.0.2.99", backend_type="test")))
    desired = b.desired()
    assert desired.state.routes == {Route("10.5.2.0/24", "192.0.2.2", 2)}
    assert [(s.subnet, s.reason) for s in desired.skipped] == [
        (IPv4Network("10.5.3.0/24"), "unreachable")
    ]


# --- incremental equals full -----------------------------------------------------------

SUBNETS = ["10.5.2.0/24", "10.5.3.0/24", "10.5.2.0/23", "10.5.1.0/24", "10.5.4.128/25"]
MACS = ["02:00:00:00:00:02", "02:00:00:00:00:03", OWN_MAC, "zz", None]
PUBLIC = ["203.0.113.2", "203.0.113.3", "198.51.100.12", "198.51.100.11"]
LINK_CHOICES = [LINKS, Links(8, OWN_MAC, 2, LINKS.connected), Links(VX, OWN_MAC, 2, ())]

leases = st.builds(
    peer,
    subnet=st.sampled_from(SUBNETS),
    mac=st.sampled_from(MACS),
    public_ip=st.sampled_from(PUBLIC),
    backend_type=st.sampled_from(["vxlan", "vxlan", "vxlan", "udp"]),
    ipv6=st.sampled_from([None, None, "fd00::-64"]),
)
events = st.builds(LeaseEvent, st.sampled_from([EventKind.ADDED, EventKind.REMOVED]), leases)
steps = st.lists(
    st.one_of(
        st.lists(events, min_size=1, max_size=6),
        st.tuples(st.sampled_from(LINK_CHOICES), st.booleans()),
    ),
    max_size=25,
)


class FakeKernel:
    """Entries by kernel key, changed the way the kernel changes them."""

    def __init__(self) -> None:
        self.entries: dict[tuple[Any, ...], Any] = {}

    def apply(self, changes: tuple[Change, ...]) -> None:
        for change in changes:
            slot = (type(change.entry), change.entry.key())
            if change.op is Op.SET:
                self.entries[slot] = change.entry
            else:
                assert self.entries.pop(slot) == change.entry

    def state(self) -> KernelState:
        found = list(self.entries.values())
        return KernelState(
            frozenset(e for e in found if isinstance(e, Route)),
            frozenset(e for e in found if isinstance(e, Neighbour)),
            frozenset(e for e in found if isinstance(e, FdbEntry)),
        )


@settings(max_examples=300, deadline=None)
@given(steps)
def test_deltas_program_the_kernel_exactly_as_full_diffs_do(plan: list[Any]) -> None:
    links, direct = LINKS, False
    b = peer_book(OWN, links, direct_routing=direct)
    current: dict[SubnetKey, Lease] = {}
    kernel = FakeKernel()
    statuses: dict[SubnetKey, tuple[str | None, bool]] = {}
    for step in [*plan, []]:
        if isinstance(step, tuple):
            links, direct = step
            configure(b, OWN, links, direct_routing=direct)
        else:
            b.update(step)
            for event in step:
                if event.kind is EventKind.ADDED:
                    current[event.lease.key] = event.lease
                else:
                    current.pop(event.lease.key, None)
        delta = b.take()
        incremental = plan_changes(delta.after, delta.before)
        full = desired_state(OWN, current.values(), links, direct_routing=direct)
        assert incremental == plan_changes(full.state, kernel.state())
        kernel.apply(incremental)
        assert kernel.state() == full.state == b.state()
        assert b.size == len(full.state)
        for note in delta.notes:
            statuses[note.key] = (note.reason, note.foreign)
        skipped = sorted((k.subnet, r) for k, (r, _) in statuses.items() if r is not None)
        assert skipped == sorted((s.subnet, s.reason) for s in full.skipped)
        assert sorted(k.subnet for k, (_, f) in statuses.items() if f) == list(full.foreign)
