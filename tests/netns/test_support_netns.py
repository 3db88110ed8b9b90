"""The namespace helpers against the real kernel: connectivity, forwarding and teardown."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from support import procs
from support.netns import Namespace, Topology, TopologyFactory, leftover_namespaces, run

pytestmark = pytest.mark.netns


def _listed_namespaces() -> set[str]:
    return {line.split()[0] for line in run("ip", "netns", "list").stdout.splitlines() if line}


def test_two_hosts_reach_each_other_over_the_bridge(topology: TopologyFactory) -> None:
    topo = topology(2)
    first, second = topo.hosts
    assert (first.ip, second.ip) == ("198.51.100.11", "198.51.100.12")
    assert topo.ping(first, second.ip)
    assert topo.ping(second, first.ip, count=1)


def test_ping_to_an_absent_address_fails_within_its_timeout(topology: TopologyFactory) -> None:
    topo = topology(1)
    assert not topo.ping(topo.hosts[0], "198.51.100.99", count=1, timeout=1)


def test_host_namespaces_forward_but_the_root_namespace_is_untouched(
    topology: TopologyFactory,
) -> None:
    root_forwarding = Path("/proc/sys/net/ipv4/ip_forward").read_text()
    topo = topology(2)
    first, second = topo.hosts
    container = topo.add_container(first, "10.5.1.1/24", "10.5.1.2/24", mtu=1450)
    # The far host routes the container subnet back through the first host, which forwards.
    second.ns.ip("route", "add", "10.5.1.0/24", "via", first.ip)
    assert topo.ping(container.ns, second.ip)
    assert first.ns.run("sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "1"
    assert Path("/proc/sys/net/ipv4/ip_forward").read_text() == root_forwarding


def test_container_link_has_the_requested_mtu(topology: TopologyFactory) -> None:
    topo = topology(1)
    host = topo.hosts[0]
    container = topo.add_container(host, "10.5.1.1/24", "10.5.1.2/24", mtu=1450)
    assert "mtu 1450" in host.ns.ip("link", "show", "docker0").stdout
    assert topo.ping(container.ns, container.gateway, count=1, size=1450 - 28, df=True)
    assert not topo.ping(
        container.ns, container.gateway, count=1, timeout=1, size=1451 - 28, df=True
    )


def test_second_container_shares_docker0(topology: TopologyFactory) -> None:
    topo = topology(1)
    host = topo.hosts[0]
    first = topo.add_container(host, "10.5.1.1/24", "10.5.1.2/24", mtu=1450)
    second = topo.add_container(host, "10.5.1.1/24", "10.5.1.3/24", mtu=1450)
    assert topo.ping(first.ns, second.ip, count=1)


def test_extra_host_at_a_chosen_address(topology: TopologyFactory) -> None:
    topo = topology(1)
    etcd_host = topo.add_host("etcd", "198.51.100.2")
    assert topo.ping(etcd_host, topo.hosts[0].ip, count=1)
    with pytest.raises(ValueError, match="already taken"):
        topo.add_host("dup", "198.51.100.2")


def test_close_stops_processes_and_deletes_namespaces() -> None:
    with Topology(1) as topo:
        sleeper = topo.hosts[0].ns.popen("sleep", "60")
        names = {ns.name for ns in (topo.bridge, topo.hosts[0].ns)}
        assert names <= _listed_namespaces()
    assert sleeper.returncode is not None
    assert sleeper not in procs.running()
    assert not names & _listed_namespaces()
    assert not names & leftover_namespaces()


def test_teardown_runs_when_the_body_fails() -> None:
    with pytest.raises(RuntimeError, match="boom"), Topology(1) as topo:
        names = {topo.bridge.name, topo.hosts[0].ns.name}
        raise RuntimeError("boom")
    assert not names & _listed_namespaces()


def test_namespace_runs_commands_inside_itself() -> None:
    with Namespace("solo") as ns:
        assert ns.name.startswith("pft-solo-")
        links = ns.run("ip", "-o", "link").stdout
        assert links.count("\n") == 1  # only lo
        assert "UP" in ns.ip("link", "show", "lo").stdout
    assert ns.name not in _listed_namespaces()


def test_process_ignoring_sigterm_is_killed() -> None:
    with Namespace("stubborn") as ns:
        proc = ns.popen("sh", "-c", "trap '' TERM; echo ready; sleep 60", stdout=subprocess.PIPE)
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"  # the trap is set
        procs.stop(proc, grace=0.3)
        proc.stdout.close()
        assert proc.returncode == -9


def test_underlay_used_by_the_machine_is_refused() -> None:
    with pytest.raises(ValueError, match="overlaps"):
        Topology(1, underlay="127.0.0.0/24")
