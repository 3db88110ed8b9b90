"""How ``pyflannelctl status`` words the differences between the kernel and the leases."""

from __future__ import annotations

from ipaddress import IPv4Interface, IPv4Network

from pyflannel.core.kernelstate import Entry, FdbEntry, KernelState, Neighbour, Route
from pyflannel.ctl.kernelcheck import Device, describe, device_problems, entry_problems, summary

VX = 5
NAMES = {VX: "flannel.1", 2: "eth0"}
MAC = "82:4b:b6:2f:54:4e"
OWN = IPv4Network("10.5.34.0/24")


def peer_entries(net: str, mac: str, public_ip: str) -> KernelState:
    gateway = str(IPv4Network(net).network_address)
    return KernelState(
        frozenset({Route(net, gateway, VX, onlink=True)}),
        frozenset({Neighbour(VX, gateway, mac)}),
        frozenset({FdbEntry(VX, mac, public_ip)}),
    )


def union(*states: KernelState) -> KernelState:
    return KernelState(
        frozenset().union(*(s.routes for s in states)),
        frozenset().union(*(s.neighbours for s in states)),
        frozenset().union(*(s.fdb for s in states)),
    )


def test_entries_read_like_iproute2() -> None:
    state = peer_entries("10.5.72.0/24", MAC, "192.0.2.2")
    entries: list[Entry] = [*state.routes, *state.neighbours, *state.fdb]
    assert sorted(describe(e, NAMES) for e in entries) == [
        f"FDB entry {MAC} dst 192.0.2.2 dev flannel.1",
        f"neighbour 10.5.72.0 lladdr {MAC} dev flannel.1",
        "route 10.5.72.0/24 via 10.5.72.0 dev flannel.1 onlink",
    ]
    assert describe(Route("10.5.0.0/16", "", 9), NAMES) == "route 10.5.0.0/16 dev #9"


def test_matching_state_has_no_problems() -> None:
    state = peer_entries("10.5.72.0/24", MAC, "192.0.2.2")
    assert entry_problems(state, state, NAMES) == []


def test_missing_wrong_and_stale_entries_are_named() -> None:
    wanted = peer_entries("10.5.72.0/24", MAC, "192.0.2.2")
    moved = peer_entries("10.5.72.0/24", MAC, "192.0.2.9")  # the peer's VTEP moved
    stale = peer_entries("10.5.99.0/24", "02:00:00:00:00:99", "192.0.2.99")
    actual = union(KernelState(moved.routes, moved.neighbours, moved.fdb), stale)
    problems = entry_problems(wanted, actual, NAMES)
    assert sorted(problems) == [
        "stale FDB entry 02:00:00:00:00:99 dst 192.0.2.99 dev flannel.1: no lease calls for it",
        "stale neighbour 10.5.99.0 lladdr 02:00:00:00:00:99 dev flannel.1: no lease calls for it",
        "stale route 10.5.99.0/24 via 10.5.99.0 dev flannel.1 onlink: no lease calls for it",
        f"wrong FDB entry {MAC} dst 192.0.2.9 dev flannel.1: the leases call for"
        f" FDB entry {MAC} dst 192.0.2.2 dev flannel.1",
    ]
    empty = KernelState()
    assert len(entry_problems(wanted, empty, NAMES)) == 3
    assert all(p.startswith("missing ") for p in entry_problems(wanted, empty, NAMES))


def test_entries_the_kernel_made_itself_are_not_differences() -> None:
    learned = KernelState(
        neighbours=frozenset({Neighbour(VX, "10.5.7.0", MAC, permanent=False)}),
        fdb=frozenset({FdbEntry(VX, MAC, "192.0.2.7", permanent=False)}),
    )
    assert entry_problems(KernelState(), learned, NAMES) == []


def test_device_problems() -> None:
    good = Device("flannel.1", "vxlan", True, 1450, (IPv4Interface("10.5.34.0/32"),), 1)
    assert device_problems(good, "flannel.1", kind="vxlan", mtu=1450, own=OWN) == []
    bad = Device("flannel.1", "bridge", False, 1500, (IPv4Interface("10.5.1.0/32"),))
    assert device_problems(bad, "flannel.1", kind="vxlan", mtu=1450, own=OWN) == [
        "device flannel.1 is of kind bridge, not vxlan",
        "device flannel.1 is down (ip link set flannel.1 up)",
        "device flannel.1 has MTU 1500 but subnet.env says 1450",
        "device flannel.1 lacks the address 10.5.34.0/32 (has: 10.5.1.0/32)",
    ]
    (missing,) = device_problems(None, "flannel.1", kind="vxlan", mtu=None, own=OWN)
    assert missing.startswith("device flannel.1 does not exist")


def test_summary_line() -> None:
    device = Device("flannel.1", "vxlan", True, 1450, (IPv4Interface("10.5.34.0/32"),))
    wanted = peer_entries("10.5.72.0/24", MAC, "192.0.2.2")
    assert summary(device, wanted, 0) == (
        "kernel: flannel.1 up, mtu 1450, 10.5.34.0/32; 1 route, 1 neighbour, 1 FDB entry"
        " as the leases call for"
    )
    assert summary(None, KernelState(), 2) == "kernel: no entries needed (2 difference(s))"
