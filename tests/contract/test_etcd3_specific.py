"""What only the etcd v3 registry has: flanneld's exact bytes and etcd leases, several
endpoints, TLS, user/password authentication, and surviving etcd going away."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import signal
import socket
import time
from collections.abc import AsyncIterator, Iterator
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
from support.etcd import EtcdCluster, EtcdServer, free_port
from support.pki import Pki, make_pki
from support.registries import watching

from pyflannel.aio import spawn
from pyflannel.errors import (
    ConfigError,
    ConfigNotFound,
    RegistryPermissionError,
    RegistryUnavailable,
)
from pyflannel.model.lease import EventKind, LeaseAttrs, WatchBatch
from pyflannel.model.net import SubnetKey
from pyflannel.registry.common import join_key
from pyflannel.registry.etcd3 import Etcd3Registry
from pyflannel.registry.etcdsettings import EtcdSettings, parse_endpoint, use_tls

PREFIX = "/coreos.com/network"
KEY = SubnetKey(IPv4Network("10.5.34.0/24"))
ATTRS = LeaseAttrs(IPv4Address("198.51.100.11"), "vxlan", '{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}')
FLANNELD_VALUE = (
    '{"PublicIP":"198.51.100.11","PublicIPv6":null,"BackendType":"vxlan",'
    '"BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}}'
)
etcd_only = pytest.mark.etcd


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        (("/coreos.com/network", "config"), "/coreos.com/network/config"),
        (("/coreos.com/network/", "subnets"), "/coreos.com/network/subnets"),
        (("//a//b/", "c"), "/a/b/c"),
        (("a/../b", "config"), "b/config"),
        (("", "config"), "config"),
    ],
)
def test_keys_are_joined_like_go_path_join(parts: tuple[str, ...], expected: str) -> None:
    assert join_key(*parts) == expected


def test_tls_applies_to_every_endpoint_or_to_none() -> None:
    def urls(*texts: str, certfile: str = "", keyfile: str = "") -> list[str]:
        settings = EtcdSettings(texts, certfile=certfile, keyfile=keyfile)
        endpoints = [parse_endpoint(t) for t in texts]
        tls = use_tls(settings, endpoints)
        return [e.url(tls) for e in endpoints]

    assert urls("http://10.0.0.1:2379", "http://etcd-b") == [
        "http://10.0.0.1:2379",
        "http://etcd-b:2379",
    ]
    assert urls("http://10.0.0.1:2379", "https://[fd00::2]:4001") == [
        "https://10.0.0.1:2379",
        "https://[fd00::2]:4001",
    ]
    assert urls("http://10.0.0.1", certfile="c.pem", keyfile="k.pem") == ["https://10.0.0.1:2379"]
    assert urls("http://10.0.0.1", certfile="c.pem") == ["http://10.0.0.1:2379"]


@pytest.mark.parametrize(
    "url", ["127.0.0.1:2379", "unix:///run/etcd.sock", "http://:2379", "http://h:x"]
)
def test_bad_endpoints_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError, match="--etcd-endpoints"):
        Etcd3Registry(EtcdSettings((url,)), PREFIX)


def test_unreadable_tls_files_are_config_errors(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.pem")
    with pytest.raises(ConfigError, match="--etcd-cafile"):
        Etcd3Registry(EtcdSettings(("https://127.0.0.1:2379",), cafile=missing), PREFIX)


@pytest.fixture
async def registry(etcd: EtcdServer) -> AsyncIterator[Etcd3Registry]:
    made = Etcd3Registry(EtcdSettings((etcd.endpoint,)), PREFIX)
    try:
        yield made
    finally:
        await made.close()


@etcd_only
async def test_stored_value_and_etcd_lease_match_flanneld(
    etcd: EtcdServer, registry: Etcd3Registry
) -> None:
    await registry.create_lease(KEY, ATTRS, 86400)
    path = f"{PREFIX}/subnets/10.5.34.0-24"
    value = etcd.etcdctl("get", path, "--print-value-only").stdout
    assert value == FLANNELD_VALUE + "\n"
    lease_id = json.loads(etcd.etcdctl("get", path, "-w", "json").stdout)["kvs"][0]["lease"]
    ttl = etcd.etcdctl("lease", "timetolive", f"{lease_id:x}").stdout
    match = re.search(r"granted with TTL\((\d+)s\), remaining\((\d+)s\)", ttl)
    assert match is not None, ttl
    assert int(match[1]) == 86400
    assert 86390 <= int(match[2]) <= 86400


@etcd_only
async def test_missing_config_message_explains_the_v3_api(
    etcd: EtcdServer, registry: Etcd3Registry
) -> None:
    with pytest.raises(ConfigNotFound) as caught:
        await registry.get_network_config()
    message = str(caught.value)
    for part in (f"{PREFIX}/config", etcd.endpoint, "ETCDCTL_API=3 etcdctl put", "etcdctl set"):
        assert part in message


@etcd_only
async def test_a_malformed_lease_is_warned_about_once(
    etcd: EtcdServer, registry: Etcd3Registry, caplog: pytest.LogCaptureFixture
) -> None:
    etcd.etcdctl("put", f"{PREFIX}/subnets/10.5.9.0-24", "{not json")
    with caplog.at_level(logging.WARNING, logger="pyflannel.registry.etcd3"):
        for _ in range(3):
            assert (await registry.list_leases())[0] == []
    assert len([r for r in caplog.records if "10.5.9.0-24" in r.getMessage()]) == 1


@etcd_only
@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_a_dead_first_endpoint_is_skipped(etcd: EtcdServer, host: str) -> None:
    dead = f"http://{host}:{free_port()}"
    registry = Etcd3Registry(EtcdSettings((dead, f"http://{host}:{etcd.client_port}")), PREFIX)
    try:
        for subnet in ("10.5.1.0/24", "10.5.2.0/24"):
            await registry.create_lease(SubnetKey(IPv4Network(subnet)), ATTRS, 60)
        assert len((await registry.list_leases())[0]) == 2
    finally:
        await registry.close()


async def test_unreachable_etcd_is_unavailable_at_once() -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    registry = Etcd3Registry(EtcdSettings((endpoint,)), PREFIX)
    started = time.monotonic()
    try:
        with pytest.raises(RegistryUnavailable, match=re.escape(endpoint)):
            await registry.list_leases()
    finally:
        await registry.close()
    assert time.monotonic() - started < 3


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A port that accepts TCP connections and then never says a word."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


async def test_a_silent_server_times_out(silent_server: str) -> None:
    registry = Etcd3Registry(EtcdSettings((silent_server,), timeout=1.0), PREFIX)
    started = time.monotonic()
    try:
        with pytest.raises(RegistryUnavailable):
            await registry.get_network_config()
    finally:
        await registry.close()
    assert time.monotonic() - started < 4


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


@pytest.fixture
def tls_etcd(tmp_path: Path, pki: Pki) -> Iterator[EtcdServer]:
    with EtcdServer(tmp_path / "etcd-tls", tls=pki) as server:
        yield server


@etcd_only
async def test_tls_with_a_client_certificate(tls_etcd: EtcdServer, pki: Pki) -> None:
    dead = f"https://127.0.0.1:{free_port()}"
    settings = EtcdSettings(
        (dead, tls_etcd.endpoint),
        cafile=str(pki.ca_cert),
        certfile=str(pki.client_cert),
        keyfile=str(pki.client_key),
    )
    registry = Etcd3Registry(settings, PREFIX)
    try:
        assert "TLS" in registry.describe()
        _, since = await registry.list_leases()
        async with watching(registry, since) as watch:
            await registry.create_lease(KEY, ATTRS, 60)
            assert await watch.events_after(1) == [(EventKind.ADDED, "10.5.34.0-24")]
    finally:
        await registry.close()


@etcd_only
async def test_tls_without_a_client_certificate_fails_fast(tls_etcd: EtcdServer, pki: Pki) -> None:
    settings = EtcdSettings((tls_etcd.endpoint,), cafile=str(pki.ca_cert), timeout=2.0)
    registry = Etcd3Registry(settings, PREFIX)
    started = time.monotonic()
    try:
        with pytest.raises((RegistryUnavailable, RegistryPermissionError)):
            await registry.list_leases()
    finally:
        await registry.close()
    assert time.monotonic() - started < 6


@etcd_only
async def test_a_wrong_ca_is_a_clear_error_naming_the_endpoint(
    tls_etcd: EtcdServer, pki: Pki, tmp_path: Path
) -> None:
    other = make_pki(tmp_path / "other-pki")
    settings = EtcdSettings(
        (tls_etcd.endpoint,),
        cafile=str(other.ca_cert),
        certfile=str(pki.client_cert),
        keyfile=str(pki.client_key),
        timeout=2.0,
    )
    registry = Etcd3Registry(settings, PREFIX)
    try:
        with pytest.raises(RegistryUnavailable) as caught:
            await registry.get_network_config()
    finally:
        await registry.close()
    message = str(caught.value)
    for part in (tls_etcd.endpoint, "certificate", f"--etcd-cafile={other.ca_cert}"):
        assert part in message, message


@etcd_only
async def test_a_server_certificate_only_for_serving_is_explained(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki", server_client_auth=False)
    with EtcdServer(tmp_path / "etcd", tls=pki) as server:
        settings = EtcdSettings(
            (server.endpoint,), cafile=str(pki.ca_cert), certfile=str(pki.client_cert),
            keyfile=str(pki.client_key), timeout=3.0,
        )  # fmt: skip
        registry = Etcd3Registry(settings, PREFIX)
        try:
            with pytest.raises(RegistryUnavailable, match="clientAuth extended key usage"):
                await registry.get_network_config()
        finally:
            await registry.close()


@etcd_only
async def test_calls_and_the_watch_move_on_when_the_current_member_stops(
    tmp_path: Path,
) -> None:
    with EtcdCluster(tmp_path / "cluster", size=3) as cluster:
        registry = Etcd3Registry(EtcdSettings(tuple(cluster.endpoints.split(","))), PREFIX)
        try:
            _, since = await registry.list_leases()
            async with watching(registry, since) as watch:
                await registry.create_lease(KEY, ATTRS, 60)
                await watch.events_after(1)
                await asyncio.to_thread(cluster.members[0].stop)  # the member in use
                other = SubnetKey(IPv4Network("10.5.35.0/24"))
                await registry.create_lease(other, ATTRS, 60)
                assert len((await registry.list_leases())[0]) == 2
                assert await watch.events_after(2) == [
                    (EventKind.ADDED, "10.5.34.0-24"),
                    (EventKind.ADDED, "10.5.35.0-24"),
                ]
        finally:
            await registry.close()


@etcd_only
async def test_password_auth_survives_an_etcd_restart(etcd: EtcdServer) -> None:
    etcd.enable_auth("flannel", "secret", prefix=f"{PREFIX}/")

    def make(password: str, prefix: str = PREFIX) -> Etcd3Registry:
        settings = EtcdSettings((etcd.endpoint,), username="flannel", password=password)
        return Etcd3Registry(settings, prefix)

    good, wrong, elsewhere = make("secret"), make("wrong"), make("secret", "/elsewhere")
    try:
        await good.create_lease(KEY, ATTRS, 60)
        with pytest.raises(RegistryPermissionError):
            await wrong.list_leases()
        with pytest.raises(RegistryPermissionError):
            await elsewhere.list_leases()
        _, since = await good.list_leases()
        async with watching(good, since) as watch:
            await asyncio.to_thread(etcd.restart)
            # The old token died with the server: this call has to authenticate again.
            [lease] = (await good.list_leases())[0]
            assert lease.key == KEY
            await good.delete_lease(KEY)
            assert await watch.events_after(1) == [(EventKind.REMOVED, "10.5.34.0-24")]
    finally:
        for registry in (good, wrong, elsewhere):
            await registry.close()


@etcd_only
async def test_a_user_name_on_a_cluster_without_auth_is_ignored(
    etcd: EtcdServer, caplog: pytest.LogCaptureFixture
) -> None:
    settings = EtcdSettings((etcd.endpoint,), username="flannel", password="secret")
    registry = Etcd3Registry(settings, PREFIX)
    try:
        await registry.create_lease(KEY, ATTRS, 60)
    finally:
        await registry.close()
    assert "authentication disabled" in caplog.text


def _outage_logs(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [
        (r.levelno, r.getMessage())
        for r in caplog.records
        if r.name == "pyflannel.registry.etcd3" and ("failed" in r.msg or "resumed" in r.msg)
    ]


@etcd_only
async def test_watch_resumes_after_an_etcd_restart(
    etcd: EtcdServer, registry: Etcd3Registry, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pyflannel.registry.etcd3")
    _, since = await registry.list_leases()
    async with watching(registry, since) as watch:
        await registry.create_lease(KEY, ATTRS, 60)
        await watch.events_after(1)
        await asyncio.to_thread(etcd.stop)
        await asyncio.sleep(1.5)  # several reconnection attempts fail meanwhile
        await asyncio.to_thread(etcd.restart)
        etcd.etcdctl("put", f"{PREFIX}/subnets/10.5.35.0-24", FLANNELD_VALUE)
        assert await watch.events_after(2) == [
            (EventKind.ADDED, "10.5.34.0-24"),
            (EventKind.ADDED, "10.5.35.0-24"),
        ]
    levels = [level for level, _ in _outage_logs(caplog)]
    assert levels == [logging.WARNING, logging.INFO], _outage_logs(caplog)


@etcd_only
async def test_watch_takes_a_snapshot_when_etcd_comes_back_empty(
    etcd: EtcdServer, registry: Etcd3Registry
) -> None:
    for subnet in ("10.5.1.0/24", "10.5.2.0/24", "10.5.3.0/24"):
        await registry.create_lease(SubnetKey(IPv4Network(subnet)), ATTRS, 60)
    _, since = await registry.list_leases()
    async with watching(registry, since) as watch:
        await asyncio.sleep(0.2)
        await asyncio.to_thread(etcd.stop)
        shutil.rmtree(etcd.data_dir)  # a new, empty cluster at revision 1
        await asyncio.to_thread(etcd.restart)
        etcd.etcdctl("put", f"{PREFIX}/subnets/10.5.35.0-24", FLANNELD_VALUE)
        # The put may land before or after the watcher notices the empty store.
        await watch.wait_for(lambda: "10.5.35.0-24" in _names_after_snapshot(watch.batches))
    snapshots = [b.snapshot for b in watch.batches if b.snapshot is not None]
    assert len(snapshots) == 1
    assert {lease.key.name() for lease in snapshots[0]} <= {"10.5.35.0-24"}


def _names_after_snapshot(batches: list[WatchBatch]) -> set[str]:
    """Leases in the last snapshot plus those added after it (nothing before one)."""
    names: set[str] | None = None
    for batch in batches:
        if batch.snapshot is not None:
            names = {lease.key.name() for lease in batch.snapshot}
        elif names is not None:
            names |= {e.lease.key.name() for e in batch.events if e.kind is EventKind.ADDED}
    return names or set()


@etcd_only
async def test_a_closed_registry_ends_its_watch(registry: Etcd3Registry) -> None:
    _, since = await registry.list_leases()

    async def first() -> WatchBatch | None:
        async for batch in registry.watch_leases(since):
            return batch
        return None

    pending = spawn(first(), name="first-batch")
    await asyncio.sleep(0.2)
    await registry.close()
    assert await asyncio.wait_for(pending, 5) is None


@etcd_only
async def test_watch_notices_a_silent_etcd_through_probes(
    etcd: EtcdServer, caplog: pytest.LogCaptureFixture
) -> None:
    # A stopped process answers no probe (though its kernel still acknowledges TCP).
    settings = EtcdSettings((etcd.endpoint,), probe_interval=3.0, probe_timeout=1.0)
    registry = Etcd3Registry(settings, PREFIX)
    caplog.set_level(logging.INFO, logger="pyflannel.registry.etcd3")
    assert etcd.process is not None
    pid = etcd.process.pid
    try:
        _, since = await registry.list_leases()
        async with watching(registry, since) as watch:
            await registry.create_lease(KEY, ATTRS, 60)
            await watch.events_after(1)
            os.kill(pid, signal.SIGSTOP)
            try:
                await _wait_for_outage(caplog, timeout=10)
            finally:
                os.kill(pid, signal.SIGCONT)
            await registry.delete_lease(KEY)
            await watch.events_after(2)
    finally:
        await registry.close()


async def _wait_for_outage(caplog: pytest.LogCaptureFixture, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not _outage_logs(caplog):
            await asyncio.sleep(0.1)


@etcd_only
async def test_listing_many_leases_is_fast(registry: Etcd3Registry) -> None:
    count = 300
    for index in range(count):
        subnet = IPv4Network((0x0A050000 + (index << 8), 24))
        await registry.create_lease(SubnetKey(subnet), ATTRS, 600)
    started = time.monotonic()
    leases, _ = await registry.list_leases()
    elapsed = time.monotonic() - started
    assert len(leases) == count
    assert all(lease.expiration is not None for lease in leases)
    assert elapsed < 1.5, f"listing {count} leases took {elapsed:.2f} s"
