"""Fixtures and hooks shared by every test.

Tests marked `netns`, `etcd` or `e2e` are skipped with the reason when this machine cannot
run them (not root, no `ip`, no etcd binary). Whatever a test leaves behind (processes,
`pft-` namespaces of this process) is removed when the session ends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from support import etcd as etcd_support
from support import netns
from support.etcd import EtcdServer
from support.netns import Topology, TopologyFactory
from support.scripted import ScriptedServers, Start

_NEEDS = {
    "netns": (netns.unavailable,),
    "etcd": (etcd_support.unavailable,),
    "e2e": (netns.unavailable, etcd_support.unavailable),
}


def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker, checks in _NEEDS.items():
        if item.get_closest_marker(marker) is None:
            continue
        for check in checks:
            reason = check()
            if reason is not None:
                pytest.skip(reason)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The safety net: processes first (they may hold namespaces), then our namespaces."""
    netns.cleanup()


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    """A single etcd (v3 API only) on loopback, stopped and deleted after the test."""
    etcd_support.skip_unless_available()
    with EtcdServer(tmp_path / "etcd") as server:
        yield server


@pytest.fixture
def etcd_v2(tmp_path: Path) -> Iterator[EtcdServer]:
    """Like `etcd`, with the v2 API enabled (`ETCDCTL_API=2 etcdctl set` works)."""
    etcd_support.skip_unless_available()
    with EtcdServer(tmp_path / "etcd", enable_v2=True) as server:
        yield server


@pytest.fixture
def topology() -> Iterator[TopologyFactory]:
    """Build `Topology` objects; all are torn down when the test ends, pass or fail."""
    netns.skip_unless_available()
    made: list[Topology] = []

    def make(
        hosts: int = 2, *, underlay: str = netns.DEFAULT_UNDERLAY, ipv6: bool = False
    ) -> Topology:
        made.append(Topology(hosts, underlay=underlay, ipv6=ipv6))
        return made[-1]

    try:
        yield make
    finally:
        for built in reversed(made):
            built.close()


@pytest.fixture
async def scripted() -> AsyncIterator[Start]:
    """Start scripted HTTP servers on loopback (`support.scripted`); closed after the test."""
    servers = ScriptedServers()
    try:
        yield servers.start
    finally:
        servers.close()
