"""The desired kernel state of a reconciling backend, kept peer by peer.

A backend says what one peer lease needs (a :data:`PeerResult`: entries, a reason to
skip it, or None for a lease of another backend type). The :class:`PeerBook` keeps
that result for every peer, settles kernel keys that two peers claim, and after each
run of lease events tells exactly which entries stopped being wanted and which
started (a :class:`Delta`). Diffing its two sides gives the very changes a diff of
the whole new state with the whole old one gives, at a cost that grows with the
events, not with the peers: that keeps a burst of lease writes cheap. The whole
state is there too, for the comparison with a kernel dump at start and on resync.

Claims: a kernel key (a route's destination, a neighbour's address, an FDB entry's
MAC) may be held by one peer only. Every peer claims the keys of its entries and
gets its entries only when it ranks first (lowest subnet) among the claimants of
each of them; otherwise it is skipped, with the reason. The rule looks at each key
on its own, so the result does not depend on the order in which leases arrived, and
a change concerns only the peers that share a key with it.

Rules of this file: pure code, no I/O; :meth:`PeerBook.take` and
:meth:`PeerBook.state` describe the same moment when called one after the other.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Hashable, Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from pyflannel.core.kernelstate import Entry, FdbEntry, KernelState, Neighbour, state_of
from pyflannel.model.lease import EventKind, Lease, LeaseAttrs, LeaseEvent
from pyflannel.model.net import SubnetKey

Claim = tuple[type, Hashable]


@dataclass(frozen=True, slots=True)
class Wanted:
    """The entries one peer lease needs."""

    entries: tuple[Entry, ...]


@dataclass(frozen=True, slots=True)
class Unusable:
    """A lease of this backend's type that gets no entries, and why."""

    reason: str


PeerResult = Wanted | Unusable | None
"""What one lease contributes; None: a lease of another backend type (ignored)."""


@dataclass(frozen=True, slots=True, order=True)
class SkippedPeer:
    """A peer lease that gets no entries, and why."""

    subnet: IPv4Network
    reason: str


@dataclass(frozen=True, slots=True)
class PeerNote:
    """A change in how a peer is treated, for the log: now skipped (``reason``), now
    ignored as another backend's (``foreign``), or neither any more."""

    key: SubnetKey
    reason: str | None = None
    foreign: bool = False

    @property
    def subnet(self) -> IPv4Network:
        """The peer's IPv4 subnet."""
        return self.key.subnet


@dataclass(frozen=True, slots=True)
class Delta:
    """The entries that stopped being wanted and those that started, since the last take."""

    before: KernelState
    after: KernelState
    notes: tuple[PeerNote, ...] = ()


@dataclass(frozen=True, slots=True)
class Desired:
    """The whole kernel state to hold, and the peers left out of it."""

    state: KernelState
    skipped: tuple[SkippedPeer, ...] = ()
    foreign: tuple[IPv4Network, ...] = ()  # peers of another backend type (ignored)


_FINE: tuple[str | None, bool] = (None, False)
_NOBODY = LeaseAttrs(IPv4Address(0))  # a removal needs only the key

PeerId = tuple[int, int, str]
"""A lease's identity in the book: (network address, prefix length, IPv6 part). Cheap
to hash, unlike a subnet key, and it sorts as subnets do, so it is the rank too."""


def peer_id(key: SubnetKey) -> PeerId:
    """The book's identity for a lease key."""
    subnet = key.subnet
    return (int(subnet.network_address), subnet.prefixlen, key.ipv6 or "")


class PeerBook:
    """Every peer's result, the claims on kernel keys, and what changed since the last take.

    ``update`` takes lease events as they come; results are computed only once the
    book is ``configure``-d with the function that makes them (it needs the devices,
    which a backend knows only after its first look at the kernel).
    """

    def __init__(self, own: IPv4Network) -> None:
        self._own = (int(own.network_address), own.prefixlen)  # never a peer
        self._entries_of: Callable[[Lease], PeerResult] | None = None
        self._inputs: object = None
        self._leases: dict[PeerId, Lease] = {}
        self._ignored: set[PeerId] = set()  # leases for our own subnet (other IPv6 parts)
        self._results: dict[PeerId, PeerResult] = {}
        self._claimants: dict[Claim, tuple[PeerId, ...]] = {}  # in rank order: [0] wins
        self._before: dict[PeerId, tuple[Entry, ...]] = {}  # as of the last take
        self._noted: dict[PeerId, tuple[str | None, bool]] = {}
        self.size = 0
        """How many entries the state held at the last take."""

    def __len__(self) -> int:
        """How many leases the book knows (its peers and any for our own subnet)."""
        return len(self._leases) + len(self._ignored)

    def configure(self, entries_of: Callable[[Lease], PeerResult], inputs: Hashable) -> None:
        """Make results with ``entries_of`` from now on; ``inputs`` are what it depends on
        besides the lease: when they change, every result is made again."""
        if self._entries_of is not None and inputs == self._inputs:
            return
        self._entries_of, self._inputs = entries_of, inputs
        for pid in self._leases:
            self._touch(pid)
        self._results.clear()
        self._claimants.clear()
        for pid, lease in self._leases.items():
            self._settle(pid, entries_of(lease))

    def update(self, events: Iterable[LeaseEvent]) -> None:
        """Fold lease events in (ADDED: created, renewed or changed; REMOVED: gone)."""
        own_address, own_length = self._own
        for event in events:
            pid = peer_id(event.lease.key)
            if pid[0] == own_address and pid[1] == own_length:
                ignored = self._ignored
                (ignored.add if event.kind is EventKind.ADDED else ignored.discard)(pid)
            elif event.kind is EventKind.ADDED:
                self._put(pid, event.lease)
            elif self._leases.pop(pid, None) is not None and self._entries_of is not None:
                self._settle(pid, None, present=False)

    def follow(self, events: Sequence[LeaseEvent], leases: Collection[Lease]) -> None:
        """Fold in an update that carries the events since the previous one and every
        lease after them: by the events (cheap), or by the whole set when there are no
        events or they do not account for it."""
        if events:
            self.update(events)
            if len(self) == len(leases):
                return
        self.resync(leases)

    def resync(self, leases: Iterable[Lease]) -> None:
        """Make ``leases`` the whole set of peers (a full comparison: O(peers))."""
        fresh = {peer_id(lease.key): lease for lease in leases}
        gone = [x.key for pid, x in self._leases.items() if pid not in fresh]
        gone += [SubnetKey(_subnet(pid), pid[2] or None) for pid in self._ignored - set(fresh)]
        self.update(LeaseEvent(EventKind.REMOVED, Lease(key, _NOBODY, None)) for key in gone)
        self.update(LeaseEvent(EventKind.ADDED, lease) for lease in fresh.values())

    def take(self) -> Delta:
        """What changed since the last take (and forget it)."""
        before: list[Entry] = []
        after: list[Entry] = []
        notes: list[PeerNote] = []
        for pid, old in self._before.items():
            new = self._contribution(pid)
            if new != old:
                before.extend(old)
                after.extend(new)
            if not new or pid in self._noted:  # a peer with entries is fine: no news
                note = self._note(pid)
                if note is not None:
                    notes.append(note)
        self._before = {}
        self.size += len(after) - len(before)
        notes.sort(key=lambda note: (note.subnet, note.key.ipv6 or ""))
        return Delta(state_of(before), state_of(after), tuple(notes))

    def state(self) -> KernelState:
        """Everything wanted now."""
        return state_of(entry for pid in self._results for entry in self._contribution(pid))

    def desired(self) -> Desired:
        """The whole state and the peers left out of it (for a one-off check: O(peers))."""
        skipped = []
        for pid in self._results:
            reason, _ = self._status(pid)
            if reason is not None:
                skipped.append(SkippedPeer(_subnet(pid), reason))
        foreign = [_subnet(pid) for pid, result in self._results.items() if result is None]
        return Desired(self.state(), tuple(sorted(skipped)), tuple(sorted(foreign)))

    def _put(self, pid: PeerId, lease: Lease) -> None:
        old = self._leases.get(pid)
        self._leases[pid] = lease
        if old is not None and old.attrs == lease.attrs:
            return  # a renewal: same entries
        if self._entries_of is not None:
            self._settle(pid, self._entries_of(lease))

    def _settle(self, pid: PeerId, result: PeerResult, *, present: bool = True) -> None:
        """Replace a peer's result, noting first what it and its rivals contributed."""
        old_claims = _claims_of(self._results.get(pid))
        claims = _claims_of(result)
        claimants = self._claimants
        self._touch(pid)
        for claim in old_claims + claims:
            holders = claimants.get(claim, ())
            if len(holders) > 1 or (holders and holders[0] != pid):
                for rival in holders:
                    self._touch(rival)
        for claim in old_claims:
            holders = tuple(holder for holder in claimants[claim] if holder != pid)
            if holders:
                claimants[claim] = holders
            else:
                del claimants[claim]
        if not present:
            self._results.pop(pid, None)
            return
        self._results[pid] = result
        for claim in claims:
            rivals = claimants.get(claim)
            claimants[claim] = (pid,) if rivals is None else tuple(sorted((*rivals, pid)))

    def _touch(self, pid: PeerId) -> None:
        if pid not in self._before:
            self._before[pid] = self._contribution(pid)

    def _contribution(self, pid: PeerId) -> tuple[Entry, ...]:
        result = self._results.get(pid)
        if not isinstance(result, Wanted):
            return ()
        claimants = self._claimants
        for claim in _claims_of(result):
            if claimants[claim][0] != pid:
                return ()
        return result.entries

    def _status(self, pid: PeerId) -> tuple[str | None, bool]:
        """(why it is skipped, whether it is another backend's); (None, False) if neither."""
        if pid not in self._results:
            return _FINE
        result = self._results[pid]
        if result is None:
            return (None, True)
        if isinstance(result, Unusable):
            return (result.reason, False)
        for claim, entry in zip(_claims_of(result), result.entries, strict=True):
            holder = self._claimants[claim][0]
            if holder != pid:
                used = f"is already used by the lease for {_subnet(holder)}"
                return (f"{_describe(entry)} {used}", False)
        return _FINE

    def _note(self, pid: PeerId) -> PeerNote | None:
        status = self._status(pid)
        if status == self._noted.get(pid, _FINE):
            return None
        if status == _FINE:
            del self._noted[pid]
        else:
            self._noted[pid] = status
        return PeerNote(SubnetKey(_subnet(pid), pid[2] or None), *status)


def _claims_of(result: PeerResult) -> tuple[Claim, ...]:
    if not isinstance(result, Wanted):
        return ()
    return tuple([(type(entry), entry.key()) for entry in result.entries])


def _subnet(pid: PeerId) -> IPv4Network:
    return IPv4Network((pid[0], pid[1]))


def _describe(entry: Entry) -> str:
    if isinstance(entry, FdbEntry):
        return f"VtepMAC {entry.mac}"
    if isinstance(entry, Neighbour):
        return f"neighbour address {entry.ip}"
    return f"route to {entry.dst}"
