"""What the iptables tests share: the rule lines of facts §9.2 as ``iptables-save``
prints them, and a UDP echo that tells a sender which source address arrived (to see
whether traffic was masqueraded)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from support.netns import Namespace

MC = '-m comment --comment "flanneld masq"'
FC = '-m comment --comment "flanneld forward"'
ECHO_PORT = 9999

# A TCP connect to port 80 of argv[1]; prints the errno and the seconds it took to fail
# (an ICMP "net unreachable" fails it at once, a silent drop only at the timeout).
CONNECT = """
import socket, sys, time
sock = socket.socket()
sock.settimeout(5)
start = time.monotonic()
try:
    sock.connect((sys.argv[1], 80))
except OSError as exc:
    print(exc.errno, round(time.monotonic() - start, 2))
"""


def masq_lines(net: str, sub: str, random_fully: bool = True) -> list[str]:
    """The masquerade rules (without the chain declaration)."""
    rf = " --random-fully" if random_fully else ""
    return [
        f"-A POSTROUTING {MC} -j FLANNEL-POSTRTG",
        f"-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 {MC} -j RETURN",
        f"-A FLANNEL-POSTRTG -s {sub} -d {net} {MC} -j RETURN",
        f"-A FLANNEL-POSTRTG -s {net} -d {sub} {MC} -j RETURN",
        f"-A FLANNEL-POSTRTG ! -s {net} -d {sub} {MC} -j RETURN",
        f"-A FLANNEL-POSTRTG -s {net} ! -d 224.0.0.0/4 {MC} -j MASQUERADE{rf}",
        f"-A FLANNEL-POSTRTG ! -s {net} -d {net} {MC} -j MASQUERADE{rf}",
    ]


def forward_lines(net: str) -> list[str]:
    """The FORWARD rules (without the chain declaration)."""
    return [
        f"-A FORWARD {FC} -j FLANNEL-FWD",
        f"-A FLANNEL-FWD -s {net} {FC} -j ACCEPT",
        f"-A FLANNEL-FWD -d {net} {FC} -j ACCEPT",
    ]


# Bounded: answers at most 100 datagrams, then exits.
LISTENER = f"""
import socket
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("0.0.0.0", {ECHO_PORT}))
print("ready", flush=True)
for _ in range(100):
    data, peer = sock.recvfrom(2048)
    print(peer[0], flush=True)
    try:
        sock.sendto(peer[0].encode(), peer)
    except OSError:  # no route back to an address that was not masqueraded
        pass
"""
# Bounded: six tries of half a second.
PROBE = f"""
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.settimeout(0.5)
for _ in range(6):
    sock.sendto(b"who am i", (sys.argv[1], {ECHO_PORT}))
    try:
        print(sock.recv(2048).decode())
        break
    except TimeoutError:
        pass
"""


def seen_as(src: Namespace, dst: str) -> str:
    """The source address the listener at ``dst`` saw, as it echoes it ('' if no answer)."""
    return src.run(sys.executable, "-c", PROBE, dst, timeout=10).stdout.strip()


def start_listener(ns: Namespace, log: Path) -> None:
    """Start the UDP echo in ``ns`` (stopped with the namespace); wait until it listens."""
    with log.open("w") as out:
        proc = ns.popen(sys.executable, "-u", "-c", LISTENER, stdout=out)
    deadline = time.monotonic() + 10
    while not log.read_text().startswith("ready"):
        assert proc.poll() is None and time.monotonic() < deadline, "listener did not start"
        time.sleep(0.05)
