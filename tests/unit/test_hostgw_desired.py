"""host-gw's desired routes, its route scope and its refusal of a NAT public IP (pure code)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest
from support.factories import lease

from pyflannel.backend import ExternalInterface
from pyflannel.backends.hostgw.desired import (
    check_public_ip,
    desired_routes,
    route_scope,
)
from pyflannel.core.kernelstate import RTPROT_BOOT, Route
from pyflannel.errors import ConfigError

A, N = IPv4Address, IPv4Network
ETH0 = ExternalInterface("eth0", 2, 1500, A("198.51.100.11"), A("198.51.100.11"))
CONNECTED = [N("198.51.100.0/24")]
OWN = lease("10.5.1.0/24", "198.51.100.11", backend_type="host-gw")
NET = N("10.5.0.0/16")


def test_one_route_per_host_gw_peer_via_its_public_ip_as_flanneld_makes_it() -> None:
    peers = [
        OWN,
        lease("10.5.3.0/24", "198.51.100.13", backend_type="host-gw"),
        lease("10.5.2.0/24", "198.51.100.12", backend_type="host-gw"),
    ]
    desired = desired_routes(OWN, peers, ETH0, CONNECTED)
    assert desired.state.routes == {
        Route("10.5.2.0/24", "198.51.100.12", 2),
        Route("10.5.3.0/24", "198.51.100.13", 2),
    }
    # No onlink flag (the gateway must be directly reachable) and flanneld's protocol.
    assert all(not r.onlink and r.proto == RTPROT_BOOT for r in desired.state.routes)
    assert len(desired.state) == 2  # routes only: no neighbours, no FDB entries
    assert (desired.skipped, desired.foreign) == ((), ())


@pytest.mark.parametrize("backend_type", ["vxlan", "", "Host-GW", "host-gw "])
def test_leases_of_other_backend_types_get_no_route(backend_type: str) -> None:
    peers = [lease("10.5.2.0/24", "198.51.100.12", backend_type=backend_type)]
    desired = desired_routes(OWN, peers, ETH0, CONNECTED)
    assert desired.state.routes == frozenset()
    assert desired.skipped == ()
    assert desired.foreign == (N("10.5.2.0/24"),)


def test_a_peer_off_the_l2_segment_is_reported_with_the_reason() -> None:
    peers = [
        lease("10.5.4.0/24", "203.0.113.9", backend_type="host-gw"),
        lease("10.5.2.0/24", "198.51.100.12", backend_type="host-gw"),
    ]
    desired = desired_routes(OWN, peers, ETH0, CONNECTED)
    assert [r.dst for r in desired.state.routes] == ["10.5.2.0/24"]
    (skipped,) = desired.skipped
    assert skipped.subnet == N("10.5.4.0/24")
    assert skipped.reason == (
        "its PublicIP 203.0.113.9 is not on a subnet connected to eth0 (198.51.100.0/24); "
        "host-gw routes each subnet via the peer host itself, so all hosts must share one "
        "L2 network (use vxlan to cross routers)"
    )


def test_a_host_route_address_does_not_make_a_peer_reachable() -> None:
    peers = [lease("10.5.4.0/24", "203.0.113.9", backend_type="host-gw")]
    desired = desired_routes(OWN, peers, ETH0, [N("203.0.113.9/32")])
    assert desired.state.routes == frozenset()
    assert "(203.0.113.9/32)" in desired.skipped[0].reason


def test_a_peer_claiming_our_own_address_gets_no_route() -> None:
    peers = [lease("10.5.9.0/24", "198.51.100.11", backend_type="host-gw")]
    desired = desired_routes(OWN, peers, ETH0, CONNECTED)
    assert desired.state.routes == frozenset()
    assert "this host's own address" in desired.skipped[0].reason


def test_a_public_ip_other_than_the_interface_address_is_refused() -> None:
    check_public_ip(ETH0)
    natted = ExternalInterface("eth0", 2, 1500, A("198.51.100.11"), A("203.0.113.5"))
    with pytest.raises(ConfigError) as info:
        check_public_ip(natted)
    message = str(info.value)
    assert (
        "your PublicIP differs from interface IP, meaning that probably you're on a NAT, "
        "which is not supported by host-gw backend" in message
    )
    assert "(PublicIP 203.0.113.5, address 198.51.100.11 on eth0)" in message


@pytest.mark.parametrize(
    ("dst", "oif", "ours"),
    [
        ("10.5.2.0/24", 2, True),
        ("10.5.2.128/25", 2, True),  # any part of the network: a stale route of ours
        ("10.5.1.0/24", 2, False),  # our own subnet
        ("10.5.0.0/16", 2, False),  # the whole network
        ("10.6.2.0/24", 2, False),  # outside the network
        ("0.0.0.0/0", 2, False),  # the default route
    ],
)
def test_the_routes_host_gw_owns(dst: str, oif: int, ours: bool) -> None:
    scope = route_scope(2, NET, OWN.subnet)
    assert scope.route_oifs == {2}
    assert scope.owns_route(Route(dst, "198.51.100.12", oif)) is ours
