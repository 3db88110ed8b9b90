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
    When the actual side holds several entries under one key and none of them is the
    desired one, they are all removed and the desired one is added. The caller
    guarantees that desired entries have distinct keys (checked among the entries
    that differ from the actual side, where a clash would do harm).

    Equal entries are matched first, with set operations, so that a pass in which
    little changed costs little more than hashing both sides once.
    """
    want = desired if isinstance(desired, set | frozenset) else dict.fromkeys(desired)
    have = actual if isinstance(actual, set | frozenset) else dict.fromkeys(actual)
    missing = [entry for entry in want if entry not in have]
    extra = [entry for entry in have if entry not in want]
    if not extra:  # only additions (a burst of new peers): no pairs to look for
        if len(set(map(key, missing))) < len(missing):
            _match(missing, [], key)  # raises, naming the key
        return Plan(add=tuple(missing)) if missing else Plan()
    if not missing:  # only removals
        return Plan(remove=tuple(extra))
    return _match(missing, extra, key)


def _match(missing: list[T], extra: list[T], key: Callable[[T], Hashable]) -> Plan[T]:
    """Pair the desired entries the kernel lacks with the ones it has in excess."""
    wanted: dict[Hashable, T] = {}
    for entry in missing:
        if wanted.setdefault(key(entry), entry) != entry:
            raise ValueError(f"two desired entries share the key {key(entry)!r}")
    rivals: dict[Hashable, list[T]] = {}
    remove: list[T] = []
    for entry in extra:
        k = key(entry)
        if k in wanted:
            rivals.setdefault(k, []).append(entry)
        else:
            remove.append(entry)
    add: list[T] = []
    replace: list[T] = []
    for k, entry in wanted.items():
        present = rivals.get(k, [])
        if len(present) == 1:
            replace.append(entry)
        else:
            remove.extend(present)
            add.append(entry)
    return Plan(tuple(add), tuple(remove), tuple(replace))
