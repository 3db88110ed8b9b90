"""The traffic-rule keeper against real iptables, both back ends, inside test namespaces.

The keeper runs in a thread that has joined the host namespace (setns changes only the
calling thread, and the iptables processes it forks inherit that namespace). The back
end is chosen the way the daemon chooses it: by what the ``iptables`` command on the
search path is, here a symlink in a directory of the test pointing at
``iptables-nft`` or ``iptables-legacy`` (what Debian's alternatives do).

The traffic test wires three hosts by hand (host-gw style routes, no daemon), leaves
the FORWARD policy at DROP as Docker does, and shows the FORWARD rules letting
container traffic through and the masquerade rules hiding containers from the outside
world but not from each other.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Awaitable, Callable, Iterator
from ipaddress import IPv4Network
from pathlib import Path
from typing import TypeVar

import pytest
from support import netns, nsjoin
from support.netns import Host, Namespace, Topology, TopologyFactory
from support.ruleprobe import forward_lines, masq_lines, seen_as, start_listener

from pyflannel import aio
from pyflannel.errors import ConfigError
from pyflannel.options import Options
from pyflannel.trafficrules import TrafficRules, start_traffic_rules
from pyflannel.trafficrules.iptables import run_command

pytestmark = pytest.mark.netns
T = TypeVar("T")

NET = IPv4Network("10.5.0.0/16")
SUB = IPv4Network("10.5.34.0/24")


class Box:
    """One host namespace and the iptables back end its ``iptables`` command points at."""

    def __init__(self, ns: Namespace, variant: str, bindir: Path) -> None:
        self.ns = ns
        self.variant = variant
        bindir.mkdir(parents=True, exist_ok=True)
        (bindir / "iptables").symlink_to(f"/usr/sbin/iptables-{variant}")
        # The search path: our alternative first, then the real binaries by their own names.
        self.search_path = f"{bindir}:/usr/sbin:/sbin"

    def iptables(self, *args: str, check: bool = True) -> str:
        return self.ns.run(f"iptables-{self.variant}", "-w", *args, check=check).stdout

    def save(self, table: str) -> list[str]:
        out = self.ns.run(f"iptables-{self.variant}-save", "-t", table).stdout
        return [line for line in out.splitlines() if line and not line.startswith("#")]

    def ours(self, table: str) -> list[str]:
        """Every saved rule line that is pyflannel's, plus any other line of our chains."""
        return [line for line in self.save(table) if "flanneld" in line or "FLANNEL-" in line]

    def run(self, make: Callable[[], Awaitable[T]], timeout: float = 60.0) -> T:
        """Run ``make()`` to completion on an event loop in a thread inside the namespace."""
        return nsjoin.run_in(self.ns.name, lambda: _call(make), timeout=timeout)

    def start(self, options: Options, net: IPv4Network, sub: IPv4Network,
              previous: dict[str, str] | None = None) -> TrafficRules:  # fmt: skip
        return self.run(
            lambda: start_traffic_rules(
                options, net, sub, previous or {}, search_path=self.search_path
            )
        )


async def _call(make: Callable[[], Awaitable[T]]) -> T:
    return await make()


def needs(variant: str) -> None:
    if shutil.which(f"iptables-{variant}-restore") is None:
        pytest.skip(f"iptables-{variant}-restore is not installed")


@pytest.fixture(params=["nft", "legacy"])
def box(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Box]:
    """A fresh namespace whose FORWARD policy is DROP and which already has Docker's jump."""
    netns.skip_unless_available()
    variant: str = request.param
    needs(variant)
    with Namespace("ipt") as ns:
        host = Box(ns, variant, tmp_path / "bin")
        host.iptables("-P", "FORWARD", "DROP")
        host.iptables("-N", "DOCKER-USER")
        host.iptables("-A", "FORWARD", "-j", "DOCKER-USER")
        yield host


MASQ_ON = Options(ip_masq=True)


def test_bootstrap_installs_exactly_the_v028_rules_after_what_was_there(box: Box) -> None:
    box.start(MASQ_ON, NET, SUB)
    assert box.ours("nat") == [":FLANNEL-POSTRTG - [0:0]", *masq_lines(str(NET), str(SUB))]
    assert box.ours("filter") == [":FLANNEL-FWD - [0:0]", *forward_lines(str(NET))]
    filter_table = box.save("filter")
    assert ":FORWARD DROP [0:0]" in filter_table  # the policy is Docker's business
    forward_chain = [line for line in filter_table if line.startswith("-A FORWARD")]
    assert forward_chain == ["-A FORWARD -j DOCKER-USER", forward_lines(str(NET))[0]]


def test_a_second_start_leaves_one_copy_of_each_rule(box: Box) -> None:
    box.start(MASQ_ON, NET, SUB)
    previous = {"FLANNEL_NETWORK": str(NET), "FLANNEL_SUBNET": "10.5.34.1/24",
                "FLANNEL_IPMASQ": "true"}  # fmt: skip
    box.start(MASQ_ON, NET, SUB, previous)
    assert box.ours("nat") == [":FLANNEL-POSTRTG - [0:0]", *masq_lines(str(NET), str(SUB))]
    assert box.ours("filter") == [":FLANNEL-FWD - [0:0]", *forward_lines(str(NET))]


def test_random_fully_can_be_disabled_and_forward_rules_turned_off(box: Box) -> None:
    options = Options(ip_masq=True, ip_masq_fully_random_disable=True, iptables_forward_rules=False)
    box.start(options, NET, SUB)
    assert box.ours("nat")[1:] == masq_lines(str(NET), str(SUB), random_fully=False)
    assert box.ours("filter") == []


def test_restart_with_another_network_removes_the_old_masquerade_rules(box: Box) -> None:
    box.start(MASQ_ON, IPv4Network("10.9.0.0/16"), IPv4Network("10.9.7.0/24"))
    # flanneld v0.10 rules for the old values, as an upgraded host would still have them.
    for spec in (["-s", "10.9.0.0/16", "-d", "10.9.0.0/16", "-j", "RETURN"],
                 ["-s", "10.9.0.0/16", "!", "-d", "224.0.0.0/4", "-j", "MASQUERADE"]):  # fmt: skip
        box.iptables("-t", "nat", "-A", "POSTROUTING", *spec)
    previous = {"FLANNEL_NETWORK": "10.9.0.0/16", "FLANNEL_SUBNET": "10.9.7.1/24",
                "FLANNEL_MTU": "1450", "FLANNEL_IPMASQ": "true"}  # fmt: skip
    box.start(MASQ_ON, NET, SUB, previous)
    nat = box.save("nat")
    assert not any("10.9." in line for line in nat), nat
    assert box.ours("nat") == [":FLANNEL-POSTRTG - [0:0]", *masq_lines(str(NET), str(SUB))]
    filter_table = box.save("filter")
    assert not any("10.9." in line for line in filter_table), filter_table


def test_turning_masquerade_off_removes_the_rules_of_the_earlier_run(box: Box) -> None:
    box.start(MASQ_ON, NET, SUB)
    previous = {"FLANNEL_NETWORK": str(NET), "FLANNEL_SUBNET": "10.5.34.1/24",
                "FLANNEL_IPMASQ": "true"}  # fmt: skip
    box.start(Options(), NET, SUB, previous)
    assert box.ours("nat") == [":FLANNEL-POSTRTG - [0:0]"]  # the empty chain stays
    assert box.ours("filter") == [":FLANNEL-FWD - [0:0]", *forward_lines(str(NET))]


def test_rules_deleted_by_hand_are_restored_and_each_repair_logged_once(
    box: Box, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pyflannel.trafficrules")
    rules = box.start(Options(ip_masq=True, iptables_resync=1), NET, SUB)
    expected_nat, expected_filter = box.ours("nat"), box.ours("filter")
    sabotage = [
        ("-t", "nat", "-D", "FLANNEL-POSTRTG", "-s", str(NET), "!", "-d", "224.0.0.0/4",
         "-m", "comment", "--comment", "flanneld masq", "-j", "MASQUERADE", "--random-fully"),
        ("-t", "filter", "-F", "FLANNEL-FWD"),
        ("-t", "filter", "-D", "FORWARD", "-m", "comment", "--comment", "flanneld forward",
         "-j", "FLANNEL-FWD"),
    ]  # fmt: skip

    async def scenario() -> list[float]:
        keeper = aio.spawn(rules.run(), name="traffic-rules")
        delays = []
        try:
            for args in sabotage:
                await run_command([f"iptables-{box.variant}", "-w", *args])
                started = time.monotonic()
                while box.ours("nat") != expected_nat or box.ours("filter") != expected_filter:
                    assert time.monotonic() - started < 5.0, "rules not restored within 5 s"
                    await asyncio.sleep(0.1)
                delays.append(time.monotonic() - started)
        finally:
            keeper.cancel()
        return delays

    delays = box.run(scenario)
    assert max(delays) < 2.5  # resync period 1 s, plus the check itself
    repairs = [m for m in caplog.messages if m.startswith("Some iptables rules are missing")]
    assert len(repairs) == 3, repairs
    assert "FLANNEL-FWD" in repairs[1] and "flanneld forward" in repairs[2]


def test_nothing_changes_while_the_rules_are_in_place(box: Box) -> None:
    rules = box.start(MASQ_ON, NET, SUB)
    assert box.run(rules.ensure) == ()


def test_a_drop_policy_in_the_other_back_end_is_warned_about(
    box: Box, caplog: pytest.LogCaptureFixture
) -> None:
    other = "legacy" if box.variant == "nft" else "nft"
    box.start(Options(), NET, SUB)
    assert not [m for m in caplog.messages if "has policy DROP" in m]
    box.ns.run(f"iptables-{other}", "-w", "-P", "FORWARD", "DROP")
    box.start(Options(), NET, SUB)
    warnings = [m for m in caplog.messages if "has policy DROP" in m]
    mode = {"nft": "nf_tables", "legacy": "legacy"}
    assert warnings == [
        f"the FORWARD chain of the {mode[other]} iptables back end has policy DROP, but the "
        f"rules go to the {mode[box.variant]} back end (the one the iptables command uses): "
        "forwarded container traffic is still dropped there; point the iptables alternative "
        "at the back end Docker uses, or accept the overlay network in the other back end"
    ]


def test_missing_iptables_is_a_clear_error_only_when_rules_are_wanted(tmp_path: Path) -> None:
    empty = str(tmp_path)

    async def start(options: Options) -> TrafficRules:
        return await start_traffic_rules(options, NET, SUB, {}, search_path=empty)

    with pytest.raises(ConfigError, match=r"iptables is needed for .*--iptables-forward-rules"):
        asyncio.run(start(Options()))
    with pytest.raises(ConfigError, match=r"--ip-masq \(masquerade rules\)"):
        asyncio.run(start(Options(ip_masq=True, iptables_forward_rules=False)))
    idle = asyncio.run(start(Options(iptables_forward_rules=False)))
    assert idle.desired == {}
    asyncio.run(idle.run())  # returns at once: nothing to keep


# --- traffic -----------------------------------------------------------------------

OUTSIDE = "198.51.100.99"


@pytest.fixture(params=["nft", "legacy"])
def wired(
    request: pytest.FixtureRequest, topology: TopologyFactory, tmp_path: Path
) -> tuple[Topology, list[Box], Host]:
    """Three hosts with containers, routes between subnets, FORWARD DROP; an outside host."""
    variant: str = request.param
    needs(variant)
    topo = topology(3)
    boxes = []
    for index, host in enumerate(topo.hosts, start=1):
        topo.add_container(host, f"10.5.{index}.1/24", f"10.5.{index}.2/24", 1500)
        for other, peer in enumerate(topo.hosts, start=1):
            if peer is not host:
                host.ns.ip("route", "add", f"10.5.{other}.0/24", "via", peer.ip, "dev", "eth0")
        box = Box(host.ns, variant, tmp_path / f"bin{index}")
        box.iptables("-P", "FORWARD", "DROP")
        boxes.append(box)
    outside = topo.add_host("out", OUTSIDE)  # knows nothing of 10.5.0.0/16
    start_listener(outside.ns, tmp_path / "outside.log")
    for index, container in enumerate(topo.containers):
        start_listener(container.ns, tmp_path / f"c{index}.log")
    return topo, boxes, outside


def test_forward_drop_blocks_containers_until_the_rules_are_in(
    wired: tuple[Topology, list[Box], Host],
) -> None:
    topo, boxes, _ = wired
    c1, c2, c3 = topo.containers
    assert not topo.ping(c1.ns, c2.ip, count=1, timeout=1)
    for index, box in enumerate(boxes, start=1):
        box.start(Options(), NET, IPv4Network(f"10.5.{index}.0/24"))
    for src, dst in ((c1, c2), (c2, c3), (c3, c1)):
        assert topo.ping(src.ns, dst.ip, count=1, timeout=5), f"{src.ip} -> {dst.ip}"


def test_masquerade_hides_containers_from_the_outside_only(
    wired: tuple[Topology, list[Box], Host],
) -> None:
    topo, boxes, _ = wired
    c1, c2, _ = topo.containers
    # Without masquerading the outside host sees 10.5.1.2 and cannot answer it.
    boxes[0].start(Options(), NET, IPv4Network("10.5.1.0/24"))
    boxes[1].start(Options(), NET, IPv4Network("10.5.2.0/24"))
    assert seen_as(c1.ns, OUTSIDE) == ""
    boxes[0].start(MASQ_ON, NET, IPv4Network("10.5.1.0/24"))
    boxes[1].start(MASQ_ON, NET, IPv4Network("10.5.2.0/24"))
    assert seen_as(c1.ns, OUTSIDE) == topo.hosts[0].ip
    assert seen_as(c1.ns, c2.ip) == c1.ip  # container to container keeps its address
    assert seen_as(c2.ns, c1.ip) == c2.ip
