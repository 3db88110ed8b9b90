"""External interface and public IP selection (facts §11), over hand-built snapshots."""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import IPv4Address

import pytest

from pyflannel.backend import ExternalInterface
from pyflannel.core.ifacepick import (
    AddrInfo,
    DefaultRoute,
    HostSnapshot,
    LinkInfo,
    RouteLookup,
    Selection,
    describe_links,
    pick,
    usable_addresses,
)
from pyflannel.errors import ConfigError

A = IPv4Address


def addr(
    text: str, *, permanent: bool = True, secondary: bool = False, deprecated: bool = False
) -> AddrInfo:
    address, _, plen = text.partition("/")
    return AddrInfo(A(address), int(plen or 24), permanent, secondary, deprecated)


LO = LinkInfo(1, "lo", 65536, True, (addr("127.0.0.1/8"),))
ETH0 = LinkInfo(2, "eth0", 1500, True, (addr("192.0.2.10"),))
DOCKER0 = LinkInfo(3, "docker0", 1450, True, (addr("172.17.0.1/16"),))
ETH1 = LinkInfo(4, "eth1", 9000, True, ())
HOST = HostSnapshot((LO, ETH0, DOCKER0, ETH1), (DefaultRoute((2,)),))
LISTING = "(interfaces here: lo (127.0.0.1), eth0 (192.0.2.10), docker0 (172.17.0.1), eth1)"


def choose(
    host: HostSnapshot = HOST,
    *,
    iface: Sequence[str] = (),
    regex: Sequence[str] = (),
    can_reach: str = "",
    route: RouteLookup | None = None,
    public_ip: str = "",
) -> Selection:
    return pick(
        host,
        iface=iface,
        iface_regex=regex,
        iface_can_reach=can_reach,
        can_reach=route,
        public_ip=public_ip,
    )


def failure(
    host: HostSnapshot = HOST,
    *,
    iface: Sequence[str] = (),
    regex: Sequence[str] = (),
    can_reach: str = "",
    route: RouteLookup | None = None,
    public_ip: str = "",
) -> str:
    """The ConfigError message for a selection that must fail."""
    with pytest.raises(ConfigError) as err:
        choose(
            host, iface=iface, regex=regex, can_reach=can_reach, route=route, public_ip=public_ip
        )
    return str(err.value)


def chosen(selection: Selection) -> tuple[str, str]:
    return selection.external.name, str(selection.external.iface_addr)


# -- the default route ---------------------------------------------------------------


def test_default_route_interface_and_its_address() -> None:
    selection = choose()
    assert selection.external == ExternalInterface(
        "eth0", 2, 1500, A("192.0.2.10"), A("192.0.2.10")
    )
    assert selection.chosen_by == "default route" and selection.rejected == ()


def test_lowest_metric_default_route_wins() -> None:
    host = HostSnapshot(HOST.links, (DefaultRoute((2,), metric=100), DefaultRoute((3,), 10)))
    assert chosen(choose(host)) == ("docker0", "172.17.0.1")


def test_equal_metrics_keep_the_kernel_order() -> None:
    host = HostSnapshot(HOST.links, (DefaultRoute((3,)), DefaultRoute((2,))))
    assert chosen(choose(host))[0] == "docker0"


def test_blackhole_default_route_is_skipped() -> None:
    blackhole = DefaultRoute((), metric=1, route_type=6)
    host = HostSnapshot(HOST.links, (blackhole, DefaultRoute((2,), metric=50)))
    assert chosen(choose(host))[0] == "eth0"


def test_multipath_default_route_uses_its_first_hop() -> None:
    host = HostSnapshot(HOST.links, (DefaultRoute((3, 2)),))
    assert chosen(choose(host))[0] == "docker0"


def test_no_default_route_error_suggests_iface() -> None:
    message = failure(host=HostSnapshot(HOST.links))
    assert message == (
        f"no default route to pick the interface from; pass --iface=<name or address> {LISTING}"
    )


def test_only_a_blackhole_default_route() -> None:
    host = HostSnapshot(HOST.links, (DefaultRoute((), route_type=6),))
    assert failure(host=host).startswith(
        "the default route (blackhole) has no outgoing interface to pick; pass --iface="
    )


def test_default_route_interface_without_ipv4() -> None:
    host = HostSnapshot(HOST.links, (DefaultRoute((4,)),))
    assert failure(host=host).startswith(
        "the default route goes through eth1, but eth1 has no usable IPv4 address; pass --iface="
    )


def test_default_route_interface_missing_from_the_list() -> None:
    host = HostSnapshot(HOST.links, (DefaultRoute((42,)),))
    assert "interface index 42, which is not listed" in failure(host=host)


def test_no_interfaces_at_all() -> None:
    assert failure(host=HostSnapshot(())).endswith("(interfaces here: none)")


# -- --iface -------------------------------------------------------------------------


def test_iface_by_name() -> None:
    selection = choose(iface=["docker0"])
    assert chosen(selection) == ("docker0", "172.17.0.1")
    assert selection.external.mtu == 1450 and selection.external.index == 3
    assert selection.chosen_by == "--iface=docker0"


def test_iface_by_address_uses_that_address() -> None:
    eth0 = LinkInfo(2, "eth0", 1500, True, (addr("192.0.2.10"), addr("192.0.2.20")))
    host = HostSnapshot((LO, eth0), HOST.default_routes)
    assert chosen(choose(host, iface=["192.0.2.20"])) == ("eth0", "192.0.2.20")


def test_iface_address_may_be_any_address_of_the_interface() -> None:
    # flanneld compares against every IPv4 address, loopback included.
    assert chosen(choose(iface=["127.0.0.1"])) == ("lo", "127.0.0.1")


def test_iface_values_tried_in_order_and_failures_kept() -> None:
    selection = choose(iface=["eth9", "10.9.9.9", "eth1", "docker0", "eth0"])
    assert chosen(selection) == ("docker0", "172.17.0.1")
    assert [str(r) for r in selection.rejected] == [
        "--iface=eth9: no such interface",
        "--iface=10.9.9.9: no interface has this address",
        "--iface=eth1: eth1 has no usable IPv4 address",
    ]


def test_iface_failures_error_names_each_try() -> None:
    message = failure(iface=["eth9", "10.9.9.9"], regex=["^ens"])
    assert message == (
        "no usable interface: --iface=eth9: no such interface; "
        "--iface=10.9.9.9: no interface has this address; "
        '--iface-regex="^ens": matched no interface address or name ' + LISTING
    )


def test_iface_ipv6_literal_is_refused_clearly() -> None:
    assert "--iface=fe80::1: an IPv6 address; pyflanneld picks" in failure(iface=["fe80::1"])


def test_iface_explicit_never_falls_back_to_the_default_route() -> None:
    assert failure(iface=["eth9"]).startswith("no usable interface: --iface=eth9:")


def test_iface_with_only_unusable_addresses_lists_them() -> None:
    assert "lo has no usable IPv4 address (only 127.0.0.1)" in failure(iface=["lo"])


def test_mtu_zero_fails_the_candidate() -> None:
    zero = LinkInfo(5, "tun9", 0, True, (addr("10.1.1.1"),))
    host = HostSnapshot((*HOST.links, zero), HOST.default_routes)
    selection = choose(host, iface=["tun9", "eth0"])
    assert chosen(selection)[0] == "eth0"
    assert str(selection.rejected[0]) == "--iface=tun9: tun9 reports MTU 0"


def test_down_interface_is_used_with_a_warning() -> None:
    down = LinkInfo(2, "eth0", 1500, False, ETH0.addrs)
    selection = choose(HostSnapshot((LO, down), HOST.default_routes))
    assert chosen(selection)[0] == "eth0" and selection.warnings == ("interface eth0 is down",)


# -- --iface-regex -------------------------------------------------------------------


def test_regex_matches_addresses_before_names() -> None:
    # "eth" would match eth0 by name; the address match on docker0 wins.
    assert chosen(choose(regex=["172\\.17|eth"])) == ("docker0", "172.17.0.1")


def test_regex_address_match_uses_the_matching_address() -> None:
    eth0 = LinkInfo(2, "eth0", 1500, True, (addr("192.0.2.10"), addr("10.0.0.5/8")))
    host = HostSnapshot((LO, eth0), HOST.default_routes)
    assert chosen(choose(host, regex=["^10\\."])) == ("eth0", "10.0.0.5")


def test_regex_is_unanchored() -> None:
    assert chosen(choose(regex=["ocker"])) == ("docker0", "172.17.0.1")


def test_regex_interfaces_in_index_order() -> None:
    assert chosen(choose(regex=["\\.1$|\\.10$"]))[0] == "eth0"


def test_regex_never_matches_loopback_addresses() -> None:
    message = failure(regex=["^127\\."])
    assert '--iface-regex="^127\\\\.": matched no interface address or name' in message


def test_regex_name_match_without_address_fails_the_candidate() -> None:
    message = failure(regex=["^eth1$"])
    assert '--iface-regex="^eth1$": matched eth1 by name, but eth1 has no usable IPv4' in message


def test_regexes_tried_in_order_after_every_iface() -> None:
    selection = choose(iface=["eth9"], regex=["^ens", "^docker", "^eth0"])
    assert chosen(selection)[0] == "docker0"
    assert [r.candidate for r in selection.rejected] == ["--iface=eth9", '--iface-regex="^ens"']


def test_invalid_regex_fails_only_that_candidate() -> None:
    selection = choose(regex=["(", "eth0"])
    assert chosen(selection)[0] == "eth0"
    assert selection.rejected[0].reason.startswith("not a valid regular expression:")


# -- --iface-can-reach ---------------------------------------------------------------


def test_can_reach_uses_route_interface_and_preferred_source() -> None:
    route = RouteLookup(oif=3, prefsrc=A("172.17.0.9"))
    selection = choose(can_reach="172.17.5.5", route=route)
    assert chosen(selection) == ("docker0", "172.17.0.9")
    assert selection.chosen_by == "--iface-can-reach=172.17.5.5"


def test_can_reach_without_prefsrc_falls_back_to_interface_address() -> None:
    assert chosen(choose(can_reach="10.1.1.1", route=RouteLookup(oif=2))) == ("eth0", "192.0.2.10")


def test_can_reach_comes_after_iface_and_regex() -> None:
    route = RouteLookup(oif=3, prefsrc=A("172.17.0.1"))
    assert chosen(choose(iface=["eth0"], can_reach="10.1.1.1", route=route))[0] == "eth0"
    selection = choose(iface=["eth9"], regex=["^x"], can_reach="10.1.1.1", route=route)
    assert chosen(selection)[0] == "docker0" and len(selection.rejected) == 2


def test_can_reach_no_route() -> None:
    route = RouteLookup(oif=None, error="Network is unreachable")
    message = failure(can_reach="203.0.113.1", route=route)
    assert message == (
        "no usable interface: --iface-can-reach=203.0.113.1: no route to it "
        "(Network is unreachable) " + LISTING
    )


def test_can_reach_not_ipv4() -> None:
    assert "--iface-can-reach=nowhere: not an IPv4 address" in failure(can_reach="nowhere")


def test_can_reach_interface_without_address() -> None:
    message = failure(can_reach="10.1.1.1", route=RouteLookup(oif=4))
    assert "the route to it goes through eth1, but eth1 has no usable IPv4 address" in message


# -- --public-ip ---------------------------------------------------------------------


def test_public_ip_becomes_the_external_address() -> None:
    external = choose(iface=["eth0"], public_ip="203.0.113.7").external
    assert (external.iface_addr, external.ext_addr) == (A("192.0.2.10"), A("203.0.113.7"))


def test_public_ip_alone_picks_the_interface_holding_it() -> None:
    selection = choose(public_ip="172.17.0.1")
    assert chosen(selection) == ("docker0", "172.17.0.1")
    assert selection.external.ext_addr == A("172.17.0.1")
    assert selection.chosen_by == "--public-ip=172.17.0.1"


def test_public_ip_alone_not_on_any_interface_is_fatal() -> None:
    message = failure(public_ip="203.0.113.7")
    assert message == (
        "--public-ip=203.0.113.7: no local interface has this address (without --iface, "
        "--iface-regex or --iface-can-reach, the interface is the one holding --public-ip); "
        f"pass --iface=<name or address> {LISTING}"
    )


def test_public_ip_must_be_ipv4() -> None:
    assert failure(public_ip="nope") == '--public-ip="nope" must parse as an IPv4 address'
    with pytest.raises(ConfigError, match="must parse as an IPv4"):
        choose(iface=["eth0"], public_ip="2001:db8::1")


# -- address preference --------------------------------------------------------------


def test_address_order_global_permanent_primary() -> None:
    link = LinkInfo(
        9,
        "x",
        1500,
        True,
        (
            addr("169.254.1.1/16"),
            addr("10.0.0.3", permanent=False),
            addr("10.0.0.2", secondary=True),
            addr("10.0.0.1"),
        ),
    )
    assert usable_addresses(link) == (A("10.0.0.1"), A("10.0.0.2"), A("10.0.0.3"), A("169.254.1.1"))


def test_deprecated_loopback_and_multicast_addresses_are_never_chosen() -> None:
    link = LinkInfo(
        9,
        "x",
        1500,
        True,
        (
            addr("10.0.0.1", deprecated=True),
            addr("127.0.0.2/8"),
            addr("224.0.0.5/32"),
            addr("0.0.0.0/32"),
            addr("255.255.255.255/32"),
        ),
    )
    assert usable_addresses(link) == ()


def test_link_local_only_interface_is_usable() -> None:
    link = LinkInfo(2, "eth0", 1500, True, (addr("169.254.7.7/16"),))
    host = HostSnapshot((LO, link), HOST.default_routes)
    assert chosen(choose(host)) == ("eth0", "169.254.7.7")


def test_describe_links() -> None:
    two = LinkInfo(2, "eth0", 1500, True, (addr("192.0.2.10"), addr("192.0.2.11")))
    assert describe_links(HostSnapshot((LO, two, ETH1))) == (
        "lo (127.0.0.1), eth0 (192.0.2.10, 192.0.2.11), eth1"
    )
