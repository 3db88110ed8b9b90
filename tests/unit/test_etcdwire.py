"""The JSON of etcd's v3 gateway: what is sent, how answers and errors are read.

The answers here are copied from etcd 3.4.23 (``curl`` against its client port), so
they show the gateway's habits: int64 as strings, zero values left out.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyflannel.errors import RegistryError, RegistryPermissionError, RegistryUnavailable
from pyflannel.registry.etcdwire import (
    InvalidToken,
    KeyValue,
    MalformedAnswer,
    answer_error,
    cancel_error,
    create_request,
    error_status,
    parse_grant,
    parse_range,
    parse_token,
    parse_ttl,
    parse_txn,
    parse_watch,
    prefix_end,
    put_request,
    range_request,
    watch_request,
)

HEADER = {"cluster_id": "1", "member_id": "2", "revision": "6", "raft_term": "2"}


def test_requests_encode_bytes_as_base64_and_int64_as_strings() -> None:
    assert range_request(b"foo", b"fop") == {"key": "Zm9v", "range_end": "Zm9w"}
    assert range_request(b"foo") == {"key": "Zm9v"}
    assert put_request(b"foo", b"bar") == {"key": "Zm9v", "value": "YmFy"}
    assert put_request(b"foo", b"bar", 4111120246542977032)["lease"] == "4111120246542977032"
    assert create_request(b"foo", b"bar", 7) == {
        "compare": [{"target": "VERSION", "key": "Zm9v", "version": "0", "result": "EQUAL"}],
        "success": [{"request_put": {"key": "Zm9v", "value": "YmFy", "lease": "7"}}],
    }
    create = watch_request(b"/a/", prefix_end(b"/a/"), 12)["create_request"]
    assert create == {"key": "L2Ev", "range_end": "L2Ew", "start_revision": "12"}


def test_a_range_answer_with_and_without_keys() -> None:
    body = {
        "header": HEADER,
        "kvs": [
            {"key": "Zm9v", "create_revision": "2", "mod_revision": "2", "version": "1",
             "value": "YmFy"},
            {"key": "Zm9vMg==", "mod_revision": "3", "value": "YmFy", "lease": "411"},
        ],
        "count": "2",
    }  # fmt: skip
    kvs, revision = parse_range(body)
    assert revision == 6
    assert kvs == [KeyValue(b"foo", b"bar", 0, 2), KeyValue(b"foo2", b"bar", 411, 3)]
    assert parse_range({"header": HEADER}) == ([], 6)


def test_zero_values_are_left_out_by_the_gateway() -> None:
    assert parse_txn({"header": HEADER}) is False
    assert parse_txn({"header": HEADER, "succeeded": True}) is True
    assert parse_grant({"header": HEADER, "ID": "4111", "TTL": "60"}) == (4111, 60)
    assert parse_ttl({"header": HEADER, "ID": "12345", "TTL": "-1"}) == -1
    assert parse_token({"header": HEADER, "token": "ZFsexUTAIoiBopZg.24"}) == "ZFsexUTAIoiBopZg.24"


@pytest.mark.parametrize(
    ("parse", "body"),
    [
        (parse_range, {"kvs": []}),
        (parse_range, {"header": HEADER, "kvs": [{"key": 5}]}),
        (parse_range, {"header": HEADER, "kvs": [{"key": "not base64!"}]}),
        (parse_range, {"header": HEADER, "kvs": "nope"}),
        (parse_range, ["a list"]),
        (parse_txn, {"succeeded": "yes"}),
        (parse_grant, {"ID": "x", "TTL": "60"}),
        (parse_grant, {"ID": "1", "TTL": "60", "error": "lease exists"}),
        (parse_token, {"token": ""}),
        (parse_token, {"token": "abc.1\r\nX-Evil: 1"}),
        (parse_ttl, {"TTL": "soon"}),
        (parse_ttl, None),
    ],
)
def test_answers_of_the_wrong_shape_are_malformed(parse: Any, body: Any) -> None:
    with pytest.raises(MalformedAnswer):
        parse(body)


def test_watch_messages() -> None:
    created = parse_watch({"result": {"header": HEADER, "created": True}}, "e")
    assert created.created and created.revision == 6 and created.events == ()
    message = {
        "result": {
            "header": HEADER,
            "events": [
                {"kv": {"key": "Zm9v", "mod_revision": "5", "value": "YmFy", "lease": "9"}},
                {"type": "DELETE", "kv": {"key": "Zm9v", "mod_revision": "6"}},
            ],
        }
    }
    events = parse_watch(message, "e").events
    assert [(e.deleted, e.kv) for e in events] == [
        (False, KeyValue(b"foo", b"bar", 9, 5)),
        (True, KeyValue(b"foo", b"", 0, 6)),
    ]
    compacted = {"result": {"header": HEADER, "canceled": True, "compact_revision": "5"}}
    assert parse_watch(compacted, "e").compact_revision == 5


def test_a_streamed_error_raises_its_error() -> None:
    message = {"error": {"grpc_code": 14, "http_code": 503, "message": "etcdserver: no leader"}}
    with pytest.raises(RegistryUnavailable, match="at e is unavailable: etcdserver: no leader"):
        parse_watch(message, "e")
    with pytest.raises(MalformedAnswer):
        parse_watch({"error": "text"}, "e")
    with pytest.raises(MalformedAnswer):
        parse_watch({"neither": 1}, "e")


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.sampled_from(["result", "error", "header", "events",
                                                       "kv", "key", "revision", "type"]),
                                      inner, max_size=4),
                    max_leaves=12))  # fmt: skip
def test_any_json_is_a_watch_message_or_an_error(message: Any) -> None:
    with contextlib.suppress(MalformedAnswer, RegistryError):
        parse_watch(message, "e")


@pytest.mark.parametrize(
    ("status", "body", "kind", "text"),
    [
        (403, {"error": "etcdserver: permission denied", "code": 7}, RegistryPermissionError,
         "refused the request: etcdserver: permission denied"),
        (401, {"error": "etcdserver: invalid auth token", "code": 16}, InvalidToken,
         "invalid auth token"),
        (400, {"error": "etcdserver: user name is empty", "code": 3}, InvalidToken,
         "user name is empty"),
        (503, {"error": "etcdserver: no leader", "code": 14}, RegistryUnavailable, "no leader"),
        (504, {"message": "context deadline exceeded", "code": 4}, RegistryUnavailable,
         "deadline"),
        (429, {"error": "etcdserver: too many requests", "code": 8}, RegistryUnavailable,
         "too many"),
        (404, {"error": "etcdserver: requested lease not found", "code": 5}, RegistryError,
         "lease not found"),
        (400, {"error": "etcdserver: authentication failed", "code": 3}, RegistryError,
         "etcd at e failed: etcdserver: authentication failed"),
    ],
)  # fmt: skip
def test_gateway_errors_map_by_grpc_code(
    status: int, body: dict[str, Any], kind: type, text: str
) -> None:
    error = answer_error(status, json.dumps(body).encode(), "e")
    assert type(error) is kind
    assert text in str(error)


@pytest.mark.parametrize(
    ("status", "body", "kind", "text"),
    [
        (502, b"<html>Bad Gateway</html>", RegistryUnavailable, "HTTP 502: <html>Bad Gateway"),
        (404, b"Not Found\n", RegistryError, "does not serve the etcd v3 API"),
        (400, b"", RegistryError, "HTTP 400: no body"),
        (500, b"\xff\xfe", RegistryUnavailable, "HTTP 500"),
        (418, b'{"code": "teapot"}', RegistryError, "HTTP 418"),
    ],
)
def test_answers_that_are_not_the_gateways_map_by_http_status(
    status: int, body: bytes, kind: type, text: str
) -> None:
    error = answer_error(status, body, "e")
    assert type(error) is kind
    assert text in str(error)


def test_error_status_reads_code_and_message() -> None:
    assert error_status(b'{"error":"x","message":"etcdserver: y","code":9}') == (9, "etcdserver: y")
    assert error_status(b"plain text") == (None, "plain text")


@pytest.mark.parametrize(
    ("reason", "kind"),
    [
        ("rpc error: code = PermissionDenied desc = etcdserver: permission denied",
         RegistryPermissionError),
        ("rpc error: code = Unauthenticated desc = etcdserver: invalid auth token", InvalidToken),
        ("", RegistryUnavailable),
        ("etcdserver: mvcc: required revision is a future revision", RegistryUnavailable),
    ],
)  # fmt: skip
def test_a_cancelled_watch_is_mapped_by_its_reason(reason: str, kind: type) -> None:
    assert type(cancel_error(reason, "e")) is kind


def test_prefix_end_covers_the_prefix() -> None:
    assert prefix_end(b"/coreos.com/network/subnets/") == b"/coreos.com/network/subnets0"
