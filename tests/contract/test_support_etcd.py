"""The etcd helpers against a real etcd: restart, v2, TLS, auth and a cluster in namespaces."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest
from support import procs
from support.etcd import EtcdCluster, EtcdError, EtcdServer, etcdctl_env
from support.netns import TopologyFactory, run
from support.pki import make_pki

pytestmark = pytest.mark.etcd


def test_put_and_get_survive_a_restart(etcd: EtcdServer) -> None:
    etcd.etcdctl("put", "/coreos.com/network/config", '{"Network": "10.5.0.0/16"}')
    old_pid = etcd.process.pid if etcd.process else None
    etcd.restart()
    assert etcd.process is not None
    assert etcd.process.pid != old_pid
    value = etcd.etcdctl("get", "--print-value-only", "/coreos.com/network/config").stdout
    assert value.strip() == '{"Network": "10.5.0.0/16"}'


def test_stopped_server_refuses_clients_and_leaves_no_process(etcd: EtcdServer) -> None:
    etcd.stop()
    assert etcd.process is not None
    assert etcd.process.returncode is not None
    assert etcd.process not in procs.running()
    assert etcd.etcdctl("get", "k", "--command-timeout=1s", check=False).returncode != 0


def test_v2_api_accepts_etcdctl_set(etcd_v2: EtcdServer) -> None:
    etcd_v2.etcdctl("set", "/coreos.com/network/config", '{"Network":"10.6.0.0/16"}', api=2)
    value = etcd_v2.etcdctl("get", "/coreos.com/network/config", api=2).stdout
    assert value.strip() == '{"Network":"10.6.0.0/16"}'
    # The v2 and v3 keyspaces are separate.
    assert etcd_v2.etcdctl("get", "/coreos.com/network/config").stdout == ""


def test_tls_server_needs_a_client_certificate(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    with EtcdServer(tmp_path / "etcd", tls=pki, enable_v2=True) as server:
        assert server.endpoint.startswith("https://")
        server.etcdctl("put", "k", "v")
        assert server.etcdctl("get", "--print-value-only", "k").stdout.strip() == "v"
        server.etcdctl("set", "/k2", "v2", api=2)  # v2 names its certificate variables apart
        assert server.etcdctl("get", "/k2", api=2).stdout.strip() == "v2"
        without_cert = server.client_env()
        del without_cert["ETCDCTL_CERT"], without_cert["ETCDCTL_KEY"]
        assert _etcdctl_with(without_cert, "get", "k", "--command-timeout=1s").returncode != 0


def test_auth_limits_the_user_to_its_prefix(etcd: EtcdServer) -> None:
    etcd.enable_auth("flannel", "secret")
    as_flannel = etcd.client_env() | {"ETCDCTL_USER": "flannel:secret"}
    assert _etcdctl_with(as_flannel, "put", "/coreos.com/network/config", "{}").returncode == 0
    assert _etcdctl_with(as_flannel, "put", "/elsewhere", "x").returncode != 0
    anonymous = {k: v for k, v in etcd.client_env().items() if k != "ETCDCTL_USER"}
    assert _etcdctl_with(anonymous, "get", "/coreos.com/network/config").returncode != 0
    etcd.restart()  # health checks and etcdctl keep working as root
    assert etcd.etcdctl("get", "--print-value-only", "/coreos.com/network/config").stdout


def test_start_failure_reports_the_log(tmp_path: Path) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        server = EtcdServer(tmp_path / "etcd", ports=(port, port + 1))
        with pytest.raises(EtcdError, match="address already in use"):
            server.start(timeout=5)
    assert server.process is not None
    assert server.process.returncode is not None


@pytest.mark.netns
def test_two_member_cluster_in_namespaces(tmp_path: Path, topology: TopologyFactory) -> None:
    topo = topology(1)
    hosts = [topo.add_host("etcd1", "198.51.100.2"), topo.add_host("etcd2", "198.51.100.3")]
    with EtcdCluster(tmp_path / "cluster", hosts=hosts, enable_v2=True) as cluster:
        assert cluster.endpoints == "http://198.51.100.2:2379,http://198.51.100.3:2379"
        assert len(cluster.etcdctl("member", "list").stdout.splitlines()) == 2
        cluster.members[0].etcdctl("set", "/k", "from-etcd1", api=2)
        # A flannel host elsewhere on the underlay reads through the other member.
        env = cluster.client_env(api=2) | {"ETCDCTL_ENDPOINTS": cluster.members[1].endpoint}
        value = topo.hosts[0].ns.run("etcdctl", "get", "/k", env=etcdctl_env(env))
        assert value.stdout.strip() == "from-etcd1"


def test_two_member_cluster_on_loopback(tmp_path: Path) -> None:
    with EtcdCluster(tmp_path / "cluster") as cluster:
        assert cluster.endpoints.count("http://127.0.0.1:") == 2
        cluster.etcdctl("endpoint", "health")
        assert len(cluster.etcdctl("member", "list").stdout.splitlines()) == 2


def _etcdctl_with(client_env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """etcdctl from the root namespace with exactly these `ETCDCTL_*` variables."""
    return run("etcdctl", *args, env=etcdctl_env(client_env), check=False, timeout=10)
