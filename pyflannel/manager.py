"""The lease manager: policy above the registry.

It waits for the network config, acquires a lease (reuse by public IP, then the
previous subnet, then a random free one; lost races are retried, as flanneld meant
but v0.28 does not do), keeps the lease renewed, and turns the registry watch into
peer updates for the backend while watching for the revocation of our own lease.
etcd outages are retried with backoff here; they never end the daemon.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from ipaddress import IPv4Network

from pyflannel.aio import retry
from pyflannel.channel import PeerChannel
from pyflannel.core.allocator import Create, Plan, Reuse, plan_acquisition
from pyflannel.core.leasewatch import LeaseTable
from pyflannel.core.renewal import LEASE_TTL, RENEW_RETRY, Backoff, renewal_delay
from pyflannel.errors import (
    ConfigError,
    ConfigNotFound,
    LeaseConflict,
    LeaseRevoked,
    RegistryError,
    RegistryUnavailable,
)
from pyflannel.model.config import NetworkConfig, parse_config
from pyflannel.model.lease import EventKind, Lease, LeaseAttrs, WatchBatch
from pyflannel.model.net import SubnetKey
from pyflannel.registry.base import SubnetRegistry

logger = logging.getLogger(__name__)
RACE_RETRIES = 10
CONFIG_BACKOFF = Backoff(initial=1.0, cap=10.0)


class LeaseManager:
    """Owns our lease for the life of the daemon."""

    def __init__(
        self,
        registry: SubnetRegistry,
        *,
        renew_margin_minutes: int = 60,
        previous_subnet: IPv4Network | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.registry = registry
        self._margin = renew_margin_minutes
        self._previous = previous_subnet
        self._clock = clock
        self._rng = rng or random.Random()
        self._lease: Lease | None = None
        self._rearm = asyncio.Event()
        # The listing the lease was acquired from: the peer watch starts from it instead
        # of listing (and looking up thousands of TTLs) a second time.
        self._listing: tuple[tuple[Lease, ...], int] | None = None

    @property
    def lease(self) -> Lease:
        """Our current lease (after :meth:`acquire`)."""
        if self._lease is None:
            raise RuntimeError("no lease acquired yet")
        return self._lease

    async def wait_for_config(self) -> NetworkConfig:
        """Read and validate the network config, waiting (with backoff) until it exists
        and is valid. What is missing or wrong is logged once per distinct problem."""
        last_problem = ""
        attempt = 0
        while True:
            problem = ""
            try:
                return parse_config(await self.registry.get_network_config())
            except (ConfigNotFound, ConfigError, RegistryError) as exc:
                problem = str(exc)
            if problem != last_problem:
                logger.error("waiting for a usable network config: %s", problem)
                last_problem = problem
            await asyncio.sleep(CONFIG_BACKOFF.delay(attempt, self._rng))
            attempt += 1

    async def acquire(self, config: NetworkConfig, attrs: LeaseAttrs) -> Lease:
        """Acquire a lease, retrying through etcd outages and lost races."""
        for _ in range(RACE_RETRIES):
            try:
                lease = await retry(
                    lambda: self._try_acquire(config, attrs),
                    what="acquiring a subnet lease",
                    retry_on=(RegistryUnavailable,),
                    log=logger,
                )
            except LeaseConflict as exc:
                logger.info("lost a race for a subnet (%s); choosing again", exc)
                continue
            self._lease = lease
            return lease
        raise RegistryError(f"gave up acquiring a lease after {RACE_RETRIES} lost races")

    async def _try_acquire(self, config: NetworkConfig, attrs: LeaseAttrs) -> Lease:
        leases, revision = await self.registry.list_leases()
        plan = plan_acquisition(config, leases, attrs.public_ip, self._previous, self._rng)
        lease = await self._execute(plan, attrs)
        kept = tuple(x for x in leases if x.key != lease.key and x not in plan.stale)
        self._listing = ((*kept, lease), revision)
        return lease

    async def _execute(self, plan: Plan, attrs: LeaseAttrs) -> Lease:
        for stale in plan.stale:
            logger.info(
                "deleting lease %s of this host: it does not fit the network config", stale.subnet
            )
            await self.registry.delete_lease(stale.key)
        action = plan.action
        if isinstance(action, Reuse):
            ttl = LEASE_TTL if action.lease.expiration is not None else 0
            expiration = await self.registry.update_lease(action.lease.key, attrs, ttl)
            logger.info(
                "found lease %s for this host's public IP %s, reusing it",
                action.lease.subnet,
                attrs.public_ip,
            )
            return Lease(action.lease.key, attrs, expiration)
        assert isinstance(action, Create)
        key = SubnetKey(action.subnet)
        expiration = await self.registry.create_lease(key, attrs, LEASE_TTL)
        logger.info("allocated lease %s (%s)", action.subnet, action.reason)
        return Lease(key, attrs, expiration)

    async def keep_renewed(self) -> None:
        """Renew our lease ``margin`` minutes before it expires, forever."""
        while True:
            delay = renewal_delay(self.lease.expiration, self._margin, self._clock())
            self._rearm.clear()
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
            # cancellation that arrives as the event is set, and the daemon never stops.
            try:
                async with asyncio.timeout(delay):
                    await self._rearm.wait()
                continue  # the expiration changed: compute the delay again
            except TimeoutError:
                pass
            await self._renew_once()

    async def _renew_once(self) -> None:
        lease = self.lease
        try:
            expiration = await self.registry.update_lease(lease.key, lease.attrs, LEASE_TTL)
        except RegistryError as exc:
            logger.error("error renewing lease %s (trying again in 1 min): %s", lease.subnet, exc)
            await asyncio.sleep(RENEW_RETRY)
            return
        self._lease = Lease(lease.key, lease.attrs, expiration)
        logger.info("renewed lease %s", lease.subnet)

    async def feed_peers(self, channel: PeerChannel) -> None:
        """List the peers, publish them, then publish every watched change.

        Raises :class:`LeaseRevoked` when our own lease is deleted or expires.
        """
        table = LeaseTable(self.lease.key)
        snapshot = await self._initial_snapshot()
        self._check_own(snapshot)
        channel.publish(table.apply(snapshot), _leases_of(table))
        async for batch in self.registry.watch_leases(snapshot.revision):
            self._check_own(batch)
            events = table.apply(batch)
            if events:
                channel.publish(events, _leases_of(table))

    async def _initial_snapshot(self) -> WatchBatch:
        """The acquisition's listing (its changes since are replayed by the watch, which
        starts from its revision), or a fresh listing."""
        if self._listing is not None:
            leases, revision = self._listing
            self._listing = None
        else:
            listed, revision = await retry(
                self.registry.list_leases, what="listing leases", retry_on=(RegistryUnavailable,)
            )
            leases = tuple(listed)
        return WatchBatch(revision, snapshot=leases)

    def _check_own(self, batch: WatchBatch) -> None:
        own = self.lease.key
        if batch.snapshot is not None:
            mine = [lease for lease in batch.snapshot if lease.key == own]
            if not mine:
                raise LeaseRevoked(f"lease {own.subnet} is gone from etcd")
            self._note_own(mine[0])
            return
        for event in batch.events:
            if event.lease.key != own:
                continue
            if event.kind is EventKind.REMOVED:
                raise LeaseRevoked(f"lease {own.subnet} was deleted or expired")
            self._note_own(event.lease)

    def _note_own(self, lease: Lease) -> None:
        """Follow what the registry says of our lease's expiration, but never later than
        we know it: a v3 watch event carries no TTL, only an estimate (the time it was
        read plus 24 h), and a watch that resumes after an outage replays our own write
        of long ago, which would postpone the renewal by the length of the outage. A
        lease turned into a reservation (no expiration), or back, is taken as it is."""
        known, seen = self.lease.expiration, lease.expiration
        expiration = seen if known is None or seen is None else min(known, seen)
        if expiration != known:
            self._lease = Lease(self.lease.key, self.lease.attrs, expiration)
            self._rearm.set()


def _leases_of(table: LeaseTable) -> Callable[[], tuple[Lease, ...]]:
    return lambda: table.leases
