"""End to end: the classic flannel + Docker walkthrough on a cluster set up with the v2 API.

Two hosts, each running a member of a two-member etcd cluster with ``--enable-v2``; the
network config is written with ``ETCDCTL_API=2 etcdctl set`` from a file, and both hosts
start pyflanneld with exactly the walkthrough's flags (no ``--etcd-api``: the daemon
finds the config in the v2 store by itself). The leases must come out byte for byte as
flanneld v0.10 writes them, so v0.10 hosts could join the same cluster.
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.daemon import Daemon, start_daemon
from support.etcd import EtcdCluster
from support.netns import Host, Topology, TopologyFactory

pytestmark = pytest.mark.e2e

PREFIX = "/docker-flannel/network"
NETWORK = ipaddress.IPv4Network("10.3.0.0/16")


def config(backend: str) -> str:
    return f'{{"Network":"10.3.0.0/16","SubnetLen":24,"Backend":{{"Type":"{backend}"}}}}'


@pytest.fixture
def hosts(topology: TopologyFactory, tmp_path: Path) -> Iterator[tuple[Topology, EtcdCluster]]:
    """Two hosts with an etcd member each (v2 API on), as in the walkthrough."""
    topo = topology(2)
    with EtcdCluster(tmp_path / "etcd", hosts=topo.hosts, enable_v2=True) as cluster:
        yield topo, cluster


def write_config(cluster: EtcdCluster, tmp_path: Path, backend: str) -> None:
    """``ETCDCTL_API=2 etcdctl set <prefix>/config < flannel-config.json``."""
    path = tmp_path / "flannel-config.json"
    path.write_text(config(backend))
    cluster.etcdctl("set", f"{PREFIX}/config", input=path.read_text(), api=2)


def start_hosts(topo: Topology, cluster: EtcdCluster, tmp_path: Path) -> list[Daemon]:
    """pyflanneld on both hosts with the walkthrough's exact flag line."""
    endpoints = ",".join(f"http://{host.ip}:2379" for host in topo.hosts)
    assert endpoints == cluster.endpoints
    flags = (f"--etcd-endpoints={endpoints}", f"-etcd-prefix={PREFIX}", "--iface=eth0")
    return [start_daemon(h, tmp_path / f"h{i}", *flags) for i, h in enumerate(topo.hosts)]


def v2_leases(cluster: EtcdCluster) -> dict[str, str]:
    """Every lease key and value, read back with ``ETCDCTL_API=2 etcdctl``."""
    keys = cluster.etcdctl("ls", f"{PREFIX}/subnets", api=2).stdout.split()
    return {k: cluster.etcdctl("get", k, api=2).stdout.removesuffix("\n") for k in keys}


def ttl(cluster: EtcdCluster, key: str) -> int:
    out = cluster.etcdctl("-o", "extended", "get", key, api=2).stdout
    return int(next(line for line in out.splitlines() if line.startswith("TTL:")).split()[1])


def own_subnet(env: dict[str, str]) -> ipaddress.IPv4Network:
    subnet = ipaddress.IPv4Interface(env["FLANNEL_SUBNET"]).network
    assert subnet.prefixlen == 24 and subnet.subnet_of(NETWORK)
    return subnet


def vtep_mac(host: Host) -> str:
    link = json.loads(host.ns.ip("-j", "link", "show", "flannel.1").stdout)
    return str(link[0]["address"])


def test_classic_walkthrough_with_vxlan(
    hosts: tuple[Topology, EtcdCluster], tmp_path: Path
) -> None:
    topo, cluster = hosts
    write_config(cluster, tmp_path, "vxlan")
    daemons = start_hosts(topo, cluster, tmp_path)
    envs = [daemon.wait_ready() for daemon in daemons]
    subnets = [own_subnet(env) for env in envs]
    assert subnets[0] != subnets[1]
    assert all(env["FLANNEL_MTU"] == "1450" for env in envs)
    leases = v2_leases(cluster)
    for daemon, subnet in zip(daemons, subnets, strict=True):
        key = f"{PREFIX}/subnets/{subnet.network_address}-24"
        assert leases[key] == (
            f'{{"PublicIP":"{daemon.host.ip}","BackendType":"vxlan",'
            f'"BackendData":{{"VtepMAC":"{vtep_mac(daemon.host)}"}}}}'
        )
        assert 86000 < ttl(cluster, key) <= 86400
        assert "using the etcd v2 API" in daemon.log()
    containers = [
        topo.add_container(h, env["FLANNEL_SUBNET"], f"{s.network_address + 2}/24", 1450)
        for h, env, s in zip(topo.hosts, envs, subnets, strict=True)
    ]
    assert topo.ping(containers[0].ns, containers[1].ip, count=3, timeout=10)
    assert topo.ping(containers[1].ns, containers[0].ip, count=3, timeout=10)


def test_leases_are_flanneld_v0_10_bytes_with_alloc(
    hosts: tuple[Topology, EtcdCluster], tmp_path: Path
) -> None:
    topo, cluster = hosts
    write_config(cluster, tmp_path, "alloc")
    daemons = start_hosts(topo, cluster, tmp_path)
    subnets = [own_subnet(daemon.wait_ready()) for daemon in daemons]
    assert subnets[0] != subnets[1]
    leases = v2_leases(cluster)
    assert leases == {
        f"{PREFIX}/subnets/{s.network_address}-24": f'{{"PublicIP":"{d.host.ip}"}}'
        for d, s in zip(daemons, subnets, strict=True)
    }
    for daemon in daemons:
        assert "using the etcd v2 API" in daemon.log()
    # A restart finds its lease again in the v2 store, by public IP.
    daemons[0].kill()
    daemons[0].subnet_file.unlink()
    daemons[0].start()
    assert own_subnet(daemons[0].wait_ready()) == subnets[0]
    # Deleting the lease with the v2 API revokes it: the daemon stops with status 0.
    cluster.etcdctl("rm", f"{PREFIX}/subnets/{subnets[1].network_address}-24", api=2)
    assert daemons[1].wait_exit(15) == 0
    assert "Lease has been revoked" in daemons[1].log()


def test_waiting_for_the_config_names_both_apis_once(
    hosts: tuple[Topology, EtcdCluster], tmp_path: Path
) -> None:
    topo, cluster = hosts
    endpoints = cluster.endpoints
    flags = (f"--etcd-endpoints={endpoints}", f"-etcd-prefix={PREFIX}", "--iface=eth0")
    daemon = start_daemon(topo.hosts[0], tmp_path / "h0", *flags, wait=False)
    daemon.wait_log("not found in etcd")
    time.sleep(3)  # a few more polls (1 s, 2 s, ...) must not repeat the line
    waiting = [line for line in daemon.log().splitlines() if "waiting for a usable" in line]
    assert len(waiting) == 1, "\n".join(waiting)
    line = waiting[0]
    assert f"{PREFIX}/config" in line and endpoints in line
    assert "v3 API (not found)" in line and "v2 API (not found either)" in line
    write_config(cluster, tmp_path, "alloc")
    assert own_subnet(daemon.wait_ready(timeout=30)).subnet_of(NETWORK)
    assert "using the etcd v2 API" in daemon.log()
