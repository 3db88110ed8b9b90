"""HTTP/1.1 framing of the small client: request encoding, heads, bodies, hostile input;
and the request targets, form bodies and basic auth of etcd's v2 API."""

from __future__ import annotations

import contextlib
import itertools
from urllib.parse import unquote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyflannel.httpc.urls import basic_auth, form_body, quote_path, request_target
from pyflannel.httpc.wire import (
    END,
    Head,
    LineSplitter,
    ProtocolError,
    ResponseParser,
    encode_request,
    parse_head,
)


def events(parser: ResponseParser) -> list[object]:
    """Every event available now, up to END or the need for more data."""
    out: list[object] = []
    while (event := parser.next_event()) is not None:
        out.append(event)
        if event is END:
            break
    return out


def parse_all(*pieces: bytes, eof: bool = False) -> tuple[Head, bytes]:
    """Feed ``pieces`` one by one; the head and the whole body."""
    parser = ResponseParser()
    parser.start()
    got: list[object] = []
    for piece in pieces:
        parser.feed(piece)
        got += events(parser)
    if eof:
        parser.feed_eof()
        got += events(parser)
    assert got[-1] is END, got
    head = got[0]
    assert isinstance(head, Head)
    return head, b"".join(e for e in got[1:-1] if isinstance(e, bytes))


def test_a_request_carries_host_headers_and_length() -> None:
    data = encode_request(
        "POST", "/v3/kv/range", host="[fd00::1]:2379", headers=[("A", "b")], body=b"{}"
    )
    assert data == (
        b"POST /v3/kv/range HTTP/1.1\r\nHost: [fd00::1]:2379\r\nA: b\r\nContent-Length: 2\r\n\r\n{}"
    )


@pytest.mark.parametrize("value", ["tok\r\nX-Evil: 1", "tok\nX", "tok\r"])
def test_line_breaks_cannot_smuggle_headers(value: str) -> None:
    with pytest.raises(ValueError, match="line break"):
        encode_request("POST", "/", host="h", headers=[("Authorization", value)])


def test_head_names_are_lower_case_and_repeats_are_joined() -> None:
    head = parse_head(b"HTTP/1.1 404 Not Found\r\nX-A: 1\r\nx-a:  2 \r\nConnection: close")
    assert (head.status, head.reason) == (404, "Not Found")
    assert head.headers == {"x-a": "1, 2", "connection": "close"}
    assert not head.keep_alive
    assert parse_head(b"HTTP/1.0 200 OK").keep_alive is False
    assert parse_head(b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive").keep_alive


@pytest.mark.parametrize(
    "raw",
    [b"HTTP/2 200 OK", b"ICY 200 OK", b"HTTP/1.1 2000 OK", b"HTTP/1.1 20x OK",
     b"HTTP/1.1 200 OK\r\nno colon", b"HTTP/1.1 200 OK\r\n folded: x", b"HTTP/1.1 200 OK\r\n: x"],
)  # fmt: skip
def test_malformed_heads_are_protocol_errors(raw: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_head(raw)


def test_content_length_body_in_pieces() -> None:
    head, body = parse_all(b"HTTP/1.1 200 OK\r\nContent-Le", b"ngth: 5\r\n\r\nhel", b"lo")
    assert head.status == 200 and body == b"hello"


def test_chunked_body_with_extensions_and_trailers() -> None:
    raw = (
        b"HTTP/1.1 412 Precondition Failed\r\nTransfer-Encoding: chunked\r\n"
        b"Trailer: Grpc-Trailer-Content-Type\r\n\r\n"
        b'5;name=value\r\n{"a":\r\n3\r\n 1}\r\n'
        b"0\r\nGrpc-Trailer-Content-Type: application/grpc\r\n\r\n"
    )
    head, body = parse_all(raw)
    assert head.status == 412 and body == b'{"a": 1}'


def test_an_interim_answer_is_skipped() -> None:
    raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n"
    head, body = parse_all(raw)
    assert head.status == 204 and body == b""


def test_a_body_without_length_runs_until_close() -> None:
    parser = ResponseParser()
    parser.start()
    parser.feed(b"HTTP/1.1 200 OK\r\n\r\nall of it")
    assert events(parser)[1:] == [b"all of it"]
    assert not parser.reusable
    parser.feed_eof()
    assert events(parser) == [END]


def test_pipelined_answers_share_one_buffer() -> None:
    parser = ResponseParser()
    one = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na"
    two = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nb\r\n0\r\n\r\n"
    parser.feed(one + two)
    parser.start()
    assert events(parser)[1:] == [b"a", END]
    assert parser.reusable and parser.buffered == len(two)
    parser.start()
    assert events(parser)[1:] == [b"b", END]
    assert parser.buffered == 0


def test_a_head_request_has_no_body() -> None:
    parser = ResponseParser()
    parser.start(head_request=True)
    parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
    assert events(parser)[1:] == [END]


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nshort",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nTrailer: x\r\n",
        b"HTTP/1.1 200 OK\r\nContent-",
        b"",
    ],
)
def test_a_truncated_answer_is_a_protocol_error(raw: bytes) -> None:
    parser = ResponseParser()
    parser.start()
    parser.feed(raw)
    events(parser)
    parser.feed_eof()
    with pytest.raises(ProtocolError, match="closed"):
        events(parser)


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n11111111111111111\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXY",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1" * 2000,
        b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    ],
)
def test_hostile_framing_is_a_protocol_error(raw: bytes) -> None:
    parser = ResponseParser()
    parser.start()
    parser.feed(raw)
    with pytest.raises(ProtocolError):
        events(parser)


def test_an_endless_head_is_refused() -> None:
    parser = ResponseParser(max_head=100)
    parser.start()
    parser.feed(b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 50)
    with pytest.raises(ProtocolError, match="longer than 100"):
        events(parser)


@given(
    body=st.binary(max_size=300),
    chunk_sizes=st.lists(st.integers(1, 50), max_size=20),
    cuts=st.lists(st.integers(0, 400), max_size=10),
)
def test_any_chunking_and_any_cutting_give_the_same_body(
    body: bytes, chunk_sizes: list[int], cuts: list[int]
) -> None:
    chunks, rest = [], body
    for size in chunk_sizes:
        if rest:
            chunks.append(b"%x\r\n%s\r\n" % (len(rest[:size]), rest[:size]))
            rest = rest[size:]
    if rest:
        chunks.append(b"%X\r\n%s\r\n" % (len(rest), rest))
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"".join(chunks) + b"0\r\n\r\n"
    points = sorted({min(c, len(raw)) for c in cuts} | {0, len(raw)})
    pieces = [raw[a:b] for a, b in itertools.pairwise(points)]
    assert parse_all(*pieces)[1] == body


@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_crash_the_parser(raw: bytes) -> None:
    parser = ResponseParser()
    parser.start()
    parser.feed(raw)
    parser.feed_eof()
    with contextlib.suppress(ProtocolError):
        events(parser)


def test_messages_are_split_on_newlines_across_chunks() -> None:
    lines = LineSplitter()
    assert lines.feed(b'{"a":1}\n{"b"') == [b'{"a":1}']
    pending = lines.partial
    assert lines.feed(b":2}\n\n") == [b'{"b":2}']
    assert (pending, lines.partial) == (True, False)
    assert lines.feed(b'{"c":3}\n{"d":4}\n') == [b'{"c":3}', b'{"d":4}']


# The bytes flanneld's httpx-based v2 client sent for the same requests.
V010_LEASE = '{"PublicIP":"198.51.100.11","BackendType":"vxlan","BackendData":{"VtepMAC":"82:4b"}}'
V010_FORM = (
    b"value=%7B%22PublicIP%22%3A%22198.51.100.11%22%2C%22BackendType%22%3A%22vxlan%22%2C"
    b"%22BackendData%22%3A%7B%22VtepMAC%22%3A%2282%3A4b%22%7D%7D&ttl=86400"
)


def test_form_bodies_are_those_httpx_sent() -> None:
    assert form_body({"value": V010_LEASE, "ttl": "86400"}) == V010_FORM
    awkward = form_body({"value": "a b&c=d+e/é~*'()!"})
    assert awkward == b"value=a+b%26c%3Dd%2Be%2F%C3%A9~%2A%27%28%29%21"


def test_request_targets_keep_the_order_of_the_query() -> None:
    query = {"wait": "true", "waitIndex": "8", "recursive": "true"}
    target = request_target("/v2/keys/coreos.com/network/subnets", query)
    assert target == "/v2/keys/coreos.com/network/subnets?wait=true&waitIndex=8&recursive=true"
    assert request_target("/v2/keys/k", {}) == request_target("/v2/keys/k") == "/v2/keys/k"


def test_a_path_escapes_only_what_cannot_stand_in_it() -> None:
    kept = "/coreos.com/net_work-1/subnets/fd00::-64/a~b@c!$&'()*+,;=[]|^"
    assert quote_path(kept) == kept
    assert quote_path("/a b/é?#%41{`}") == "/a%20b/%C3%A9%3F%23%2541%7B%60%7D"


@given(st.text())
def test_a_quoted_path_is_one_token_that_decodes_to_the_key(path: str) -> None:
    quoted = quote_path(path)
    assert quoted.isascii() and not any(c in quoted for c in ' ?#"<>\r\n')
    assert unquote(quoted, errors="strict") == path


def test_basic_auth_is_utf8_base64() -> None:
    assert basic_auth("u", "p w:é") == ("Authorization", "Basic dTpwIHc6w6k=")
