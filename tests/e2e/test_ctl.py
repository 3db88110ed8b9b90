"""``pyflannelctl`` against a real etcd and a live cluster of pyflanneld hosts.

``config set`` must reject what the daemon rejects, with the daemon's message, and
write nothing; it must write where the daemons read (v3, or v2 with ``--etcd-api``).
``leases`` and ``status`` are checked on hosts in namespaces running the real daemon.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.daemon import Daemon, start_daemon
from support.etcd import EtcdServer
from support.netns import Namespace, Topology, TopologyFactory

from pyflannel.backend import load_backend
from pyflannel.errors import ConfigError
from pyflannel.model.config import parse_config

PREFIX = "/coreos.com/network"
CONFIG = '{"Network":"10.8.0.0/16","SubnetLen":24,"Backend":{"Type":"alloc"}}'
INVALID = [
    '{"Network":"10.8.0.0/16","SubnetLen":31}',
    '{"Network":"10.8.0.0/16","SubnetMin":"10.8.9.0","SubnetMax":"10.8.2.0"}',
    '{"Network":"10.8.0.0/16","Backend":{"Type":"gre"}}',
    '{"Network":"10.8.0.0/16",',
]


def ctl(
    *args: str, ns: Namespace | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run pyflannelctl (in a namespace, if given), ignoring any environment file."""
    cmd = [sys.executable, "-m", "pyflannel.ctl", "--env-file=", *args]
    if ns is not None:
        return ns.run(*cmd, check=False, input=stdin, timeout=60)
    return subprocess.run(cmd, capture_output=True, text=True, input=stdin, timeout=60, check=False)


def daemon_message(text: str) -> str:
    """What the daemon says about this config: the same two checks, the same text."""
    try:
        load_backend(parse_config(text).backend_type)
    except ConfigError as exc:
        return str(exc)
    raise AssertionError(f"{text} is valid")


def stored(server: EtcdServer, api: int = 3) -> str:
    if api == 2:
        result = server.etcdctl("get", f"{PREFIX}/config", api=2, check=False)
        return result.stdout.strip() if result.returncode == 0 else ""
    return server.etcdctl("get", "--print-value-only", f"{PREFIX}/config").stdout.strip()


@pytest.mark.etcd
@pytest.mark.parametrize("text", INVALID)
def test_config_set_rejects_what_the_daemon_rejects_and_writes_nothing(
    etcd: EtcdServer, tmp_path: Path, text: str
) -> None:
    path = tmp_path / "config.json"
    path.write_text(text)
    result = ctl(f"--etcd-endpoints={etcd.endpoint}", "config", "set", str(path))
    assert result.returncode == 1
    assert result.stderr == f"{daemon_message(text)}\nnothing was written\n"
    assert etcd.etcdctl("get", "--prefix", "/", "--keys-only").stdout.strip() == ""


@pytest.mark.etcd
def test_config_set_and_get_on_the_v3_api(etcd: EtcdServer) -> None:
    result = ctl(f"--etcd-endpoints={etcd.endpoint}", "config", "set", "-", stdin=CONFIG + "\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        f"wrote {PREFIX}/config (etcd v3 API at {etcd.endpoint})\n"
        "network 10.8.0.0/16: 255 subnets /24 from 10.8.1.0 to 10.8.255.0, backend alloc\n"
    )
    assert stored(etcd) == CONFIG
    got = ctl("config", "get", f"--etcd-endpoints={etcd.endpoint}")
    assert (got.returncode, got.stdout, got.stderr) == (0, CONFIG + "\n", "")


@pytest.mark.etcd
def test_config_goes_where_the_cluster_reads_it_v2(etcd_v2: EtcdServer, tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(CONFIG)
    endpoint = f"--etcd-endpoints={etcd_v2.endpoint}"
    assert ctl(endpoint, "--etcd-api=v2", "config", "set", str(path)).returncode == 0
    assert stored(etcd_v2, api=2) == CONFIG
    assert stored(etcd_v2) == "", "nothing in the v3 keyspace"
    # auto finds it in the v2 store, says so, and a change goes there too
    got = ctl(endpoint, "config", "get")
    assert got.stdout == CONFIG + "\n" and "etcd v2 store" in got.stderr
    changed = CONFIG.replace("10.8.0.0/16", "10.9.0.0/16")
    assert ctl(endpoint, "config", "set", "-", stdin=changed).returncode == 0
    assert stored(etcd_v2, api=2) == changed and stored(etcd_v2) == ""


@pytest.fixture
def cluster(topology: TopologyFactory, tmp_path: Path) -> Iterator[tuple[Topology, EtcdServer]]:
    """Two hosts and an etcd namespace on one underlay; no config yet."""
    topo = topology(2)
    etcd_host = topo.add_host("etcd", str(topo.underlay.network_address + 2))
    with EtcdServer(tmp_path / "etcd", netns=etcd_host.ns, listen_ip=etcd_host.ip) as server:
        yield topo, server


@pytest.mark.e2e
def test_leases_and_status_on_a_live_cluster(
    cluster: tuple[Topology, EtcdServer], tmp_path: Path
) -> None:
    topo, server = cluster
    flags = (f"--etcd-endpoints={server.endpoints}", "--iface=eth0")
    host = topo.hosts[0]
    # A daemon started on an invalid config logs the message config set prints.
    server.etcdctl("put", f"{PREFIX}/config", INVALID[0])
    first = start_daemon(host, tmp_path / "h0", *flags, wait=False)
    first.wait_log(daemon_message(INVALID[0]))
    written = ctl(*flags, "config", "set", "-", ns=host.ns, stdin=CONFIG)
    assert written.returncode == 0, written.stderr
    assert "the config changed" in written.stderr
    daemons = [first, start_daemon(topo.hosts[1], tmp_path / "h1", *flags, wait=False)]
    envs = [d.wait_ready() for d in daemons]

    check_leases(host.ns, flags, daemons, envs)
    check_status(host.ns, flags, first, envs[0])

    # Delete this host's lease: the daemon exits (as flanneld) and status says why.
    subnet = envs[0]["FLANNEL_SUBNET"].replace(".1/24", ".0")
    server.etcdctl("del", f"{PREFIX}/subnets/{subnet}-24")
    assert first.wait_exit(15) == 0
    status = ctl(*flags, f"--subnet-file={first.subnet_file}", "status", ns=host.ns)
    assert status.returncode == 1
    assert f"no lease for this host's subnet {subnet}/24 in etcd" in status.stdout


def check_leases(
    ns: Namespace, flags: tuple[str, ...], daemons: list[Daemon], envs: list[dict[str, str]]
) -> None:
    table = ctl(*flags, "leases", ns=ns)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["SUBNET", "PUBLIC", "IP", "BACKEND", "VTEP", "MAC", "EXPIRES", "IN"]
    rows = sorted(line.split() for line in lines[1:])
    expected = sorted(
        [env["FLANNEL_SUBNET"].replace(".1/24", ".0/24"), d.host.ip, "-", "-"]
        for d, env in zip(daemons, envs, strict=True)
    )
    assert [row[:4] for row in rows] == expected
    assert all(row[4].startswith(("23h", "24h")) for row in rows)
    as_json = json.loads(ctl(*flags, "leases", "--json", ns=ns).stdout)
    assert {item["public_ip"] for item in as_json} == {d.host.ip for d in daemons}
    assert all(86000 < item["expires_in"] <= 86400 for item in as_json)


def check_status(
    ns: Namespace, flags: tuple[str, ...], daemon: Daemon, env: dict[str, str]
) -> None:
    result = ctl(*flags, f"--subnet-file={daemon.subnet_file}", "status", ns=ns)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert f"  FLANNEL_SUBNET={env['FLANNEL_SUBNET']}\n" in out
    subnet = env["FLANNEL_SUBNET"].replace(".1/24", ".0/24")
    assert f"lease: {subnet}, public IP {daemon.host.ip}, backend -" in out
    assert "peers: 1 other lease(s)" in out
    assert out.endswith("problems: none\n")
    report = json.loads(
        ctl(*flags, f"--subnet-file={daemon.subnet_file}", "status", "--json", ns=ns).stdout
    )
    assert report["ok"] is True and report["lease"]["subnet"] == subnet


VXLAN_CONFIG = '{"Network":"10.8.0.0/16","Backend":{"Type":"vxlan"}}'


@pytest.mark.e2e
def test_status_names_each_difference_between_kernel_and_leases(
    cluster: tuple[Topology, EtcdServer], tmp_path: Path
) -> None:
    topo, server = cluster
    flags = (f"--etcd-endpoints={server.endpoints}", "--iface=eth0")
    h1, h2 = topo.hosts[:2]
    assert ctl(*flags, "config", "set", "-", ns=h1.ns, stdin=VXLAN_CONFIG).returncode == 0
    daemons = [start_daemon(h, tmp_path / f"h{i}", *flags) for i, h in enumerate((h1, h2))]
    peer_net = daemons[1].wait_ready()["FLANNEL_SUBNET"].replace(".1/24", ".0")
    wait_for(lambda: f"{peer_net}/24 via" in h1.ns.ip("route").stdout)
    status = [*flags, f"--subnet-file={daemons[0].subnet_file}", "status"]

    healthy = ctl(*status, ns=h1.ns)
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    assert "kernel: flannel.1 up, mtu 1450, " in healthy.stdout
    assert "1 route, 1 neighbour, 1 FDB entry as the leases call for" in healthy.stdout

    # With the daemon stopped (its entries stay), the kernel drifts from the leases.
    assert daemons[0].stop() == 0
    lease = json.loads(
        server.etcdctl("get", "--print-value-only", f"{PREFIX}/subnets/{peer_net}-24").stdout
    )
    mac = lease["BackendData"]["VtepMAC"]
    fake = (
        '{"PublicIP":"198.51.100.99","PublicIPv6":null,"BackendType":"vxlan",'
        '"BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:42"}}'
    )
    server.etcdctl("put", f"{PREFIX}/subnets/10.8.200.0-24", fake)
    h1.ns.run("bridge", "fdb", "del", mac, "dev", "flannel.1", "dst", h2.ip, "self")
    wrong = ("lladdr", "02:00:00:00:00:99", "dev", "flannel.1", "nud", "permanent")
    h1.ns.ip("neigh", "replace", peer_net, *wrong)
    h1.ns.ip("route", "add", "10.8.250.0/24", "via", "10.8.250.0", "dev", "flannel.1", "onlink")
    h1.ns.ip("link", "set", "flannel.1", "mtu", "1400")

    drifted = ctl(*status, ns=h1.ns)
    assert drifted.returncode == 1
    problems = drifted.stdout.split("problems (", 1)[1]
    for expected in (
        "device flannel.1 has MTU 1400 but subnet.env says 1450",
        f"missing FDB entry {mac} dst {h2.ip} dev flannel.1",
        f"wrong neighbour {peer_net} lladdr 02:00:00:00:00:99 dev flannel.1: the leases call"
        f" for neighbour {peer_net} lladdr {mac} dev flannel.1",
        "stale route 10.8.250.0/24 via 10.8.250.0 dev flannel.1 onlink: no lease calls for it",
        "missing route 10.8.200.0/24 via 10.8.200.0 dev flannel.1 onlink",
        "missing neighbour 10.8.200.0 lladdr 02:00:00:00:00:42 dev flannel.1",
        "missing FDB entry 02:00:00:00:00:42 dst 198.51.100.99 dev flannel.1",
    ):
        assert f"  - {expected}\n" in problems, drifted.stdout
    assert problems.startswith("7):"), drifted.stdout


def wait_for(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)
