"""TCP throughput through the udp backend, next to kernel VXLAN and the bare underlay.

Two hosts in network namespaces on one bridge (``tests/support/netns.Topology``, whose
bridge runs no iptables hooks, as a switch); iperf3 runs between them over four paths,
in this order, on the same topology, with the system's default congestion control:

* ``underlay``: host to host over ``eth0``;
* ``vxlan``: a kernel VXLAN device set up by hand (VNI 1, port 8472, no learning, static
  FDB and neighbour entries, an onlink route, MTU 1450), as flanneld's vxlan backend does;
* ``udp-plain``: ``flannel0`` and the udp backend with ``"Offload": false``;
* ``udp-offload``: the same with the batching offloads.

The runs are taken in ``--runs`` rounds, each of which measures every path once (iperf3
TCP with 1 and with 4 streams, ``--seconds`` long), so that a machine whose speed drifts
over minutes weighs on all paths alike; the udp backend is started afresh for each of
its runs. Printed: per path the median Gbit/s, and the median over the rounds of each
round's ratio to kernel vxlan and to the underlay; for the udp paths also the CPU each
forwarder used (user + system time over wall time; 100 % is one core). ``--smoke`` is
one round of 1-second runs, for CI. Needs root, iproute2 and iperf3; it creates and
deletes its own ``pft-`` namespaces.

    sudo .venv/bin/python benchmarks/udp_throughput.py [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from support import procs  # noqa: E402
from support.netns import Host, Topology  # noqa: E402

NODE = REPO / "tests" / "netns" / "udp_node.py"
PYTHON = REPO / ".venv" / "bin" / "python"
UDP_NETWORK = "10.4.0.0/16"
VXLAN_PREFIX = "10.5"


PATHS = ("underlay", "vxlan", "udp-plain", "udp-offload")
FLANNELD_PROXY = (0.29, 9.6)  # Gbit/s of flanneld's C proxy and of kernel vxlan beside it


@dataclass(slots=True)
class Samples:
    """One path's figures, a run per round: Gbit/s for 1 and 4 streams, forwarder CPU."""

    one: list[float] = field(default_factory=list)
    four: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)  # per forwarder, summed
    elapsed: float = 0.0

    def cpu(self) -> tuple[float, ...]:
        """Each forwarder's CPU use while measured, in percent of one core."""
        return tuple(100 * used / self.elapsed for used in self.cpu_seconds) if self.elapsed else ()


def iperf(client: Host, server: Host, address: str, streams: int, seconds: int) -> float:
    """One iperf3 run; Gbit/s received (0.0 when the run failed)."""
    srv = server.ns.popen("iperf3", "-s", "-1", "-B", address, stdout=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        out = client.ns.run(
            "iperf3", "-c", address, "-t", str(seconds), "-P", str(streams), "-J",
            check=False, timeout=seconds + 20,
        )  # fmt: skip
    finally:
        procs.stop(srv)
    try:
        return float(json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"]) / 1e9
    except (ValueError, KeyError):
        print(f"  iperf3 failed: {out.stdout[-300:]} {out.stderr[-300:]}", file=sys.stderr)
        return 0.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(
    name: str, topo: Topology, address: str, seconds: int, samples: Samples, *,
    pids: tuple[int, ...] = (),
) -> None:  # fmt: skip
    """One run with 1 stream and one with 4, from host 1 to ``address`` on host 2."""
    client, server = topo.hosts
    before = [cpu_seconds(pid) for pid in pids]
    start = time.monotonic()
    for streams, runs in ((1, samples.one), (4, samples.four)):
        runs.append(iperf(client, server, address, streams, seconds))
        print(f"  {name} P{streams}: {runs[-1]:.2f} Gbit/s", flush=True)
    samples.elapsed += time.monotonic() - start
    used = [cpu_seconds(pid) - spent for pid, spent in zip(pids, before, strict=True)]
    if not samples.cpu_seconds:
        samples.cpu_seconds = [0.0] * len(used)
    samples.cpu_seconds = [a + b for a, b in zip(samples.cpu_seconds, used, strict=True)]


def setup_vxlan(topo: Topology) -> str:
    """Kernel VXLAN between the two hosts; returns host 2's overlay address."""
    hosts = topo.hosts
    macs = [f"02:00:00:00:00:0{i + 1}" for i in range(len(hosts))]
    for index, host in enumerate(hosts):
        ns = host.ns
        ns.ip(
            "link", "add", "vx0", "address", macs[index], "type", "vxlan", "id", "1",
            "local", host.ip, "dev", "eth0", "dstport", "8472", "nolearning",
        )  # fmt: skip
        ns.ip("link", "set", "vx0", "mtu", "1450", "up")
        ns.ip("addr", "add", f"{VXLAN_PREFIX}.{index + 1}.0/32", "dev", "vx0")
        for peer_index, peer in enumerate(hosts):
            if peer is host:
                continue
            gw = f"{VXLAN_PREFIX}.{peer_index + 1}.0"
            ns.run("bridge", "fdb", "add", macs[peer_index], "dev", "vx0", "dst", peer.ip)
            ns.ip("neigh", "add", gw, "lladdr", macs[peer_index], "dev", "vx0", "nud", "permanent")
            ns.ip("route", "add", f"{gw}/24", "via", gw, "dev", "vx0", "onlink")
    return f"{VXLAN_PREFIX}.2.0"


@contextmanager
def udp_nodes(topo: Topology, offload: bool, workdir: Path) -> Iterator[tuple[int, ...]]:
    """The udp backend on both hosts; yields the forwarders' PIDs."""
    backend = json.dumps({"Type": "udp", "Offload": offload})
    hosts = topo.hosts
    pids = []
    for index, host in enumerate(hosts):
        peers = [f"--peer=10.4.{i + 1}.0/24={h.ip}" for i, h in enumerate(hosts) if h is not host]
        args = ["--iface-addr", host.ip, "--subnet", f"10.4.{index + 1}.0/24"]
        args += ["--network", UDP_NETWORK, "--backend", backend, *peers]
        with (workdir / f"node{index}-{'off' if offload else 'plain'}.log").open("w") as log:
            proc = host.ns.popen(
                str(PYTHON), str(NODE), *args, stdout=log, stderr=subprocess.STDOUT
            )
        pids.append(proc.pid)
    try:
        for host in hosts:
            wait_for_route(host)
        yield tuple(pids)
    finally:
        for host in hosts:
            host.ns.stop_processes()


def wait_for_route(host: Host, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "flannel0" in host.ns.ip("route", "show", UDP_NETWORK).stdout:
            return
        time.sleep(0.1)
    raise RuntimeError(f"udp backend on {host.ns.name} did not come up")


def ratio(samples: dict[str, Samples], name: str, reference: str) -> float | None:
    """The median over the rounds of ``name``'s single-stream figure over ``reference``'s."""
    ours, ref = samples.get(name), samples.get(reference)
    if ours is None or ref is None:
        return None
    pairs = [a / b for a, b in zip(ours.one, ref.one, strict=True) if b]
    return statistics.median(pairs) if pairs else None


def report(samples: dict[str, Samples]) -> None:
    print(f"\n{'path':12s} {'1 stream':>10s} {'4 streams':>10s} {'vs vxlan':>9s} "
          f"{'vs underlay':>11s}  forwarder CPU")  # fmt: skip
    for name, got in samples.items():
        columns = []
        for reference, width in (("vxlan", 9), ("underlay", 11)):
            value = ratio(samples, name, reference)
            columns.append(f"{value:{width}.0%}" if value is not None else f"{'-':>{width}s}")
        cpu = " / ".join(f"{c:.0f}%" for c in got.cpu()) or "-"
        one, four = statistics.median(got.one), statistics.median(got.four)
        print(f"{name:12s} {one:10.2f} {four:10.2f} {columns[0]} {columns[1]}   {cpu}")
    print("(Gbit/s, median; ratios: median of each round's ratio, 1 stream)")
    proxy, vxlan = FLANNELD_PROXY
    print(f"For scale, not measured here: flanneld's own udp proxy gave {proxy} Gbit/s where "
          f"kernel vxlan gave {vxlan} ({proxy / vxlan:.0%}) on this class of machine.")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="one 1-second run per case")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", action="append", help="underlay, vxlan, udp-plain, udp-offload")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp"))
    args = parser.parse_args()
    if args.smoke:
        args.seconds, args.runs = 1, 1
    wanted = [path for path in PATHS if path in set(args.only or PATHS)]
    samples = {name: Samples() for name in wanted}
    with Topology(2) as topo:
        address = {"underlay": topo.hosts[1].ip, "udp-plain": "10.4.2.0", "udp-offload": "10.4.2.0"}
        if "vxlan" in wanted:
            address["vxlan"] = setup_vxlan(topo)
        for _ in range(args.runs):
            for name in wanted:
                if name.startswith("udp-"):
                    with udp_nodes(topo, name == "udp-offload", args.workdir) as pids:
                        measure(name, topo, address[name], args.seconds, samples[name], pids=pids)
                else:
                    measure(name, topo, address[name], args.seconds, samples[name])
    report(samples)


if __name__ == "__main__":
    main()
