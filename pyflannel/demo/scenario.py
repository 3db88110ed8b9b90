"""The demo's steps, in the order of the classic walkthrough, each printed as it runs."""

from __future__ import annotations

import time
from pathlib import Path

from pyflannel.demo import netns
from pyflannel.demo.cluster import Cluster, Host, missing_tools, pick_underlay, ping, traceroute
from pyflannel.demo.netns import DemoError, State, ip
from pyflannel.demo.show import Progress

BACKENDS = ("vxlan", "udp", "host-gw", "alloc")
NETWORK = "10.5.0.0/16"
PREFIX = "/coreos.com/network"
TOOLS = ("ip", "bridge", "etcd", "etcdctl", "iptables", "ping", "traceroute")
STEPS = 11


def run(backend: str, count: int, state: State, workdir: Path) -> bool:
    """Run every step; True when the cluster works as it should."""
    progress = Progress(STEPS)
    progress.write(f"pyflannel demo: etcd and {count} pyflanneld hosts, backend {backend}")
    with progress.step("Checking this machine"):
        cluster = _check(progress, state, workdir)
    with progress.step(f"Building the network: a switch, etcd and {count} hosts"):
        cluster.build(count)
        _show_layout(progress, cluster)
    with progress.step("Starting etcd (v3 API)"):
        took = cluster.start_etcd()
        progress.line(f"etcd is healthy at {cluster.endpoint} after {took:.1f} s")
    with progress.step("Writing the network config with pyflannelctl"):
        _write_config(progress, cluster, backend)
    envs = _start_daemons(progress, cluster)
    with progress.step("The leases in etcd"):
        progress.command("pyflannelctl leases", cluster.ctl(cluster.hosts[0], "leases"))
        raw = cluster.etcdctl("get", "--prefix", f"{PREFIX}/subnets/")
        progress.command(f"etcdctl get --prefix {PREFIX}/subnets/", raw)
    with progress.step(f"What pyflanneld programmed on {cluster.hosts[0].name}"):
        _show_kernel(progress, cluster, backend)
    with progress.step("A container behind each host's docker0"):
        addrs = _containers(progress, cluster, envs)
    with progress.step("Container to container, across hosts"):
        ok = _pings(progress, cluster, addrs, backend)
    with progress.step(f"pyflannelctl status on {cluster.hosts[0].name}"):
        report = cluster.ctl(cluster.hosts[0], "status")
        progress.command("pyflannelctl status", report)
        ok = ok and report.rstrip().endswith("problems: none")
    progress.write("\nThe cluster works." if ok else "\nSomething did not work: see above.")
    return ok


def _check(progress: Progress, state: State, workdir: Path) -> Cluster:
    missing = missing_tools(TOOLS)
    if missing:
        raise DemoError(f"missing commands: {', '.join(missing)} (scripts/setup.sh installs them)")
    underlay = pick_underlay()
    progress.line(f"tools: {', '.join(TOOLS)}: found")
    progress.line(f"underlay: {underlay} (a documentation range this machine does not use)")
    progress.line(f"files: {workdir}")
    return Cluster(state, workdir, underlay)


def _show_layout(progress: Progress, cluster: Cluster) -> None:
    progress.line(f"{'pfdemo-sw':<12} bridge br0: the switch every eth0 is plugged into")
    progress.line(f"{'pfdemo-etcd':<12} {cluster.etcd_ip:<15} etcd")
    for host in cluster.hosts:
        progress.line(f"{host.ns:<12} {host.ip:<15} pyflanneld")


def _write_config(progress: Progress, cluster: Cluster, backend: str) -> None:
    config = f'{{"Network":"{NETWORK}","Backend":{{"Type":"{backend}"}}}}'
    path = cluster.workdir / "network-config.json"
    path.write_text(config + "\n")
    cluster.write_env_files()
    host = cluster.hosts[0]
    progress.line(f"{host.env_file} (as /etc/pyflannel/pyflanneld.env on a real host):")
    for line in host.env_file.read_text().splitlines():
        progress.line(f"  {line}")
    output = cluster.ctl(host, "config", "set", str(path))
    progress.command(f"pyflannelctl config set network-config.json  # {config}", output)
    if "wrote " not in output:
        raise DemoError("pyflannelctl config set failed (see above)")


def _start_daemons(progress: Progress, cluster: Cluster) -> list[dict[str, str]]:
    envs: list[dict[str, str]] = []
    with progress.step(f"Starting pyflanneld on {len(cluster.hosts)} hosts"):
        progress.line("$ pyflanneld   # settings from the host's pyflanneld.env")
        started = time.monotonic()
        cluster.start_daemons()
        for host in cluster.hosts:
            envs.append(cluster.wait_ready(host))
            subnet = envs[-1]["FLANNEL_SUBNET"]
            took = time.monotonic() - started
            progress.line(f"{host.name}: ready after {took:.1f} s, FLANNEL_SUBNET={subnet}")
    with progress.step("subnet.env on each host (what Docker and CNI read)"):
        for host in cluster.hosts:
            progress.command(f"cat {host.subnet_file}", host.subnet_file.read_text())
    return envs


def _show_kernel(progress: Progress, cluster: Cluster, backend: str) -> None:
    host = cluster.hosts[0]
    if backend == "alloc":
        progress.line("alloc leases a subnet and programs nothing: no device, no routes")
        return
    _wait_for_routes(cluster, host, backend)
    commands: dict[str, list[tuple[str, ...]]] = {
        "vxlan": [("-d", "link", "show", "flannel.1"), ("neigh", "show", "dev", "flannel.1")],
        "udp": [("addr", "show", "flannel0")],
        "host-gw": [],
    }
    for args in commands[backend]:
        progress.command(f"ip {' '.join(args)}", ip(host.ns, *args).stdout)
    if backend == "vxlan":
        fdb = netns.run("bridge", "-n", host.ns, "fdb", "show", "dev", "flannel.1").stdout
        progress.command("bridge fdb show dev flannel.1", fdb)
    progress.command("ip route", ip(host.ns, "route").stdout)


def _wait_for_routes(cluster: Cluster, host: Host, backend: str, timeout: float = 15.0) -> None:
    """Until every peer's subnet (udp: the whole network) has a route on ``host``."""
    peers = [h for h in cluster.hosts if h is not host]
    wanted = [NETWORK] if backend == "udp" else [_subnet(p) for p in peers]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        routes = ip(host.ns, "route").stdout
        if all(f"{net} " in routes for net in wanted):
            return
        time.sleep(0.1)
    raise DemoError(f"routes for {', '.join(wanted)} did not appear on {host.name}")


def _subnet(host: Host) -> str:
    text = host.subnet_file.read_text()
    value = next(line for line in text.splitlines() if line.startswith("FLANNEL_SUBNET="))
    gateway = value.split("=", 1)[1]
    addr, plen = gateway.split("/")
    return f"{addr.rsplit('.', 1)[0]}.0/{plen}"


def _containers(progress: Progress, cluster: Cluster, envs: list[dict[str, str]]) -> list[str]:
    host = cluster.hosts[0]
    out = host.workdir / "docker_opts.env"
    cluster.ctl(host, "docker-opts", "-f", str(host.subnet_file), "-d", str(out))
    progress.command(
        f"pyflannelctl docker-opts -f {host.subnet_file} -d {out}; cat {out}", out.read_text()
    )
    addrs = []
    for each, env in zip(cluster.hosts, envs, strict=True):
        addrs.append(cluster.add_container(each, env))
        progress.line(
            f"{each.container}: {addrs[-1]} behind docker0 {env['FLANNEL_SUBNET']}"
            f" (mtu {env['FLANNEL_MTU']}) on {each.name}"
        )
    return addrs


def _pings(progress: Progress, cluster: Cluster, addrs: list[str], backend: str) -> bool:
    source = cluster.hosts[0].container
    if backend == "alloc":
        progress.line("skipped: alloc has no data path (try --backend vxlan, udp or host-gw)")
        return True
    ok = True
    for addr in addrs[1:]:
        success, output = ping(source, addr)
        summary = [line for line in output.splitlines() if "packets transmitted" in line]
        verdict = "ok" if success else "FAILED"
        progress.command(f"ip netns exec {source} ping -c 3 {addr}", "\n".join(summary))
        progress.line(f"  -> {verdict}")
        ok = ok and success
    hops = traceroute(source, addrs[1])
    progress.command(f"ip netns exec {source} traceroute -n {addrs[1]}", hops)
    if backend == "udp":
        progress.line("(udp: each end of the tunnel decrements the TTL and, as flanneld,")
        progress.line(" sends no Time Exceeded, so those hops stay silent)")
    return ok


def print_keep_instructions(state: State, workdir: Path) -> None:
    """How to look around in a kept cluster, and how to remove it."""
    hosts = sorted(n for n in state.namespaces if n.startswith("pfdemo-h"))
    lines = ["", "The cluster keeps running. To look around:"]
    for name in hosts:
        index = name.removeprefix("pfdemo-h")
        lines.append(f"  ip netns exec {name} bash      # host {index}: ip route, bridge fdb, ...")
    if hosts:
        last = f"pfdemo-c{len(hosts)}"
        found = netns.run("ip", "-n", last, "-4", "-o", "addr", "show", "dev", "eth0", check=False)
        addr = found.stdout.split()[3].split("/")[0] if found.stdout.count(" ") > 3 else "<ip>"
        lines.append(f"  ip netns exec pfdemo-c1 ping -c 3 {addr}     # to {last}")
        lines.append(
            "  ip netns exec pfdemo-h1 .venv/bin/pyflannelctl"
            f" --env-file={workdir}/h1/pyflanneld.env status"
        )
    lines.append(f"  logs: {workdir}/h*/pyflanneld.log and {workdir}/etcd.log")
    lines.append(f"Remove it with: scripts/demo.sh --down --workdir {workdir}")
    print("\n".join(lines), flush=True)
