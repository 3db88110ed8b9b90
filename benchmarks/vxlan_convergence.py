"""How fast pyflanneld's vxlan backend programs many peers, and what it costs.

One network namespace holds a host (``eth0`` at 198.51.100.11) and an etcd on its
loopback. N peer leases (distinct public IPs, valid VtepMACs, each on its own etcd
lease by default, as real hosts' leases are) are written before the daemon starts
(phase A); then N more are written while it runs, in transactions of 100 puts
(phase B, a burst of N/100 revisions). Measured:

* phase A: daemon start → lease acquired (subnet.env written), and lease acquired →
  every route, neighbour and FDB entry in the kernel;
* phase B: first → last write, and last write → every entry in the kernel (with
  ``--bursts K``: K times, deleting the burst's leases in between, which is timed too);
* the daemon's CPU seconds (utime + stime from /proc/<pid>/stat) per phase and while
  idle (over ``--idle`` seconds, which should include one periodic resync), and its
  RSS (VmRSS, VmHWM).

Completion is observed, not polled: a netlink socket subscribed to route and
neighbour notifications counts the entries as the kernel adds them (the time of the
last one is the completion time); a dump checks the final counts.

Targets (from the design): 1000 peers programmed ≤ 0.25 s after the lease is acquired,
≤ 30 ms after the last write of a burst, 5000 peers ≤ 1.5 s, RSS ≤ 30 MB with 1000
peers, idle CPU ≈ 0.

    sudo .venv/bin/python benchmarks/vxlan_convergence.py            # N = 1000 and 5000
    sudo .venv/bin/python benchmarks/vxlan_convergence.py -n 2000
    sudo .venv/bin/python benchmarks/vxlan_convergence.py --smoke    # N = 100, seconds
    sudo .venv/bin/python benchmarks/vxlan_convergence.py -n 1000 --bursts 6   # spread
    sudo .venv/bin/python benchmarks/vxlan_convergence.py -n 1000 --profile DIR

``--profile`` has the daemon profile itself (cProfile) during the first burst and
prints its CPU by file and by function, kernel time in netlink ``send`` included.

Needs root, iproute2 and etcd; it creates and deletes its own ``pft-`` namespace.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import errno
import json
import os
import pstats
import re
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import TypeVar

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from support.daemon import Daemon, start_daemon  # noqa: E402
from support.etcd import EtcdServer  # noqa: E402
from support.netns import Host, Namespace  # noqa: E402
from support.nsjoin import join, join_fd  # noqa: E402

from pyflannel.aio import spawn  # noqa: E402
from pyflannel.netlink import rtnl  # noqa: E402
from pyflannel.netlink.ops import NetlinkOps  # noqa: E402

PREFIX = "/coreos.com/network"
HOST_IP = "198.51.100.11"
ETCD = "http://127.0.0.1:2379"
CONFIG = '{"Network":"10.0.0.0/8","SubnetMin":"10.1.0.0","Backend":{"Type":"vxlan"}}'
PHASE_A = (IPv4Address("10.1.0.0"), IPv4Address("100.64.0.0"), 0x00)
PHASE_B = (IPv4Address("10.128.0.0"), IPv4Address("100.96.0.0"), 0x01)
TXN_OPS = 100  # etcd allows 128 operations per transaction by default
RTMGRP_NEIGH, RTMGRP_IPV4_ROUTE = 0x4, 0x40
T = TypeVar("T")


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def peer_leases(n: int, phase: tuple[IPv4Address, IPv4Address, int]) -> list[tuple[str, str]]:
    """(key, value) of n vxlan leases: distinct /24s, public IPs and MACs."""
    first_net, first_ip, tag = phase
    out = []
    for i in range(n):
        net = IPv4Network((int(first_net) + (i << 8), 24))
        mac = f"02:{tag:02x}:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}:01"
        value = (
            f'{{"PublicIP":"{first_ip + i}","PublicIPv6":null,"BackendType":"vxlan",'
            f'"BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}'
        )
        out.append((f"{PREFIX}/subnets/{net.network_address}-24", value))
    return out


class Etcd:
    """Writes through etcd's JSON gateway (httpx sockets live in the current namespace)."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    async def post(self, path: str, body: object) -> dict[str, object]:
        answer = await self.http.post(f"{ETCD}/v3/{path}", json=body)
        answer.raise_for_status()
        result: dict[str, object] = answer.json()
        return result

    async def grants(self, count: int, ttl: int = 3600) -> list[str]:
        """``count`` etcd leases, many requests in flight."""
        ids: list[str] = []
        for start in range(0, count, 64):
            batch = [self.post("lease/grant", {"TTL": ttl}) for _ in range(min(64, count - start))]
            ids += [str(r["ID"]) for r in await asyncio.gather(*batch)]
        return ids

    async def put_all(self, items: list[tuple[str, str]], leases: list[str]) -> None:
        """Put every item, TXN_OPS per transaction, one transaction after the other."""
        for start in range(0, len(items), TXN_OPS):
            ops = [
                {"requestPut": {"key": b64(k), "value": b64(v), "lease": leases[start + i]}}
                for i, (k, v) in enumerate(items[start : start + TXN_OPS])
            ]
            await self.post("kv/txn", {"success": ops})

    async def delete_all(self, keys: list[str]) -> None:
        """Delete every key, TXN_OPS per transaction."""
        for start in range(0, len(keys), TXN_OPS):
            ops = [{"requestDeleteRange": {"key": b64(k)}} for k in keys[start : start + TXN_OPS]]
            await self.post("kv/txn", {"success": ops})


@dataclass
class Counter:
    """Entries of the overlay as the kernel announces them, and when the last one came."""

    routes: set[str] = field(default_factory=set)
    neighbours: set[str] = field(default_factory=set)
    fdb: set[str] = field(default_factory=set)
    last: float = 0.0
    overrun: bool = False

    def count(self) -> int:
        return min(len(self.routes), len(self.neighbours), len(self.fdb))

    def largest(self) -> int:
        return max(len(self.routes), len(self.neighbours), len(self.fdb))

    def take(self, data: memoryview, arrived: float) -> None:
        """Count the notices of one receive, which reached this process at ``arrived``
        (taken before the parsing, which is this benchmark's cost, not the daemon's)."""
        for msg in rtnl.messages(data):
            # A deletion notice may not carry the flags and state the entry had.
            if msg.msg_type in (rtnl.RTM_NEWROUTE, rtnl.RTM_DELROUTE):
                deleted = msg.msg_type == rtnl.RTM_DELROUTE
                route = rtnl.parse_route(data, msg.start, msg.end)
                if route is not None and (route.onlink or deleted):
                    _update(self.routes, route.dst, deleted)
            elif msg.msg_type in (rtnl.RTM_NEWNEIGH, rtnl.RTM_DELNEIGH):
                deleted = msg.msg_type == rtnl.RTM_DELNEIGH
                neighbour = rtnl.parse_neighbour(data, msg.start, msg.end)
                if neighbour is not None and (neighbour.permanent or deleted):
                    _update(self.neighbours, neighbour.ip, deleted)
                fdb = rtnl.parse_fdb(data, msg.start, msg.end)
                if fdb is not None:
                    _update(self.fdb, fdb.mac, deleted)
        self.last = arrived


def _update(found: set[T], key: T, deleted: bool) -> None:
    if deleted:
        found.discard(key)
    else:
        found.add(key)


async def watch(counter: Counter, sock: socket.socket) -> None:
    buffer = bytearray(1 << 16)
    loop = asyncio.get_running_loop()
    while True:
        try:
            size = await loop.sock_recv_into(sock, buffer)
        except OSError as exc:
            if exc.errno != errno.ENOBUFS:
                raise
            counter.overrun = True
            continue
        counter.take(memoryview(buffer)[:size], time.monotonic())


def subscribe() -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK, 0)
    sock.setsockopt(socket.SOL_SOCKET, 33, 256 << 20)  # SO_RCVBUFFORCE: never overrun
    sock.bind((0, RTMGRP_NEIGH | RTMGRP_IPV4_ROUTE))
    return sock


async def wait_count(counter: Counter, target: int, timeout: float) -> float:
    """The time the target was reached (the last notification's arrival)."""
    deadline = time.monotonic() + timeout
    while counter.count() < target:
        if counter.overrun:
            raise RuntimeError("notifications were lost; the timing would be wrong")
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {counter.count()} of {target} peers programmed")
        await asyncio.sleep(0.001)
    return counter.last


async def wait_file(path: Path, daemon: Daemon, timeout: float = 60) -> float:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if not daemon.running() or time.monotonic() > deadline:
            raise RuntimeError(f"daemon not ready:\n{daemon.log_tail()}")
        await asyncio.sleep(0.001)
    return time.monotonic()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) in MB."""
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(status["VmRSS"].split()[0]) / 1024, int(status["VmHWM"].split()[0]) / 1024


async def kernel_counts() -> tuple[int, int, int]:
    ops = NetlinkOps()
    await ops.open()
    try:
        index = socket.if_nametoindex("flannel.1")
        return (
            len(await ops.routes(oif=index)),
            len(await ops.neighbours(index)),
            len(await ops.fdb(index)),
        )
    finally:
        await ops.close()


PROFILE_HOOK = """
import cProfile, os, signal
if os.environ.get("PYFLANNEL_BENCH_PROFILE"):
    _profile = cProfile.Profile()

    def _stop(signum, frame):
        _profile.disable()
        _profile.dump_stats(os.environ["PYFLANNEL_BENCH_PROFILE"])

    signal.signal(signal.SIGUSR1, lambda signum, frame: _profile.enable())
    signal.signal(signal.SIGUSR2, _stop)
"""


def profile_env(directory: str | None, work: Path) -> dict[str, str]:
    """Environment that lets the daemon profile itself between SIGUSR1 and SIGUSR2.

    A ``sitecustomize`` module installs the two handlers: nothing in the daemon
    changes, and cProfile sees the time spent inside system calls too (the kernel's
    share of a netlink batch is spent in ``send``), which a sampler cannot attribute.
    """
    if directory is None:
        return {}
    hook = work / "profile-hook"
    hook.mkdir(parents=True, exist_ok=True)
    (hook / "sitecustomize.py").write_text(PROFILE_HOOK)
    out = Path(directory).resolve()
    out.mkdir(parents=True, exist_ok=True)
    return {"PYTHONPATH": str(hook), "PYFLANNEL_BENCH_PROFILE": str(out / "burst.prof")}


@contextmanager
def profiled(daemon: Daemon | None) -> Iterator[None]:
    """Profile the daemon while the block runs (if it was started with profile_env)."""
    path = daemon.env.get("PYFLANNEL_BENCH_PROFILE") if daemon is not None else None
    if daemon is None or path is None or daemon.proc is None:
        yield
        return
    Path(path).unlink(missing_ok=True)
    daemon.signal(signal.SIGUSR1)
    try:
        yield
    finally:
        daemon.signal(signal.SIGUSR2)
        deadline = time.monotonic() + 10
        while not Path(path).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    time.sleep(0.2)  # written in full
    print(profile_summary(path), flush=True)


def profile_summary(path: str, top: int = 14) -> str:
    """The daemon's CPU by file (own time) and its most expensive functions.

    Time in ``epoll.poll`` is waiting, not work: it is left out.
    """
    table: dict[tuple[str, int, str], tuple[int, int, float, float, object]]
    table = pstats.Stats(path).stats  # type: ignore[attr-defined]
    work = {where: entry for where, entry in table.items() if "epoll" not in where[2]}
    total = sum(entry[2] for entry in work.values()) or 1.0
    files: dict[str, float] = {}
    for (file, _line, _name), entry in work.items():
        files[_short(file)] = files.get(_short(file), 0.0) + entry[2]
    lines = [f"  profile of the burst: {total * 1000:.0f} ms of CPU (profiler overhead included)"]
    lines.append("  own time by file:")
    for label, seconds in sorted(files.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"    {100 * seconds / total:5.1f} %  {label}")
    lines.append("  own time by function:")
    for (file, line, name), entry in sorted(work.items(), key=lambda kv: -kv[1][2])[:top]:
        where = f"{_short(file)}:{line}" if file != "~" else "built-in"
        lines.append(f"    {100 * entry[2] / total:5.1f} %  {name} ({where}), {entry[1]} calls")
    return "\n".join(lines)


def _short(file: str) -> str:
    return "(built-in)" if file == "~" else re.sub(r"^.*/(pyflannel|python3\.\d+)/", "", file)


@dataclass
class Report:
    n: int
    lines: list[str] = field(default_factory=list)

    def add(self, label: str, value: str) -> None:
        self.lines.append(f"  {label:<44} {value}")
        print(self.lines[-1], flush=True)


async def phase_a(
    etcd: Etcd, n: int, host: Host, work: Path, *, args: argparse.Namespace, report: Report
) -> tuple[Daemon, Counter]:
    items = peer_leases(n, PHASE_A)
    await etcd.put_all(items, await lease_ids(etcd, n, args.shared_lease))
    counter = Counter()
    sock = subscribe()
    spawn(watch(counter, sock), name="bench-netlink-counter")
    started = time.monotonic()
    env = profile_env(args.profile, work)
    daemon = start_daemon(
        host, work, f"--etcd-endpoints={ETCD}", "--iface=eth0", env=env, wait=False
    )
    assert daemon.proc is not None
    leased = await wait_file(daemon.subnet_file, daemon)
    done = await wait_count(counter, n, timeout=120)
    report.add("phase A: daemon start -> lease acquired", f"{leased - started:.3f} s")
    report.add("phase A: lease acquired -> all programmed", f"{done - leased:.3f} s")
    report.add("phase A: daemon CPU (start-up included)", f"{cpu_seconds(daemon.proc.pid):.2f} s")
    rss, hwm = memory_mb(daemon.proc.pid)
    report.add("phase A: RSS / peak", f"{rss:.1f} MB / {hwm:.1f} MB")
    return daemon, counter


def backend_passes(daemon: Daemon) -> list[float]:
    """Durations of the backend's passes that changed something, from the daemon's log."""
    return [float(m) for m in re.findall(r"kernel programmed in ([0-9.]+) s", daemon.log())]


async def lease_ids(etcd: Etcd, n: int, shared: bool) -> list[str]:
    if shared:
        return (await etcd.grants(1)) * n
    return await etcd.grants(n)


async def phase_b(
    etcd: Etcd, n: int, daemon: Daemon, counter: Counter, *, args: argparse.Namespace,
    report: Report,
) -> None:  # fmt: skip
    """The burst, measured once in detail (and profiled if asked); with ``--bursts K``
    the burst's leases are deleted (a burst of removals, timed too) and written again,
    K times in all, for the spread of the latency on a busy machine."""
    latencies = [await burst(etcd, n, daemon, counter, args=args, report=report)]
    removals = []
    for _ in range(args.bursts - 1):
        removals.append(await unburst(etcd, n, counter))
        latencies.append(await burst(etcd, n, daemon, counter, args=args, report=None))
    if len(latencies) > 1:
        report.add(f"phase B: last write -> all programmed, x{len(latencies)}", spread(latencies))
        report.add(f"phase B: last delete -> all removed, x{len(removals)}", spread(removals))


def spread(values: list[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    return f"median {statistics.median(ms):.1f} ms ({', '.join(f'{v:.0f}' for v in ms)})"


async def burst(
    etcd: Etcd, n: int, daemon: Daemon, counter: Counter, *, args: argparse.Namespace,
    report: Report | None,
) -> float:  # fmt: skip
    """Write the burst's leases; the time from the last write to the last entry."""
    assert daemon.proc is not None
    items = peer_leases(n, PHASE_B)
    ids = await lease_ids(etcd, n, args.shared_lease)
    cpu0 = cpu_seconds(daemon.proc.pid)
    passes_before = len(backend_passes(daemon))
    with profiled(daemon if report is not None else None):
        first = time.monotonic()
        await etcd.put_all(items, ids)
        last = time.monotonic()
        done = await wait_count(counter, 2 * n, timeout=120)
    if report is None:
        return max(0.0, done - last)
    await asyncio.sleep(0.1)  # let the log line of the last pass arrive
    passes = backend_passes(daemon)[passes_before:]
    report.add(f"phase B: burst of {n} writes, first -> last", f"{last - first:.3f} s")
    report.add("phase B: last write -> all programmed", f"{max(0.0, done - last) * 1000:.1f} ms")
    report.add("phase B: daemon CPU", f"{cpu_seconds(daemon.proc.pid) - cpu0:.2f} s")
    if passes:
        report.add(
            "phase B: backend passes (count, sum, last)",
            f"{len(passes)}, {sum(passes) * 1000:.0f} ms, {passes[-1] * 1000:.0f} ms",
        )
    return max(0.0, done - last)


async def unburst(etcd: Etcd, n: int, counter: Counter) -> float:
    """Delete the burst's leases; the time from the last delete to the last removal."""
    await asyncio.sleep(0.5)
    await etcd.delete_all([key for key, _ in peer_leases(n, PHASE_B)])
    last = time.monotonic()
    deadline = last + 120
    while counter.largest() > n:
        if counter.overrun or time.monotonic() > deadline:
            raise RuntimeError(f"{counter.largest()} entries left of {n}")
        await asyncio.sleep(0.001)
    await asyncio.sleep(0.5)
    return max(0.0, counter.last - last)


async def single(etcd: Etcd, n: int, counter: Counter, report: Report) -> None:
    """One more peer while idle: the latency of the whole path, etcd to kernel."""
    key, value = peer_leases(2 * n + 1, PHASE_A)[-1]
    lease = (await etcd.grants(1))[0]
    await asyncio.sleep(0.5)
    written = time.monotonic()
    await etcd.put_all([(key, value)], [lease])
    done = await wait_count(counter, 2 * n + 1, timeout=30)
    report.add("one more peer: write -> programmed", f"{(done - written) * 1000:.1f} ms")


async def idle(daemon: Daemon, seconds: float, n: int, report: Report) -> None:
    assert daemon.proc is not None
    cpu0 = cpu_seconds(daemon.proc.pid)
    await asyncio.sleep(seconds)
    used = cpu_seconds(daemon.proc.pid) - cpu0
    report.add(f"idle: CPU over {seconds:.0f} s", f"{used:.2f} s ({100 * used / seconds:.2f} %)")
    rss, hwm = memory_mb(daemon.proc.pid)
    report.add("end: RSS / peak", f"{rss:.1f} MB / {hwm:.1f} MB")
    counts = await kernel_counts()
    report.add("kernel: routes, neighbours, FDB entries", ", ".join(map(str, counts)))
    if counts != (2 * n + 1,) * 3:
        raise RuntimeError(f"expected {2 * n + 1} of each, found {counts}")


async def measure(n: int, host: Host, work: Path, args: argparse.Namespace) -> Report:
    report = Report(n)
    print(f"N = {n} peers{' (one shared etcd lease)' if args.shared_lease else ''}", flush=True)
    async with httpx.AsyncClient(timeout=30) as http:
        etcd = Etcd(http)
        await etcd.post("kv/put", {"key": b64(f"{PREFIX}/config"), "value": b64(CONFIG)})
        daemon, counter = await phase_a(etcd, n, host, work, args=args, report=report)
        try:
            await phase_b(etcd, n, daemon, counter, args=args, report=report)
            await single(etcd, n, counter, report)
            await idle(daemon, args.idle, n, report)
        finally:
            daemon.stop()
            if args.log_dir:
                Path(args.log_dir).mkdir(parents=True, exist_ok=True)
                shutil.copy(daemon.log_path, Path(args.log_dir) / f"pyflanneld-{n}.log")
    return report


@contextmanager
def bench_host() -> Iterator[tuple[Host, EtcdServer, Path]]:
    """A namespace with eth0 and an etcd on its loopback; deleted afterwards."""
    with tempfile.TemporaryDirectory(prefix="pft-bench-") as tmp, Namespace("bench") as ns:
        ns.ip("link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
        for dev in ("eth0p", "eth0"):
            ns.ip("link", "set", dev, "up")
        ns.ip("addr", "add", f"{HOST_IP}/24", "dev", "eth0")
        with EtcdServer(Path(tmp) / "etcd", netns=ns, listen_ip="127.0.0.1") as server:
            yield Host(ns, HOST_IP, 24), server, Path(tmp)


def run_one(n: int, args: argparse.Namespace) -> Report:
    with bench_host() as (host, _server, tmp):
        # This thread joins the namespace, so the etcd client and the netlink sockets
        # below see it as their host; the namespace goes when the context ends.
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            join(host.ns.name)
            return asyncio.run(measure(n, host, tmp / "daemon", args))
        finally:
            join_fd(home)
            os.close(home)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, action="append", help="peers (repeatable)")
    parser.add_argument("--smoke", action="store_true", help="N = 100 and a short idle phase")
    parser.add_argument("--idle", type=float, default=12.0, help="idle seconds to measure")
    parser.add_argument("--shared-lease", action="store_true", help="one etcd lease for all")
    parser.add_argument("--json", action="store_true", help="print the reports as JSON")
    parser.add_argument("--log-dir", help="keep the daemon's log there")
    parser.add_argument("--bursts", type=int, default=1, help="bursts to time (default 1)")
    parser.add_argument("--profile", help="profile the daemon during the burst, keep it there")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    sizes = [100] if args.smoke else (args.n or [1000, 5000])
    if args.smoke:
        args.idle = min(args.idle, 1.0)
    reports = [run_one(n, args) for n in sizes]
    if args.json:
        print(json.dumps({r.n: r.lines for r in reports}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
