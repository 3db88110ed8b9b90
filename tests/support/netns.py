"""Network namespaces for tests that need the real kernel.

A `Topology` is a small simulated network, built only from namespaces this process creates
(names `pft-<hint>-<random>`): a bridge namespace with `br0` acts as the switch, and each
simulated host is a namespace whose `eth0` is a veth plugged into that bridge, on an underlay
in a documentation range. Nothing is added to the root namespace.

Teardown is layered so that it always happens: `Namespace.delete` / `Topology.close` (context
managers and fixtures call them), then `cleanup`, which the conftest session hook and `atexit`
call, for the namespaces this process created and has not deleted yet. Namespaces of other
processes are never touched.
"""

from __future__ import annotations

import atexit
import ipaddress
import logging
import math
import os
import re
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

import pytest

from support import procs

logger = logging.getLogger(__name__)

PREFIX = "pft-"
DEFAULT_UNDERLAY = "198.51.100.0/24"  # TEST-NET-2: routed nowhere
FIRST_HOST = 11  # hosts get .11, .12, ...; lower addresses stay free for etcd and the like

_HINT = re.compile(r"[a-z0-9]{1,12}")
_CREATED: set[str] = set()  # namespaces of this process not deleted yet


class CommandError(subprocess.CalledProcessError):
    """A command failed; unlike its base class, the message carries the command's stderr."""

    def __str__(self) -> str:
        return f"{super().__str__()}\nstderr: {(self.stderr or '').strip()}"


def run(
    *cmd: str,
    check: bool = True,
    timeout: float = 30.0,
    input: str | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion with text output captured; raise CommandError on failure."""
    result = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, input=input, env=env, check=False
    )
    if check and result.returncode != 0:
        raise CommandError(result.returncode, cmd, result.stdout, result.stderr)
    return result


def unavailable() -> str | None:
    """Why namespace tests cannot run here, or None if they can."""
    if os.geteuid() != 0:
        return "network namespace tests need root"
    missing = [tool for tool in ("ip", "ping", "sysctl") if shutil.which(tool) is None]
    if missing:
        return f"network namespace tests need {', '.join(missing)} on PATH"
    return None


def skip_unless_available() -> None:
    """Skip the calling test or fixture when namespaces cannot be used."""
    reason = unavailable()
    if reason is not None:
        pytest.skip(reason)


class Namespace:
    """A network namespace owned by this test process, with `lo` up.

    Long-running processes started with `popen` are recorded and stopped by `delete`.
    """

    def __init__(self, hint: str = "ns") -> None:
        if not _HINT.fullmatch(hint):
            raise ValueError(f"namespace hint must match {_HINT.pattern}: {hint!r}")
        self.name = f"{PREFIX}{hint}-{secrets.token_hex(3)}"
        self.processes: list[subprocess.Popen[Any]] = []
        run("ip", "netns", "add", self.name)
        _CREATED.add(self.name)
        try:
            # Without lo up, onlink routes in a fresh namespace fail with EINVAL.
            self.ip("link", "set", "lo", "up")
        except BaseException:
            self.delete()
            raise

    def __repr__(self) -> str:
        return f"Namespace({self.name!r})"

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """`ip -n <ns> ...`: iproute2 without the cost of `ip netns exec`."""
        return run("ip", "-n", self.name, *args, check=check)

    def run(
        self,
        *cmd: str,
        check: bool = True,
        timeout: float = 30.0,
        input: str | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the namespace to completion (`ip netns exec`)."""
        return run(
            "ip", "netns", "exec", self.name, *cmd,
            check=check, timeout=timeout, input=input, env=env,
        )  # fmt: skip

    def popen(self, *cmd: str, **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a long-running process inside the namespace; `delete` stops it by PID.

        `ip netns exec` execs the command in place, so the PID is the command's own.
        """
        proc = procs.spawn(["ip", "netns", "exec", self.name, *cmd], **kwargs)
        self.processes.append(proc)
        return proc

    def sysctl(self, *settings: str) -> None:
        """Apply `key=value` settings inside the namespace (never in the root namespace)."""
        self.run("sysctl", "-q", "-w", *settings)

    def has_link(self, name: str) -> bool:
        return self.ip("link", "show", "dev", name, check=False).returncode == 0

    def stop_processes(self) -> None:
        for proc in self.processes:
            procs.stop(proc)
        self.processes.clear()

    def delete(self) -> None:
        """Stop recorded processes and delete the namespace (its veths go with it)."""
        self.stop_processes()
        _delete(self.name)

    def __enter__(self) -> Namespace:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.delete()


def _delete(name: str) -> None:
    result = run("ip", "netns", "delete", name, check=False)
    if result.returncode == 0 or not os.path.exists(f"/var/run/netns/{name}"):
        _CREATED.discard(name)
    else:
        logger.warning("could not delete namespace %s: %s", name, result.stderr.strip())


def cleanup() -> None:
    """Stop every recorded process, then delete every namespace this process still owns."""
    procs.stop_all()
    for name in sorted(_CREATED):
        logger.warning("namespace %s outlived its test; deleting it", name)
        _delete(name)


def leftover_namespaces() -> set[str]:
    """The namespaces this process created and has not deleted (for teardown checks)."""
    return set(_CREATED)


def ping(
    src: Namespace | Host,
    dst_ip: str,
    *,
    count: int = 3,
    timeout: float = 5.0,
    size: int | None = None,
    df: bool = False,
) -> bool:
    """True when `count` echo replies come back from `dst_ip` within `timeout` seconds.

    ping keeps sending (every 0.2 s) until it has `count` replies or the deadline passes, so
    `count=1` with a generous timeout means "wait until reachable". `size` is the ICMP payload
    (the IPv4 packet is 28 bytes more); `df` forbids fragmentation, to probe an MTU.
    """
    ns = src.ns if isinstance(src, Host) else src
    args = ["ping", "-n", "-q", "-i", "0.2", "-c", str(count), "-w", str(math.ceil(timeout))]
    if size is not None:
        args += ["-s", str(size)]
    if df:
        args += ["-M", "do"]
    return ns.run(*args, dst_ip, check=False, timeout=timeout + 5).returncode == 0


@dataclass(frozen=True, slots=True)
class Host:
    """A simulated machine: a namespace whose `eth0` sits on the underlay."""

    ns: Namespace
    ip: str
    prefixlen: int

    @property
    def cidr(self) -> str:
        return f"{self.ip}/{self.prefixlen}"


@dataclass(frozen=True, slots=True)
class Container:
    """A namespace plugged into a host's `docker0` bridge, with a default route via it."""

    ns: Namespace
    ip: str
    gateway: str
    host: Host


def check_underlay_unused(underlay: ipaddress.IPv4Network) -> None:
    """Refuse an underlay that overlaps an address of the root namespace.

    Traffic stays inside the test namespaces anyway, but a range the machine uses would make
    test output ambiguous and a mistake in a test dangerous.
    """
    output = run("ip", "-4", "-o", "addr", "show").stdout
    for used in re.findall(r"\binet (\S+)", output):
        network = ipaddress.IPv4Interface(used).network
        if network.overlaps(underlay):
            raise ValueError(f"underlay {underlay} overlaps {used} of the root namespace")


class Topology:
    """Hosts on one underlay, joined by a bridge namespace; a context manager.

    `Topology(2)` makes hosts at .11 and .12 of the underlay; `add_host` adds more (an etcd
    namespace at .2, say) and `add_container` plugs "containers" into a host. IPv6 is off in
    every namespace unless asked for, so packet captures hold only the traffic under test.
    """

    def __init__(
        self, hosts: int = 2, *, underlay: str = DEFAULT_UNDERLAY, ipv6: bool = False
    ) -> None:
        self.underlay = ipaddress.IPv4Network(underlay)
        check_underlay_unused(self.underlay)
        self.ipv6 = ipv6
        self.hosts: list[Host] = []
        self.containers: list[Container] = []
        self._namespaces: list[Namespace] = []
        self._gateways: dict[str, str] = {}  # host namespace name -> docker0 address
        try:
            self.bridge = self._namespace("br")
            self.bridge.ip("link", "add", "br0", "type", "bridge")
            self.bridge.ip("link", "set", "br0", "up")
            self._plain_switch()
            for index in range(hosts):
                self.add_host(f"h{index + 1}")
        except BaseException:
            self.close()
            raise

    def _plain_switch(self) -> None:
        """Keep the host's firewall hooks off the underlay bridge, as on a real switch.

        With br_netfilter loaded (Docker loads it), every bridged frame also runs the
        iptables hooks of the bridge's namespace, which has no rules: a cost per frame
        that no physical underlay has, and that taxes one-packet-per-frame paths most.
        The switches are per namespace; a kernel without br_netfilter has none.
        """
        switches = "/proc/sys/net/bridge/bridge-nf-call-*"
        self.bridge.run("sh", "-c", f"for f in {switches}; do [ -f $f ] && echo 0 > $f; done; true")

    def add_host(self, name_hint: str, addr: str | None = None) -> Host:
        """A new host namespace with `eth0` at `addr` (default: the next free from .11 up)."""
        ip = ipaddress.IPv4Address(addr) if addr else self._next_address()
        if ip not in self.underlay or str(ip) in {host.ip for host in self.hosts}:
            raise ValueError(f"{ip} is outside {self.underlay} or already taken")
        ns = self._namespace(name_hint, "net.ipv4.ip_forward=1")
        port = f"p{len(self.hosts) + 1}"  # the host's end of the cable, inside the switch
        ns.ip(
            "link", "add", "eth0", "type", "veth", "peer", "name", port, "netns", self.bridge.name
        )
        self.bridge.ip("link", "set", port, "master", "br0", "up")
        ns.ip("addr", "add", f"{ip}/{self.underlay.prefixlen}", "dev", "eth0")
        ns.ip("link", "set", "eth0", "up")
        host = Host(ns, str(ip), self.underlay.prefixlen)
        self.hosts.append(host)
        return host

    def add_container(
        self, host: Host, subnet_gateway_cidr: str, container_ip_cidr: str, mtu: int
    ) -> Container:
        """Plug a container namespace into `host`'s `docker0`, creating the bridge if needed.

        `docker0` gets `subnet_gateway_cidr` (FLANNEL_SUBNET's .1) and `mtu` (FLANNEL_MTU), as
        Docker would configure it; the container gets `container_ip_cidr` on its `eth0` and a
        default route via the gateway.
        """
        gateway = str(ipaddress.IPv4Interface(subnet_gateway_cidr).ip)
        if self._gateways.setdefault(host.ns.name, subnet_gateway_cidr) != subnet_gateway_cidr:
            raise ValueError(f"docker0 of {host.ns.name} already has another address")
        if not host.ns.has_link("docker0"):
            host.ns.ip("link", "add", "docker0", "mtu", str(mtu), "type", "bridge")
            host.ns.ip("addr", "add", subnet_gateway_cidr, "dev", "docker0")
            host.ns.ip("link", "set", "docker0", "up")
        ns = self._namespace("ct")
        port = f"veth{len(self.containers) + 1}"
        host.ns.ip(
            "link", "add", port, "mtu", str(mtu), "type", "veth",
            "peer", "name", "eth0", "mtu", str(mtu), "netns", ns.name,
        )  # fmt: skip
        host.ns.ip("link", "set", port, "master", "docker0", "up")
        ns.ip("addr", "add", container_ip_cidr, "dev", "eth0")
        ns.ip("link", "set", "eth0", "up")
        ns.ip("route", "add", "default", "via", gateway)
        container = Container(ns, str(ipaddress.IPv4Interface(container_ip_cidr).ip), gateway, host)
        self.containers.append(container)
        return container

    def ping(
        self,
        src: Namespace | Host,
        dst_ip: str,
        *,
        count: int = 3,
        timeout: float = 5.0,
        size: int | None = None,
        df: bool = False,
    ) -> bool:
        """See the module-level `ping`."""
        return ping(src, dst_ip, count=count, timeout=timeout, size=size, df=df)

    def close(self) -> None:
        """Stop every recorded process first, then delete the namespaces; idempotent."""
        for ns in self._namespaces:
            ns.stop_processes()
        for ns in reversed(self._namespaces):
            ns.delete()
        self._namespaces.clear()

    def __enter__(self) -> Topology:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _namespace(self, hint: str, *settings: str) -> Namespace:
        ns = Namespace(hint)
        self._namespaces.append(ns)
        if not self.ipv6:
            settings += ("net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
        if settings:
            ns.sysctl(*settings)
        return ns

    def _next_address(self) -> ipaddress.IPv4Address:
        taken = {host.ip for host in self.hosts}
        for offset in range(FIRST_HOST, self.underlay.num_addresses - 1):
            candidate = self.underlay[offset]
            if str(candidate) not in taken:
                return candidate
        raise ValueError(f"no free address left in {self.underlay}")


atexit.register(cleanup)


class TopologyFactory(Protocol):
    """The `topology` fixture: builds topologies that are closed when the test ends."""

    def __call__(
        self, hosts: int = 2, *, underlay: str = DEFAULT_UNDERLAY, ipv6: bool = False
    ) -> Topology: ...
