"""Subnet choice (facts §3.5)."""

from __future__ import annotations

import random
from ipaddress import IPv4Address, IPv4Network

import pytest
from support.factories import config, lease

from pyflannel.core.allocator import Create, Reuse, fits, free_subnets, plan_acquisition
from pyflannel.errors import PoolExhausted

ME = IPv4Address("192.0.2.10")


def test_reuses_the_lease_holding_our_public_ip() -> None:
    mine = lease("10.5.7.0/24", str(ME))
    plan = plan_acquisition(config(), [lease("10.5.1.0/24"), mine], ME, None, random.Random(1))
    assert plan.action == Reuse(mine) and plan.stale == ()


def test_incompatible_lease_of_ours_is_deleted_then_allocation_continues() -> None:
    wrong_len = lease("10.5.8.0/25", str(ME))
    plan = plan_acquisition(config(), [wrong_len], ME, None, random.Random(1))
    assert plan.stale == (wrong_len,)
    assert isinstance(plan.action, Create)


def test_previous_subnet_is_reused_when_free() -> None:
    prev = IPv4Network("10.5.42.0/24")
    plan = plan_acquisition(config(), [lease("10.5.1.0/24")], ME, prev, random.Random(1))
    assert plan.action == Create(prev, "previous subnet from the subnet file")


def test_previous_subnet_held_by_another_host_is_not_taken_over() -> None:
    prev = IPv4Network("10.5.42.0/24")
    plan = plan_acquisition(
        config(), [lease("10.5.42.0/24", "192.0.2.99")], ME, prev, random.Random(1)
    )
    assert isinstance(plan.action, Create) and plan.action.subnet != prev


def test_previous_subnet_outside_the_range_is_ignored() -> None:
    prev = IPv4Network("10.6.1.0/24")
    plan = plan_acquisition(config(), [], ME, prev, random.Random(1))
    assert isinstance(plan.action, Create) and plan.action.subnet != prev


def test_random_choice_is_among_the_first_100_free_in_order() -> None:
    cfg = config("10.0.0.0/8", SubnetLen=24)
    taken = [lease("10.0.1.0/24"), lease("10.0.3.0/24")]
    free = free_subnets(cfg, taken, 100)
    assert free[:3] == [IPv4Network(n) for n in ("10.0.2.0/24", "10.0.4.0/24", "10.0.5.0/24")]
    assert len(free) == 100
    picks = {plan_acquisition(cfg, taken, ME, None, random.Random(s)).action for s in range(50)}
    assert all(isinstance(p, Create) and p.subnet in free for p in picks)
    assert len(picks) > 10


def test_overlapping_leases_of_other_lengths_and_reservations_are_skipped() -> None:
    cfg = config("10.5.0.0/16")
    taken = [lease("10.5.0.0/22"), lease("10.5.4.0/24", expiration=None)]
    free = free_subnets(cfg, taken, 3)
    assert free == [IPv4Network(n) for n in ("10.5.5.0/24", "10.5.6.0/24", "10.5.7.0/24")]


def test_exhausted_pool_names_network_and_count() -> None:
    cfg = config("10.5.0.0/28")  # SubnetLen 30: subnets .4, .8, .12
    taken = [lease("10.5.0.4/30"), lease("10.5.0.8/30"), lease("10.5.0.12/30")]
    with pytest.raises(PoolExhausted, match=r"10\.5\.0\.0/28: 3 leases"):
        plan_acquisition(cfg, taken, ME, None, random.Random(1))


def test_fits() -> None:
    cfg = config()
    assert fits(cfg, IPv4Network("10.5.1.0/24"))
    assert not fits(cfg, IPv4Network("10.5.0.0/24"))  # first subnet is skipped
    assert not fits(cfg, IPv4Network("10.6.1.0/24"))


def test_allocation_is_fast_with_thousands_of_leases() -> None:
    cfg = config("10.0.0.0/8")
    taken = [lease(f"10.{i // 256}.{i % 256}.0/24") for i in range(1, 6000)]
    free = free_subnets(cfg, taken, 100)
    assert free[0] == IPv4Network("10.23.112.0/24")
