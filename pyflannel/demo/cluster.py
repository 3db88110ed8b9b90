"""The demo cluster: a switch, etcd and pyflanneld hosts in namespaces, containers.

The layout is the classic flannel walkthrough on one machine. A namespace
``pfdemo-sw`` holds a bridge that plays the switch; ``pfdemo-etcd`` and the hosts
``pfdemo-h1``... each have an ``eth0`` plugged into it, on an underlay in a
documentation range that this machine does not use. Each host runs pyflanneld with
its settings in an environment file, as the systemd unit does, and gets a
``docker0`` bridge on its FLANNEL_SUBNET with a container namespace ``pfdemo-cN``
behind it, as Docker started with ``--bip`` and ``--mtu`` would have it.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from pyflannel.demo.netns import PREFIX, DemoError, State, in_ns, ip, run

UNDERLAYS = ("203.0.113.0/24", "198.51.100.0/24", "192.0.2.0/24")
SWITCH = f"{PREFIX}sw"
ETCD = f"{PREFIX}etcd"
PYTHON = sys.executable


def pick_underlay() -> ipaddress.IPv4Network:
    """The first documentation range that no address of this machine overlaps."""
    used = [
        ipaddress.IPv4Interface(addr).network
        for addr in re.findall(r"\binet (\S+)", run("ip", "-4", "-o", "addr", "show").stdout)
    ]
    for text in UNDERLAYS:
        candidate = ipaddress.IPv4Network(text)
        if not any(candidate.overlaps(net) for net in used):
            return candidate
    raise DemoError(f"every documentation range ({', '.join(UNDERLAYS)}) is in use here")


@dataclasses.dataclass(frozen=True, slots=True)
class Host:
    """One simulated machine: namespace, underlay address, files."""

    name: str  # h1, h2, ...
    ns: str
    ip: str
    workdir: Path

    @property
    def env_file(self) -> Path:
        return self.workdir / "pyflanneld.env"

    @property
    def subnet_file(self) -> Path:
        return self.workdir / "subnet.env"

    @property
    def log(self) -> Path:
        return self.workdir / "pyflanneld.log"

    @property
    def container(self) -> str:
        return f"{PREFIX}c{self.name[1:]}"


@dataclasses.dataclass
class Cluster:
    """The demo's machines and where they keep their files."""

    state: State
    workdir: Path
    underlay: ipaddress.IPv4Network
    hosts: list[Host] = dataclasses.field(default_factory=list)

    @property
    def etcd_ip(self) -> str:
        return str(self.underlay.network_address + 2)

    @property
    def endpoint(self) -> str:
        return f"http://{self.etcd_ip}:2379"

    def build(self, count: int) -> None:
        """The switch, the etcd namespace and ``count`` hosts on the underlay."""
        self.state.add_namespace(SWITCH)
        ip(SWITCH, "link", "add", "br0", "type", "bridge")
        ip(SWITCH, "link", "set", "br0", "up")
        self._plug(ETCD, self.etcd_ip, 0)
        for index in range(1, count + 1):
            addr = str(self.underlay.network_address + 10 + index)
            host = Host(f"h{index}", f"{PREFIX}h{index}", addr, self.workdir / f"h{index}")
            self._plug(host.ns, host.ip, index, "net.ipv4.ip_forward=1")
            self.hosts.append(host)

    def _plug(self, ns: str, addr: str, port: int, *sysctls: str) -> None:
        self.state.add_namespace(ns, *sysctls)
        peer = f"p{port}"
        ip(ns, "link", "add", "eth0", "type", "veth", "peer", "name", peer, "netns", SWITCH)
        ip(SWITCH, "link", "set", peer, "master", "br0", "up")
        ip(ns, "addr", "add", f"{addr}/{self.underlay.prefixlen}", "dev", "eth0")
        ip(ns, "link", "set", "eth0", "up")

    def start_etcd(self, timeout: float = 20.0) -> float:
        """etcd (v3 API) in its namespace; returns the seconds it took to become healthy."""
        started = time.monotonic()
        url, peer = self.endpoint, f"http://{self.etcd_ip}:2380"
        cmd = [
            "etcd", "--name=demo", f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls={url}", f"--advertise-client-urls={url}",
            f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=demo={peer}", "--heartbeat-interval=50",
            "--election-timeout=500", "--logger=zap", "--log-outputs=stderr",
        ]  # fmt: skip
        with (self.workdir / "etcd.log").open("ab") as log:
            proc = self.state.spawn("etcd", ETCD, cmd, log, os.environ)
        while time.monotonic() - started < timeout:
            if proc.poll() is not None:
                raise DemoError(f"etcd exited; see {self.workdir / 'etcd.log'}")
            if self.etcd_healthy():
                return time.monotonic() - started
            time.sleep(0.1)
        raise DemoError(f"etcd not healthy after {timeout} s; see {self.workdir / 'etcd.log'}")

    def etcdctl(self, *args: str) -> str:
        """etcdctl (v3 API) inside the etcd namespace; its output."""
        env = {**os.environ, "ETCDCTL_API": "3"}
        return in_ns(ETCD, "etcdctl", f"--endpoints={self.endpoint}", *args, env=env).stdout

    def etcd_healthy(self) -> bool:
        try:
            self.etcdctl("endpoint", "health", "--command-timeout=1s")
        except DemoError:
            return False
        return True

    def write_env_files(self) -> None:
        """Each host's settings, as /etc/pyflannel/pyflanneld.env would hold them."""
        for host in self.hosts:
            host.workdir.mkdir(parents=True, exist_ok=True)
            host.env_file.write_text(
                f"FLANNELD_ETCD_ENDPOINTS={self.endpoint}\n"
                "FLANNELD_IFACE=eth0\n"
                f"FLANNELD_SUBNET_FILE={host.subnet_file}\n"
            )

    def start_daemons(self) -> None:
        """pyflanneld on every host, its environment read from the host's env file."""
        for host in self.hosts:
            env = dict(os.environ)
            for line in host.env_file.read_text().splitlines():
                name, _, value = line.partition("=")
                env[name] = value
            cmd = [PYTHON, "-m", "pyflannel"]
            with host.log.open("ab") as log:
                self.state.spawn(f"pyflanneld {host.name}", host.ns, cmd, log, env)

    def wait_ready(self, host: Host, timeout: float = 30.0) -> dict[str, str]:
        """subnet.env of ``host`` once written (pyflanneld holds a lease then)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if host.subnet_file.exists():
                text = host.subnet_file.read_text()
                if "FLANNEL_IPMASQ" in text:
                    return dict(line.split("=", 1) for line in text.splitlines())
            time.sleep(0.05)
        tail = "\n".join(host.log.read_text(errors="replace").splitlines()[-15:])
        raise DemoError(f"pyflanneld on {host.name} not ready after {timeout} s:\n{tail}")

    def add_container(self, host: Host, env: dict[str, str]) -> str:
        """docker0 on FLANNEL_SUBNET and a container namespace behind it; its address."""
        gateway = ipaddress.IPv4Interface(env["FLANNEL_SUBNET"])
        mtu = env["FLANNEL_MTU"]
        ip(host.ns, "link", "add", "docker0", "mtu", mtu, "type", "bridge")
        ip(host.ns, "addr", "add", str(gateway), "dev", "docker0")
        ip(host.ns, "link", "set", "docker0", "up")
        self.state.add_namespace(host.container)
        veth = ("veth", "peer", "name", "eth0", "mtu", mtu, "netns", host.container)
        ip(host.ns, "link", "add", "veth0", "mtu", mtu, "type", *veth)
        ip(host.ns, "link", "set", "veth0", "master", "docker0", "up")
        addr = gateway.ip + 1
        ip(host.container, "addr", "add", f"{addr}/{gateway.network.prefixlen}", "dev", "eth0")
        ip(host.container, "link", "set", "eth0", "up")
        ip(host.container, "route", "add", "default", "via", str(gateway.ip))
        return str(addr)

    def ctl(self, host: Host, *args: str) -> str:
        """pyflannelctl on ``host``, with the host's env file (as on a real host)."""
        cmd = [PYTHON, "-m", "pyflannel.ctl", f"--env-file={host.env_file}", *args]
        result = in_ns(host.ns, *cmd, check=False, timeout=60)
        return result.stdout + result.stderr


def ping(src_ns: str, dst: str, count: int = 3, deadline: int = 8) -> tuple[bool, str]:
    """Bounded ping: ``count`` replies wanted within ``deadline`` seconds."""
    args = ("-n", "-c", str(count), "-i", "0.2", "-w", str(deadline), dst)
    result = in_ns(src_ns, "ping", *args, check=False, timeout=deadline + 5)
    return result.returncode == 0, result.stdout


def traceroute(src_ns: str, dst: str) -> str:
    """At most 6 hops, one probe each, 1 s per probe."""
    args = ("-n", "-q", "1", "-w", "1", "-m", "6", dst)
    result = in_ns(src_ns, "traceroute", *args, check=False, timeout=20)
    return result.stdout + result.stderr


def missing_tools(names: Sequence[str]) -> list[str]:
    """The commands of ``names`` not on PATH."""
    return [name for name in names if shutil.which(name) is None]
