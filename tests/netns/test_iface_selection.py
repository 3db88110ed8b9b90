"""External interface selection against the real kernel, inside a namespace of the test.

The namespace holds two veth pairs (``eth0``/``p0`` and ``eth1``/``p1``, both ends in
the namespace so the carriers are up) and ``eth2`` without an address:

    eth0  192.0.2.10/24, 192.0.2.11/24 (secondary)    default via 192.0.2.1
    eth1  203.0.113.10/24, 203.0.113.11/24, MTU 1400  10.20.0.0/16 via 203.0.113.1 src .11

``select_interface`` runs in a thread that has joined the namespace (setns changes only
the calling thread), with its own event loop, so netlink sees the namespace as a host.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from ipaddress import IPv4Address

import pytest
from support import netns, nsjoin
from support.netns import Namespace

from pyflannel.backend import ExternalInterface
from pyflannel.errors import ConfigError
from pyflannel.iface import select_interface

pytestmark = pytest.mark.netns
A = IPv4Address


@pytest.fixture
def host() -> Iterator[Namespace]:
    netns.skip_unless_available()
    with Namespace("ifsel") as ns:
        for index, mtu in ((0, "1500"), (1, "1400"), (2, "1500")):
            ns.ip("link", "add", f"eth{index}", "mtu", mtu, "type", "veth", "peer", f"p{index}")
            ns.ip("link", "set", f"p{index}", "up")
            ns.ip("link", "set", f"eth{index}", "up")
        ns.ip("addr", "add", "192.0.2.10/24", "dev", "eth0")
        ns.ip("addr", "add", "192.0.2.11/24", "dev", "eth0")
        ns.ip("addr", "add", "203.0.113.10/24", "dev", "eth1")
        ns.ip("addr", "add", "203.0.113.11/24", "dev", "eth1")
        ns.ip("route", "add", "default", "via", "192.0.2.1", "dev", "eth0")
        ns.ip("route", "add", "10.20.0.0/16", "via", "203.0.113.1", "src", "203.0.113.11")
        yield ns


def select_in(
    ns: Namespace,
    *,
    iface: Sequence[str] = (),
    iface_regex: Sequence[str] = (),
    iface_can_reach: str = "",
    public_ip: str = "",
) -> ExternalInterface:
    """Run ``select_interface`` inside ``ns``; re-raise whatever it raised."""
    return nsjoin.run_in(
        ns.name,
        lambda: select_interface(
            iface=iface,
            iface_regex=iface_regex,
            iface_can_reach=iface_can_reach,
            public_ip=public_ip,
        ),
        timeout=30,
    )


def test_default_route_interface(host: Namespace, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pyflannel.iface")
    external = select_in(host)
    assert (external.name, external.mtu) == ("eth0", 1500)
    assert external.iface_addr == external.ext_addr == A("192.0.2.10")  # primary first
    assert "Using interface with name eth0 and address 192.0.2.10" in caplog.messages
    assert "Defaulting external address to interface address (192.0.2.10)" in caplog.messages


def test_iface_by_name_reads_index_and_mtu(host: Namespace) -> None:
    external = select_in(host, iface=["eth1"])
    index = int(host.ip("-o", "link", "show", "dev", "eth1").stdout.split(":")[0])
    assert external == ExternalInterface("eth1", index, 1400, A("203.0.113.10"), A("203.0.113.10"))


def test_iface_by_address(host: Namespace) -> None:
    external = select_in(host, iface=["192.0.2.11"])
    assert (external.name, external.iface_addr) == ("eth0", A("192.0.2.11"))


def test_failed_candidates_are_logged_then_the_next_wins(
    host: Namespace, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pyflannel.iface")
    external = select_in(host, iface=["eth9", "eth2", "eth1"], public_ip="198.18.0.1")
    assert (external.name, external.ext_addr) == ("eth1", A("198.18.0.1"))
    assert caplog.messages[:2] == [
        "Could not find valid interface matching --iface=eth9: no such interface",
        "Could not find valid interface matching --iface=eth2: eth2 has no usable IPv4 address",
    ]
    assert "Using 198.18.0.1 as external address" in caplog.messages


def test_iface_regex_matches_addresses_then_names(host: Namespace) -> None:
    assert select_in(host, iface_regex=[r"^203\.0\.113\.11$"]).iface_addr == A("203.0.113.11")
    by_name = select_in(host, iface_regex=["th1"])
    assert (by_name.name, by_name.iface_addr) == ("eth1", A("203.0.113.10"))


def test_iface_can_reach_uses_route_and_its_source(host: Namespace) -> None:
    external = select_in(host, iface_can_reach="10.20.3.4")
    assert (external.name, external.iface_addr) == ("eth1", A("203.0.113.11"))


def test_public_ip_alone_picks_its_interface(host: Namespace) -> None:
    external = select_in(host, public_ip="203.0.113.11")
    assert (external.name, external.iface_addr) == ("eth1", A("203.0.113.11"))


def test_no_default_route_is_a_clear_error(host: Namespace) -> None:
    host.ip("route", "del", "default")
    with pytest.raises(ConfigError) as err:
        select_in(host)
    assert str(err.value) == (
        "no default route to pick the interface from; pass --iface=<name or address> "
        "(interfaces here: lo (127.0.0.1), p0, eth0 (192.0.2.10, 192.0.2.11), p1, "
        "eth1 (203.0.113.10, 203.0.113.11), p2, eth2)"
    )


def test_nothing_matches_names_every_try(host: Namespace) -> None:
    host.ip("route", "del", "default")
    with pytest.raises(ConfigError) as err:
        select_in(host, iface=["eth9"], iface_regex=["^ens"], iface_can_reach="198.18.0.1")
    message = str(err.value)
    assert message.startswith(
        "no usable interface: --iface=eth9: no such interface; "
        '--iface-regex="^ens": matched no interface address or name; '
        "--iface-can-reach=198.18.0.1: no route to it (Network is unreachable) "
        "(interfaces here: lo (127.0.0.1), "
    )
