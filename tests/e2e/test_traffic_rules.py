"""End to end: the daemon's FORWARD and masquerade rules on hosts that drop forwarding.

Every host's FORWARD policy is DROP, as Docker leaves it, so containers on three hosts
only reach each other through the vxlan and host-gw data paths because pyflanneld
installs its FORWARD accept rules. With ``--ip-masq`` a listener in an "outside"
namespace on the underlay (it knows no route to the overlay) sees containers as their
host's address, while containers keep their own addresses between themselves. The
rules are checked line for line in ``iptables-save``, restored within the resync
period after being deleted by hand, and replaced on a restart with another network.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.daemon import Daemon, start_daemon
from support.etcd import EtcdServer
from support.netns import Container, Host, Topology, TopologyFactory
from support.ruleprobe import forward_lines, masq_lines, seen_as, start_listener

from pyflannel.backends import BACKENDS

pytestmark = pytest.mark.e2e

PREFIX = "/coreos.com/network"
OUTSIDE = "198.51.100.99"


def config(network: str, backend: str) -> str:
    return f'{{"Network":"{network}","Backend":{{"Type":"{backend}"}}}}'


def masq_lines_declared(net: str, sub: str) -> list[str]:
    """The masquerade chain as iptables-save prints it (iptables 1.8: --random-fully)."""
    return [":FLANNEL-POSTRTG - [0:0]", *masq_lines(net, sub)]


def forward_lines_declared(net: str) -> list[str]:
    return [":FLANNEL-FWD - [0:0]", *forward_lines(net)]


def ours(host: Host, table: str, save: str = "iptables-save") -> list[str]:
    """The lines of ``iptables-save -t table`` that are pyflannel's or in its chains."""
    out = host.ns.run(save, "-t", table).stdout.splitlines()
    return [line for line in out if "flanneld" in line or "FLANNEL-" in line]


def wait_until(check: object, timeout: float, what: str) -> float:
    """Poll ``check()`` until it is true; the seconds it took."""
    assert callable(check)
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout, f"{what} not within {timeout} s"
        time.sleep(0.1)
    return time.monotonic() - started


@dataclass
class Cluster:
    topo: Topology
    server: EtcdServer
    hosts: list[Host]
    outside: Host
    workdir: Path

    def start(self, host: Host, *extra: str, env: dict[str, str] | None = None) -> Daemon:
        index = self.hosts.index(host)
        args = (f"--etcd-endpoints={self.server.endpoints}", "--iface=eth0", *extra)
        return start_daemon(host, self.workdir / f"h{index}", *args, env=env)


@pytest.fixture
def cluster(topology: TopologyFactory, tmp_path: Path) -> Iterator[Cluster]:
    """Three hosts with FORWARD policy DROP, etcd, and an outside host with a listener."""
    topo = topology(3)
    hosts = list(topo.hosts)
    for host in hosts:
        host.ns.run("iptables", "-w", "-P", "FORWARD", "DROP")  # what Docker does
    outside = topo.add_host("out", OUTSIDE)
    start_listener(outside.ns, tmp_path / "outside.log")
    etcd_host = topo.add_host("etcd", str(topo.underlay.network_address + 2))
    with EtcdServer(tmp_path / "etcd", netns=etcd_host.ns, listen_ip=etcd_host.ip) as server:
        yield Cluster(topo, server, hosts, outside, tmp_path)


def add_containers(cluster: Cluster, daemons: list[Daemon]) -> list[Container]:
    containers = []
    for index, (host, daemon) in enumerate(zip(cluster.hosts, daemons, strict=True)):
        env = daemon.wait_ready()
        subnet, mtu = env["FLANNEL_SUBNET"], int(env["FLANNEL_MTU"])
        container = cluster.topo.add_container(host, subnet, subnet.replace(".1/", ".2/"), mtu)
        start_listener(container.ns, cluster.workdir / f"c{index}.log")
        containers.append(container)
    return containers


def data_paths() -> list[str]:
    return [name for name in ("vxlan", "host-gw") if name in BACKENDS]


@pytest.mark.parametrize("backend", data_paths())
def test_containers_talk_across_forward_drop_and_are_masqueraded_outside_only(
    cluster: Cluster, backend: str
) -> None:
    cluster.server.etcdctl("put", f"{PREFIX}/config", config("10.5.0.0/16", backend))
    daemons = [cluster.start(host, "--ip-masq") for host in cluster.hosts]
    containers = add_containers(cluster, daemons)
    for src in containers:
        for dst in containers:
            if src is not dst:
                assert cluster.topo.ping(src.ns, dst.ip, count=1, timeout=10), (
                    f"{src.ip} -> {dst.ip}"
                )
    for container, host in zip(containers, cluster.hosts, strict=True):
        assert seen_as(container.ns, OUTSIDE) == host.ip  # masqueraded to the outside
    c1, c2, c3 = containers
    assert seen_as(c1.ns, c2.ip) == c1.ip  # container addresses kept inside the overlay
    assert seen_as(c3.ns, c1.ip) == c3.ip
    assert all(d.running() for d in daemons)


def test_iptables_save_shows_exactly_flanneld_rules_and_deleted_ones_return(
    cluster: Cluster,
) -> None:
    cluster.server.etcdctl("put", f"{PREFIX}/config", config("10.5.0.0/16", "alloc"))
    host = cluster.hosts[0]
    daemon = cluster.start(host, "--ip-masq", "--iptables-resync=1")
    subnet = daemon.wait_ready()["FLANNEL_SUBNET"].replace(".1/", ".0/")
    expected = {
        "nat": masq_lines_declared("10.5.0.0/16", subnet),
        "filter": forward_lines_declared("10.5.0.0/16"),
    }
    assert {table: ours(host, table) for table in expected} == expected
    assert ":FORWARD DROP [0:0]" in host.ns.run("iptables-save", "-t", "filter").stdout
    sabotage = [
        ("-t", "nat", "-F", "FLANNEL-POSTRTG"),
        ("-t", "filter", "-D", "FLANNEL-FWD", "-d", "10.5.0.0/16", "-m", "comment",
         "--comment", "flanneld forward", "-j", "ACCEPT"),
        ("-t", "nat", "-D", "POSTROUTING", "-m", "comment", "--comment", "flanneld masq",
         "-j", "FLANNEL-POSTRTG"),
    ]  # fmt: skip
    for args in sabotage:
        host.ns.run("iptables", "-w", *args)
        took = wait_until(
            lambda: {table: ours(host, table) for table in expected} == expected, 5, "restore"
        )
        assert took < 3.0  # resync period 1 s
    assert daemon.log().count("Some iptables rules are missing") == len(sabotage)


def test_a_restart_with_another_network_removes_the_old_masquerade_rules(
    cluster: Cluster,
) -> None:
    server, host = cluster.server, cluster.hosts[0]
    server.etcdctl("put", f"{PREFIX}/config", config("10.5.0.0/16", "alloc"))
    daemon = cluster.start(host, "--ip-masq")
    old = daemon.wait_ready()["FLANNEL_SUBNET"].replace(".1/", ".0/")
    assert ours(host, "nat") == masq_lines_declared("10.5.0.0/16", old)
    daemon.stop()
    server.etcdctl("put", f"{PREFIX}/config", config("10.7.0.0/16", "alloc"))
    daemon.start()
    new = daemon.wait_ready()["FLANNEL_SUBNET"].replace(".1/", ".0/")
    assert new.startswith("10.7.")
    assert ours(host, "nat") == masq_lines_declared("10.7.0.0/16", new)
    assert ours(host, "filter") == forward_lines_declared("10.7.0.0/16")
    for table in ("nat", "filter"):
        assert "10.5." not in host.ns.run("iptables-save", "-t", table).stdout


def test_the_rules_follow_the_iptables_command_to_the_legacy_back_end(
    cluster: Cluster, tmp_path: Path
) -> None:
    """``iptables`` pointing at iptables-legacy (Debian's alternative) puts the rules there."""
    bindir = tmp_path / "alternatives"
    bindir.mkdir()
    (bindir / "iptables").symlink_to("/usr/sbin/iptables-legacy")
    host = cluster.hosts[0]
    host.ns.run("iptables-legacy", "-w", "-P", "FORWARD", "DROP")
    cluster.server.etcdctl("put", f"{PREFIX}/config", config("10.5.0.0/16", "alloc"))
    env = {"PATH": f"{bindir}:{os.environ.get('PATH', '')}"}
    daemon = cluster.start(host, "--ip-masq", env=env)
    subnet = daemon.wait_ready()["FLANNEL_SUBNET"].replace(".1/", ".0/")
    assert ours(host, "nat", "iptables-legacy-save") == masq_lines_declared("10.5.0.0/16", subnet)
    assert ours(host, "filter", "iptables-legacy-save") == forward_lines_declared("10.5.0.0/16")
    assert ours(host, "nat", "iptables-nft-save") == []
    assert "(legacy)" in daemon.log()
