"""subnet.env rendering (facts §4), renewal timing (§3.6), backoff and atomic writes."""

from __future__ import annotations

import os
import random
import stat
from ipaddress import IPv4Network
from pathlib import Path

from pyflannel.core.renewal import Backoff, renewal_delay
from pyflannel.core.subnetenv import SubnetEnv, parse_env, previous_network, previous_subnet, render
from pyflannel.files import read_text_or_none, write_atomic


def test_render_matches_flanneld_sample() -> None:
    env = SubnetEnv(IPv4Network("10.1.0.0/16"), IPv4Network("10.1.74.0/24"), 1472, False)
    assert render(env) == (
        "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.74.1/24\n"
        "FLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n"
    )
    assert render(SubnetEnv(env.network, env.subnet, 1450, True)).endswith("FLANNEL_IPMASQ=true\n")


def test_previous_values_are_read_back() -> None:
    values = parse_env("# c\nexport FLANNEL_NETWORK='10.1.0.0/16'\nFLANNEL_SUBNET=10.1.74.1/24\n")
    assert previous_subnet(values) == IPv4Network("10.1.74.0/24")
    assert previous_network(values) == IPv4Network("10.1.0.0/16")


def test_unreadable_previous_values_are_ignored() -> None:
    assert previous_subnet({}) is None
    assert previous_subnet({"FLANNEL_SUBNET": "garbage"}) is None
    assert previous_subnet({"FLANNEL_SUBNET": "10.1.1.1/24,10.1.2.1/24"}) is None


def test_renewal_is_margin_before_expiry_and_never_negative() -> None:
    assert renewal_delay(1000.0 + 86400, 60, 1000.0) == 86400 - 3600
    assert renewal_delay(1000.0, 60, 5000.0) == 0.0
    assert renewal_delay(None, 60, 0.0) is None


def test_backoff_grows_to_its_cap_with_bounded_jitter() -> None:
    b = Backoff(initial=0.1, cap=5.0)
    assert [b.delay(i) for i in range(3)] == [0.1, 0.2, 0.4]
    assert b.delay(100) == 5.0
    rng = random.Random(3)
    assert all(4.0 <= b.delay(100, rng) <= 5.0 for _ in range(100))


def test_atomic_write_creates_dir_and_sets_mode(tmp_path: Path) -> None:
    target = tmp_path / "run" / "flannel" / "subnet.env"
    old = os.umask(0o077)
    try:
        write_atomic(target, "A=1\n")
    finally:
        os.umask(old)
    assert target.read_text() == "A=1\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    write_atomic(target, "A=2\n")
    assert read_text_or_none(target) == "A=2\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["subnet.env"]
    assert read_text_or_none(tmp_path / "missing") is None
