"""Programming the kernel from a peer book: full passes, delta passes, and falling back.

The kernel is a fake at the applier's own seam (:class:`EntryOps`): a dictionary of
entries by kernel key that counts its dumps and can be told to refuse an entry.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence

from support.factories import lease

from pyflannel.backends.vxlan.desired import Links, peer_book
from pyflannel.core.kernelstate import (
    RTPROT_PYFLANNEL,
    Change,
    FdbEntry,
    KernelState,
    Neighbour,
    Op,
    Route,
    Scope,
)
from pyflannel.core.peerbook import PeerBook, PeerNote
from pyflannel.model.lease import EventKind, Lease, LeaseEvent
from pyflannel.netlink import applier
from pyflannel.netlink.applier import Reconciler
from pyflannel.netlink.driver import ECHO_WINDOW, Echoes
from pyflannel.netlink.ops import Failure
from pyflannel.netlink.rtnl import Notice

VX = 7
LINKS = Links(VX, "0a:00:00:00:00:01", 2)
OWN = lease("10.5.1.0/24", "198.51.100.11", backend_type="vxlan")
SCOPE = Scope(
    route_oifs=frozenset({VX}),
    route_protos=frozenset({RTPROT_PYFLANNEL}),
    neighbour_ifindex=VX,
    fdb_ifindex=VX,
)


class FakeKernel:
    """Routes, neighbours and FDB entries by kernel key."""

    def __init__(self) -> None:
        self.entries: dict[tuple[object, ...], Route | Neighbour | FdbEntry] = {}
        self.dumps = 0
        self.batches: list[int] = []
        self.refuse: set[Route | Neighbour | FdbEntry] = set()

    async def routes(self, *, oif: int | None = None, proto: int = 0) -> list[Route]:
        self.dumps += 1
        found = [e for e in self.entries.values() if isinstance(e, Route)]
        return [
            r for r in found if (oif is None or r.oif == oif) and (not proto or r.proto == proto)
        ]

    async def neighbours(self, ifindex: int) -> list[Neighbour]:
        self.dumps += 1
        return [e for e in self.entries.values() if isinstance(e, Neighbour)]

    async def fdb(self, ifindex: int) -> list[FdbEntry]:
        self.dumps += 1
        return [e for e in self.entries.values() if isinstance(e, FdbEntry)]

    async def execute(self, changes: Sequence[Change]) -> list[Failure]:
        self.batches.append(len(changes))
        failures = []
        for change in changes:
            slot = (type(change.entry), change.entry.key())
            if change.entry in self.refuse:
                failures.append(Failure(change, errno.EINVAL))
            elif change.op is Op.SET:
                self.entries[slot] = change.entry
            elif self.entries.pop(slot, None) is None:
                failures.append(Failure(change, errno.ENOENT))
        return failures

    def state(self) -> KernelState:
        found = list(self.entries.values())
        return KernelState(
            frozenset(e for e in found if isinstance(e, Route)),
            frozenset(e for e in found if isinstance(e, Neighbour)),
            frozenset(e for e in found if isinstance(e, FdbEntry)),
        )


def peer(n: int) -> Lease:
    mac = f"02:00:00:00:{n >> 8:02x}:{n & 255:02x}"
    return lease(f"10.6.{n}.0/24", f"203.0.113.{n}", backend_type="vxlan",
                 backend_data=f'{{"VNI":1,"VtepMAC":"{mac}"}}')  # fmt: skip


def add(book: PeerBook, *numbers: int) -> None:
    book.update(LeaseEvent(EventKind.ADDED, peer(n)) for n in numbers)


async def test_the_first_pass_reads_the_kernel_and_later_ones_apply_deltas() -> None:
    kernel, book = FakeKernel(), peer_book(OWN, LINKS, direct_routing=False)
    stale = Route("10.6.99.0/24", "10.6.99.0", VX, onlink=True)
    kernel.entries[(Route, stale.key())] = stale
    reconciler = Reconciler(kernel)
    add(book, 1, 2)
    first = await reconciler.program(book, SCOPE)
    assert first.read and kernel.dumps == 4  # by device, by protocol, neighbours, FDB
    assert kernel.state() == book.state()  # the stale route is gone
    add(book, 3)
    second = await reconciler.program(book, SCOPE)
    assert not second.read and kernel.dumps == 4
    assert len(second.changes) == 3
    assert kernel.state() == book.state()
    idle = await reconciler.program(book, SCOPE)
    assert idle.changes == () and kernel.batches[-1] == 3  # nothing sent for nothing


async def test_a_full_pass_restores_what_was_deleted_behind_our_back() -> None:
    kernel, book = FakeKernel(), peer_book(OWN, LINKS, direct_routing=False)
    reconciler = Reconciler(kernel)
    add(book, 1)
    await reconciler.program(book, SCOPE)
    kernel.entries.clear()
    assert (await reconciler.program(book, SCOPE)).changes == ()  # a delta pass trusts
    outcome = await reconciler.program(book, SCOPE, full=True)
    assert outcome.read and len(outcome.changes) == 3
    assert kernel.state() == book.state()


async def test_after_a_refusal_the_next_pass_compares_everything() -> None:
    kernel, book = FakeKernel(), peer_book(OWN, LINKS, direct_routing=False)
    reconciler = Reconciler(kernel)
    add(book, 1)
    await reconciler.program(book, SCOPE)
    add(book, 2)
    kernel.refuse = {Route("10.6.2.0/24", "10.6.2.0", VX, onlink=True)}
    refused = await reconciler.program(book, SCOPE)
    assert [f.change.entry for f in refused.failures] == list(kernel.refuse)
    kernel.refuse = set()
    retried = await reconciler.program(book, SCOPE)
    assert retried.read
    assert [c.entry for c in retried.changes] == [Route("10.6.2.0/24", "10.6.2.0", VX, onlink=True)]
    assert kernel.state() == book.state()


async def test_another_scope_means_a_full_pass() -> None:
    kernel, book = FakeKernel(), peer_book(OWN, LINKS, direct_routing=False)
    reconciler = Reconciler(kernel)
    add(book, 1)
    await reconciler.program(book, SCOPE)
    other = Scope(route_oifs=frozenset({VX}), neighbour_ifindex=VX, fdb_ifindex=VX)
    assert (await reconciler.program(book, other)).read
    reconciler.forget()
    assert (await reconciler.program(book, other)).read


async def test_thousands_of_changes_go_out_in_order_in_slices() -> None:
    kernel, book = FakeKernel(), peer_book(OWN, LINKS, direct_routing=False)
    reconciler = Reconciler(kernel)
    add(book, *range(1, 250))
    outcome = await reconciler.program(book, SCOPE)
    assert kernel.batches == [
        applier.SLICE,
        applier.SLICE,
        len(outcome.changes) - 2 * applier.SLICE,
    ]
    kinds = [type(c.entry) for c in outcome.changes]
    assert kinds == [Neighbour] * 249 + [FdbEntry] * 249 + [Route] * 249


async def test_notes_reach_the_report() -> None:
    kernel, book = FakeKernel(), peer_book(OWN, LINKS, direct_routing=False)
    reports: list[tuple[PeerNote, ...]] = []
    foreign = lease("10.6.7.0/24", "203.0.113.7", backend_type="udp")
    book.update([LeaseEvent(EventKind.ADDED, foreign)])
    await Reconciler(kernel).program(book, SCOPE, report=reports.append)
    assert [(n.subnet, n.foreign) for n in reports[0]] == [(foreign.subnet, True)]


async def test_our_own_neighbour_and_fdb_deletions_are_not_taken_for_someone_elses() -> None:
    now = [100.0]
    echoes = Echoes(clock=lambda: now[0])
    kernel, book = FakeKernel(), peer_book(OWN, LINKS, direct_routing=False)
    reconciler = Reconciler(kernel, on_send=echoes.expect)
    add(book, 1, 2)
    await reconciler.program(book, SCOPE)
    book.update(LeaseEvent(EventKind.REMOVED, peer(n)) for n in (1, 2))
    await reconciler.program(book, SCOPE)
    anonymous = Notice("neigh", deleted=True, ifindex=VX)
    assert not echoes.absorb(Notice("route", deleted=True, ifindex=VX))
    assert not echoes.absorb(Notice("neigh", deleted=True, ifindex=VX, pid=4242))
    assert [echoes.absorb(anonymous) for _ in range(5)] == [True] * 4 + [False]
    add(book, 3)
    await reconciler.program(book, SCOPE)  # additions expect nothing
    assert not echoes.absorb(anonymous)
    book.update([LeaseEvent(EventKind.REMOVED, peer(3))])
    await reconciler.program(book, SCOPE)
    now[0] += ECHO_WINDOW + 0.1
    assert not echoes.absorb(anonymous)  # too late to be ours
