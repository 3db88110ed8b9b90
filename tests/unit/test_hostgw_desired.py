"""host-gw's desired routes and its refusal of a NAT public IP (pure code)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest
from support.factories import lease

from pyflannel.backend import ExternalInterface
from pyflannel.backends.hostgw.desired import (
    GatewayRoute,
    check_public_ip,
    is_ours,
    plan_routes,
)
from pyflannel.errors import ConfigError

ETH0 = ExternalInterface(
    "eth0", 2, 1500, IPv4Address("198.51.100.11"), IPv4Address("198.51.100.11")
)
CONNECTED = [IPv4Network("198.51.100.0/24")]
OWN = lease("10.5.1.0/24", "198.51.100.11", backend_type="host-gw")
NET = IPv4Network("10.5.0.0/16")


def test_one_route_per_host_gw_peer_via_its_public_ip() -> None:
    peers = [
        OWN,
        lease("10.5.2.0/24", "198.51.100.12", backend_type="host-gw"),
        lease("10.5.3.0/24", "198.51.100.13", backend_type="host-gw"),
    ]
    plan = plan_routes(OWN, peers, ETH0, CONNECTED)
    assert plan.routes == {
        GatewayRoute(IPv4Network("10.5.2.0/24"), IPv4Address("198.51.100.12"), 2),
        GatewayRoute(IPv4Network("10.5.3.0/24"), IPv4Address("198.51.100.13"), 2),
    }
    assert plan.skipped == ()


@pytest.mark.parametrize("backend_type", ["vxlan", "", "Host-GW", "host-gw "])
def test_other_backend_types_are_ignored_silently(backend_type: str) -> None:
    peers = [lease("10.5.2.0/24", "198.51.100.12", backend_type=backend_type)]
    plan = plan_routes(OWN, peers, ETH0, CONNECTED)
    assert plan.routes == frozenset()
    assert plan.skipped == ()


def test_a_peer_off_the_l2_segment_is_reported_with_the_reason() -> None:
    peers = [lease("10.5.4.0/24", "203.0.113.9", backend_type="host-gw")]
    plan = plan_routes(OWN, peers, ETH0, CONNECTED)
    assert plan.routes == frozenset()
    (skipped,) = plan.skipped
    assert (skipped.subnet, skipped.public_ip) == (
        IPv4Network("10.5.4.0/24"),
        IPv4Address("203.0.113.9"),
    )
    assert skipped.reason == (
        "its PublicIP 203.0.113.9 is not on a subnet connected to eth0 (198.51.100.0/24); "
        "host-gw routes each subnet via the peer host itself, so all hosts must share one "
        "L2 network (use vxlan to cross routers)"
    )


def test_a_peer_claiming_our_own_address_gets_no_route() -> None:
    peers = [lease("10.5.9.0/24", "198.51.100.11", backend_type="host-gw")]
    plan = plan_routes(OWN, peers, ETH0, CONNECTED)
    assert plan.routes == frozenset()
    assert "this host's own address" in plan.skipped[0].reason


def test_a_public_ip_other_than_the_interface_address_is_refused() -> None:
    check_public_ip(ETH0)
    natted = ExternalInterface(
        "eth0", 2, 1500, IPv4Address("198.51.100.11"), IPv4Address("203.0.113.5")
    )
    with pytest.raises(ConfigError) as info:
        check_public_ip(natted)
    message = str(info.value)
    assert (
        "your PublicIP differs from interface IP, meaning that probably you're on a NAT" in message
    )
    assert "PublicIP 203.0.113.5, address 198.51.100.11 on eth0" in message


@pytest.mark.parametrize(
    ("dst", "oif", "ours"),
    [
        ("10.5.2.0/24", 2, True),
        ("10.5.1.0/24", 2, False),  # our own subnet
        ("10.5.0.0/16", 2, False),  # the whole network
        ("10.6.2.0/24", 2, False),  # outside the network
        ("10.5.2.0/24", 3, False),  # another interface
    ],
)
def test_which_kernel_routes_count_as_ours(dst: str, oif: int, ours: bool) -> None:
    assert is_ours(IPv4Network(dst), oif, NET, OWN.subnet, 2) is ours
