"""The rtnetlink transport's exchanges, against a scripted peer instead of the kernel.

A connected pair of datagram sockets stands in for the netlink socket: the test reads
what the transport sent and answers the way the kernel would, including answers that
belong to other requests, which the transport must skip.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Iterator

import pytest

from pyflannel.netlink.rtnl import links, wire
from pyflannel.netlink.rtnl.transport import NetlinkRefused, RtnlSocket

HEADER = struct.Struct("=IHHII")


def message(msg_type: int, seq: int, payload: bytes, flags: int = 0) -> bytes:
    return HEADER.pack(16 + len(payload), msg_type, flags, seq, 0) + payload


def ack(seq: int, code: int = 0) -> bytes:
    return message(2, seq, struct.pack("=i", -code) + HEADER.pack(16, 0, 0, seq, 0))


@pytest.fixture
def pair() -> Iterator[tuple[RtnlSocket, socket.socket]]:
    ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    ours.setblocking(False)
    channel = RtnlSocket()
    channel._sock = ours  # the transport's socket, without a kernel behind it
    try:
        yield channel, kernel
    finally:
        channel.close()
        kernel.close()


def requests(data: bytes) -> list[tuple[int, int, int]]:
    """(type, flags, seq) of each message the transport sent in one write."""
    return [(m.msg_type, m.flags, m.seq) for m in wire.messages(data)]


async def test_a_call_skips_stray_answers_and_returns_its_own(
    pair: tuple[RtnlSocket, socket.socket],
) -> None:
    channel, kernel = pair
    call = asyncio.ensure_future(channel.call(links.get_link(name="eth0")))
    await asyncio.sleep(0)
    sent = kernel.recv(65536)
    ((msg_type, flags, seq),) = requests(sent)
    assert (msg_type, flags) == (18, wire.NLM_F_REQUEST | wire.NLM_F_ACK)
    kernel.send(ack(seq + 100, 22) + message(16, seq + 100, b"other"))  # someone else's
    kernel.send(message(16, seq, b"mine") + ack(seq))
    assert await call == [b"mine"]


async def test_a_refused_call_raises_with_the_errno(
    pair: tuple[RtnlSocket, socket.socket],
) -> None:
    channel, kernel = pair
    call = asyncio.ensure_future(channel.call(links.delete_link(7)))
    await asyncio.sleep(0)
    ((_, _, seq),) = requests(kernel.recv(65536))
    kernel.send(ack(seq, 19))
    with pytest.raises(NetlinkRefused) as refused:
        await call
    assert refused.value.code == 19
    assert str(refused.value) == "No such device (ENODEV)"


async def test_a_batch_asks_one_acknowledgement_and_reports_refusals_by_position(
    pair: tuple[RtnlSocket, socket.socket],
) -> None:
    channel, kernel = pair
    batch = asyncio.ensure_future(channel.batch([links.delete_link(i) for i in (1, 2, 3)]))
    await asyncio.sleep(0)
    sent = requests(kernel.recv(65536))
    assert [flags & wire.NLM_F_ACK for _, flags, _ in sent] == [0, 0, wire.NLM_F_ACK]
    first = sent[0][2]
    kernel.send(ack(first + 1, 19) + ack(first + 2))
    assert await batch == [(1, 19)]
