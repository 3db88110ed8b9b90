"""What ``pyflannelctl leases`` and ``status`` print, from facts given by hand."""

from __future__ import annotations

import dataclasses
from ipaddress import IPv4Network

import pytest
from support.factories import config, lease

from pyflannel.ctl.report import (
    HostFacts,
    assess,
    duration,
    lease_rows,
    lease_table,
    status_json,
    status_text,
)

NOW = 1_000_000.0
MAC = "82:4b:b6:2f:54:4e"
VXLAN_DATA = f'{{"VNI":1,"VtepMAC":"{MAC}"}}'
ENV = {
    "FLANNEL_NETWORK": "10.5.0.0/16",
    "FLANNEL_SUBNET": "10.5.34.1/24",
    "FLANNEL_MTU": "1450",
    "FLANNEL_IPMASQ": "false",
}
OWN = lease("10.5.34.0/24", "192.0.2.1", NOW + 86000, "vxlan", VXLAN_DATA)
PEER = lease("10.5.72.0/24", "192.0.2.2", NOW + 3600, "vxlan", VXLAN_DATA.replace("4e", "4f"))


def facts(**changes: object) -> HostFacts:
    base = HostFacts(
        subnet_file="/run/flannel/subnet.env",
        subnet_env=ENV,
        config=config("10.5.0.0/16", Backend={"Type": "vxlan"}),
        config_problem=None,
        leases=(PEER, OWN),
        now=NOW,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "reservation"), (-1, "expired"), (0, "0m00s"), (65, "1m05s"), (86399, "23h59m")],
)
def test_duration(seconds: float | None, text: str) -> None:
    assert duration(seconds) == text


def test_lease_table_marks_this_host_and_shows_backend_data() -> None:
    reservation = lease("10.5.9.0/24", "192.0.2.9", None)
    rows = lease_rows([PEER, reservation, OWN], NOW)
    assert lease_table(rows, own=IPv4Network("10.5.34.0/24")) == (
        "SUBNET         PUBLIC IP  BACKEND  VTEP MAC           EXPIRES IN\n"
        "10.5.9.0/24    192.0.2.9  -        -                  reservation\n"
        f"*10.5.34.0/24  192.0.2.1  vxlan    {MAC}  23h53m\n"
        "10.5.72.0/24   192.0.2.2  vxlan    82:4b:b6:2f:54:4f  1h00m\n"
    )
    assert lease_table([]) == "SUBNET  PUBLIC IP  BACKEND  VTEP MAC  EXPIRES IN\n(no leases)\n"


def test_lease_json_has_plain_values() -> None:
    (row,) = lease_rows([OWN], NOW)
    assert row.as_json() == {
        "subnet": "10.5.34.0/24",
        "public_ip": "192.0.2.1",
        "backend_type": "vxlan",
        "vtep_mac": MAC,
        "expires_in": 86000,
        "reservation": False,
        "backend_data": {"VNI": 1, "VtepMAC": MAC},
    }


def test_vtep_mac_key_is_matched_like_go_and_odd_data_is_kept() -> None:
    odd = lease("10.5.1.0/24", backend_data='{"vtepmac":"aa:bb:cc:dd:ee:ff"}')
    (row,) = lease_rows([odd], NOW)
    assert row.vtep_mac == "aa:bb:cc:dd:ee:ff"
    (row,) = lease_rows([lease("10.5.2.0/24", backend_data='"text"')], NOW)
    assert (row.vtep_mac, row.backend_data) == (None, "text")


def test_healthy_host() -> None:
    status = assess(facts())
    assert (status.own, status.peers, status.problems) == (OWN, (PEER,), ())
    text = status_text(facts(), status)
    assert "  FLANNEL_SUBNET=10.5.34.1/24\n" in text
    assert f"lease: 10.5.34.0/24, public IP 192.0.2.1, backend vxlan, VTEP MAC {MAC}," in text
    assert text.endswith("peers: 1 other lease(s)\nproblems: none\n")
    assert status_json(facts(), status)["ok"] is True


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"subnet_env": None}, "/run/flannel/subnet.env does not exist"),
        (
            {"subnet_env": {**ENV, "FLANNEL_SUBNET": "x"}},
            "has no usable FLANNEL_SUBNET (found 'x')",
        ),
        ({"leases": (PEER,)}, "no lease for this host's subnet 10.5.34.0/24 in etcd"),
        (
            {"leases": (PEER, dataclasses.replace(OWN, expiration=NOW + 600))},
            "lease 10.5.34.0/24 expires in 10m00s: its renewal is overdue",
        ),
        (
            {"config": config("10.6.0.0/16")},
            "subnet.env has FLANNEL_NETWORK=10.5.0.0/16 but the network config says 10.6.0.0/16",
        ),
        (
            {"config": config("10.5.0.0/16", SubnetMin="10.5.100.0")},
            "this host's subnet 10.5.34.0/24 does not fit the network config",
        ),
        (
            {"leases": (OWN, dataclasses.replace(PEER, attrs=OWN.attrs))},
            "leases 10.5.34.0/24, 10.5.72.0/24 share the public IP 192.0.2.1",
        ),
        ({"config": None, "config_problem": "no network config at x"}, "no network config at x"),
    ],
)
def test_each_inconsistency_is_named(changes: dict[str, object], problem: str) -> None:
    status = assess(facts(**changes))
    assert len(status.problems) == 1, status.problems
    assert problem in status.problems[0]
    text = status_text(facts(**changes), status)
    assert f"problems (1):\n  - {status.problems[0]}\n" in text


def test_reservation_is_never_overdue() -> None:
    reserved = dataclasses.replace(OWN, expiration=None)
    assert assess(facts(leases=(reserved, PEER))).problems == ()


def test_unreadable_etcd_skips_the_lease_checks() -> None:
    status = assess(facts(leases=None, config=None, config_problem="cannot read etcd: down"))
    assert status.problems == ("cannot read etcd: down",)
