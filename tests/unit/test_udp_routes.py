"""The udp backend's route table: lease events in, next hops out."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

from hypothesis import given
from hypothesis import strategies as st

from pyflannel.backends.udp.routes import RouteChange, RouteTable
from pyflannel.model.lease import EventKind, Lease, LeaseAttrs, LeaseEvent
from pyflannel.model.net import SubnetKey

OWN = IPv4Network("10.4.1.0/24")


def lease(subnet: str, public_ip: str, backend_type: str = "") -> Lease:
    attrs = LeaseAttrs(IPv4Address(public_ip), backend_type=backend_type)
    return Lease(SubnetKey(IPv4Network(subnet)), attrs, 1e9)


def added(subnet: str, public_ip: str, backend_type: str = "") -> LeaseEvent:
    return LeaseEvent(EventKind.ADDED, lease(subnet, public_ip, backend_type))


def removed(subnet: str, public_ip: str = "198.51.100.99") -> LeaseEvent:
    return LeaseEvent(EventKind.REMOVED, lease(subnet, public_ip))


def ip(text: str) -> int:
    return int(IPv4Address(text))


def test_an_empty_table_routes_nothing() -> None:
    table = RouteTable(8285)
    assert table.lookup(ip("10.4.2.1")) is None
    assert not table.holds_lease("198.51.100.12")


def test_added_leases_become_routes_to_the_public_ip_on_our_port() -> None:
    table = RouteTable(8285).apply([added("10.4.2.0/24", "198.51.100.12")], OWN)
    assert table.lookup(ip("10.4.2.0")) == ("198.51.100.12", 8285)
    assert table.lookup(ip("10.4.2.255")) == ("198.51.100.12", 8285)
    assert table.lookup(ip("10.4.3.1")) is None
    assert table.holds_lease("198.51.100.12")
    assert not table.holds_lease("198.51.100.13")


def test_every_lease_counts_whatever_its_backend_type() -> None:
    table = RouteTable(9000).apply(
        [added("10.4.2.0/24", "198.51.100.12", "vxlan"), added("10.4.3.0/24", "198.51.100.13")]
    )
    assert table.lookup(ip("10.4.2.9")) == ("198.51.100.12", 9000)
    assert table.lookup(ip("10.4.3.9")) == ("198.51.100.13", 9000)


def test_our_own_subnet_is_never_a_route() -> None:
    table = RouteTable(8285).apply([added("10.4.1.0/24", "198.51.100.11")], OWN)
    assert table.lookup(ip("10.4.1.5")) is None
    assert not table.holds_lease("198.51.100.11")


def test_a_second_add_replaces_and_a_remove_deletes() -> None:
    table = RouteTable(8285).apply(
        [
            added("10.4.2.0/24", "198.51.100.12"),
            added("10.4.2.0/24", "198.51.100.22"),
            added("10.4.3.0/24", "198.51.100.13"),
            removed("10.4.3.0/24"),
            removed("10.4.7.0/24"),  # unknown: ignored
        ]
    )
    assert table.lookup(ip("10.4.2.1")) == ("198.51.100.22", 8285)
    assert table.lookup(ip("10.4.3.1")) is None
    assert not table.holds_lease("198.51.100.12")
    assert not table.holds_lease("198.51.100.13")


def test_longest_prefix_wins_when_lengths_differ() -> None:
    table = RouteTable(8285).apply(
        [added("10.4.0.0/16", "198.51.100.1"), added("10.4.2.0/24", "198.51.100.12")]
    )
    assert table.lookup(ip("10.4.2.3")) == ("198.51.100.12", 8285)
    assert table.lookup(ip("10.4.9.3")) == ("198.51.100.1", 8285)


def test_apply_returns_the_same_table_when_nothing_changes() -> None:
    table = RouteTable(8285).apply([added("10.4.2.0/24", "198.51.100.12")])
    assert table.apply([added("10.4.2.0/24", "198.51.100.12")]) is table
    assert table.apply([]) is table


def test_changes_list_additions_moves_and_removals() -> None:
    old = RouteTable(8285).apply(
        [added("10.4.2.0/24", "198.51.100.12"), added("10.4.3.0/24", "198.51.100.13")]
    )
    new = old.apply(
        [
            removed("10.4.3.0/24"),
            added("10.4.2.0/24", "198.51.100.22"),
            added("10.4.4.0/24", "198.51.100.14"),
        ]
    )
    assert new.changes_from(old) == [
        RouteChange(IPv4Network("10.4.2.0/24"), IPv4Address("198.51.100.22")),
        RouteChange(IPv4Network("10.4.4.0/24"), IPv4Address("198.51.100.14")),
        RouteChange(IPv4Network("10.4.3.0/24"), None),
    ]
    assert new.changes_from(new) == []


def test_from_leases_matches_applying_add_events() -> None:
    leases = [lease("10.4.2.0/24", "198.51.100.12"), lease("10.4.1.0/24", "198.51.100.11")]
    by_events = RouteTable(8285).apply([LeaseEvent(EventKind.ADDED, x) for x in leases], OWN)
    assert RouteTable.from_leases(leases, 8285, OWN) == by_events


subnets = st.integers(min_value=0, max_value=255).map(lambda n: f"10.4.{n}.0/24")
publics = st.integers(min_value=1, max_value=20).map(lambda n: f"198.51.100.{n}")
events = st.lists(
    st.one_of(
        st.builds(added, subnets, publics),
        st.builds(removed, subnets),
    ),
    max_size=40,
)


@given(events)
def test_the_table_equals_the_lease_set_the_events_leave(batch: list[LeaseEvent]) -> None:
    expected: dict[IPv4Network, IPv4Address] = {}
    for event in batch:
        if event.lease.subnet == OWN:
            continue
        if event.kind is EventKind.ADDED:
            expected[event.lease.subnet] = event.lease.attrs.public_ip
        else:
            expected.pop(event.lease.subnet, None)
    table = RouteTable(8285).apply(batch, OWN)
    assert dict(table.routes) == expected
    for third in range(256):
        subnet = IPv4Network(f"10.4.{third}.0/24")
        hop = table.lookup(int(subnet.network_address) + 7)
        assert hop == ((str(expected[subnet]), 8285) if subnet in expected else None)
