"""Choosing the subnet this host will lease (facts §3.5).

Order, as flanneld v0.28: (1) a lease that already carries our public IP is reused
when it still fits the config, otherwise deleted; (2) the subnet from the previous
subnet.env is reused when nobody holds it and it fits; (3) otherwise a subnet is
picked at random among the first 100 free ones, walking up from SubnetMin.

The result is a plan that the lease manager carries out against the registry; a lost
create race simply makes the manager list again and plan again.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from pyflannel.errors import PoolExhausted
from pyflannel.model.config import NetworkConfig
from pyflannel.model.lease import Lease

MAX_CANDIDATES = 100


@dataclass(frozen=True, slots=True)
class Reuse:
    """Overwrite an existing lease (ours by public IP) with our attributes."""

    lease: Lease


@dataclass(frozen=True, slots=True)
class Create:
    """Create a new lease for ``subnet``; ``reason`` says why this one was picked."""

    subnet: IPv4Network
    reason: str


@dataclass(frozen=True, slots=True)
class Plan:
    """Delete ``stale`` leases first, then carry out ``action``."""

    stale: tuple[Lease, ...]
    action: Reuse | Create


def fits(config: NetworkConfig, subnet: IPv4Network) -> bool:
    """A subnet is compatible with the config when it has the configured length and
    its network address lies within [SubnetMin, SubnetMax]."""
    return (
        subnet.prefixlen == config.subnet_len
        and config.subnet_min <= subnet.network_address <= config.subnet_max
    )


def plan_acquisition(
    config: NetworkConfig,
    leases: Sequence[Lease],
    public_ip: IPv4Address,
    previous: IPv4Network | None,
    rng: random.Random,
) -> Plan:
    """Decide which subnet to take. Raises :class:`PoolExhausted` when none is free."""
    stale: list[Lease] = []
    for lease in leases:
        if lease.attrs.public_ip != public_ip:
            continue
        if fits(config, lease.subnet):
            return Plan(tuple(stale), Reuse(lease))
        stale.append(lease)
    remaining = [lease for lease in leases if lease not in stale]
    if previous is not None and _previous_usable(config, remaining, previous):
        return Plan(tuple(stale), Create(previous, "previous subnet from the subnet file"))
    free = free_subnets(config, remaining, MAX_CANDIDATES)
    if not free:
        raise PoolExhausted(
            f"no free subnet left in network {config.network}: {len(remaining)} leases hold "
            f"all /{config.subnet_len} subnets between {config.subnet_min} and {config.subnet_max}"
        )
    return Plan(tuple(stale), Create(rng.choice(free), "random free subnet"))


def _previous_usable(config: NetworkConfig, leases: Sequence[Lease], previous: IPv4Network) -> bool:
    return fits(config, previous) and not any(lease.subnet.overlaps(previous) for lease in leases)


def free_subnets(config: NetworkConfig, leases: Sequence[Lease], limit: int) -> list[IPv4Network]:
    """The first ``limit`` subnets from SubnetMin up that overlap no lease (reservations
    included), in ascending order."""
    exact = {
        int(lease.subnet.network_address)
        for lease in leases
        if lease.subnet.prefixlen == config.subnet_len
    }
    odd = [lease.subnet for lease in leases if lease.subnet.prefixlen != config.subnet_len]
    size = config.subnet_size()
    out: list[IPv4Network] = []
    addr = int(config.subnet_min)
    while addr <= int(config.subnet_max) and len(out) < limit:
        if addr not in exact:
            candidate = IPv4Network((addr, config.subnet_len))
            if not any(candidate.overlaps(other) for other in odd):
                out.append(candidate)
        addr += size
    return out
