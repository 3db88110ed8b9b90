"""Does the kernel hold what the leases call for? Each difference, named.

The expected entries come from the backends' own pure desired-state functions (the
very code that programs them), the actual ones from the kernel, read inside the
scope the backend owns; :func:`pyflannel.core.kernelstate.plan_changes` then says
what the daemon would have to change, and every change is one difference to report:
an entry that is missing, one that differs, or a stale one no lease calls for.
Entries the kernel made itself (learned FDB entries, ARP) are not differences.

Rules of this file: pure code, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Interface, IPv4Network

from pyflannel.core.kernelstate import (
    Entry,
    KernelState,
    Neighbour,
    Op,
    Route,
    plan_changes,
)


@dataclass(frozen=True, slots=True)
class Device:
    """A device as read from the kernel (None where it does not exist)."""

    name: str
    kind: str
    up: bool
    mtu: int
    addresses: tuple[IPv4Interface, ...] = ()
    vni: int | None = None


def device_problems(
    device: Device | None, name: str, *, kind: str, mtu: int | None, own: IPv4Network
) -> list[str]:
    """What is wrong with the backend's device ``name`` (expected MTU from subnet.env)."""
    if device is None:
        return [f"device {name} does not exist: pyflanneld creates it at start (is it running?)"]
    problems = []
    if device.kind != kind:
        problems.append(f"device {name} is of kind {device.kind or 'unknown'}, not {kind}")
    if not device.up:
        problems.append(f"device {name} is down (ip link set {name} up)")
    if mtu is not None and device.mtu != mtu:
        problems.append(f"device {name} has MTU {device.mtu} but subnet.env says {mtu}")
    wanted = IPv4Interface(f"{own.network_address}/32")
    if wanted not in device.addresses:
        shown = ", ".join(map(str, device.addresses)) or "none"
        problems.append(f"device {name} lacks the address {wanted} (has: {shown})")
    return problems


def describe(entry: Entry, names: Mapping[int, str]) -> str:
    """An entry as iproute2 would print it."""
    if isinstance(entry, Route):
        dev = names.get(entry.oif, f"#{entry.oif}")
        via = f" via {entry.gateway}" if entry.gateway else ""
        return f"route {entry.dst}{via} dev {dev}{' onlink' if entry.onlink else ''}"
    if isinstance(entry, Neighbour):
        dev = names.get(entry.ifindex, f"#{entry.ifindex}")
        return f"neighbour {entry.ip} lladdr {entry.mac} dev {dev}"
    dev = names.get(entry.ifindex, f"#{entry.ifindex}")
    return f"FDB entry {entry.mac} dst {entry.dst} dev {dev}"


def entry_problems(
    desired: KernelState, actual: KernelState, names: Mapping[int, str]
) -> list[str]:
    """One line per difference between the leases' entries and the kernel's."""
    present = {(type(e), e.key()): e for e in _entries(actual)}
    problems = []
    for change in plan_changes(desired, actual):
        text = describe(change.entry, names)
        if change.op is Op.DELETE:
            problems.append(f"stale {text}: no lease calls for it")
            continue
        old = present.get((type(change.entry), change.entry.key()))
        if old is None:
            problems.append(f"missing {text}")
        else:
            problems.append(f"wrong {describe(old, names)}: the leases call for {text}")
    return problems


def _entries(state: KernelState) -> Iterable[Entry]:
    yield from state.routes
    yield from state.neighbours
    yield from state.fdb


def summary(device: Device | None, desired: KernelState, differences: int) -> str:
    """One line: the device and how many entries the leases call for."""
    parts = []
    if device is not None:
        addrs = ", ".join(map(str, device.addresses)) or "no address"
        parts.append(f"{device.name} {'up' if device.up else 'DOWN'}, mtu {device.mtu}, {addrs}")
    counts = ", ".join(
        _count(n, *words)
        for n, words in (
            (len(desired.routes), ("route", "routes")),
            (len(desired.neighbours), ("neighbour", "neighbours")),
            (len(desired.fdb), ("FDB entry", "FDB entries")),
        )
        if n
    )
    verdict = "as the leases call for" if not differences else f"{differences} difference(s)"
    parts.append(f"{counts} {verdict}" if desired else f"no entries needed ({verdict})")
    return "kernel: " + "; ".join(parts)


def _count(n: int, singular: str, plural: str) -> str:
    return f"{n} {singular if n == 1 else plural}"
