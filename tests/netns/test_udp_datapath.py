"""The udp backend's data path against the real kernel: TUN devices, sockets, namespaces.

Two hosts run the backend (``udp_node.py``, static peers, no etcd), each with a container
behind ``docker0``; a third host on the underlay holds no lease. Every test runs once with
the plain path and once with the batched (offload) path. Packet captures are bounded by
count and time, and parsed here with a few lines of Python.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest
from support import procs
from support.netns import Container, Host, Namespace, Topology, TopologyFactory, unavailable
from support.packets import word_checksum
from support.ruleprobe import CONNECT

pytestmark = pytest.mark.netns

NODE = Path(__file__).with_name("udp_node.py")
PYTHON = sys.executable
NETWORK = "10.4.0.0/16"
OVERLAY_MTU = 1500 - 28
PORT = 8285

LISTENER = """
import json, socket, sys, time
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("0.0.0.0", int(sys.argv[1])))
sock.settimeout(0.1)
got, deadline = [], time.monotonic() + float(sys.argv[2])
print("ready", flush=True)
while time.monotonic() < deadline:
    try:
        got.append(sock.recv(4096).hex())
    except TimeoutError:
        continue
    if got[-1] == b"control".hex():
        break
print(json.dumps(got), flush=True)
"""

SENDER = """
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((sys.argv[1], 0))
for payload in sys.argv[4:]:
    sock.sendto(bytes.fromhex(payload), (sys.argv[2], int(sys.argv[3])))
"""

TCP_SINK = """
import hashlib, socket, sys
srv = socket.socket()
srv.bind((sys.argv[1], 5000))
srv.listen(1)
srv.settimeout(20)
print("ready", flush=True)
conn, _ = srv.accept()
conn.settimeout(20)
total, digest = 0, hashlib.sha256()
while chunk := conn.recv(65536):
    total += len(chunk)
    digest.update(chunk)
print(total, digest.hexdigest(), flush=True)
"""

TCP_SOURCE = """
import random, socket, sys
sock = socket.create_connection((sys.argv[1], 5000), timeout=20)
sock.sendall(random.Random(7).randbytes(int(sys.argv[2])))
sock.close()
"""


def received(size: int) -> str:
    """What the sink prints for TCP_SOURCE's ``size`` bytes: a stream merged, cut or
    reordered wrongly on the way would not hash the same."""
    return f"{size} {hashlib.sha256(random.Random(7).randbytes(size)).hexdigest()}"


def inner_udp(src: str, dst: str, payload: bytes, *, ttl: int = 64, dport: int = 9999) -> bytes:
    """An IPv4/UDP packet with a correct header checksum (UDP checksum 0: none)."""
    udp = struct.pack("!HHHH", 40000, dport, 8 + len(payload), 0) + payload
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 7, 0x4000, ttl, 17, 0,
        IPv4Address(src).packed, IPv4Address(dst).packed,
    )  # fmt: skip
    return header[:10] + struct.pack("!H", word_checksum(header)) + header[12:] + udp


def read_pcap(path: Path) -> list[bytes]:
    """The IPv4 packets of a pcap file captured on an Ethernet device."""
    data = path.read_bytes()
    magic, linktype = struct.unpack("<I", data[:4])[0], struct.unpack("<I", data[20:24])[0]
    assert magic == 0xA1B2C3D4 and linktype == 1, (hex(magic), linktype)
    packets, pos = [], 24
    while pos + 16 <= len(data):
        caplen = struct.unpack("<I", data[pos + 8 : pos + 12])[0]
        frame = data[pos + 16 : pos + 16 + caplen]
        if frame[12:14] == b"\x08\x00":
            packets.append(frame[14:])
        pos += 16 + caplen
    return packets


@dataclass
class Node:
    """The udp backend on one host, with the counters it writes as JSON."""

    host: Host
    subnet: str
    stats_path: Path

    def stats(self) -> dict[str, int]:
        try:
            result: dict[str, int] = json.loads(self.stats_path.read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return result

    def wait_stats(self, check: Callable[[dict[str, int]], bool], timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check(self.stats()):
                return True
            time.sleep(0.1)
        return False


@dataclass
class Cluster:
    topo: Topology
    nodes: list[Node]
    containers: list[Container]
    stranger: Host
    offload: bool


def start_node(
    host: Host, index: int, peers: list[Host], backend: dict[str, Any], work: Path
) -> Node:
    subnet = f"10.4.{index + 1}.0/24"
    stats = work / f"stats-{index}.json"
    peer_args = [
        f"--peer=10.4.{i + 1}.0/24={peer.ip}" for i, peer in enumerate(peers) if peer is not host
    ]
    with (work / f"node-{index}.log").open("w") as log:
        host.ns.popen(
            PYTHON, str(NODE), "--iface-addr", host.ip, "--subnet", subnet, "--network", NETWORK,
            "--backend", json.dumps(backend), "--stats", str(stats), *peer_args,
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    deadline = time.monotonic() + 20
    while NETWORK not in host.ns.ip("route", "show", "dev", "flannel0", check=False).stdout:
        assert time.monotonic() < deadline, (work / f"node-{index}.log").read_text()
        time.sleep(0.1)
    return Node(host, subnet, stats)


def build_cluster(topo: Topology, backend: dict[str, Any], work: Path) -> Cluster:
    hosts = list(topo.hosts)
    nodes = [start_node(host, index, hosts, backend, work) for index, host in enumerate(hosts)]
    containers = [
        topo.add_container(host, f"10.4.{i + 1}.1/24", f"10.4.{i + 1}.2/24", OVERLAY_MTU)
        for i, host in enumerate(hosts)
    ]
    stranger = topo.add_host("x")
    return Cluster(topo, nodes, containers, stranger, backend.get("Offload", True) is True)


@pytest.fixture(scope="module", params=[False, True], ids=["plain", "offload"])
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    """Two hosts with the backend and a container each, plus a host with no lease."""
    reason = unavailable()
    if reason is not None:
        pytest.skip(reason)
    work = tmp_path_factory.mktemp("udp")
    with Topology(2) as topo:
        yield build_cluster(topo, {"Type": "udp", "Offload": request.param}, work)


def popen_ready(ns: Namespace, *cmd: str) -> subprocess.Popen[str]:
    """Start a helper script that prints "ready" once it listens; wait for that line."""
    proc = ns.popen(*cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def finish(proc: subprocess.Popen[str], timeout: float = 15.0) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        procs.stop(proc)
    return out


def capture(ns: Namespace, path: Path, count: int, expression: str) -> subprocess.Popen[str]:
    """tcpdump on eth0, bounded by packet count and time; returns once it is listening."""
    proc = ns.popen(
        "timeout", "20", "tcpdump", "-i", "eth0", "-n", "-U", "-s", "0", "-c", str(count),
        "-w", str(path), expression, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert "listening on" in line, line
    return proc


def test_containers_reach_each_other_and_the_overlay_mtu_is_exact(cluster: Cluster) -> None:
    first, second = cluster.containers
    host = cluster.nodes[0].host
    assert cluster.topo.ping(first.ns, second.ip, count=1, timeout=10)
    assert cluster.topo.ping(second.ns, first.ip, count=3)
    assert cluster.topo.ping(host, second.ip, count=2, size=OVERLAY_MTU - 28, df=True)
    assert cluster.topo.ping(first.ns, second.ip, count=2, size=OVERLAY_MTU - 28, df=True)
    assert not cluster.topo.ping(
        host, second.ip, count=1, timeout=1, size=OVERLAY_MTU - 27, df=True
    )
    link = host.ns.ip("-d", "link", "show", "flannel0").stdout
    assert "mtu 1472" in link
    # With TSO, a TCP super-packet holds what one UDP_SEGMENT send carries: 44 x 1472 B.
    assert ("gso_max_segs 44 " in link) is cluster.offload, link
    # Without offloads, the kernel's GRO merges what is written (IFF_NAPI, a flush timeout).
    flags = int(host.ns.run("cat", "/sys/class/net/flannel0/tun_flags").stdout, 16)
    hold = host.ns.run("cat", "/sys/class/net/flannel0/gro_flush_timeout").stdout.strip()
    assert (flags & 0x10 != 0, hold) == ((False, "0") if cluster.offload else (True, "1000000"))


def test_each_peer_has_a_socket_connected_to_it(cluster: Cluster) -> None:
    """All on port 8285 (the wire is unchanged), beside the main socket for anyone else."""
    host, peer = (node.host for node in cluster.nodes)
    listing = host.ns.run("ss", "-u", "-a", "-n", "-H").stdout
    ours = sorted(line.split()[-1] for line in listing.splitlines() if f"{host.ip}:8285" in line)
    assert ours == ["0.0.0.0:*", f"{peer.ip}:8285"], listing


def test_a_datagram_carries_exactly_the_inner_packet(cluster: Cluster, tmp_path: Path) -> None:
    first, second = cluster.containers
    sender, receiver = cluster.nodes[0].host, cluster.nodes[1].host
    sent_pcap, wire_pcap = tmp_path / "sent.pcap", tmp_path / "wire.pcap"
    at_source = capture(first.ns, sent_pcap, 1, "udp dst port 9999")
    on_wire = capture(receiver.ns, wire_pcap, 1, f"udp and src host {sender.ip}")
    payload = b"flannel wire format check"
    first.ns.run(PYTHON, "-c", SENDER, first.ip, second.ip, "9999", payload.hex())
    finish(at_source)
    finish(on_wire)
    (sent,) = read_pcap(sent_pcap)
    (outer,) = read_pcap(wire_pcap)
    assert outer[12:16] == IPv4Address(sender.ip).packed
    assert outer[16:20] == IPv4Address(receiver.ip).packed
    assert outer[9] == 17
    sport, dport, length = struct.unpack("!HHH", outer[20:26])
    inner = outer[28:]
    assert (sport, dport, length) == (PORT, PORT, 8 + len(inner))
    # The container's packet, routed by its host (TTL - 1) and forwarded by the backend
    # (TTL - 1): nothing else differs, and both checksums are valid. (The capture in the
    # container sees the UDP checksum before the kernel has filled it in.)
    assert len(inner) == len(sent)
    assert inner[8] == sent[8] - 2
    assert inner[:8] == sent[:8] and inner[9] == sent[9]
    assert inner[12:26] == sent[12:26] and inner[28:] == sent[28:]
    assert word_checksum(inner[:20]) == 0
    pseudo = inner[12:20] + struct.pack("!BBH", 0, 17, len(inner) - 20)
    assert word_checksum(pseudo + inner[20:]) == 0
    assert inner.endswith(payload)


def test_a_tcp_stream_leaves_one_valid_packet_per_datagram(
    cluster: Cluster, tmp_path: Path
) -> None:
    """With the batched path, TCP super-packets are cut into checksummed segments.

    The sending host's eth0 may carry at most one segment per packet, so the kernel
    segments every UDP_SEGMENT send before the "wire", as a NIC would.
    """
    first, second = cluster.containers
    sender, receiver = cluster.nodes[0].host, cluster.nodes[1].host
    before = [node.stats() for node in cluster.nodes]
    sender.ns.ip("link", "set", "eth0", "gso_max_segs", "1")
    try:
        sink = popen_ready(second.ns, PYTHON, "-c", TCP_SINK, second.ip)
        wire_pcap = tmp_path / "wire.pcap"
        on_wire = capture(receiver.ns, wire_pcap, 300, f"udp and src host {sender.ip}")
        first.ns.run(PYTHON, "-c", TCP_SOURCE, second.ip, str(2_000_000), timeout=30)
        assert finish(sink).strip() == received(2_000_000)
        finish(on_wire)
    finally:
        sender.ns.ip("link", "set", "eth0", "gso_max_segs", "65535")
    datagrams = read_pcap(wire_pcap)
    assert len(datagrams) == 300
    sizes = set()
    for outer in datagrams:
        inner = outer[28:]
        assert struct.unpack("!HH", outer[20:24]) == (PORT, PORT)
        assert struct.unpack("!H", inner[2:4])[0] == len(inner) <= OVERLAY_MTU
        assert word_checksum(inner[:20]) == 0
        assert inner[9] == 6
        pseudo = inner[12:20] + struct.pack("!BBH", 0, 6, len(inner) - 20)
        assert word_checksum(pseudo + inner[20:]) == 0, "TCP checksum"
        sizes.add(len(inner))
    assert max(sizes) == OVERLAY_MTU  # full-sized segments went through
    sent = delta(cluster.nodes[0], before[0])
    if cluster.offload:  # many packets per send
        assert sent["tx_packets"] > 4 * sent["tx_sends"], sent
    else:
        assert sent["tx_packets"] == sent["tx_sends"], sent


STREAM = 20_000_000  # some 0.1 s: long enough for pings to fall between its packets


def test_a_tcp_stream_is_written_to_the_tun_in_few_writes(cluster: Cluster) -> None:
    """Datagrams received together are merged back into TCP super-packets: by the batched
    path before its writes, by the kernel's GRO after the plain path's."""
    first, second = cluster.containers
    before = cluster.nodes[1].stats()
    sink = popen_ready(second.ns, PYTHON, "-c", TCP_SINK, second.ip)
    # Pings between the stream's super-packets: the sender switches from cutting a group
    # of super-packets to gathering single packets and back, in order.
    pings = first.ns.popen(
        "ping", "-q", "-n", "-c", "40", "-i", "0.005", "-W", "2", second.ip,
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    first.ns.run(PYTHON, "-c", TCP_SOURCE, second.ip, str(STREAM), timeout=30)
    assert finish(sink).strip() == received(STREAM)
    got = delta(cluster.nodes[1], before)
    # A stream that fills a queue on the way may cost a ping, as on any network (once in some
    # 200 runs here); a path that lost packets when it switches between grouped
    # super-packets and single packets would lose a ping at nearly every switch.
    replies = ping_replies(finish(pings))
    assert replies >= 38, (replies, got, cluster.nodes[0].stats())
    assert got["rx_packets"] >= STREAM // (OVERLAY_MTU - 52)
    if cluster.offload:
        assert got["rx_packets"] > 4 * got["rx_writes"], got
    else:
        assert got["rx_packets"] == got["rx_writes"], got
        # GRO hands the receiver large packets, so it ACKs (tx_packets) rarely.
        assert got["rx_packets"] > 6 * got["tx_packets"], got


def test_a_path_mtu_below_the_segment_size_still_carries_traffic(cluster: Cluster) -> None:
    """Datagrams too big for the route are fragmented by the kernel instead of lost.

    A segmented send is refused outright then (EINVAL); the batched path falls back to
    sending its packets one by one.
    """
    first, second = cluster.containers
    sender, receiver = cluster.nodes[0].host, cluster.nodes[1].host
    before = cluster.nodes[0].stats()
    sender.ns.ip("route", "add", f"{receiver.ip}/32", "dev", "eth0", "mtu", "1400")
    try:
        sink = popen_ready(second.ns, PYTHON, "-c", TCP_SINK, second.ip)
        first.ns.run(PYTHON, "-c", TCP_SOURCE, second.ip, str(500_000), timeout=30)
        assert finish(sink).strip() == received(500_000)
    finally:
        sender.ns.ip("route", "del", f"{receiver.ip}/32", "dev", "eth0")
    sent = delta(cluster.nodes[0], before)
    assert sent["send_failed"] == 0, sent
    assert sent["tx_packets"] == sent["tx_sends"], sent  # one by one, as it had to be


def ping_replies(summary: str) -> int:
    """The replies counted in ping's summary line ("40 packets transmitted, 39 received")."""
    match = re.search(r"(\d+) received", summary)
    assert match is not None, summary
    return int(match.group(1))


def delta(node: Node, before: dict[str, int]) -> dict[str, int]:
    """How the node's counters moved since ``before`` (they are written every 0.2 s)."""
    time.sleep(0.5)
    return {key: value - before.get(key, 0) for key, value in node.stats().items()}


def test_unknown_and_malformed_datagrams_never_reach_a_container(
    cluster: Cluster,
) -> None:
    node = cluster.nodes[1]
    target = cluster.containers[1]
    peer = cluster.nodes[0].host
    before = node.stats()
    listener = popen_ready(target.ns, PYTHON, "-c", LISTENER, "9999", "15")
    good = inner_udp("10.4.1.2", target.ip, b"should not arrive")
    cluster.stranger.ns.run(
        PYTHON, "-c", SENDER, cluster.stranger.ip, node.host.ip, str(PORT), good.hex()
    )
    bad_sum = bytearray(good)
    bad_sum[10] ^= 0xFF
    malformed = [
        b"short",  # too short
        b"\x60" + good[1:],  # not IPv4
        b"\x44" + good[1:],  # header length below 20 bytes
        good + b"trailing",  # total length differs from the datagram
        bytes(bad_sum),  # header checksum
        inner_udp("10.4.1.2", "10.4.9.9", b"elsewhere"),  # not our subnet
        inner_udp("10.4.1.2", target.ip, b"dying", ttl=1),  # TTL would reach 0
    ]
    hexes = [packet.hex() for packet in malformed]
    peer.ns.run(PYTHON, "-c", SENDER, peer.ip, node.host.ip, str(PORT), *hexes)
    expected = {
        "unknown_peer": 1, "too_short": 1, "not_ipv4": 1, "bad_header_length": 1,
        "bad_total_length": 1, "bad_checksum": 1, "foreign_destination": 1, "ttl_expired": 1,
    }  # fmt: skip

    def moved(stats: dict[str, int]) -> bool:
        return all(stats.get(k, 0) - before.get(k, 0) >= n for k, n in expected.items())

    assert node.wait_stats(moved), (before, node.stats())
    control = inner_udp("10.4.1.2", target.ip, b"control")
    peer.ns.run(PYTHON, "-c", SENDER, peer.ip, node.host.ip, str(PORT), control.hex())
    received = json.loads(finish(listener))
    assert received == [b"control".hex()]


def test_unleased_destinations_get_net_unreachable(cluster: Cluster) -> None:
    first = cluster.containers[0]
    node = cluster.nodes[0]
    before = node.stats().get("no_route", 0)
    out = first.ns.run(PYTHON, "-c", CONNECT, "10.4.99.1", timeout=15).stdout.split()
    assert out[0] == "101", out  # ENETUNREACH, at once: the ICMP reached the container
    assert float(out[1]) < 2
    assert node.wait_stats(lambda stats: stats.get("no_route", 0) > before)


def test_accept_unknown_peers_lets_any_source_in(topology: TopologyFactory, tmp_path: Path) -> None:
    topo = topology(2)
    cluster = build_cluster(topo, {"Type": "udp", "AcceptUnknownPeers": True}, tmp_path)
    node, target = cluster.nodes[1], cluster.containers[1]
    listener = popen_ready(target.ns, PYTHON, "-c", LISTENER, "9999", "10")
    control = inner_udp("10.4.1.2", target.ip, b"control")
    cluster.stranger.ns.run(
        PYTHON, "-c", SENDER, cluster.stranger.ip, node.host.ip, str(PORT), control.hex()
    )
    assert json.loads(finish(listener)) == [b"control".hex()]
    assert node.stats().get("unknown_peer", 0) == 0
