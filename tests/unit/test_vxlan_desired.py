"""vxlan's desired kernel state, lease data and options (pure code)."""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.factories import config, lease

from pyflannel.backend import ExternalInterface
from pyflannel.backends.vxlan.desired import (
    Links,
    backend_data,
    desired_state,
    parse_mac,
    peer_vtep_mac,
)
from pyflannel.backends.vxlan.device import device_spec, incompatibility, random_mac
from pyflannel.backends.vxlan.options import VxlanSettings, parse_settings
from pyflannel.core.kernelstate import (
    RTPROT_PYFLANNEL,
    FdbEntry,
    KernelState,
    Neighbour,
    Op,
    Route,
    plan_changes,
)
from pyflannel.errors import ConfigError, PeerDataError
from pyflannel.model.lease import Lease, LeaseFormat
from pyflannel.netlink.ops import LinkState, VxlanAttrs

VX, ETH = 7, 2
OWN_MAC = "0a:00:00:00:00:01"
LINKS = Links(VX, OWN_MAC, ETH, (IPv4Network("198.51.100.0/24"),))
OWN = lease("10.5.1.0/24", "198.51.100.11", backend_type="vxlan")


def vxlan_peer(subnet: str, public_ip: str, mac: str | None, vni: bool = True) -> Lease:
    data = None
    if mac is not None:
        data = f'{{"VNI":1,"VtepMAC":"{mac}"}}' if vni else f'{{"VtepMAC":"{mac}"}}'
    return lease(subnet, public_ip, backend_type="vxlan", backend_data=data)


def entries(subnet: str, public_ip: str, mac: str) -> KernelState:
    gw = subnet.split("/", maxsplit=1)[0]
    return KernelState(
        frozenset({Route(subnet, gw, VX, onlink=True)}),
        frozenset({Neighbour(VX, gw, mac)}),
        frozenset({FdbEntry(VX, mac, public_ip)}),
    )


def union(*states: KernelState) -> KernelState:
    return KernelState(
        frozenset().union(*(s.routes for s in states)),
        frozenset().union(*(s.neighbours for s in states)),
        frozenset().union(*(s.fdb for s in states)),
    )


P2 = vxlan_peer("10.5.2.0/24", "203.0.113.12", "02:00:00:00:00:02")
P3 = vxlan_peer("10.5.3.0/24", "203.0.113.13", "02:00:00:00:00:03", vni=False)


def test_each_vxlan_peer_gets_neighbour_fdb_and_onlink_route() -> None:
    desired = desired_state(OWN, [P3, P2, OWN], LINKS, direct_routing=False)
    assert desired.state == union(
        entries("10.5.2.0/24", "203.0.113.12", "02:00:00:00:00:02"),
        entries("10.5.3.0/24", "203.0.113.13", "02:00:00:00:00:03"),
    )
    assert desired.skipped == ()
    assert desired.foreign == ()


def test_no_peers_means_nothing_wanted() -> None:
    assert desired_state(OWN, [], LINKS, direct_routing=False).state == KernelState()


def test_a_removed_peer_loses_all_three_entries() -> None:
    before = desired_state(OWN, [P2, P3], LINKS, direct_routing=False).state
    after = desired_state(OWN, [P2], LINKS, direct_routing=False).state
    removed = {c.entry for c in plan_changes(after, before) if c.op is Op.DELETE}
    assert removed == set(entries("10.5.3.0/24", "203.0.113.13", "02:00:00:00:00:03").routes) | {
        Neighbour(VX, "10.5.3.0", "02:00:00:00:00:03"),
        FdbEntry(VX, "02:00:00:00:00:03", "203.0.113.13"),
    }


def test_a_changed_vtep_mac_leaves_no_stale_fdb_entry() -> None:
    before = desired_state(OWN, [P2], LINKS, direct_routing=False).state
    moved = vxlan_peer("10.5.2.0/24", "203.0.113.12", "02:00:00:00:00:22")
    after = desired_state(OWN, [moved], LINKS, direct_routing=False).state
    assert after == entries("10.5.2.0/24", "203.0.113.12", "02:00:00:00:00:22")
    changes = plan_changes(after, before)
    assert (Op.DELETE, FdbEntry(VX, "02:00:00:00:00:02", "203.0.113.12")) in [
        (c.op, c.entry) for c in changes
    ]


def test_a_changed_public_ip_moves_the_fdb_entry() -> None:
    moved = vxlan_peer("10.5.2.0/24", "203.0.113.99", "02:00:00:00:00:02")
    after = desired_state(OWN, [moved], LINKS, direct_routing=False).state
    assert after.fdb == {FdbEntry(VX, "02:00:00:00:00:02", "203.0.113.99")}


def test_direct_routing_uses_a_plain_route_for_peers_on_our_l2_network() -> None:
    near = vxlan_peer("10.5.4.0/24", "198.51.100.14", "02:00:00:00:00:04")
    desired = desired_state(OWN, [near, P2], LINKS, direct_routing=True)
    direct = Route("10.5.4.0/24", "198.51.100.14", ETH, proto=RTPROT_PYFLANNEL)
    far = entries("10.5.2.0/24", "203.0.113.12", "02:00:00:00:00:02")
    assert desired.state == union(far, KernelState(routes=frozenset({direct})))


def test_direct_routing_never_routes_via_our_own_address_or_a_host_route() -> None:
    links = Links(VX, OWN_MAC, ETH, (IPv4Network("198.51.100.11/32"),))
    near = vxlan_peer("10.5.4.0/24", "198.51.100.14", "02:00:00:00:00:04")
    same = vxlan_peer("10.5.5.0/24", "198.51.100.11", "02:00:00:00:00:05")
    for peer, the_links in ((near, links), (same, LINKS)):
        state = desired_state(OWN, [peer], the_links, direct_routing=True).state
        assert all(r.onlink and r.oif == VX for r in state.routes)
        assert len(state.fdb) == 1


@pytest.mark.parametrize("backend_type", ["", "udp", "host-gw", "VXLAN", "vxlan "])
def test_other_backend_types_are_ignored_and_listed(backend_type: str) -> None:
    other = lease("10.5.6.0/24", "203.0.113.16", backend_type=backend_type,
                  backend_data='{"VtepMAC":"02:00:00:00:00:06"}')  # fmt: skip
    desired = desired_state(OWN, [other], LINKS, direct_routing=False)
    assert desired.state == KernelState()
    assert desired.foreign == (IPv4Network("10.5.6.0/24"),)
    assert desired.skipped == ()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (None, "BackendData is missing"),
        ('"text"', "BackendData is not an object"),
        ("{}", "BackendData has no VtepMAC string"),
        ('{"VtepMAC":7}', "BackendData has no VtepMAC string"),
        ('{"VtepMAC":"zz:00:00:00:00:01"}', "is not a MAC address"),
        ('{"VtepMAC":"02:00:00:00:00"}', "is not a MAC address"),
        ('{"VtepMAC":"01:00:5e:00:00:01"}', "is a multicast address"),
        ('{"VtepMAC":"00:00:00:00:00:00"}', "all zeros"),
        ('{"VtepMAC":"0A:00:00:00:00:01"}', "MAC of this host's own VXLAN device"),
    ],
)
def test_malformed_peer_data_is_skipped_with_a_reason(data: str | None, reason: str) -> None:
    bad = lease("10.5.7.0/24", "203.0.113.17", backend_type="vxlan", backend_data=data)
    desired = desired_state(OWN, [bad, P2], LINKS, direct_routing=False)
    assert desired.state == entries("10.5.2.0/24", "203.0.113.12", "02:00:00:00:00:02")
    (skipped,) = desired.skipped
    assert skipped.subnet == IPv4Network("10.5.7.0/24")
    assert reason in skipped.reason


def test_a_mac_claimed_twice_goes_to_the_lower_subnet() -> None:
    clone = vxlan_peer("10.5.9.0/24", "203.0.113.19", "02:00:00:00:00:02")
    desired = desired_state(OWN, [clone, P2], LINKS, direct_routing=False)
    assert desired.state == entries("10.5.2.0/24", "203.0.113.12", "02:00:00:00:00:02")
    assert [s.subnet for s in desired.skipped] == [IPv4Network("10.5.9.0/24")]


def test_vtep_mac_key_is_case_insensitive_and_go_forms_are_accepted() -> None:
    peer = lease("10.5.2.0/24", "203.0.113.12", backend_type="vxlan",
                 backend_data='{"vtepmac":"0200.0000.00AB"}')  # fmt: skip
    state = desired_state(OWN, [peer], LINKS, direct_routing=False).state
    assert {f.mac for f in state.fdb} == {"02:00:00:00:00:ab"}
    assert parse_mac("02-00-00-00-00-AB") == "02:00:00:00:00:ab"
    with pytest.raises(PeerDataError):
        parse_mac("02:00:00:00:00:ab:cd")


@pytest.mark.parametrize(
    "text", ["02:00:00-00:00:ab", "02-00-00-00-00:ab", "02:00:00:00:00:ab\n", "0200.0000.00ab\n"]
)
def test_a_mac_needs_one_separator_throughout_and_nothing_after_it(text: str) -> None:
    with pytest.raises(PeerDataError):
        parse_mac(text)


@given(
    st.sampled_from(['{"VNI":1,"VtepMAC":"%s"}', '{"VtepMAC":"%s"}', '{"VNI":01,"VtepMAC":"%s"}',
                     '{"VNI":-7,"VtepMAC":"%s"}', '{"vtepmac":"%s"}', '{"VtepMAC":"%s","VNI":1}']),
    st.one_of(st.from_regex(r"[0-9a-fA-F:.-]{0,20}", fullmatch=True),
              st.sampled_from(["02:00:00:00:00:AB", "0200.0000.00ab", "01:00:5e:00:00:01"])),
)  # fmt: skip
def test_backend_data_as_flanneld_writes_it_reads_as_the_json_decoder_does(
    form: str, mac: str
) -> None:
    fast = lease("10.5.2.0/24", "203.0.113.12", backend_type="vxlan", backend_data=form % mac)
    slow = lease("10.5.2.0/24", "203.0.113.12", backend_type="vxlan",
                 backend_data=form % mac + " ")  # fmt: skip
    assert outcome(peer_vtep_mac, fast) == outcome(peer_vtep_mac, slow)


def outcome(function: Callable[[Lease], str], arg: Lease) -> str:
    try:
        return function(arg)
    except PeerDataError as exc:
        return f"error: {exc}"


def test_backend_data_per_lease_format() -> None:
    mac = "0a:1b:2c:3d:4e:5f"
    assert backend_data(1, mac, LeaseFormat.V3) == '{"VNI":1,"VtepMAC":"0a:1b:2c:3d:4e:5f"}'
    assert backend_data(1, mac, LeaseFormat.V2) == '{"VtepMAC":"0a:1b:2c:3d:4e:5f"}'


def test_settings_defaults_and_case_insensitive_keys() -> None:
    assert parse_settings(config(Backend={"Type": "vxlan"})) == VxlanSettings()
    cfg = config(Backend={"type": "vxlan", "vni": 42, "PORT": 4789, "gbp": True,
                          "learning": True, "directrouting": True, "mtu": 9000})  # fmt: skip
    settings = parse_settings(cfg)
    assert settings == VxlanSettings(42, 4789, True, True, True, 9000)
    assert settings.device_name == "flannel.42"
    assert settings.overlay_mtu(1500) == 8950
    assert VxlanSettings().overlay_mtu(1500) == 1450
    assert VxlanSettings().effective_port == 8472


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"VNI": "1"}, "VNI"),
        ({"VNI": 1.5}, "VNI"),
        ({"VNI": 1 << 24}, "VNI"),
        ({"Port": -1}, "Port"),
        ({"Port": True}, "Port"),
        ({"GBP": "yes"}, "GBP"),
        ({"Learning": 1}, "Learning"),
        ({"DirectRouting": "true"}, "DirectRouting"),
        ({"MTU": 100}, "MTU"),
    ],
)
def test_bad_options_name_the_key(options: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=f'"Backend.{key}"'):
        parse_settings(config(Backend={"Type": "vxlan", **options}))


def test_null_options_keep_the_defaults() -> None:
    assert parse_settings(config(Backend={"Type": "vxlan", "VNI": None})) == VxlanSettings()


def test_random_mac_is_locally_administered_unicast() -> None:
    assert random_mac(b"\xff\x01\x02\x03\x04\x05") == "fe:01:02:03:04:05"
    assert random_mac(b"\x00" * 6) == "02:00:00:00:00:00"


ETH0 = ExternalInterface("eth0", ETH, 1500, IPv4Address("10.0.0.5"), IPv4Address("203.0.113.5"))


def test_device_spec_uses_the_public_ip_and_the_kernel_default_port() -> None:
    spec = device_spec(VxlanSettings(), ETH0)
    assert spec.name == "flannel.1"
    assert spec.mtu == 1450
    assert spec.attrs == VxlanAttrs(1, ETH, IPv4Address("203.0.113.5"), 8472, False, False)


def test_an_existing_device_is_reusable_only_with_the_same_vxlan_attributes() -> None:
    spec = device_spec(VxlanSettings(), ETH0)
    same = LinkState(9, "flannel.1", "vxlan", OWN_MAC, 1400, False, spec.attrs)
    assert incompatibility(same, spec) is None
    attrs = VxlanAttrs(2, ETH, IPv4Address("203.0.113.5"), 8472, False, False)
    other_vni = LinkState(9, "flannel.1", "vxlan", OWN_MAC, 1450, True, attrs)
    assert incompatibility(other_vni, spec) is not None
    bridge = LinkState(9, "flannel.1", "bridge", OWN_MAC, 1450, True)
    assert incompatibility(bridge, spec) == "it is a bridge device"
