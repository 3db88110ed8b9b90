"""What ``pyflannelctl leases`` and ``status`` print, decided in pure code.

Rules of this file: no I/O; the current time is passed in. The commands gather the
facts (subnet.env, the config and leases from etcd, the kernel's entries) and these
functions turn them into rows, findings and text, so every message can be tested
without etcd or a kernel.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Network
from typing import Any

from pyflannel.core import subnetenv
from pyflannel.model import gojson
from pyflannel.model.config import NetworkConfig
from pyflannel.model.lease import Lease

RENEWAL_GRACE = 300.0
"""Seconds past the renewal time before a lease counts as overdue (retries are 1 min)."""


@dataclass(frozen=True, slots=True)
class LeaseRow:
    """One lease as the table shows it."""

    subnet: IPv4Network
    public_ip: str
    backend_type: str
    vtep_mac: str | None
    expires_in: float | None  # seconds; None for a reservation
    backend_data: Any = None

    def as_json(self) -> dict[str, Any]:
        """The ``--json`` form: plain values, durations in whole seconds."""
        return {
            "subnet": str(self.subnet),
            "public_ip": self.public_ip,
            "backend_type": self.backend_type,
            "vtep_mac": self.vtep_mac,
            "expires_in": None if self.expires_in is None else int(self.expires_in),
            "reservation": self.expires_in is None,
            "backend_data": self.backend_data,
        }


def lease_rows(leases: Iterable[Lease], now: float) -> list[LeaseRow]:
    """Rows sorted by subnet."""
    rows = [_row(lease, now) for lease in leases]
    return sorted(rows, key=lambda row: row.subnet)


def _row(lease: Lease, now: float) -> LeaseRow:
    data = _backend_data(lease.attrs.backend_data)
    mac = None
    if isinstance(data, dict):
        found = gojson.fold_keys(data, ("VtepMAC",)).get("VtepMAC")
        mac = found if isinstance(found, str) else None
    expires = None if lease.expiration is None else lease.expiration - now
    return LeaseRow(
        lease.subnet, str(lease.attrs.public_ip), lease.attrs.backend_type, mac, expires, data
    )


def _backend_data(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def duration(seconds: float | None) -> str:
    """``23h59m``, ``4m05s``; ``reservation`` for no expiry, ``expired`` below zero."""
    if seconds is None:
        return "reservation"
    if seconds < 0:
        return "expired"
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s"


def lease_table(rows: Sequence[LeaseRow], own: IPv4Network | None = None) -> str:
    """A fixed-width table for people; ``*`` marks this host's lease."""
    header = ("SUBNET", "PUBLIC IP", "BACKEND", "VTEP MAC", "EXPIRES IN")
    cells = [
        (
            ("*" if row.subnet == own else "") + str(row.subnet),
            row.public_ip,
            row.backend_type or "-",
            row.vtep_mac or "-",
            duration(row.expires_in),
        )
        for row in rows
    ]
    widths = [max(len(line[i]) for line in (header, *cells)) for i in range(len(header))]
    lines = [_columns(line, widths) for line in (header, *cells)]
    if not rows:
        lines.append("(no leases)")
    return "\n".join(lines) + "\n"


def _columns(cells: Sequence[str], widths: Sequence[int]) -> str:
    return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()


@dataclass(frozen=True, slots=True)
class HostFacts:
    """What ``status`` gathered on one host."""

    subnet_file: str
    subnet_env: Mapping[str, str] | None  # None: the file does not exist
    config: NetworkConfig | None
    config_problem: str | None
    leases: tuple[Lease, ...] | None  # None: etcd could not be read
    now: float
    renew_margin_minutes: int = 60
    registry: str = ""


@dataclass(frozen=True, slots=True)
class Status:
    """The verdict: this host's lease, its peers, and every difference found."""

    own: Lease | None
    peers: tuple[Lease, ...]
    problems: tuple[str, ...] = ()
    kernel: tuple[str, ...] = field(default=())  # summary lines of the kernel comparison


def assess(facts: HostFacts) -> Status:
    """Compare subnet.env, the config and the leases; name each inconsistency."""
    problems: list[str] = []
    own_subnet = _own_subnet(facts, problems)
    leases = facts.leases or ()
    own = next((lease for lease in leases if lease.subnet == own_subnet), None)
    peers = tuple(sorted((x for x in leases if x is not own), key=lambda x: x.subnet))
    if facts.config_problem is not None:
        problems.append(facts.config_problem)
    if own_subnet is not None and facts.leases is not None:
        problems.extend(_lease_problems(facts, own_subnet, own))
    if facts.config is not None and facts.subnet_env is not None:
        problems.extend(_env_vs_config(facts.subnet_env, facts.config, own_subnet))
    problems.extend(_shared_public_ips(leases))
    return Status(own, peers, tuple(problems))


def _own_subnet(facts: HostFacts, problems: list[str]) -> IPv4Network | None:
    if facts.subnet_env is None:
        problems.append(
            f"{facts.subnet_file} does not exist: pyflanneld has not acquired a lease on this"
            " host (is it running? see journalctl -u pyflanneld)"
        )
        return None
    subnet = subnetenv.previous_subnet(facts.subnet_env)
    if subnet is None:
        value = facts.subnet_env.get("FLANNEL_SUBNET", "")
        problems.append(f"{facts.subnet_file} has no usable FLANNEL_SUBNET (found {value!r})")
    return subnet


def _lease_problems(facts: HostFacts, subnet: IPv4Network, own: Lease | None) -> list[str]:
    if own is None:
        return [
            f"no lease for this host's subnet {subnet} in etcd: it expired or was deleted;"
            " pyflanneld exits when that happens and acquires a lease again when restarted"
        ]
    if own.expiration is None:
        return []
    left = own.expiration - facts.now
    overdue_below = facts.renew_margin_minutes * 60 - RENEWAL_GRACE
    if left < overdue_below:
        return [
            f"lease {subnet} expires in {duration(left)}: its renewal is overdue (pyflanneld"
            f" renews {facts.renew_margin_minutes} min before expiry); is pyflanneld running"
            " and can it reach etcd?"
        ]
    return []


def _env_vs_config(
    env: Mapping[str, str], config: NetworkConfig, subnet: IPv4Network | None
) -> list[str]:
    problems = []
    network = subnetenv.previous_network(env)
    if network != config.network:
        problems.append(
            f"subnet.env has FLANNEL_NETWORK={env.get('FLANNEL_NETWORK', '')} but the network"
            f" config says {config.network}: the config changed after pyflanneld started;"
            " restart pyflanneld (and then Docker)"
        )
    elif subnet is not None and not _fits(subnet, config):
        problems.append(
            f"this host's subnet {subnet} does not fit the network config (subnets"
            f" /{config.subnet_len} from {config.subnet_min} to {config.subnet_max}):"
            " restart pyflanneld to get a new one (and then Docker)"
        )
    return problems


def _fits(subnet: IPv4Network, config: NetworkConfig) -> bool:
    start = subnet.network_address
    return subnet.prefixlen == config.subnet_len and config.subnet_min <= start <= config.subnet_max


def _shared_public_ips(leases: Iterable[Lease]) -> list[str]:
    by_ip: dict[str, list[str]] = {}
    for lease in leases:
        by_ip.setdefault(str(lease.attrs.public_ip), []).append(str(lease.subnet))
    return [
        f"leases {', '.join(sorted(subnets))} share the public IP {ip}: hosts behind one NAT"
        " address, or a host that picked the wrong interface (set --iface or --public-ip)"
        for ip, subnets in sorted(by_ip.items())
        if len(subnets) > 1
    ]


def status_text(facts: HostFacts, status: Status) -> str:
    """The report for people: what was found, then each problem on its own line."""
    lines = [f"subnet.env: {facts.subnet_file}"]
    if facts.subnet_env is not None:
        lines.extend(f"  {name}={value}" for name, value in facts.subnet_env.items())
    if facts.config is not None:
        c = facts.config
        lines.append(
            f"network config: {c.network}, subnets /{c.subnet_len} from {c.subnet_min}"
            f" to {c.subnet_max}, backend {c.backend_type}"
        )
    if facts.registry:
        lines.append(f"etcd: {facts.registry}")
    if status.own is not None:
        (row,) = lease_rows([status.own], facts.now)
        mac = f", VTEP MAC {row.vtep_mac}" if row.vtep_mac else ""
        lines.append(
            f"lease: {row.subnet}, public IP {row.public_ip}, backend"
            f" {row.backend_type or '-'}{mac}, expires in {duration(row.expires_in)}"
        )
    lines.append(f"peers: {len(status.peers)} other lease(s)")
    lines.extend(status.kernel)
    if status.problems:
        lines.append(f"problems ({len(status.problems)}):")
        lines.extend(f"  - {problem}" for problem in status.problems)
    else:
        lines.append("problems: none")
    return "\n".join(lines) + "\n"


def status_json(facts: HostFacts, status: Status) -> dict[str, Any]:
    """The ``--json`` form of the report."""
    own = lease_rows([status.own], facts.now)[0].as_json() if status.own else None
    return {
        "subnet_file": facts.subnet_file,
        "subnet_env": dict(facts.subnet_env) if facts.subnet_env is not None else None,
        "lease": own,
        "peers": [row.as_json() for row in lease_rows(status.peers, facts.now)],
        "kernel": list(status.kernel),
        "problems": list(status.problems),
        "ok": not status.problems,
    }
