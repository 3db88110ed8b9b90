"""Peer sockets on loopback: a peer's datagrams reach its own socket, anyone else's the
main socket, and a peer that leaves falls back on the main socket."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest

from pyflannel.backends.udp.peersocks import PeerSockets

PEER, STRANGER = "127.0.0.2", "127.0.0.3"


@pytest.fixture
def main() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.bind(("127.0.0.1", 0))
    yield sock
    sock.close()


def sender(address: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((address, port))
    return sock


async def arrival(queue: asyncio.Queue[tuple[str, bytes]]) -> tuple[str, bytes]:
    return await asyncio.wait_for(queue.get(), timeout=5)


async def test_datagrams_reach_the_socket_of_their_sender(main: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    port = main.getsockname()[1]
    got: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
    prepared: list[socket.socket] = []

    def reader(sock: socket.socket) -> None:
        got.put_nowait(("peer", sock.recv(100)))

    loop.add_reader(main.fileno(), lambda: got.put_nowait(("main", main.recv(100))))
    socks = PeerSockets(main, loop, reader, prepared.append)
    peer, stranger = sender(PEER, port), sender(STRANGER, port)
    try:
        socks.sync([PEER])
        own = socks.get(PEER)
        assert own is not None and prepared == [own]
        assert own.getsockname() == main.getsockname()
        assert own.getpeername() == (PEER, port)
        peer.sendto(b"from the peer", main.getsockname())
        assert await arrival(got) == ("peer", b"from the peer")
        stranger.sendto(b"from a stranger", main.getsockname())
        assert await arrival(got) == ("main", b"from a stranger")
        own.send(b"to the peer")
        assert peer.recvfrom(100) == (b"to the peer", ("127.0.0.1", port))
        socks.sync([])
        assert socks.get(PEER) is None and own.fileno() == -1
        peer.sendto(b"after the lease", main.getsockname())
        assert await arrival(got) == ("main", b"after the lease")
    finally:
        socks.close()
        loop.remove_reader(main.fileno())
        peer.close()
        stranger.close()


async def test_a_peer_socket_that_cannot_bind_leaves_the_peer_on_the_main_socket(
    main: socket.socket,
) -> None:
    loop = asyncio.get_running_loop()

    def refuse(sock: socket.socket) -> None:
        raise OSError(98, "Address already in use")

    socks = PeerSockets(main, loop, lambda sock: None, refuse)
    socks.sync([PEER])
    assert socks.get(PEER) is None
    socks.close()


async def test_only_the_first_peers_get_a_socket(main: socket.socket) -> None:
    socks = PeerSockets(main, asyncio.get_running_loop(), lambda sock: None, lambda sock: None, 1)
    try:
        socks.sync([STRANGER, PEER])
        assert socks.get(PEER) is not None and socks.get(STRANGER) is None
        socks.sync([STRANGER])  # a place is free again
        assert socks.get(PEER) is None and socks.get(STRANGER) is not None
    finally:
        socks.close()
