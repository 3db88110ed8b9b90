"""End to end: three pyflanneld hosts with the vxlan backend, etcd in a namespace.

Covers the lease data and the MTU, the device and every kernel entry on every host,
traffic between containers on all hosts (including a full-size packet with DF
set), the removal of a host's lease, and a crash and restart that keeps the subnet
and the VTEP MAC without losing a packet of a ping running across it.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support.daemon import Daemon, start_daemon
from support.etcd import EtcdServer
from support.netns import Container, Host, Topology, TopologyFactory

pytestmark = pytest.mark.e2e

PREFIX = "/coreos.com/network"
CONFIG = '{"Network":"10.3.0.0/16","Backend":{"Type":"vxlan"}}'
MTU = 1450


@dataclass
class Node:
    """A host with its daemon, lease and container."""

    host: Host
    daemon: Daemon
    subnet: str  # 10.3.X.0/24
    mac: str
    container: Container | None = None

    @property
    def gateway(self) -> str:
        return self.subnet.split("/")[0]


@pytest.fixture
def cluster(topology: TopologyFactory, tmp_path: Path) -> Iterator[tuple[Topology, EtcdServer]]:
    """Three hosts and an etcd namespace on one underlay; the vxlan config written."""
    topo = topology(3)
    etcd_host = topo.add_host("etcd", str(topo.underlay.network_address + 2))
    with EtcdServer(tmp_path / "etcd", netns=etcd_host.ns, listen_ip=etcd_host.ip) as server:
        server.etcdctl("put", f"{PREFIX}/config", CONFIG)
        yield topo, server


def flags(server: EtcdServer) -> tuple[str, ...]:
    return (f"--etcd-endpoints={server.endpoints}", "--iface=eth0")


def ip_json(host: Host, *args: str) -> Any:
    return json.loads(host.ns.ip("-j", *args).stdout or "[]")


def lease_value(server: EtcdServer, subnet: str) -> str:
    key = f"{PREFIX}/subnets/{subnet.replace('/', '-')}"
    return server.etcdctl("get", key, "--print-value-only").stdout.strip()


def start_node(topo: Topology, server: EtcdServer, tmp_path: Path, index: int) -> Node:
    host = topo.hosts[index]
    daemon = start_daemon(host, tmp_path / f"h{index}", *flags(server))
    env = daemon.wait_ready()
    assert env["FLANNEL_MTU"] == str(MTU)
    subnet = env["FLANNEL_SUBNET"].replace(".1/24", ".0/24")
    (link,) = ip_json(host, "link", "show", "flannel.1")
    return Node(host, daemon, subnet, link["address"])


def overlay_view(host: Host) -> tuple[set[str], set[str], set[str]]:
    """Every IPv4 route, and the neighbours and FDB entries of flannel.1, as text lines."""
    routes = set(host.ns.ip("-4", "route", "show").stdout.split("\n")) - {""}
    neigh = set(host.ns.ip("neigh", "show", "dev", "flannel.1").stdout.split("\n")) - {""}
    fdb_out = host.ns.run("bridge", "fdb", "show", "dev", "flannel.1").stdout
    return (
        {" ".join(r.split()) for r in routes},
        {" ".join(n.split()) for n in neigh},
        {" ".join(f.split()) for f in fdb_out.split("\n") if f},
    )


def expected_view(me: Node, peers: list[Node]) -> tuple[set[str], set[str], set[str]]:
    """What flanneld would leave on ``me`` (docker0's route only once it exists)."""
    routes = {f"198.51.100.0/24 dev eth0 proto kernel scope link src {me.host.ip}"}
    if me.container is not None:
        gw = me.gateway.rsplit(".", 1)[0] + ".1"
        routes.add(f"{me.subnet} dev docker0 proto kernel scope link src {gw}")
    routes |= {f"{p.subnet} via {p.gateway} dev flannel.1 onlink" for p in peers}
    neigh = {f"{p.gateway} lladdr {p.mac} PERMANENT" for p in peers}
    fdb = {f"{p.mac} dst {p.host.ip} self permanent" for p in peers}
    return routes, neigh, fdb


def wait_until(check: Callable[[], bool], timeout: float, what: Callable[[], str]) -> float:
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout, f"not within {timeout} s: {what()}"
        time.sleep(0.02)
    return time.monotonic() - started


def wait_view(me: Node, peers: list[Node], timeout: float = 10.0) -> float:
    want = expected_view(me, peers)
    return wait_until(
        lambda: overlay_view(me.host) == want,
        timeout,
        lambda: f"{me.host.ip}: have {overlay_view(me.host)}, want {want}\n{me.daemon.log_tail()}",
    )


def others(nodes: list[Node], me: Node) -> list[Node]:
    return [n for n in nodes if n is not me]


def add_container(topo: Topology, node: Node) -> Container:
    gw = node.gateway.rsplit(".", 1)[0]
    node.container = topo.add_container(node.host, f"{gw}.1/24", f"{gw}.2/24", MTU)
    return node.container


def test_three_hosts_form_a_full_mesh(cluster: tuple[Topology, EtcdServer], tmp_path: Path) -> None:
    topo, server = cluster
    nodes = [start_node(topo, server, tmp_path, i) for i in range(3)]
    for node in nodes:
        assert lease_value(server, node.subnet) == (
            f'{{"PublicIP":"{node.host.ip}","PublicIPv6":null,"BackendType":"vxlan",'
            f'"BackendData":{{"VNI":1,"VtepMAC":"{node.mac}"}}}}'
        )
        detail = node.host.ns.ip("-d", "link", "show", "flannel.1").stdout
        assert "mtu 1450" in detail
        assert re.search(
            rf"vxlan id 1 local {node.host.ip} dev eth0 .*dstport 8472 nolearning", detail
        )
        add_container(topo, node)
    for node in nodes:
        wait_view(node, others(nodes, node))
    for src in nodes:
        for dst in others(nodes, src):
            assert src.container and dst.container
            assert topo.ping(src.container.ns, dst.container.ip, count=1, timeout=5)
            # The largest packet the overlay carries, with DF: exactly FLANNEL_MTU bytes.
            assert topo.ping(src.container.ns, dst.container.ip, count=1, size=MTU - 28, df=True)


def test_a_removed_lease_goes_everywhere_within_a_second(
    cluster: tuple[Topology, EtcdServer], tmp_path: Path
) -> None:
    topo, server = cluster
    nodes = [start_node(topo, server, tmp_path, i) for i in range(3)]
    for node in nodes:
        wait_view(node, others(nodes, node))
    gone = nodes[2]
    server.etcdctl("del", f"{PREFIX}/subnets/{gone.subnet.replace('/', '-')}")
    for node in nodes[:2]:
        assert wait_view(node, [n for n in nodes[:2] if n is not node], timeout=5) < 1.0
    assert gone.daemon.wait_exit(15) == 0


def test_a_crash_and_restart_keeps_subnet_and_mac_and_loses_no_packet(
    cluster: tuple[Topology, EtcdServer], tmp_path: Path
) -> None:
    topo, server = cluster
    nodes = [start_node(topo, server, tmp_path, i) for i in range(2)]
    src, dst = (add_container(topo, node) for node in nodes)
    for node in nodes:
        wait_view(node, others(nodes, node))
    assert topo.ping(src.ns, dst.ip, count=1, timeout=5)
    pinger = src.ns.popen(
        "ping", "-n", "-q", "-i", "0.01", "-c", "300", "-w", "20", dst.ip,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    time.sleep(0.5)
    crashed = nodes[1]
    crashed.daemon.kill()
    restarted = crashed.daemon.start()
    env = restarted.wait_ready()
    assert env["FLANNEL_SUBNET"] == crashed.gateway.rsplit(".", 1)[0] + ".1/24"
    (link,) = ip_json(crashed.host, "link", "show", "flannel.1")
    assert link["address"] == crashed.mac
    out, _ = pinger.communicate(timeout=30)
    assert " 300 received, 0% packet loss" in out, out
    for node in nodes:
        wait_view(node, others(nodes, node))
    assert lease_value(server, crashed.subnet).endswith(f'"VtepMAC":"{crashed.mac}"}}}}')
