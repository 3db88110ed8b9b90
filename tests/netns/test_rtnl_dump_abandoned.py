"""A route dump abandoned half-way must not break the next exchanges on the same socket.

The kernel runs one dump per netlink socket at a time and keeps an unfinished one going:
without care, the next dump request on that socket is refused (EBUSY) and the rest of
the old dump is still queued. Each test gets a namespace with a device carrying
enough routes for a dump of several datagrams, abandons a dump after its first entries
(cancelled, or an error raised while reading), then reads the routes and the device
again on the same :class:`RtnlSocket`; iproute2 is the independent witness.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
from support import netns, nsjoin
from support.netns import Namespace

from pyflannel.core.kernelstate import Route
from pyflannel.netlink import rtnl
from pyflannel.netlink.rtnl import links
from pyflannel.netlink.rtnl.transport import RtnlSocket
from pyflannel.netlink.rtnl.wire import Buffer

pytestmark = pytest.mark.netns
T = TypeVar("T")
ROUTES = 4000  # about 60 bytes each: a dump of several datagrams (at most 32 KiB each)
DEVICE = "eth0"  # a veth whose peer eth0p is in the same namespace


class Abandoned(Exception):
    """Raised by the parser to abandon a dump while the kernel is still sending it."""


class YieldingLoop(asyncio.SelectorEventLoop):
    """An event loop whose socket receives always yield to other tasks first.

    The kernel produces a dump's next datagram as the previous one is read, so a
    receive rarely has to wait; yielding makes "the dump is waiting for its next
    datagram" a point where the test can cancel it.
    """

    async def sock_recv_into(self, sock: socket.socket, buf: Any) -> int:
        await asyncio.sleep(0)
        return await super().sock_recv_into(sock, buf)


@dataclass(frozen=True, slots=True)
class Outcome:
    abandoned_with: type[BaseException] | None
    entries_before_abandoning: int
    ports: tuple[int, int]  # the socket's port before and after
    routes: list[Route]
    link: links.Link | None


def run_in(ns: Namespace, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``make()`` on a YieldingLoop in a thread inside ``ns``; re-raise its error."""
    return nsjoin.run_in(ns.name, make, loop_factory=YieldingLoop)


@pytest.fixture
def routed() -> Iterator[Namespace]:
    """A namespace with ``eth0`` up and ROUTES /24 routes through it."""
    netns.skip_unless_available()
    with Namespace("rtnldump") as ns:
        ns.ip("link", "add", DEVICE, "type", "veth", "peer", "name", f"{DEVICE}p")
        ns.ip("link", "set", f"{DEVICE}p", "up")
        ns.ip("link", "set", DEVICE, "up")
        batch = "".join(
            f"route add 10.{64 + i // 256}.{i % 256}.0/24 dev {DEVICE} proto static\n"
            for i in range(ROUTES)
        )
        netns.run("ip", "-n", ns.name, "-batch", "-", input=batch)
        yield ns


def device_index(ns: Namespace) -> int:
    return int(json.loads(ns.ip("-j", "link", "show", DEVICE).stdout)[0]["ifindex"])


def abandon_then_reuse(index: int, how: str) -> Callable[[], Coroutine[Any, Any, Outcome]]:
    """Start a dump of the device's routes, abandon it after its first entries as
    ``how`` says, then dump the routes and read the device on the same socket."""

    async def main() -> Outcome:
        async with RtnlSocket() as sock:
            port = sock.port_id
            parsed = 0
            first = asyncio.Event()

            def parse(data: Buffer, start: int, end: int) -> Route | None:
                nonlocal parsed
                parsed += 1
                first.set()
                if how == "raised":
                    raise Abandoned
                return rtnl.parse_route(data, start, end)

            dump = asyncio.create_task(sock.dump(rtnl.route_dump(oif=index), parse))
            await first.wait()
            if how == "cancelled":
                dump.cancel()
            abandoned_with: type[BaseException] | None = None
            try:
                await dump
            except (asyncio.CancelledError, Abandoned) as exc:
                abandoned_with = type(exc)
            before = parsed
            request = rtnl.route_dump(oif=index)
            routes = await sock.dump(request, rtnl.parse_route, rtnl.route_fingerprint)
            answer = await sock.call(links.get_link(name=DEVICE))
            link = links.parse_link(answer[0], 0, len(answer[0])) if answer else None
            return Outcome(abandoned_with, before, (port, sock.port_id), routes, link)

    return main


@pytest.mark.parametrize(
    ("how", "error"), [("cancelled", asyncio.CancelledError), ("raised", Abandoned)]
)
def test_a_dump_abandoned_half_way_does_not_break_the_next_exchanges(
    routed: Namespace, how: str, error: type[BaseException]
) -> None:
    index = device_index(routed)
    outcome = run_in(routed, abandon_then_reuse(index, how))
    assert outcome.abandoned_with is error
    assert 0 < outcome.entries_before_abandoning < ROUTES  # abandoned half-way
    listed = json.loads(routed.ip("-j", "route", "show", "dev", DEVICE).stdout)
    assert len(listed) == ROUTES
    assert sorted(route.dst for route in outcome.routes) == sorted(r["dst"] for r in listed)
    assert {(route.oif, route.gateway, route.proto) for route in outcome.routes} == {
        (index, "", 4)  # RTPROT_STATIC
    }
    assert outcome.link is not None
    assert (outcome.link.name, outcome.link.index) == (DEVICE, index)
    assert outcome.ports[0] == outcome.ports[1] != 0  # the port was free: taken again
