"""Comparing a desired set of entries with the actual one: what to add, remove, replace.

Reconciliation instead of event replay: a backend states what the kernel should
hold, something reads what it does hold, and :func:`diff` says what to change. The
same function serves every kind of entry (routes, neighbours, FDB entries) and every
backend; only the *identity* of an entry differs, which the caller gives as ``key``.
Two entries with the same key but different values are one entry to *replace*.

Rules of this file: pure code over hashable values; the result depends only on the
arguments (stable order: desired order for add/replace, actual order for remove).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T", bound=Hashable)


@dataclass(frozen=True, slots=True)
class Plan(Generic[T]):
    """The changes that turn the actual entries into the desired ones.

    Apply ``remove`` before ``add``: when the kernel holds several entries under one
    key and none of them is the desired one, they are all removed and the desired
    entry is added afresh.
    """

    add: tuple[T, ...] = ()
    remove: tuple[T, ...] = ()
    replace: tuple[T, ...] = ()

    @property
    def empty(self) -> bool:
        """True when nothing needs to change."""
        return not (self.add or self.remove or self.replace)

    def __len__(self) -> int:
        return len(self.add) + len(self.remove) + len(self.replace)


def diff(desired: Iterable[T], actual: Iterable[T], key: Callable[[T], Hashable]) -> Plan[T]:
    """What to change so that ``actual`` becomes ``desired``.

    Entries are matched by ``key``. Per key: desired but absent → add; present but not
    desired → remove; present with other values → replace with the desired value.
    When the actual side holds duplicates under one key, those that are not the
    desired entry are removed (and if none of them is, the desired entry is added
    after the removal). A desired side with duplicate keys is the caller's error.
    """
    wanted: dict[Hashable, T] = {}
    for entry in desired:
        k = key(entry)
        if k in wanted and wanted[k] != entry:
            raise ValueError(f"two desired entries share the key {k!r}")
        wanted[k] = entry
    held: dict[Hashable, list[T]] = {}
    for entry in actual:
        held.setdefault(key(entry), []).append(entry)
    add: list[T] = []
    replace: list[T] = []
    remove: list[T] = []
    for k, entry in wanted.items():
        present = held.get(k, [])
        if not present:
            add.append(entry)
        elif entry in present:
            remove.extend(other for other in present if other != entry)
        elif len(present) == 1:
            replace.append(entry)
        else:
            remove.extend(present)
            add.append(entry)
    remove.extend(e for k, present in held.items() if k not in wanted for e in present)
    return Plan(tuple(add), tuple(_dedupe(remove)), tuple(replace))


def _dedupe(entries: list[T]) -> list[T]:
    """Drop exact repeats (a dump may list one entry twice), keeping the first."""
    return list(dict.fromkeys(entries))
