"""End to end: etcd and pyflanneld hosts in namespaces, alloc backend (lease only).

Covers the daemon's contract with etcd and with the files it writes: distinct subnets,
byte-exact subnet.env and lease JSON, reuse after restart, revocation, a bad config,
an etcd outage, TLS with client certificates, and the classic unit-file flag line.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.daemon import Daemon, start_daemon
from support.etcd import EtcdServer
from support.netns import Host, TopologyFactory
from support.pki import Pki, make_pki

pytestmark = pytest.mark.e2e

PREFIX = "/docker-flannel/network"
CONFIG = '{"Network":"10.3.0.0/16","SubnetLen":24,"Backend":{"Type":"alloc"}}'


@pytest.fixture
def cluster(topology: TopologyFactory, tmp_path: Path) -> Iterator[tuple[list[Host], EtcdServer]]:
    """Two hosts and an etcd namespace on one underlay; config written with the v3 API."""
    topo = topology(2)
    hosts = list(topo.hosts)
    etcd_host = topo.add_host("etcd", str(topo.underlay.network_address + 2))
    with EtcdServer(tmp_path / "etcd", netns=etcd_host.ns, listen_ip=etcd_host.ip) as server:
        server.etcdctl("put", f"{PREFIX}/config", CONFIG)
        yield hosts, server


def flags(server: EtcdServer, *extra: str) -> tuple[str, ...]:
    """The unit-file flag line of the classic walkthrough, pointed at the test etcd."""
    return (
        f"--etcd-endpoints={server.endpoints}",
        f"-etcd-prefix={PREFIX}",
        "--iface=eth0",
        *extra,
    )


def leases(server: EtcdServer) -> dict[str, str]:
    out = server.etcdctl("get", "--prefix", f"{PREFIX}/subnets/").stdout.splitlines()
    return dict(zip(out[::2], out[1::2], strict=True))


def test_two_hosts_get_distinct_subnets_and_byte_exact_data(
    cluster: tuple[list[Host], EtcdServer], tmp_path: Path
) -> None:
    hosts, server = cluster
    daemons = [start_daemon(h, tmp_path / f"h{i}", *flags(server)) for i, h in enumerate(hosts)]
    envs = [d.wait_ready() for d in daemons]
    subnets = {env["FLANNEL_SUBNET"] for env in envs}
    assert len(subnets) == 2
    assert not maps_openssl(daemons[0])  # plain-HTTP etcd: OpenSSL is not even loaded
    for daemon, env in zip(daemons, envs, strict=True):
        net = env["FLANNEL_SUBNET"].replace(".1/24", ".0")
        assert daemon.subnet_file.read_text() == (
            f"FLANNEL_NETWORK=10.3.0.0/16\nFLANNEL_SUBNET={env['FLANNEL_SUBNET']}\n"
            "FLANNEL_MTU=1500\nFLANNEL_IPMASQ=false\n"
        )
        key = f"{PREFIX}/subnets/{net}-24"
        assert leases(server)[key] == f'{{"PublicIP":"{daemon.host.ip}","PublicIPv6":null}}'
        ttl = server.etcdctl("get", key, "-w", "json").stdout
        lease_id = json.loads(ttl)["kvs"][0]["lease"]
        granted = server.etcdctl("lease", "timetolive", format(lease_id, "x")).stdout
        assert "granted with TTL(86400s)" in granted
    # SIGTERM ends the daemon with status 0 and keeps its lease, as flanneld.
    assert daemons[0].stop() == 0
    assert len(leases(server)) == 2
    assert "Exiting cleanly" in daemons[0].log()


def test_restart_keeps_the_subnet_and_revocation_exits_zero(
    cluster: tuple[list[Host], EtcdServer], tmp_path: Path
) -> None:
    hosts, server = cluster
    daemon = start_daemon(hosts[0], tmp_path / "h0", *flags(server))
    first = daemon.wait_ready()["FLANNEL_SUBNET"]
    daemon.kill()
    daemon.subnet_file.unlink()  # reuse must come from etcd (public IP), not the file
    daemon.start()
    assert daemon.wait_ready()["FLANNEL_SUBNET"] == first
    daemon.stop()
    # With the lease gone, the subnet file still brings the same subnet back.
    server.etcdctl("del", "--prefix", f"{PREFIX}/subnets/")
    daemon.start()
    assert daemon.wait_ready()["FLANNEL_SUBNET"] == first
    net = first.replace(".1/24", ".0-24")
    server.etcdctl("del", f"{PREFIX}/subnets/{net}")
    assert daemon.wait_exit(10) == 0
    assert "Lease has been revoked" in daemon.log()


def test_missing_then_bad_config_is_explained_and_waited_for(
    topology: TopologyFactory, tmp_path: Path
) -> None:
    topo = topology(1)
    host = topo.hosts[0]
    etcd_host = topo.add_host("etcd", str(topo.underlay.network_address + 2))
    with EtcdServer(tmp_path / "etcd", netns=etcd_host.ns, listen_ip=etcd_host.ip) as server:
        daemon = start_daemon(host, tmp_path / "h0", *flags(server), wait=False)
        daemon.wait_log("not found")
        log = daemon.log()
        assert f"{PREFIX}/config" in log and server.endpoints in log and "v3" in log
        assert not daemon.subnet_file.exists()
        server.etcdctl("put", f"{PREFIX}/config", '{"Network":"10.3.0.0/16","SubnetLen":31}')
        daemon.wait_log("SubnetLen 31 is invalid")
        assert daemon.running() and not daemon.subnet_file.exists()
        server.etcdctl("put", f"{PREFIX}/config", CONFIG)
        daemon.wait_ready(timeout=30)
        assert daemon.log().count("waiting for a usable network config") == 2


def test_unknown_backend_is_fatal_with_the_known_types(
    cluster: tuple[list[Host], EtcdServer], tmp_path: Path
) -> None:
    hosts, server = cluster
    server.etcdctl("put", f"{PREFIX}/config", '{"Network":"10.3.0.0/16","Backend":{"Type":"gre"}}')
    daemon = start_daemon(hosts[0], tmp_path / "h0", *flags(server), wait=False)
    assert daemon.wait_exit(20) == 1
    assert "unknown backend type 'gre'" in daemon.log() and "alloc" in daemon.log()


def test_etcd_outage_is_survived_and_leases_stay_renewable(
    cluster: tuple[list[Host], EtcdServer], tmp_path: Path
) -> None:
    hosts, server = cluster
    # A margin of 1439 minutes renews the 24 h lease one minute after it was granted.
    daemons = [
        start_daemon(h, tmp_path / f"h{i}", *flags(server, "--subnet-lease-renew-margin=1439"))
        for i, h in enumerate(hosts)
    ]
    started = time.monotonic()
    before = {k: lease_id(server, k) for k in leases(server)}
    server.stop()
    time.sleep(30)
    assert all(d.running() for d in daemons)
    server.spawn()
    server.wait_healthy()
    time.sleep(max(0.0, 66 - (time.monotonic() - started)))
    assert all(d.running() for d in daemons)
    after = {k: lease_id(server, k) for k in leases(server)}
    assert after.keys() == before.keys()
    assert all(after[k] != before[k] for k in after), "every lease was renewed after the outage"
    for daemon in daemons:
        assert "renewed lease" in daemon.log()
        warnings = [line for line in daemon.log().splitlines() if "warn" in line.lower()]
        assert len(warnings) <= 4, "\n".join(warnings)


def maps_openssl(daemon: Daemon) -> bool:
    assert daemon.proc is not None
    return "libssl" in Path(f"/proc/{daemon.proc.pid}/maps").read_text()


def lease_id(server: EtcdServer, key: str) -> int:
    out = json.loads(server.etcdctl("get", key, "-w", "json").stdout)
    return int(out["kvs"][0]["lease"])


def test_tls_with_client_certificates(topology: TopologyFactory, tmp_path: Path) -> None:
    topo = topology(1)
    host = topo.hosts[0]
    etcd_host = topo.add_host("etcd", str(topo.underlay.network_address + 2))
    pki: Pki = make_pki(tmp_path / "pki", ips=[etcd_host.ip])
    with EtcdServer(
        tmp_path / "etcd", netns=etcd_host.ns, listen_ip=etcd_host.ip, tls=pki
    ) as server:
        server.etcdctl("put", f"{PREFIX}/config", CONFIG)
        tls = (
            f"--etcd-cafile={pki.ca_cert}",
            f"--etcd-certfile={pki.client_cert}",
            f"--etcd-keyfile={pki.client_key}",
        )
        daemon = start_daemon(host, tmp_path / "h0", *flags(server, *tls))
        assert daemon.wait_ready()["FLANNEL_NETWORK"] == "10.3.0.0/16"
        assert len(leases(server)) == 1
        assert maps_openssl(daemon)


def test_environment_variables_configure_the_daemon(
    cluster: tuple[list[Host], EtcdServer], tmp_path: Path
) -> None:
    hosts, server = cluster
    env = {
        "FLANNELD_ETCD_ENDPOINTS": server.endpoints,
        "FLANNELD_ETCD_PREFIX": PREFIX,
        "FLANNELD_IFACE": "eth0",
        "FLANNELD_IP_MASQ": "true",
    }
    daemon = start_daemon(hosts[0], tmp_path / "h0", env=env)
    assert daemon.wait_ready()["FLANNEL_IPMASQ"] == "true"
    daemon.signal(signal.SIGINT)
    assert daemon.wait_exit() == 0
