"""The HTTP client over TLS, against a local TLS server that sends many TLS records at
once: every byte of every record must reach the parser.

asyncio's TLS transport reads all records that arrived together in one pass, through
slices of the protocol's buffer; a buffer whose slices are copies loses all but the
first record of each pass (a watch then stalls on zeros where a message should be).
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from support.pki import Pki, make_pki

from pyflannel.httpc.client import Origin

MESSAGES = 300


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(Path(tmp_path_factory.mktemp("pki")))


async def _burst(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer one request with a chunked stream of small messages, each written on its
    own (one TLS record each) and all at once, so that they arrive together."""
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    for n in range(MESSAGES):
        line = json.dumps({"result": {"n": n, "pad": "x" * (n % 97)}}).encode() + b"\n"
        writer.write(b"%x\r\n%s\r\n" % (len(line), line))
    writer.write(b"0\r\n\r\n")
    await writer.drain()
    writer.close()


@pytest.fixture
async def tls_server(pki: Pki) -> AsyncIterator[int]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    server = await asyncio.start_server(_burst, "127.0.0.1", 0, ssl=context)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def test_a_burst_of_tls_records_arrives_whole(tls_server: int, pki: Pki) -> None:
    context = ssl.create_default_context(cafile=str(pki.ca_cert))
    origin = Origin("127.0.0.1", tls_server, ssl_context=context, name="test server")
    try:
        async with origin.stream("POST", "/v3/watch", b"{}", timeout=5.0) as stream:
            received = []
            async with asyncio.timeout(10):
                while (message := await stream.next_message()) is not None:
                    received.append(message["result"]["n"])
    finally:
        await origin.close()
    assert received == list(range(MESSAGES))
