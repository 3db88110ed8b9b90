"""The `SubnetRegistry` contract, run against every implementation.

Each backend appears once in `BACKENDS` (a harness from `support.registries`, plus the
marks it needs); every test here runs against each of them, so the in-memory fake used
by the scenario tests cannot drift from what etcd really does.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from ipaddress import IPv4Address, IPv4Network

import pytest
from support.etcd2_harness import Etcd2Harness
from support.registries import Etcd3Harness, MemoryHarness, RegistryHarness, watching

from pyflannel.errors import ConfigNotFound, LeaseConflict
from pyflannel.model.lease import EventKind, LeaseAttrs
from pyflannel.model.net import SubnetKey

MakeHarness = Callable[[pytest.FixtureRequest], RegistryHarness]
BACKENDS: dict[str, tuple[MakeHarness, list[pytest.MarkDecorator]]] = {
    "memory": (lambda request: MemoryHarness(), []),
    "etcd3": (lambda request: Etcd3Harness(request.getfixturevalue("etcd")), [pytest.mark.etcd]),
    "etcd2": (lambda request: Etcd2Harness(request.getfixturevalue("etcd_v2")), [pytest.mark.etcd]),
}

CONFIG = '{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}'
VXLAN = '{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}'
ATTRS = LeaseAttrs(IPv4Address("198.51.100.11"), "vxlan", VXLAN)
OTHER = LeaseAttrs(IPv4Address("198.51.100.12"), "vxlan", VXLAN)
GOOD_VALUE = '{"PublicIP":"198.51.100.13","PublicIPv6":null}'


def key(subnet: str) -> SubnetKey:
    return SubnetKey(IPv4Network(subnet))


A, B, C = key("10.5.1.0/24"), key("10.5.2.0/24"), key("10.5.3.0/24")


@pytest.fixture(params=[pytest.param(name, marks=marks) for name, (_, marks) in BACKENDS.items()])
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[RegistryHarness]:
    made = BACKENDS[request.param][0](request)
    try:
        yield made
    finally:
        await made.close()


async def test_config_is_read_back(harness: RegistryHarness) -> None:
    await harness.put_config(CONFIG)
    assert await harness.registry.get_network_config() == CONFIG


async def test_missing_config_raises_config_not_found(harness: RegistryHarness) -> None:
    with pytest.raises(ConfigNotFound):
        await harness.registry.get_network_config()


async def test_second_create_of_a_key_conflicts(harness: RegistryHarness) -> None:
    registry = harness.registry
    expiration = await registry.create_lease(A, ATTRS, 60)
    assert expiration == pytest.approx(harness.now() + 60, abs=3)
    with pytest.raises(LeaseConflict):
        await registry.create_lease(A, OTHER, 60)
    leases, _ = await registry.list_leases()
    assert [(lease.key, lease.attrs) for lease in leases] == [(A, ATTRS)]
    assert leases[0].expiration == pytest.approx(expiration, abs=3)


async def test_update_renews_the_expiration(harness: RegistryHarness) -> None:
    registry = harness.registry
    first = await registry.create_lease(A, ATTRS, 60)
    second = await registry.update_lease(A, OTHER, 120)
    assert first is not None and second is not None
    assert second - first == pytest.approx(60, abs=3)
    [lease] = (await registry.list_leases())[0]
    assert lease.attrs == OTHER
    assert lease.expiration == pytest.approx(second, abs=3)


async def test_update_with_ttl_zero_makes_a_reservation(harness: RegistryHarness) -> None:
    registry = harness.registry
    await registry.create_lease(A, ATTRS, 60)
    assert await registry.update_lease(A, ATTRS, 0) is None
    [lease] = (await registry.list_leases())[0]
    assert lease.expiration is None
    assert await registry.update_lease(A, OTHER, 0) is None  # and it stays one
    [lease] = (await registry.list_leases())[0]
    assert (lease.attrs, lease.expiration) == (OTHER, None)


async def test_delete_removes_the_lease_and_tolerates_absence(harness: RegistryHarness) -> None:
    registry = harness.registry
    await registry.create_lease(A, ATTRS, 60)
    await registry.create_lease(B, OTHER, 60)
    await registry.delete_lease(A)
    await registry.delete_lease(C)
    leases, _ = await registry.list_leases()
    assert [lease.key for lease in leases] == [B]


async def test_list_skips_malformed_keys_and_values(harness: RegistryHarness) -> None:
    await harness.put_raw("10.5.7.0-24", GOOD_VALUE)
    await harness.put_raw("not-a-subnet", GOOD_VALUE)
    await harness.put_raw("10.5.8.1-24", GOOD_VALUE)  # host bits set
    await harness.put_raw("10.5.9.0-24", "{not json")
    await harness.put_raw("10.5.10.0-24", '{"PublicIP":"not-an-address"}')
    await harness.put_raw("10.5.11.0-24", "[]")
    leases, _ = await harness.registry.list_leases()
    assert [(lease.key, lease.expiration) for lease in leases] == [(key("10.5.7.0/24"), None)]
    assert leases[0].attrs.public_ip == IPv4Address("198.51.100.13")


async def test_watch_reports_changes_in_order(harness: RegistryHarness) -> None:
    registry = harness.registry
    _, since = await registry.list_leases()
    async with watching(registry, since) as watch:
        await registry.create_lease(A, ATTRS, 60)
        await registry.create_lease(B, OTHER, 60)
        await registry.delete_lease(A)
        events = await watch.events_after(3)
    assert events == [(EventKind.ADDED, "10.5.1.0-24"), (EventKind.ADDED, "10.5.2.0-24"),
                      (EventKind.REMOVED, "10.5.1.0-24")]  # fmt: skip
    added = watch.batches[0].events[0].lease
    assert added.attrs == ATTRS
    # Watch events only promise whether a key has a TTL (see registry/base.py).
    assert added.expiration is not None and added.expiration > harness.now()
    revisions = [batch.revision for batch in watch.batches]
    assert revisions == sorted(set(revisions))
    assert revisions[-1] == (await registry.list_leases())[1]


async def test_watch_replays_history_from_a_revision(harness: RegistryHarness) -> None:
    registry = harness.registry
    _, start = await registry.list_leases()
    await registry.create_lease(A, ATTRS, 60)
    _, middle = await registry.list_leases()
    await registry.delete_lease(A)
    await registry.create_lease(B, OTHER, 0)
    async with watching(registry, start) as watch:
        assert await watch.events_after(3) == [
            (EventKind.ADDED, "10.5.1.0-24"),
            (EventKind.REMOVED, "10.5.1.0-24"),
            (EventKind.ADDED, "10.5.2.0-24"),
        ]
    async with watching(registry, middle) as watch:
        assert await watch.events_after(2) == [
            (EventKind.REMOVED, "10.5.1.0-24"),
            (EventKind.ADDED, "10.5.2.0-24"),
        ]


async def test_watch_skips_malformed_leases(harness: RegistryHarness) -> None:
    registry = harness.registry
    _, since = await registry.list_leases()
    await harness.put_raw("garbage", GOOD_VALUE)
    await harness.put_raw("10.5.9.0-24", "{not json")
    await registry.create_lease(A, ATTRS, 60)
    async with watching(registry, since) as watch:
        assert await watch.events_after(1) == [(EventKind.ADDED, "10.5.1.0-24")]
        await asyncio.sleep(0.2)
        assert watch.events() == [(EventKind.ADDED, "10.5.1.0-24")]


async def test_compacted_history_gives_a_snapshot(harness: RegistryHarness) -> None:
    registry = harness.registry
    _, since = await registry.list_leases()
    await registry.create_lease(A, ATTRS, 60)
    await registry.create_lease(B, OTHER, 60)
    await registry.delete_lease(A)
    await harness.compact()
    _, now = await registry.list_leases()
    async with watching(registry, since) as watch:
        await watch.wait_for(lambda: len(watch.batches) >= 1)
        first = watch.batches[0]
        assert first.snapshot is not None
        assert [(lease.key, lease.attrs) for lease in first.snapshot] == [(B, OTHER)]
        assert first.revision == now
        await registry.create_lease(C, ATTRS, 60)
        assert await watch.events_after(1) == [(EventKind.ADDED, "10.5.3.0-24")]


async def test_expired_lease_is_reported_removed(harness: RegistryHarness) -> None:
    registry = harness.registry
    await registry.create_lease(A, ATTRS, 2)
    _, since = await registry.list_leases()
    async with watching(registry, since) as watch:
        await harness.expire(2)
        assert await watch.events_after(1, timeout=10) == [(EventKind.REMOVED, "10.5.1.0-24")]
    assert (await registry.list_leases())[0] == []
