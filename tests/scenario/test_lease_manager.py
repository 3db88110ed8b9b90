"""The lease manager over the in-memory registry, with an injected clock."""

from __future__ import annotations

import asyncio
import random
from ipaddress import IPv4Address, IPv4Network

import pytest
from support.factories import config

from pyflannel.channel import PeerChannel
from pyflannel.core.renewal import LEASE_TTL
from pyflannel.errors import LeaseRevoked, PoolExhausted, RegistryUnavailable
from pyflannel.manager import LeaseManager
from pyflannel.model.lease import EventKind, LeaseAttrs, LeaseFormat, encode_attrs
from pyflannel.model.net import SubnetKey
from pyflannel.registry.memory import InMemoryRegistry

CFG_JSON = '{"Network":"10.5.0.0/16","Backend":{"Type":"alloc"}}'
ME = LeaseAttrs(IPv4Address("192.0.2.10"))


class Clock:
    """A settable wall clock."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def manager(registry: InMemoryRegistry, clock: Clock, **kw: object) -> LeaseManager:
    return LeaseManager(registry, clock=clock, rng=random.Random(7), **kw)  # type: ignore[arg-type]


async def test_acquire_creates_a_24h_lease() -> None:
    clock = Clock()
    reg = InMemoryRegistry(CFG_JSON, clock=clock)
    mgr = manager(reg, clock)
    cfg = await mgr.wait_for_config()
    lease = await mgr.acquire(cfg, ME)
    assert lease.expiration == clock.now + LEASE_TTL
    leases, _ = await reg.list_leases()
    assert [x.attrs for x in leases] == [ME]


async def test_restart_reuses_the_same_subnet_by_public_ip() -> None:
    clock = Clock()
    reg = InMemoryRegistry(CFG_JSON, clock=clock)
    first = await manager(reg, clock).acquire(config(), ME)
    clock.now += 3600
    again = await manager(reg, clock).acquire(config(), ME)
    assert again.subnet == first.subnet
    assert again.expiration == clock.now + LEASE_TTL


async def test_restart_after_expiry_reuses_the_previous_subnet_from_subnet_env() -> None:
    clock = Clock()
    reg = InMemoryRegistry(CFG_JSON, clock=clock)
    first = await manager(reg, clock).acquire(config(), ME)
    clock.now += LEASE_TTL + 1
    other_ip = LeaseAttrs(IPv4Address("192.0.2.77"))  # the public IP changed meanwhile
    again = await manager(reg, clock, previous_subnet=first.subnet).acquire(config(), other_ip)
    assert again.subnet == first.subnet


async def test_reservation_is_reused_and_stays_a_reservation() -> None:
    clock = Clock()
    reg = InMemoryRegistry(CFG_JSON, clock=clock)
    reg.put_raw("10.5.9.0-24", encode_attrs(ME, LeaseFormat.V3), ttl=0)
    lease = await manager(reg, clock).acquire(config(), ME)
    assert lease.subnet == IPv4Network("10.5.9.0/24") and lease.expiration is None


class RacingRegistry(InMemoryRegistry):
    """Another host wins the first ``races`` creates."""

    def __init__(self, *a: object, races: int, **kw: object) -> None:
        super().__init__(*a, **kw)  # type: ignore[arg-type]
        self.races = races

    async def create_lease(self, key: SubnetKey, attrs: LeaseAttrs, ttl: int) -> float | None:
        if self.races > 0:
            self.races -= 1
            self.put_raw(key.name(), '{"PublicIP":"192.0.2.200","PublicIPv6":null}', ttl)
        return await super().create_lease(key, attrs, ttl)


async def test_lost_races_are_retried() -> None:
    clock = Clock()
    reg = RacingRegistry(CFG_JSON, clock=clock, races=3)
    lease = await manager(reg, clock).acquire(config(), ME)
    leases, _ = await reg.list_leases()
    assert len(leases) == 4
    assert sum(1 for x in leases if x.attrs == ME and x.key == lease.key) == 1


async def test_etcd_outage_during_acquire_is_retried() -> None:
    clock = Clock()
    reg = InMemoryRegistry(CFG_JSON, clock=clock)
    reg.fail_next = [RegistryUnavailable("etcd down")]
    lease = await asyncio.wait_for(manager(reg, clock).acquire(config(), ME), timeout=5)
    assert lease.attrs == ME


async def test_exhausted_pool_is_an_error() -> None:
    clock = Clock()
    reg = InMemoryRegistry('{"Network":"10.5.0.0/28"}', clock=clock)
    for i, subnet in enumerate(("10.5.0.4-30", "10.5.0.8-30", "10.5.0.12-30")):
        reg.put_raw(subnet, f'{{"PublicIP":"192.0.2.{i + 100}"}}', ttl=100)
    with pytest.raises(PoolExhausted, match=r"10\.5\.0\.0/28"):
        await manager(reg, clock).acquire(config("10.5.0.0/28"), ME)


async def test_renewal_happens_margin_before_expiry() -> None:
    clock = Clock()
    reg = InMemoryRegistry(CFG_JSON, clock=clock)
    mgr = manager(reg, clock, renew_margin_minutes=60)
    lease = await mgr.acquire(config(), ME)
    assert lease.expiration is not None
    clock.now = lease.expiration - 3600 - 0.05  # 50 ms before the renewal is due
    task = asyncio.get_running_loop().create_task(mgr.keep_renewed())
    try:
        await asyncio.sleep(0.02)
        assert mgr.lease.expiration == lease.expiration
        clock.now += 0.05
        await asyncio.sleep(0.1)
        assert mgr.lease.expiration == clock.now + LEASE_TTL
    finally:
        task.cancel()


async def test_config_wait_logs_once_and_returns_when_written(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reg = InMemoryRegistry(None)
    mgr = manager(reg, Clock())
    task = asyncio.get_running_loop().create_task(mgr.wait_for_config())
    await asyncio.sleep(0.05)
    reg.config = '{"Network": 5}'
    await asyncio.sleep(1.2)
    reg.config = CFG_JSON
    cfg = await asyncio.wait_for(task, timeout=15)
    assert cfg.backend_type == "alloc"
    waits = [r.getMessage() for r in caplog.records if "waiting for a usable" in r.getMessage()]
    assert len(waits) == 2 and "not found" in waits[0] and "Network 5 is invalid" in waits[1]


async def test_peer_feed_publishes_peers_and_stops_on_revocation() -> None:
    clock = Clock()
    reg = InMemoryRegistry(CFG_JSON, clock=clock)
    reg.put_raw("10.5.200.0-24", '{"PublicIP":"192.0.2.2"}', ttl=100)
    reg.put_raw("10.5.201.0-24", "not json", ttl=100)
    mgr = manager(reg, clock)
    own = await mgr.acquire(config(), ME)
    channel = PeerChannel()
    feed = asyncio.get_running_loop().create_task(mgr.feed_peers(channel))
    await asyncio.sleep(0.01)
    first = channel.take()
    assert first is not None
    assert [str(x.subnet) for x in first.leases] == ["10.5.200.0/24"]
    reg.put_raw("10.5.202.0-24", '{"PublicIP":"192.0.2.3"}', ttl=100)
    reg.delete_raw("10.5.200.0-24")
    await asyncio.sleep(0.01)
    second = channel.take()
    assert second is not None
    assert [(e.kind, str(e.lease.subnet)) for e in second.events] == [
        (EventKind.ADDED, "10.5.202.0/24"),
        (EventKind.REMOVED, "10.5.200.0/24"),
    ]
    assert second.events[1].lease.attrs.public_ip == IPv4Address("192.0.2.2")
    reg.delete_raw(own.key.name())
    with pytest.raises(LeaseRevoked):
        await asyncio.wait_for(feed, timeout=2)


async def test_compaction_becomes_a_snapshot_and_loses_nothing() -> None:
    clock = Clock()
    reg = InMemoryRegistry(CFG_JSON, clock=clock)
    mgr = manager(reg, clock)
    await mgr.acquire(config(), ME)
    channel = PeerChannel()
    gen = reg.watch_leases(reg.revision)
    reg.put_raw("10.5.202.0-24", '{"PublicIP":"192.0.2.3"}', ttl=100)
    reg.compact()
    batch = await asyncio.wait_for(anext(gen), timeout=1)
    assert batch.snapshot is not None and len(batch.snapshot) == 2
    await gen.aclose()
    del channel


async def test_renewal_loop_stops_when_cancelled_as_its_lease_changes() -> None:
    """A cancellation that arrives together with a re-arm must still stop the loop
    (Python 3.11's wait_for swallowed it and the daemon never exited)."""
    clock = Clock()
    reg = InMemoryRegistry(CFG_JSON, clock=clock)
    mgr = manager(reg, clock)
    await mgr.acquire(config(), ME)
    task = asyncio.get_running_loop().create_task(mgr.keep_renewed())
    await asyncio.sleep(0.01)
    mgr._rearm.set()
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=2)
    assert done and task.cancelled()


async def test_watch_events_of_our_own_lease_never_postpone_its_renewal() -> None:
    """A watch that resumes after an outage replays our own write: its estimated
    expiration (read time + 24 h) must not push the renewal back."""
    clock = Clock()
    reg = InMemoryRegistry(CFG_JSON, clock=clock)
    mgr = manager(reg, clock)
    own = await mgr.acquire(config(), ME)
    assert own.expiration is not None
    feed = asyncio.get_running_loop().create_task(mgr.feed_peers(PeerChannel()))
    try:
        await asyncio.sleep(0.01)
        value = encode_attrs(own.attrs, LeaseFormat.V3)
        reg.put_raw(own.key.name(), value, ttl=LEASE_TTL + 600)  # later: ignored
        await asyncio.sleep(0.01)
        assert mgr.lease.expiration == own.expiration
        reg.put_raw(own.key.name(), value, ttl=LEASE_TTL - 600)  # earlier: followed
        await asyncio.sleep(0.01)
        assert mgr.lease.expiration == own.expiration - 600
        reg.put_raw(own.key.name(), value)  # made a reservation: no renewal any more
        await asyncio.sleep(0.01)
        assert mgr.lease.expiration is None
    finally:
        feed.cancel()
        await asyncio.gather(feed, return_exceptions=True)
