"""The small HTTP/1.1 client against a real etcd and against scripted, hostile servers.

Every way of not getting a proper answer must come out as ``RegistryUnavailable``
naming the server: never a hang, a crash or a parser exception. The v2 registry's use
of it (long polls, the exact requests, failover) is here too, against scripted servers.
"""

from __future__ import annotations

import asyncio
import json
from ipaddress import IPv4Address, IPv4Network

import pytest
from support.etcd import EtcdServer
from support.scripted import Reply, Start, chunk, ok

from pyflannel.errors import RegistryError, RegistryUnavailable
from pyflannel.httpc.client import Origin
from pyflannel.httpc.longpoll import PollingOrigin
from pyflannel.model.lease import LeaseAttrs
from pyflannel.model.net import SubnetKey
from pyflannel.registry.etcd2 import Etcd2Registry
from pyflannel.registry.etcd2conn import Etcd2Connection
from pyflannel.registry.etcd3 import Etcd3Registry
from pyflannel.registry.etcdconn import EtcdConnection
from pyflannel.registry.etcdsettings import EtcdSettings
from pyflannel.registry.etcdwire import b64, parse_range, put_request, range_request

JSON = [("Content-Type", "application/json")]
etcd_only = pytest.mark.etcd

RANGE_OK = ok(b'{"header":{"revision":"7"}}')


@etcd_only
async def test_requests_share_one_keep_alive_connection(etcd: EtcdServer) -> None:
    host, port = etcd.listen_ip, etcd.client_port
    origin = Origin(host, port)
    try:
        body = json.dumps(put_request(b"/k", b"v")).encode()
        assert (await origin.request("POST", "/v3/kv/put", body, JSON, timeout=5)).status == 200
        for _ in range(3):
            query = json.dumps(range_request(b"/k")).encode()
            answer = await origin.request("POST", "/v3/kv/range", query, JSON, timeout=5)
            kvs, _ = parse_range(json.loads(answer.body))
            assert kvs[0].value == b"v"
        assert len(origin._open) == 1
        answers = await origin.pipeline("POST", "/v3/kv/range", [query] * 300, JSON, timeout=5)
        assert len(answers) == 300 and all(a.status == 200 for a in answers)
        assert len(origin._open) == 1
    finally:
        await origin.close()


@etcd_only
async def test_a_spread_pipeline_keeps_the_answers_in_order(etcd: EtcdServer) -> None:
    origin = Origin(etcd.listen_ip, etcd.client_port)
    grants = [json.dumps({"TTL": str(60 + i)}).encode() for i in range(200)]
    try:
        answers = await origin.pipeline(
            "POST", "/v3/lease/grant", grants, JSON, timeout=5, spread=4
        )
        assert [int(json.loads(a.body)["TTL"]) for a in answers] == list(range(60, 260))
        assert len(origin._open) == 4
    finally:
        await origin.close()


@etcd_only
async def test_a_watch_streams_messages_one_by_one(etcd: EtcdServer) -> None:
    origin = Origin(etcd.listen_ip, etcd.client_port)
    create = {"create_request": {"key": b64(b"/w/"), "range_end": b64(b"/w0")}}
    try:
        async with origin.stream(
            "POST", "/v3/watch", json.dumps(create).encode(), JSON, timeout=5
        ) as stream:
            assert stream.head.status == 200
            first = await stream.next_message()
            assert first is not None and first["result"]["created"] is True
            for index in range(3):
                etcd.etcdctl("put", f"/w/{index}", "x" * 5000)  # bigger than a TCP segment
            for index in range(3):
                message = await stream.next_message()
                assert message is not None
                [event] = message["result"]["events"]
                assert event["kv"]["key"] == b64(f"/w/{index}".encode())
    finally:
        await origin.close()


async def test_a_connection_the_server_closed_while_idle_is_replaced(
    scripted: Start,
) -> None:
    server = await scripted([RANGE_OK, None], [RANGE_OK])
    origin = Origin("127.0.0.1", server.port)
    try:
        for _ in range(2):
            answer = await origin.request("POST", "/x", b"{}", timeout=2)
            assert answer.status == 200
        assert server.connections == 2
    finally:
        await origin.close()


@pytest.mark.parametrize(
    ("reply", "text"),
    [
        ([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n{\"hea", None],
         "connection closed"),
        ([b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{}", None], "connection closed"),
        ([b"SSH-2.0-OpenSSH_9.2\r\n\r\n"], "malformed HTTP answer"),
        ([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nxyz\r\n"], "chunk size"),
        ([None], "connection closed"),
        ([ok(b"<html>hello</html>")], "not JSON"),
        ([ok(b'{"kvs": 5}')], "malformed range answer"),
        ([ok(b'{"header":{"revision":"7"}}', "Connection: close"), ok(b"{}")], None),
    ],
)  # fmt: skip
async def test_a_hostile_answer_is_unavailability(
    scripted: Start, reply: Reply, text: str | None
) -> None:
    server = await scripted(reply, reply)
    conn = EtcdConnection(EtcdSettings((server.url,), timeout=2))
    try:
        if text is None:  # a well-formed answer that closes the connection: fine
            await conn.call("/kv/range", range_request(b"k"), parse_range)
            return
        with pytest.raises(RegistryUnavailable, match=text) as caught:
            await conn.call("/kv/range", range_request(b"k"), parse_range)
        assert server.url in str(caught.value)
    finally:
        await conn.close()


async def test_an_etcd_without_the_v3_path_is_asked_under_v3beta(scripted: Start) -> None:
    not_found = b"HTTP/1.1 404 Not Found\r\nContent-Length: 10\r\n\r\nNot Found\n"
    server = await scripted([not_found], [RANGE_OK], [RANGE_OK])
    conn = EtcdConnection(EtcdSettings((server.url,), timeout=2))
    try:
        for _ in range(2):
            assert await conn.call("/kv/range", range_request(b"k"), parse_range) == ([], 7)
    finally:
        await conn.close()
    paths = [request.split(b" ")[1] for request in server.requests]
    assert paths == [b"/v3/kv/range", b"/v3beta/kv/range", b"/v3beta/kv/range"]


WATCH_HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
CREATED = chunk(b'{"result":{"header":{"revision":"3"},"created":true}}\n')


@pytest.mark.parametrize(
    ("tail", "text"),
    [
        ([chunk(b"not json at all\n")], "not JSON"),
        ([chunk(b'{"result":{"header":{},"events":[{"kv":{"key":5}}]}}\n')], "malformed"),
        ([chunk(b'{"result":{"header":'), None], "connection closed"),
        ([chunk(b'{"result":{}}'), b"0\r\n\r\n"], "middle of a message"),
        ([b"0\r\n\r\n"], "ended the watch stream"),
        ([chunk(b'{"error":{"grpc_code":14,"message":"etcdserver: no leader"}}\n')], "no leader"),
    ],
)
async def test_a_hostile_watch_stream_is_unavailability(
    scripted: Start, tail: Reply, text: str
) -> None:
    server = await scripted([WATCH_HEAD, CREATED, *tail])
    conn = EtcdConnection(EtcdSettings((server.url,), timeout=2))
    try:
        async with conn.watch({"create_request": {}}) as stream:
            assert (await stream.read(timeout=2)).created
            with pytest.raises(RegistryUnavailable, match=text):
                await stream.read()
    finally:
        await conn.close()


async def test_the_registry_survives_hostile_answers(scripted: Start) -> None:
    garbage = [ok(b"\x00\x01 garbage")]
    server = await scripted(*[garbage] * 4)
    registry = Etcd3Registry(EtcdSettings((server.url,), timeout=2), "/coreos.com/network")
    try:
        for call in (registry.get_network_config, registry.list_leases):
            with pytest.raises(RegistryUnavailable, match="not JSON"):
                await call()
    finally:
        await registry.close()


async def test_a_quiet_watch_probes_its_member(scripted: Start) -> None:
    # The stream goes quiet; the probe (a second connection) gets no answer either.
    server = await scripted([WATCH_HEAD, CREATED, 30.0], [30.0])
    settings = EtcdSettings((server.url,), timeout=2, probe_interval=0.3, probe_timeout=0.3)
    conn = EtcdConnection(settings)
    try:
        async with conn.watch({"create_request": {}}) as stream:
            await stream.read(timeout=2)
            async with asyncio.timeout(3):
                with pytest.raises(RegistryUnavailable, match=r"did not answer within 0\.3 s"):
                    await stream.read()
        assert b"/v3/maintenance/status" in server.requests[-1]
    finally:
        await conn.close()


V2_HEAD = b"HTTP/1.1 200 OK\r\nX-Etcd-Index: 9\r\nTransfer-Encoding: chunked\r\n\r\n"
V2_EVENT = json.dumps({"action": "set", "node": {
    "key": "/coreos.com/network/subnets/10.3.7.0-24", "value": '{"PublicIP":"198.51.100.11"}',
    "ttl": 86400, "modifiedIndex": 12, "createdIndex": 12}}).encode()  # fmt: skip
V2_DONE = [V2_HEAD, chunk(V2_EVENT + b"\n"), b"0\r\n\r\n"]


async def test_a_long_poll_outlasts_the_call_deadline_and_keeps_its_connection(
    scripted: Start,
) -> None:
    server = await scripted([V2_HEAD, 0.5, chunk(b"{}\n"), b"0\r\n\r\n"], [ok(b"{}")])
    origin = PollingOrigin("127.0.0.1", server.port)
    try:
        polled = await origin.long_poll("GET", "/w", timeout=0.3, wait=3)
        assert (polled.head.status, polled.body) == (200, b"{}\n")
        assert (await origin.request("GET", "/x", timeout=1)).status == 200
        assert server.connections == 1
    finally:
        await origin.close()


async def test_a_long_poll_that_sees_nothing_ends_without_a_body(scripted: Start) -> None:
    server = await scripted([V2_HEAD, 30.0], [ok(b"{}")])
    origin = PollingOrigin("127.0.0.1", server.port)
    try:
        polled = await origin.long_poll("GET", "/w", timeout=1, wait=0.3)
        assert polled.body is None and polled.head.headers["x-etcd-index"] == "9"
        assert (await origin.request("GET", "/x", timeout=1)).status == 200
        assert server.connections == 2  # the first one still owes its answer
    finally:
        await origin.close()


@pytest.mark.parametrize(
    ("reply", "text"),
    [([1.0, V2_HEAD], r"within 0\.2 s"), ([V2_HEAD, chunk(b"{"), None], "connection closed")],
)
async def test_a_long_poll_without_a_proper_answer_is_unavailability(
    scripted: Start, reply: Reply, text: str
) -> None:
    server = await scripted(reply)
    origin = PollingOrigin("127.0.0.1", server.port, name="etcd at here")
    try:
        with pytest.raises(RegistryUnavailable, match=f"etcd at here .*{text}"):
            await origin.long_poll("GET", "/w", timeout=0.2, wait=3)
    finally:
        await origin.close()


async def test_the_v2_registry_sends_flanneld_s_requests(scripted: Start) -> None:
    created = ok(b'{"action":"create","node":{"ttl":86400,"modifiedIndex":12}}', "X-Etcd-Index: 12")
    server = await scripted([created], V2_DONE)
    settings = EtcdSettings((server.url,), username="flannel", password="pw")
    registry = Etcd2Registry(settings, "/coreos.com/network")
    key, attrs = SubnetKey(IPv4Network("10.3.7.0/24")), LeaseAttrs(IPv4Address("198.51.100.11"))
    try:
        assert await registry.create_lease(key, attrs, 86400) is not None
        watch = registry.watch_leases(11)
        batch = await anext(watch)
        await watch.aclose()  # type: ignore[attr-defined]
    finally:
        await registry.close()
    assert [event.lease.key for event in batch.events] == [key] and batch.revision == 12
    auth = "Authorization: Basic Zmxhbm5lbDpwdw=="
    form = "value=%7B%22PublicIP%22%3A%22198.51.100.11%22%7D&ttl=86400"
    assert server.requests == [
        f"PUT /v2/keys/coreos.com/network/subnets/10.3.7.0-24?prevExist=false HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{server.port}\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        f"{auth}\r\nContent-Length: {len(form)}\r\n\r\n{form}".encode(),
        f"GET /v2/keys/coreos.com/network/subnets?wait=true&waitIndex=12&recursive=true"
        f" HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n{auth}\r\nContent-Length: 0\r\n\r\n"
        .encode(),
    ]  # fmt: skip


async def test_a_quiet_v2_watch_asks_again_from_the_same_index(scripted: Start) -> None:
    server = await scripted([V2_HEAD, 30.0], V2_DONE)
    settings = EtcdSettings((server.url,), timeout=1, long_poll=0.3)
    registry = Etcd2Registry(settings, "/coreos.com/network")
    try:
        watch = registry.watch_leases(5)
        async with asyncio.timeout(5):
            batch = await anext(watch)
        await watch.aclose()  # type: ignore[attr-defined]
    finally:
        await registry.close()
    assert batch.revision == 12
    assert [b"waitIndex=6&" in request for request in server.requests] == [True, True]


@pytest.mark.parametrize(
    ("reply", "error", "text"),
    [
        ([V2_HEAD, b"0\r\n\r\n"], RegistryError, "without an etcd v2 JSON body"),
        ([ok(b"<html>hello</html>")], RegistryError, "without an etcd v2 JSON body"),
        ([b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"], RegistryError,
         "--enable-v2=true"),
        ([b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n"], RegistryUnavailable,
         "HTTP 502"),
        ([ok(b'{"errorCode":300,"message":"Raft Internal Error"}')], RegistryUnavailable,
         "cannot serve the request now: 300"),
        ([b"SSH-2.0-OpenSSH_9.2\r\n\r\n"], RegistryUnavailable, "malformed HTTP answer"),
    ],
)  # fmt: skip
async def test_a_hostile_v2_answer_is_an_error_never_a_crash(
    scripted: Start, reply: Reply, error: type[RegistryError], text: str
) -> None:
    # etcd ends a long poll with an empty body when it drops the watcher: not "no change".
    server = await scripted(reply)
    conn = Etcd2Connection(EtcdSettings((server.url,), timeout=1, long_poll=3))
    try:
        with pytest.raises(error, match=text) as caught:
            await conn.call("GET", "/k", params={"wait": "true"}, long_poll=True)
        assert server.url in str(caught.value)
    finally:
        await conn.close()


async def test_v2_calls_fail_over_and_stay_on_the_endpoint_that_answers(scripted: Start) -> None:
    leader_lost = ok(b'{"errorCode":301,"message":"Raft Internal Error"}')
    first = await scripted([leader_lost])
    second = await scripted([ok(b'{"node":{}}')], [ok(b'{"node":{}}')])
    conn = Etcd2Connection(EtcdSettings((first.url, second.url), timeout=1))
    try:
        for _ in range(2):
            assert (await conn.call("GET", "/k")).body == {"node": {}}
        assert (len(first.requests), len(second.requests)) == (1, 2)
        await conn.close()
        with pytest.raises(RegistryUnavailable, match="no etcd endpoint answered"):
            await conn.call("GET", "/k")
    finally:
        await conn.close()
