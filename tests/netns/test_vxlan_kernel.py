"""The vxlan backend against the real kernel, inside a namespace of the test.

The namespace is a host with ``eth0`` (a veth whose peer stays in the namespace, so
the carrier is up) at 198.51.100.11/24. The backend runs on an event loop in a
thread that has joined the namespace (setns changes only the calling thread), so
its netlink sockets and /proc/sys writes land there; the test thread checks the
result with iproute2, as an operator would.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from ipaddress import IPv4Address
from typing import Any, TypeVar

import pytest
from support import netns, nsjoin
from support.factories import lease
from support.netns import Namespace

from pyflannel.aio import spawn
from pyflannel.backend import BackendContext, ExternalInterface, Prepared
from pyflannel.backends.vxlan import VxlanBackend
from pyflannel.channel import PeerChannel
from pyflannel.model.config import parse_config
from pyflannel.model.lease import Lease, LeaseFormat
from pyflannel.netlink.ops import NetlinkOps
from pyflannel.options import Options

pytestmark = pytest.mark.netns
T = TypeVar("T")
HOST_IP = "198.51.100.11"
OWN = lease("10.5.1.0/24", HOST_IP, backend_type="vxlan")
CONFIG = '{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}'


def peer(n: int, mac: str | None = None, public_ip: str | None = None) -> Lease:
    mac = mac or f"02:00:00:00:00:{n:02x}"
    return lease(
        f"10.5.{n}.0/24",
        public_ip or f"203.0.113.{n}",
        backend_type="vxlan",
        backend_data=f'{{"VNI":1,"VtepMAC":"{mac}"}}',
    )


class NsLoop:
    """An asyncio loop on a thread inside a namespace; the test submits coroutines."""

    def __init__(self, ns: str) -> None:
        self.loop = asyncio.new_event_loop()
        joined = threading.Event()
        failure: list[BaseException] = []

        def main() -> None:
            try:
                nsjoin.join(ns)
            except BaseException as exc:
                failure.append(exc)
                joined.set()
                return
            asyncio.set_event_loop(self.loop)
            joined.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=main, name=f"loop-{ns}", daemon=True)
        self.thread.start()
        joined.wait(10)
        if failure:
            raise failure[0]

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 15.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, func: Callable[..., Any], *args: Any) -> None:
        self.loop.call_soon_threadsafe(func, *args)

    def close(self) -> None:
        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self.thread.is_alive():
            self.run(cancel_all())
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
        self.loop.close()


class Node:
    """One VxlanBackend in the namespace, as the daemon would drive it."""

    def __init__(self, box: Box, config: str = CONFIG) -> None:
        self.box = box
        iface = ExternalInterface(
            "eth0", box.eth0_index, 1500, IPv4Address(HOST_IP), IPv4Address(HOST_IP)
        )
        ctx = BackendContext(parse_config(config), iface, Options(), LeaseFormat.V3)
        self.backend = VxlanBackend(ctx)
        self.channel = PeerChannel()
        self.task: asyncio.Task[None] | None = None

    def start(self, peers: list[Lease] | None = None, own: Lease = OWN) -> Prepared:
        prepared = self.box.loop.run(self.backend.prepare())

        async def launch() -> None:
            self.task = spawn(self.backend.run(own, aiter(self.channel)), name="vxlan-run")

        self.box.loop.run(launch())
        if peers is not None:
            self.publish(peers)
        return prepared

    def publish(self, peers: list[Lease]) -> None:
        snapshot = tuple(peers)
        self.box.loop.call(self.channel.publish, (), lambda: snapshot)

    def stop(self) -> None:
        async def halt() -> None:
            if self.task is not None:
                self.task.cancel()
                await asyncio.gather(self.task, return_exceptions=True)
            await self.backend.close()

        self.box.loop.run(halt())


class Box:
    """The namespace, its loop, and iproute2 views of what the kernel holds."""

    def __init__(self, ns: Namespace) -> None:
        self.ns = ns
        ns.ip("link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
        ns.ip("link", "set", "eth0p", "up")
        ns.ip("link", "set", "eth0", "up")
        ns.ip("addr", "add", f"{HOST_IP}/24", "dev", "eth0")
        self.eth0_index = self.link("eth0")["ifindex"]
        self.loop = NsLoop(ns.name)

    def json(self, *cmd: str) -> Any:
        out = netns.run(*cmd[:1], "-n", self.ns.name, "-j", *cmd[1:]).stdout
        return json.loads(out or "[]")

    def link(self, name: str = "flannel.1") -> dict[str, Any]:
        (info,) = self.json("ip", "-d", "link", "show", name)
        return info  # type: ignore[no-any-return]

    def routes(self, *where: str) -> set[tuple[str, str, str]]:
        found = self.json("ip", "route", "show", *(where or ("dev", "flannel.1")))
        return {(r["dst"], r.get("gateway", ""), ",".join(r.get("flags", []))) for r in found}

    def neighbours(self) -> set[tuple[str, str, str]]:
        found = self.json("ip", "neigh", "show", "dev", "flannel.1")
        return {(n["dst"], n.get("lladdr", ""), ",".join(n["state"])) for n in found}

    def fdb(self) -> set[tuple[str, str, str]]:
        found = self.json("bridge", "fdb", "show", "dev", "flannel.1")
        return {(f["mac"], f["dst"], str(f.get("state", ""))) for f in found}

    def wait_for(self, check: Callable[[], bool], timeout: float = 5.0) -> float:
        """Seconds until ``check()`` holds; fail after ``timeout``."""
        started = time.monotonic()
        while not check():
            if time.monotonic() - started > timeout:
                raise AssertionError(f"not reached within {timeout} s")
            time.sleep(0.05)
        return time.monotonic() - started


def expected(*peers: Lease) -> tuple[set[Any], set[Any], set[Any]]:
    """What iproute2 shows on flannel.1 for these vxlan peers."""
    routes, neighbours, fdb = set(), set(), set()
    for p in peers:
        net = p.subnet
        mac = json.loads(p.attrs.backend_data or "{}")["VtepMAC"]
        routes.add((str(net), str(net.network_address), "onlink"))
        neighbours.add((str(net.network_address), mac, "PERMANENT"))
        fdb.add((mac, str(p.attrs.public_ip), "permanent"))
    return routes, neighbours, fdb


def holds(box: Box, *peers: Lease) -> Callable[[], bool]:
    want = expected(*peers)
    return lambda: (box.routes(), box.neighbours(), box.fdb()) == want


@pytest.fixture
def box() -> Iterator[Box]:
    netns.skip_unless_available()
    with Namespace("vx") as ns:
        the_box = Box(ns)
        try:
            yield the_box
        finally:
            the_box.loop.close()


def test_device_has_flanneld_attributes(box: Box) -> None:
    node = Node(box)
    prepared = node.start([])
    try:
        mac = json.loads(prepared.backend_data or "")["VtepMAC"]
        assert prepared.backend_type == "vxlan"
        assert prepared.backend_data == f'{{"VNI":1,"VtepMAC":"{mac}"}}'
        assert prepared.mtu == 1450
        box.wait_for(lambda: "UP" in box.link()["flags"])
        link = box.link()
        data = link["linkinfo"]["info_data"]
        assert link["linkinfo"]["info_kind"] == "vxlan"
        assert (data["id"], data["local"], data["link"], data["port"]) == (1, HOST_IP, "eth0", 8472)
        assert data["learning"] is False
        assert link["mtu"] == 1450
        assert link["address"] == mac
        assert int(mac[:2], 16) & 0b11 == 0b10  # locally administered, unicast
        addrs = box.json("ip", "-4", "addr", "show", "dev", "flannel.1")[0]["addr_info"]
        assert [(a["local"], a["prefixlen"]) for a in addrs] == [("10.5.1.0", 32)]
        accept_ra = box.ns.run("cat", "/proc/sys/net/ipv6/conf/flannel.1/accept_ra").stdout
        assert accept_ra.strip() == "0"
    finally:
        node.stop()


def test_restart_reuses_the_device_with_its_mac(box: Box) -> None:
    first = Node(box)
    before = first.start([peer(2)])
    box.wait_for(holds(box, peer(2)))
    index = box.link()["ifindex"]
    first.stop()
    second = Node(box)
    after = second.start([peer(2)])
    try:
        assert after.backend_data == before.backend_data
        assert box.link()["ifindex"] == index
        box.wait_for(holds(box, peer(2)))
    finally:
        second.stop()


def test_an_incompatible_device_is_recreated(box: Box) -> None:
    box.ns.ip("link", "add", "flannel.1", "address", "02:11:11:11:11:11", "type", "vxlan",
              "id", "1", "dstport", "4789", "dev", "eth0", "local", HOST_IP)  # fmt: skip
    node = Node(box)
    prepared = node.start([peer(2)])
    try:
        mac = json.loads(prepared.backend_data or "")["VtepMAC"]
        assert mac != "02:11:11:11:11:11"
        assert box.link()["linkinfo"]["info_data"]["port"] == 8472
        box.wait_for(holds(box, peer(2)))
    finally:
        node.stop()


def test_entries_follow_the_peer_set_exactly(box: Box) -> None:
    # Entries that are not ours must survive: a route and a neighbour on eth0.
    box.ns.ip("route", "add", "10.5.77.0/24", "via", "198.51.100.77", "dev", "eth0")
    box.ns.ip("neigh", "add", "198.51.100.77", "lladdr", "02:77:77:77:77:77", "dev", "eth0")
    node = Node(box)
    node.start([peer(2), peer(3), peer(4)])
    try:
        box.wait_for(holds(box, peer(2), peer(3), peer(4)))
        moved = peer(3, mac="02:00:00:00:03:33", public_ip="203.0.113.33")
        node.publish([peer(2), moved])
        box.wait_for(holds(box, peer(2), moved))
        node.publish([])
        box.wait_for(holds(box))
        assert ("10.5.77.0/24", "198.51.100.77", "") in box.routes("dev", "eth0")
        eth0_neigh = box.json("ip", "neigh", "show", "dev", "eth0")
        assert [n["dst"] for n in eth0_neigh] == ["198.51.100.77"]
    finally:
        node.stop()


def test_entries_deleted_by_hand_come_back_quickly(box: Box) -> None:
    node = Node(box)
    node.start([peer(2), peer(3)])
    try:
        box.wait_for(holds(box, peer(2), peer(3)))
        box.ns.ip("route", "del", "10.5.2.0/24")
        box.ns.ip("neigh", "del", "10.5.3.0", "dev", "flannel.1")
        netns.run("bridge", "-n", box.ns.name, "fdb", "del", "02:00:00:00:00:02",
                  "dev", "flannel.1", "dst", "203.0.113.2")  # fmt: skip
        box.ns.ip("neigh", "replace", "10.5.2.0", "lladdr", "02:99:99:99:99:99",
                  "dev", "flannel.1", "nud", "permanent")  # fmt: skip
        # Deletions are noticed at once; the changed neighbour by the same pass.
        assert box.wait_for(holds(box, peer(2), peer(3)), timeout=10) < 2.0
    finally:
        node.stop()


def test_stale_entries_from_before_the_start_are_removed(box: Box) -> None:
    first = Node(box)
    first.start([peer(2), peer(3)])
    box.wait_for(holds(box, peer(2), peer(3)))
    first.stop()
    box.ns.ip("route", "add", "10.5.9.0/24", "dev", "flannel.1")  # someone else's leftover
    second = Node(box)
    second.start([peer(3)])
    try:
        box.wait_for(holds(box, peer(3)))
    finally:
        second.stop()


def test_a_deleted_device_is_recreated_with_its_mac(box: Box) -> None:
    node = Node(box)
    prepared = node.start([peer(2)])
    try:
        box.wait_for(holds(box, peer(2)))
        mac = json.loads(prepared.backend_data or "")["VtepMAC"]
        box.ns.ip("link", "del", "flannel.1")
        box.wait_for(lambda: box.ns.has_link("flannel.1") and holds(box, peer(2))(), timeout=10)
        assert box.link()["address"] == mac
        assert "UP" in box.link()["flags"]
    finally:
        node.stop()


def test_direct_routing_for_peers_on_our_l2_network(box: Box) -> None:
    config = '{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","DirectRouting":true}}'
    near = peer(4, public_ip="198.51.100.14")
    node = Node(box, config)
    node.start([near, peer(2)])
    try:
        box.wait_for(holds(box, peer(2)))
        direct = box.json("ip", "route", "show", "proto", "160")
        assert [(r["dst"], r["gateway"], r["dev"]) for r in direct] == [
            ("10.5.4.0/24", "198.51.100.14", "eth0")
        ]
    finally:
        node.stop()
    # Without DirectRouting the same peer goes through the tunnel; the old route goes.
    plain = Node(box)
    plain.start([near, peer(2)])
    try:
        box.wait_for(holds(box, near, peer(2)))
        assert box.json("ip", "route", "show", "proto", "160") == []
    finally:
        plain.stop()


def test_bad_peer_data_is_warned_about_once(box: Box, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="pyflannel.backends.vxlan")
    bad = lease("10.5.8.0/24", "203.0.113.8", backend_type="vxlan", backend_data='{"VtepMAC":1}')
    node = Node(box)
    node.start([bad, peer(2)])
    try:
        box.wait_for(holds(box, peer(2)))
        node.publish([bad, peer(2), peer(3)])
        box.wait_for(holds(box, peer(2), peer(3)))
        warnings = [r.getMessage() for r in caplog.records if "10.5.8.0/24" in r.getMessage()]
        assert warnings == [
            "skipping the vxlan lease for 10.5.8.0/24: BackendData has no VtepMAC string"
        ]
    finally:
        node.stop()


def test_backend_options_reach_the_device_and_survive_a_restart(box: Box) -> None:
    config = json.dumps({
        "Network": "10.5.0.0/16",
        "Backend": {"Type": "vxlan", "VNI": 7, "Port": 4789, "GBP": True, "Learning": True,
                    "MTU": 1400},
    })  # fmt: skip
    first = Node(box, config)
    before = first.start([])
    first.stop()
    second = Node(box, config)
    after = second.start([])
    try:
        assert after.backend_data == before.backend_data
        assert after.mtu == 1350
        link = box.link("flannel.7")
        data = link["linkinfo"]["info_data"]
        assert (data["id"], data["port"], data["learning"], link["mtu"]) == (7, 4789, True, 1350)
        assert data.get("gbp") is True
    finally:
        second.stop()


def test_a_resync_reuses_the_entries_it_parsed_before(box: Box) -> None:
    node = Node(box)
    node.start([peer(2), peer(3)])
    try:
        box.wait_for(holds(box, peer(2), peer(3)))

        async def dump_twice() -> list[tuple[list[Any], list[Any]]]:
            ops = NetlinkOps()
            await ops.open()
            try:
                index = socket.if_nametoindex("flannel.1")
                dumps = (lambda: ops.routes(oif=index), lambda: ops.neighbours(index),
                         lambda: ops.fdb(index))  # fmt: skip
                return [(await dump(), await dump()) for dump in dumps]
            finally:
                await ops.close()

        for first, second in box.loop.run(dump_twice()):
            assert len(first) == 2
            assert all(a is b for a, b in zip(sorted(first), sorted(second), strict=True))
    finally:
        node.stop()
