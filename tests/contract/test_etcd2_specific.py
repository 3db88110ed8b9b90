"""The etcd v2 registry against a real etcd 3.4 with ``--enable-v2``: what the shared
contract suite cannot say because it is about the v2 store itself.

Lease values byte-exact with flanneld v0.10, flanneld's HTTP calls (TTL 86400,
``prevExist``, reservations), long polls asked again when quiet, "event index cleared"
and a removed subnets directory turning into snapshots, failover to a second endpoint,
basic auth, TLS, and the message for a server without the v2 API.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Iterator
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import httpx
import pytest
from support.etcd import EtcdServer, free_port
from support.pki import make_pki

from pyflannel.aio import spawn
from pyflannel.errors import (
    ConfigNotFound,
    LeaseConflict,
    RegistryError,
    RegistryPermissionError,
    RegistryUnavailable,
)
from pyflannel.model.lease import EventKind, LeaseAttrs, LeaseFormat, WatchBatch
from pyflannel.model.net import SubnetKey
from pyflannel.options import Options
from pyflannel.registry.etcd2 import Etcd2Registry
from pyflannel.registry.etcdsettings import EtcdSettings
from pyflannel.registry.select import open_registry

pytestmark = pytest.mark.etcd

PREFIX = "/docker-flannel/network"
KEY = SubnetKey(IPv4Network("10.3.7.0/24"))
VXLAN_V010 = LeaseAttrs(IPv4Address("198.51.100.11"), "vxlan", '{"VtepMAC":"82:4b:b6:2f:54:4e"}')
V010_TEXT = (
    '{"PublicIP":"198.51.100.11","BackendType":"vxlan",'
    '"BackendData":{"VtepMAC":"82:4b:b6:2f:54:4e"}}'
)


def registry_for(
    server: EtcdServer,
    *,
    username: str = "",
    password: str = "",
    cafile: str = "",
    certfile: str = "",
    keyfile: str = "",
) -> Etcd2Registry:
    settings = EtcdSettings(
        endpoints=(server.endpoint,), username=username, password=password, cafile=cafile,
        certfile=certfile, keyfile=keyfile,
    )  # fmt: skip
    return Etcd2Registry(settings, PREFIX)


@pytest.fixture
async def registry(etcd_v2: EtcdServer) -> AsyncIterator[Etcd2Registry]:
    reg = registry_for(etcd_v2)
    yield reg
    await reg.close()


def v2get(server: EtcdServer, key: str) -> str:
    """A value as ``ETCDCTL_API=2 etcdctl get`` prints it (without the newline)."""
    return server.etcdctl("get", key, api=2).stdout.removesuffix("\n")


def v2node(server: EtcdServer, key: str) -> dict[str, object]:
    """The raw v2 node of a key, with its ttl and expiration."""
    url = f"{server.endpoint}/v2/keys{key}"
    node: dict[str, object] = httpx.get(url, trust_env=False).json()["node"]
    return node


async def next_batch(watch: AsyncIterator[WatchBatch], timeout: float = 10.0) -> WatchBatch:
    return await asyncio.wait_for(anext(watch), timeout)


@contextlib.asynccontextmanager
async def watching(reg: Etcd2Registry, since: int) -> AsyncIterator[AsyncIterator[WatchBatch]]:
    watch = reg.watch_leases(since)
    try:
        yield watch
    finally:
        await watch.aclose()  # type: ignore[attr-defined]


async def test_lease_values_and_ttl_are_exactly_flanneld_v0_10s(
    registry: Etcd2Registry, etcd_v2: EtcdServer
) -> None:
    assert registry.lease_format is LeaseFormat.V2
    expiration = await registry.create_lease(KEY, VXLAN_V010, 86400)
    path = f"{PREFIX}/subnets/10.3.7.0-24"
    assert v2get(etcd_v2, path) == V010_TEXT
    assert v2node(etcd_v2, path)["ttl"] == 86400
    assert expiration is not None
    with pytest.raises(LeaseConflict):
        await registry.create_lease(KEY, VXLAN_V010, 86400)
    # A udp/alloc lease has no BackendType at all in v0.10.
    await registry.update_lease(KEY, LeaseAttrs(IPv4Address("198.51.100.12")), 86400)
    assert v2get(etcd_v2, path) == '{"PublicIP":"198.51.100.12"}'


async def test_leases_written_by_flanneld_v0_10_and_v0_17_are_read(
    registry: Etcd2Registry, etcd_v2: EtcdServer
) -> None:
    subnets = f"{PREFIX}/subnets"
    etcd_v2.etcdctl("set", f"{subnets}/10.3.7.0-24", V010_TEXT, "--ttl", "86400", api=2)
    v017 = (
        '{"PublicIP":"198.51.100.13","PublicIPv6":null,"BackendType":"vxlan",'
        '"BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}'
    )
    etcd_v2.etcdctl("set", f"{subnets}/10.3.8.0-24", v017, api=2)  # a reservation: no TTL
    etcd_v2.etcdctl("set", f"{subnets}/junk", "not json", api=2)
    leases, index = await registry.list_leases()
    by_subnet = {str(lease.subnet): lease for lease in leases}
    assert set(by_subnet) == {"10.3.7.0/24", "10.3.8.0/24"}
    assert by_subnet["10.3.7.0/24"].attrs == VXLAN_V010
    assert by_subnet["10.3.7.0/24"].expiration is not None
    assert by_subnet["10.3.8.0/24"].attrs.backend_json() == {
        "VNI": 1,
        "VtepMAC": "c6:d2:32:6f:8f:44",
    }
    assert by_subnet["10.3.8.0/24"].expiration is None
    assert index >= 3


async def test_renewing_a_reservation_keeps_it_permanent(
    registry: Etcd2Registry, etcd_v2: EtcdServer
) -> None:
    path = f"{PREFIX}/subnets/10.3.7.0-24"
    etcd_v2.etcdctl("set", path, '{"PublicIP":"198.51.100.11"}', api=2)
    assert await registry.update_lease(KEY, VXLAN_V010, 0) is None
    assert "ttl" not in v2node(etcd_v2, path)
    assert v2get(etcd_v2, path) == V010_TEXT
    # An ordinary renewal puts the 24 h TTL back on.
    await registry.update_lease(KEY, VXLAN_V010, 86400)
    assert v2node(etcd_v2, path)["ttl"] == 86400


async def test_missing_subnets_directory_lists_empty_at_the_current_index(
    registry: Etcd2Registry, etcd_v2: EtcdServer
) -> None:
    etcd_v2.etcdctl("set", "/elsewhere", "x", api=2)
    leases, index = await registry.list_leases()
    assert leases == []
    assert index == int(httpx.get(f"{etcd_v2.endpoint}/v2/keys/elsewhere", trust_env=False)
                        .headers["X-Etcd-Index"])  # fmt: skip
    await registry.delete_lease(KEY)  # absent is not an error


async def test_config_not_found_explains_the_two_keyspaces(
    registry: Etcd2Registry, etcd_v2: EtcdServer
) -> None:
    etcd_v2.etcdctl("put", f"{PREFIX}/config", '{"Network":"10.3.0.0/16"}')  # v3 only
    with pytest.raises(ConfigNotFound) as caught:
        await registry.get_network_config()
    message = str(caught.value)
    assert f"{PREFIX}/config" in message and "v2 API" in message and "etcdctl set" in message
    assert "--etcd-api=v3" in message
    etcd_v2.etcdctl("set", f"{PREFIX}/config", '{"Network":"10.3.0.0/16"}', api=2)
    assert await registry.get_network_config() == '{"Network":"10.3.0.0/16"}'


async def test_watch_maps_set_delete_and_expire(
    registry: Etcd2Registry, etcd_v2: EtcdServer
) -> None:
    _, index = await registry.list_leases()
    path = f"{PREFIX}/subnets/10.3.7.0-24"
    async with watching(registry, index) as watch:
        etcd_v2.etcdctl("set", path, V010_TEXT, "--ttl", "1", api=2)
        added = await next_batch(watch)
        assert [e.kind for e in added.events] == [EventKind.ADDED]
        assert added.events[0].lease.attrs == VXLAN_V010
        assert added.revision == index + 1
        expired = await next_batch(watch)  # etcd expires the key within about a second
        assert [(e.kind, e.lease.key) for e in expired.events] == [(EventKind.REMOVED, KEY)]
        etcd_v2.etcdctl("set", path, V010_TEXT, api=2)
        etcd_v2.etcdctl("rm", path, api=2)
        assert (await next_batch(watch)).events[0].kind is EventKind.ADDED
        assert (await next_batch(watch)).events[0].kind is EventKind.REMOVED


async def test_a_quiet_watch_polls_again_without_missing_a_change(etcd_v2: EtcdServer) -> None:
    settings = EtcdSettings(endpoints=(etcd_v2.endpoint,), long_poll=0.2)
    reg = Etcd2Registry(settings, PREFIX)
    try:
        _, index = await reg.list_leases()
        async with watching(reg, index) as watch:
            pending = spawn(next_batch(watch), name="quiet-watch")
            try:
                await asyncio.sleep(0.7)  # several polls end without a change
                etcd_v2.etcdctl("set", "/elsewhere", "x", api=2)
                await reg.create_lease(KEY, VXLAN_V010, 86400)
                batch = await pending
            finally:
                pending.cancel()
        assert [(e.kind, e.lease.key) for e in batch.events] == [(EventKind.ADDED, KEY)]
        assert batch.revision == index + 2
    finally:
        await reg.close()


async def test_index_cleared_becomes_a_snapshot(
    registry: Etcd2Registry, etcd_v2: EtcdServer, caplog: pytest.LogCaptureFixture
) -> None:
    _, index = await registry.list_leases()
    await registry.create_lease(KEY, VXLAN_V010, 86400)
    # etcd keeps the last 1000 events; push the lease's creation out of that window.
    async with httpx.AsyncClient(base_url=etcd_v2.endpoint, trust_env=False) as client:
        for i in range(1005):
            (await client.put("/v2/keys/churn", data={"value": str(i)})).raise_for_status()
    caplog.set_level(logging.INFO, "pyflannel.registry.etcd2")
    async with watching(registry, index) as watch:
        batch = await next_batch(watch)
        assert batch.snapshot is not None
        assert [lease.key for lease in batch.snapshot] == [KEY]
        assert batch.revision > index + 1000
        # The watch goes on from the snapshot's index.
        await registry.delete_lease(KEY)
        removed = await next_batch(watch)
        assert [(e.kind, e.lease.key) for e in removed.events] == [(EventKind.REMOVED, KEY)]
    assert "listing all leases again" in caplog.text


async def test_removing_the_subnets_directory_becomes_a_snapshot(
    registry: Etcd2Registry, etcd_v2: EtcdServer
) -> None:
    await registry.create_lease(KEY, VXLAN_V010, 86400)
    leases, index = await registry.list_leases()
    assert len(leases) == 1
    async with watching(registry, index) as watch:
        etcd_v2.etcdctl("rm", "--recursive", f"{PREFIX}/subnets", api=2)
        batch = await next_batch(watch)
        assert batch.snapshot == ()


async def test_a_dead_first_endpoint_fails_over_to_the_next(etcd_v2: EtcdServer) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    reg = Etcd2Registry(EtcdSettings(endpoints=(dead, etcd_v2.endpoint)), PREFIX)
    try:
        await reg.create_lease(KEY, VXLAN_V010, 86400)
        leases, _ = await reg.list_leases()
        assert [lease.key for lease in leases] == [KEY]
    finally:
        await reg.close()
    reg = Etcd2Registry(EtcdSettings(endpoints=(dead,), timeout=1.0), PREFIX)
    try:
        with pytest.raises(RegistryUnavailable, match=dead):
            await reg.list_leases()
    finally:
        await reg.close()


@pytest.fixture
def v2_auth(etcd_v2: EtcdServer) -> Iterator[EtcdServer]:
    """v2 auth on: user ``flannel`` may read and write the prefix only."""
    base = f"{etcd_v2.endpoint}/v2/auth"
    ks = [f"{PREFIX}/*"]
    setup = [
        ("users/root", {"user": "root", "password": "rootpw"}),
        ("roles/flannel", {"role": "flannel", "permissions": {"kv": {"read": ks, "write": ks}}}),
        ("users/flannel", {"user": "flannel", "password": "secret", "roles": ["flannel"]}),
    ]  # fmt: skip
    with httpx.Client(trust_env=False) as client:
        for path, body in setup:
            client.put(f"{base}/{path}", json=body).raise_for_status()
        client.put(f"{base}/enable").raise_for_status()
        # Otherwise anonymous requests may still do everything (etcd's guest role).
        guest = {"role": "guest", "revoke": {"kv": {"read": ["/*"], "write": ["/*"]}}}
        client.put(f"{base}/roles/guest", json=guest, auth=("root", "rootpw")).raise_for_status()
    yield etcd_v2


async def test_basic_auth(v2_auth: EtcdServer) -> None:
    v2_auth.etcdctl("--username", "root:rootpw", "set", f"{PREFIX}/config", "{}", api=2)
    good = registry_for(v2_auth, username="flannel", password="secret")
    bad = registry_for(v2_auth, username="flannel", password="wrong")
    anonymous = registry_for(v2_auth)
    try:
        assert await good.get_network_config() == "{}"
        await good.create_lease(KEY, VXLAN_V010, 86400)
        for reg in (bad, anonymous):
            with pytest.raises(RegistryPermissionError, match="--etcd-username"):
                await reg.list_leases()
    finally:
        for reg in (good, bad, anonymous):
            await reg.close()


async def test_tls_with_client_certificate(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    with EtcdServer(tmp_path / "etcd", tls=pki, enable_v2=True) as server:
        server.etcdctl("set", f"{PREFIX}/config", "{}", api=2)
        files = {"cafile": str(pki.ca_cert), "certfile": str(pki.client_cert),
                 "keyfile": str(pki.client_key)}  # fmt: skip
        reg = registry_for(server, **files)
        no_cert = registry_for(server, cafile=str(pki.ca_cert))
        try:
            assert "TLS" in reg.describe()
            assert await reg.get_network_config() == "{}"
            with pytest.raises(RegistryPermissionError, match="--etcd-certfile"):
                await no_cert.get_network_config()
        finally:
            await reg.close()
            await no_cert.close()


async def test_server_without_the_v2_api_says_how_to_enable_it(etcd: EtcdServer) -> None:
    reg = registry_for(etcd)
    try:
        with pytest.raises(RegistryError, match="--enable-v2=true") as caught:
            await reg.get_network_config()
        assert not isinstance(caught.value, ConfigNotFound | RegistryUnavailable)
    finally:
        await reg.close()


async def test_watch_resumes_after_an_etcd_restart_without_losing_events(
    etcd_v2: EtcdServer,
) -> None:
    reg = Etcd2Registry(EtcdSettings(endpoints=(etcd_v2.endpoint,), timeout=1.0), PREFIX)
    other = f"{PREFIX}/subnets/10.3.9.0-24"
    try:
        _, index = await reg.list_leases()
        async with watching(reg, index) as watch:
            pending = spawn(next_batch(watch, 30), name="pending-watch")
            try:
                await asyncio.sleep(0.3)  # the long poll is open
                etcd_v2.restart()  # blocks the loop: the events below happen while it is down
                etcd_v2.etcdctl("set", other, json.dumps({"PublicIP": "198.51.100.14"}), api=2)
                await reg.create_lease(KEY, VXLAN_V010, 86400)
                first = await pending
            finally:
                pending.cancel()
            second = await next_batch(watch)
            assert [e.lease.key for e in first.events + second.events] == [
                SubnetKey(IPv4Network("10.3.9.0/24")),
                KEY,
            ]
    finally:
        await reg.close()


async def test_auto_detection_on_a_real_server(etcd_v2: EtcdServer) -> None:
    options = Options(etcd_endpoints=(etcd_v2.endpoint,), etcd_prefix=PREFIX)
    auto = await open_registry(options)
    try:
        with pytest.raises(ConfigNotFound, match=r"v3 API \(not found\) and with the v2 API"):
            await auto.get_network_config()
        etcd_v2.etcdctl("set", f"{PREFIX}/config", '{"Network":"10.3.0.0/16"}', api=2)
        assert await auto.get_network_config() == '{"Network":"10.3.0.0/16"}'
        assert auto.lease_format is LeaseFormat.V2
        assert auto.describe().startswith("etcd v2 API")
    finally:
        await auto.close()
    etcd_v2.etcdctl("put", f"{PREFIX}/config", '{"Network":"10.4.0.0/16"}')
    auto = await open_registry(options)
    try:
        assert await auto.get_network_config() == '{"Network":"10.4.0.0/16"}'
        assert auto.lease_format is LeaseFormat.V3
    finally:
        await auto.close()
