"""Devices, addresses and route lookups through our rtnetlink code, against the kernel.

Each test gets a namespace with ``eth0`` (a veth whose peer ``eth0p`` is enslaved to a
bridge ``br0``, all inside the namespace) at 198.51.100.11/24 and a default route.
The code under test runs on a thread that joined the namespace; iproute2 is the
independent witness of what the kernel holds.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine, Iterator
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any, TypeVar

import pytest
from support import netns, nsjoin
from support.netns import Namespace

from pyflannel.backends.udp import tun
from pyflannel.backends.vxlan.device import DeviceSpec, ensure_device
from pyflannel.errors import BackendError
from pyflannel.netlink.hostinfo import read_host, route_to
from pyflannel.netlink.ops import NetlinkOps, VxlanAttrs
from pyflannel.netlink.rtnl import links
from pyflannel.netlink.rtnl.transport import RtnlSocket

pytestmark = pytest.mark.netns
T = TypeVar("T")
HOST_IP = "198.51.100.11"


def run_in(ns: Namespace, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``make()`` on an event loop in a thread inside ``ns``; re-raise its error."""
    return nsjoin.run_in(ns.name, make, timeout=30)


def with_ops(call: Callable[[NetlinkOps], Coroutine[Any, Any, T]]) -> Callable[[], Any]:
    async def main() -> T:
        async with NetlinkOps() as ops:
            return await call(ops)

    return main


def show(ns: Namespace, *args: str) -> Any:
    return json.loads(ns.ip("-j", *args).stdout or "[]")


@pytest.fixture
def host() -> Iterator[Namespace]:
    netns.skip_unless_available()
    with Namespace("rtnl") as ns:
        ns.ip("link", "add", "br0", "type", "bridge")
        ns.ip("link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
        ns.ip("link", "set", "eth0p", "master", "br0", "up")
        ns.ip("link", "set", "br0", "up")
        ns.ip("link", "set", "eth0", "up")
        ns.ip("addr", "add", f"{HOST_IP}/24", "dev", "eth0")
        ns.ip("route", "add", "default", "via", "198.51.100.1", "metric", "50")
        yield ns


def eth0_index(ns: Namespace) -> int:
    return int(show(ns, "link", "show", "eth0")[0]["ifindex"])


def spec(ns: Namespace, port: int = 8472) -> DeviceSpec:
    attrs = VxlanAttrs(1, eth0_index(ns), IPv4Address(HOST_IP), port, False, False)
    return DeviceSpec("flannel.1", attrs, 1450)


def test_every_device_decodes_as_iproute2_shows_it(host: Namespace) -> None:
    async def dump() -> list[links.Link]:
        async with RtnlSocket() as sock:
            return await sock.dump(links.link_dump(), links.parse_link)

    found = {link.name: link for link in run_in(host, dump)}
    for dev in show(host, "-d", "link", "show"):
        link = found[dev["ifname"]]
        kind = dev.get("linkinfo", {}).get("info_kind", "")
        master = show(host, "link", "show", dev["master"])[0]["ifindex"] if "master" in dev else 0
        assert (link.index, link.mtu, link.kind, link.master) == (
            dev["ifindex"], dev["mtu"], kind, master
        )  # fmt: skip
        assert link.mac == dev.get("address", "")
        assert bool(link.flags & links.IFF_UP) == ("UP" in dev["flags"])
        assert (link.operstate == links.IF_OPER_UP) == (dev["operstate"] == "UP")
    assert found["eth0p"].master == found["br0"].index


def test_a_vxlan_device_is_created_and_read_back(host: Namespace) -> None:
    wanted = spec(host)

    async def create(ops: NetlinkOps) -> Any:
        await ops.create_vxlan("flannel.1", wanted.attrs, mac="02:00:00:00:00:07", mtu=1450)
        return await ops.link("flannel.1")

    state = run_in(host, with_ops(create))
    (dev,) = show(host, "-d", "link", "show", "flannel.1")
    data = dev["linkinfo"]["info_data"]
    assert (data["id"], data["local"], data["link"], data["port"]) == (1, HOST_IP, "eth0", 8472)
    assert data["learning"] is False and "gbp" not in data
    assert (dev["mtu"], dev["address"], dev["ifindex"]) == (1450, "02:00:00:00:00:07", state.index)
    assert (state.kind, state.mac, state.up, state.vxlan) == (
        "vxlan", "02:00:00:00:00:07", False, wanted.attrs
    )  # fmt: skip


def test_a_compatible_device_is_reused_with_its_mac(host: Namespace) -> None:
    host.ip("link", "add", "flannel.1", "address", "02:aa:bb:cc:dd:ee", "mtu", "1400",
            "type", "vxlan", "id", "1", "dstport", "8472", "dev", "eth0",
            "local", HOST_IP, "nolearning")  # fmt: skip
    before = show(host, "link", "show", "flannel.1")[0]["ifindex"]
    link = run_in(host, with_ops(lambda ops: ensure_device(ops, spec(host), None)))
    (dev,) = show(host, "link", "show", "flannel.1")
    assert (dev["ifindex"], dev["address"], dev["mtu"]) == (before, "02:aa:bb:cc:dd:ee", 1450)
    assert (link.index, link.mac, link.mtu) == (before, "02:aa:bb:cc:dd:ee", 1450)


def test_an_incompatible_device_is_replaced(host: Namespace) -> None:
    host.ip("link", "add", "flannel.1", "address", "02:aa:bb:cc:dd:ee", "type", "vxlan",
            "id", "1", "dstport", "4789", "dev", "eth0", "local", HOST_IP)  # fmt: skip
    mac = "02:00:00:00:00:42"  # the MAC our lease advertises: kept across the recreation
    link = run_in(host, with_ops(lambda ops: ensure_device(ops, spec(host), mac)))
    (dev,) = show(host, "-d", "link", "show", "flannel.1")
    assert dev["linkinfo"]["info_data"]["port"] == 8472
    assert dev["linkinfo"]["info_data"]["learning"] is False
    assert (dev["address"], link.mac, link.index) == (mac, mac, dev["ifindex"])


def test_a_refused_request_says_why(host: Namespace) -> None:
    attrs = spec(host).attrs

    async def twice(ops: NetlinkOps) -> None:
        await ops.create_vxlan("flannel.1", attrs, mac="02:00:00:00:00:01", mtu=1450)
        await ops.create_vxlan("flannel.2", attrs, mac="02:00:00:00:00:02", mtu=1450)

    with pytest.raises(BackendError, match=r"cannot create device flannel\.2: File exists"):
        run_in(host, with_ops(twice))
    assert run_in(host, with_ops(lambda ops: ops.link("flannel.2"))) is None


def test_addresses_are_added_listed_and_removed(host: Namespace) -> None:
    index = eth0_index(host)
    extra = IPv4Interface("10.5.1.0/32")

    async def cycle(ops: NetlinkOps) -> list[list[IPv4Interface]]:
        seen = [await ops.addresses(index)]
        await ops.add_address(index, extra)
        await ops.add_address(index, extra)  # present already: fine
        seen.append(await ops.addresses(index))
        await ops.delete_address(index, extra)
        await ops.delete_address(index, extra)  # absent already: fine
        seen.append(await ops.addresses(index))
        return seen

    before, during, after = run_in(host, with_ops(cycle))
    assert before == after == [IPv4Interface(f"{HOST_IP}/24")]
    assert during == [IPv4Interface(f"{HOST_IP}/24"), extra]
    assert show(host, "-4", "addr", "show", "dev", "eth0")[0]["addr_info"][0]["prefixlen"] == 24
    assert run_in(host, with_ops(lambda ops: ops.addresses(9999))) == []


def test_the_host_snapshot_and_route_lookups(host: Namespace) -> None:
    async def read() -> Any:
        async with RtnlSocket() as sock:
            near = await route_to(sock, IPv4Address("198.51.100.77"))
            none = await route_to(sock, IPv4Address("127.1.2.3"))
            host.ip("route", "del", "default")
            lost = await route_to(sock, IPv4Address("192.0.2.1"))
            return await read_host(sock), near, none, lost

    snapshot, near, local, lost = run_in(host, read)
    index = eth0_index(host)
    eth0 = next(link for link in snapshot.links if link.name == "eth0")
    assert (eth0.index, eth0.mtu, eth0.up) == (index, 1500, True)
    assert [(str(a.address), a.prefixlen, a.permanent) for a in eth0.addrs] == [(HOST_IP, 24, True)]
    assert [link.index for link in snapshot.links] == sorted(link.index for link in snapshot.links)
    assert snapshot.default_routes == ()  # deleted before the snapshot was read
    assert (near.oif, near.prefsrc, near.error) == (index, IPv4Address(HOST_IP), None)
    assert local.oif == 1  # loopback
    assert (lost.oif, lost.error) == (None, "Network is unreachable")


def test_default_routes_with_metrics_and_several_hops(host: Namespace) -> None:
    host.ip("link", "add", "eth1", "type", "veth", "peer", "name", "eth1p")
    host.ip("link", "set", "eth1", "up")
    host.ip("addr", "add", "192.0.2.10/24", "dev", "eth1")
    host.ip("route", "add", "default", "metric", "70", "nexthop", "via", "198.51.100.1",
            "dev", "eth0", "nexthop", "via", "192.0.2.1", "dev", "eth1")  # fmt: skip

    async def read() -> Any:
        async with RtnlSocket() as sock:
            return await read_host(sock)

    snapshot = run_in(host, read)
    eth1 = int(show(host, "link", "show", "eth1")[0]["ifindex"])
    assert sorted((r.metric, r.oifs) for r in snapshot.default_routes) == [
        (50, (eth0_index(host),)),
        (70, (eth0_index(host), eth1)),
    ]


def test_the_tun_device_is_set_up_as_flanneld_does(host: Namespace) -> None:
    network = IPv4Network("10.5.0.0/16")

    async def setup() -> tun.Tun:
        device = tun.open_tun()
        try:
            await tun.prepare_link(device.name, 1472)
            await tun.address_link(device.name, IPv4Address("10.5.34.0"), network)
            await tun.address_link(device.name, IPv4Address("10.5.34.0"), network)  # again: fine
            (dev,) = show(host, "-d", "link", "show", device.name)
            addrs = show(host, "-4", "addr", "show", "dev", device.name)[0]["addr_info"]
            routes = show(host, "-d", "route", "show", "dev", device.name)
            ipv6 = host.run("cat", f"/proc/sys/net/ipv6/conf/{device.name}/disable_ipv6").stdout
        finally:
            tun.close_tun(device)
        assert (dev["mtu"], dev["linkinfo"]["info_kind"], "UP" in dev["flags"]) == (
            1472, "tun", True
        )  # fmt: skip
        assert [(a["local"], a["prefixlen"]) for a in addrs] == [("10.5.34.0", 32)]
        assert [(r["dst"], r["protocol"], r["scope"]) for r in routes] == [
            ("10.5.0.0/16", "boot", "global")
        ]
        assert ipv6.strip() == "1"
        return device

    device = run_in(host, setup)
    assert device.name == "flannel0"
    assert not host.has_link("flannel0")  # gone with its file descriptor
