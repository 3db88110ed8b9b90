"""End to end: three pyflanneld hosts with the udp backend, etcd in a namespace.

Covers the lease value (``PublicIP`` only), FLANNEL_MTU, flannel0 (address, MTU, the
Network route), traffic between containers on all three hosts with both data paths, a
DF ping at exactly the overlay MTU, and a lease deleted in etcd taking its route along.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.daemon import Daemon, start_daemon
from support.etcd import EtcdServer
from support.netns import Topology, TopologyFactory
from support.ruleprobe import CONNECT

pytestmark = pytest.mark.e2e

PREFIX = "/coreos.com/network"
NETWORK = "10.4.0.0/16"
MTU = 1500 - 28


@pytest.fixture
def cluster(topology: TopologyFactory, tmp_path: Path) -> Iterator[tuple[Topology, EtcdServer]]:
    """Three hosts and an etcd namespace on one underlay."""
    topo = topology(3)
    etcd_host = topo.add_host("etcd", str(topo.underlay.network_address + 2))
    with EtcdServer(tmp_path / "etcd", netns=etcd_host.ns, listen_ip=etcd_host.ip) as server:
        yield topo, server


def start_cluster(
    topo: Topology, server: EtcdServer, tmp_path: Path, backend: dict[str, object]
) -> list[Daemon]:
    config = {"Network": NETWORK, "Backend": backend}
    server.etcdctl("put", f"{PREFIX}/config", json.dumps(config))
    args = (f"--etcd-endpoints={server.endpoints}", "--iface=eth0")
    daemons = [start_daemon(h, tmp_path / f"h{i}", *args) for i, h in enumerate(topo.hosts[:3])]
    for index, daemon in enumerate(daemons):
        subnet = daemon.wait_ready()["FLANNEL_SUBNET"]
        topo.add_container(topo.hosts[index], subnet, subnet.replace(".1/24", ".2/24"), MTU)
        deadline = time.monotonic() + 15
        while NETWORK not in topo.hosts[index].ns.ip("route", "show", "dev", "flannel0").stdout:
            assert time.monotonic() < deadline, daemon.log_tail()
            time.sleep(0.1)
    return daemons


@pytest.mark.parametrize("offload", [True, False], ids=["offload", "plain"])
def test_three_hosts_reach_each_other_over_flannel0(
    cluster: tuple[Topology, EtcdServer], tmp_path: Path, offload: bool
) -> None:
    topo, server = cluster
    daemons = start_cluster(topo, server, tmp_path, {"Type": "udp", "Offload": offload})
    for index, daemon in enumerate(daemons):
        env = daemon.wait_ready()
        assert env["FLANNEL_MTU"] == str(MTU)
        assert env["FLANNEL_NETWORK"] == NETWORK
        subnet = env["FLANNEL_SUBNET"]
        key = f"{PREFIX}/subnets/{subnet.replace('.1/24', '.0-24')}"
        value = server.etcdctl("get", key, "--print-value-only").stdout.strip()
        assert value == f'{{"PublicIP":"{topo.hosts[index].ip}","PublicIPv6":null}}'
        link = topo.hosts[index].ns.ip("-4", "addr", "show", "dev", "flannel0").stdout
        assert f"mtu {MTU}" in link
        assert f"inet {subnet.replace('.1/24', '.0/32')}" in link
    for src in topo.containers:
        for dst in topo.containers:
            if src is not dst:
                assert topo.ping(src.ns, dst.ip, count=1, timeout=10), f"{src.ip} -> {dst.ip}"
    first, *others = topo.containers
    for dst in others:
        assert topo.ping(first.ns, dst.ip, count=2, size=MTU - 28, df=True)
        assert topo.ping(topo.hosts[0], dst.ip, count=2, size=MTU - 28, df=True)
        assert not topo.ping(topo.hosts[0], dst.ip, count=1, timeout=1, size=MTU - 27, df=True)


def test_a_deleted_lease_takes_its_route_along(
    cluster: tuple[Topology, EtcdServer], tmp_path: Path
) -> None:
    topo, server = cluster
    daemons = start_cluster(topo, server, tmp_path, {"Type": "udp"})
    first, _second, third = topo.containers
    assert topo.ping(first.ns, third.ip, count=1, timeout=10)
    gone = daemons[2].wait_ready()["FLANNEL_SUBNET"].replace(".1/24", ".0")
    daemons[2].stop()
    server.etcdctl("del", f"{PREFIX}/subnets/{gone}-24")
    daemons[0].wait_log(f"Subnet removed: {gone}/24")
    out = first.ns.run(sys.executable, "-c", CONNECT, third.ip, timeout=15).stdout.split()
    assert out[0] == "101", out  # ENETUNREACH at once: no peer holds that subnet now
    assert topo.ping(first.ns, topo.containers[1].ip, count=1, timeout=5)
