"""The hand-written rtnetlink codec (pure code).

A request's body has the layout of the kernel's dump messages for the fields the
parsers read, so encoding an entry and parsing the body must give the entry back.
"""

from __future__ import annotations

import pytest

from pyflannel.core.kernelstate import (
    RTPROT_PYFLANNEL,
    Change,
    FdbEntry,
    Neighbour,
    Op,
    Route,
)
from pyflannel.netlink import rtnl

ROUTES = [
    Route("10.5.2.0/24", "10.5.2.0", 7, onlink=True),
    Route("10.5.4.0/24", "198.51.100.14", 2, proto=RTPROT_PYFLANNEL),
    Route("10.5.9.0/24", "", 7, metric=100),
    Route("10.5.8.0/24", "10.5.8.1", 7, metric=5),
]


def body(entry: Route | Neighbour | FdbEntry, op: Op = Op.SET) -> bytes:
    return rtnl.encode_change(Change(op, entry)).body


@pytest.mark.parametrize("route", ROUTES)
def test_route_requests_parse_back(route: Route) -> None:
    data = body(route)
    assert rtnl.parse_route(data, 0, len(data)) == route


def test_neighbour_and_fdb_requests_parse_back() -> None:
    neighbour = Neighbour(7, "10.5.2.0", "02:00:00:00:00:02")
    fdb = FdbEntry(7, "02:00:00:00:00:02", "203.0.113.2")
    n, f = body(neighbour), body(fdb)
    assert rtnl.parse_neighbour(n, 0, len(n)) == neighbour
    assert rtnl.parse_fdb(f, 0, len(f)) == fdb
    assert rtnl.parse_fdb(n, 0, len(n)) is None  # a neighbour is not an FDB entry
    assert rtnl.parse_neighbour(f, 0, len(f)) is None


def test_set_requests_create_or_replace_and_deletes_match_exactly() -> None:
    route = ROUTES[0]
    setting = rtnl.encode_change(Change(Op.SET, route))
    deleting = rtnl.encode_change(Change(Op.DELETE, route))
    assert (setting.msg_type, setting.flags) == (rtnl.RTM_NEWROUTE, 0x500)
    assert (deleting.msg_type, deleting.flags) == (rtnl.RTM_DELROUTE, 0)
    scope = rtnl.RTMSG.unpack_from(deleting.body)[6]
    assert scope == rtnl.RT_SCOPE_NOWHERE  # any scope, but this gateway, device, protocol
    assert rtnl.parse_route(deleting.body, 0, len(deleting.body)) is None  # type 0: not unicast


def test_frames_carry_sequence_numbers_and_split_back_into_messages() -> None:
    requests = [rtnl.encode_change(Change(Op.SET, r)) for r in ROUTES[:2]]
    data = requests[0].frame(41) + requests[1].frame(42, rtnl.NLM_F_ACK)
    found = list(rtnl.messages(data))
    assert [(m.seq, m.msg_type) for m in found] == [(41, 24), (42, 24)]
    assert found[1].flags & rtnl.NLM_F_ACK
    assert [rtnl.parse_route(data, m.start, m.end) for m in found] == ROUTES[:2]
    assert list(rtnl.messages(data[:-4])) == found[:1]  # a truncated message is dropped


def test_an_error_message_carries_a_positive_errno() -> None:
    payload = rtnl.I32.pack(-2) + rtnl.HEADER.pack(16, 24, 0, 7, 0)
    data = rtnl.HEADER.pack(16 + len(payload), rtnl.NLMSG_ERROR, 0, 7, 0) + payload
    (msg,) = rtnl.messages(data)
    assert msg.error_code(data) == 2


def test_fingerprints_cover_exactly_the_stable_part() -> None:
    n = body(Neighbour(7, "10.5.2.0", "02:00:00:00:00:02"))
    f = body(FdbEntry(7, "02:00:00:00:00:02", "203.0.113.2"))
    cacheinfo = rtnl.ATTR.pack(20, 3) + bytes(16)  # NDA_CACHEINFO: timestamps
    assert rtnl.neighbour_fingerprint(n + cacheinfo, 0, len(n) + 20) == n[:30]
    assert rtnl.fdb_fingerprint(f + cacheinfo, 0, len(f) + 20) == f[:32]
    assert rtnl.neighbour_fingerprint(f, 0, len(f)) is None  # other layout: parse it
    assert rtnl.neighbour_fingerprint(n[:20], 0, 20) is None
    r = body(ROUTES[0])
    assert rtnl.route_fingerprint(r, 0, len(r)) == r


def test_notices_name_the_kind_device_and_cause() -> None:
    route = body(ROUTES[0])
    data = rtnl.HEADER.pack(16 + len(route), rtnl.RTM_DELROUTE, 0, 0, 4242) + route
    (msg,) = rtnl.messages(data)
    assert rtnl.parse_notice(data, msg) == rtnl.Notice("route", True, 7, 3, 254, 4242)
    neigh = body(Neighbour(7, "10.5.2.0", "02:00:00:00:00:02"), Op.DELETE)
    data = rtnl.HEADER.pack(16 + len(neigh), rtnl.RTM_DELNEIGH, 0, 0, 0) + neigh
    (msg,) = rtnl.messages(data)
    assert rtnl.parse_notice(data, msg) == rtnl.Notice("neigh", True, 7)


def test_dump_requests_filter_by_device_or_protocol() -> None:
    by_device = rtnl.route_dump(oif=7)
    assert by_device.flags == rtnl.NLM_F_DUMP
    assert rtnl.ATTR.pack(8, rtnl.RTA_OIF) + rtnl.I32.pack(7) in by_device.body
    by_proto = rtnl.route_dump(proto=RTPROT_PYFLANNEL)
    assert rtnl.RTMSG.unpack_from(by_proto.body)[5] == RTPROT_PYFLANNEL
    assert rtnl.NDMSG.unpack_from(rtnl.fdb_dump(7).body)[:2] == (rtnl.AF_BRIDGE, 7)


def dump_datagram(seq: int, bodies: list[bytes], done: bool = True) -> bytes:
    frames = [rtnl.HEADER.pack(16 + len(b), rtnl.RTM_NEWROUTE, 2, seq, 0) + b for b in bodies]
    if done:
        frames.append(rtnl.HEADER.pack(20, rtnl.NLMSG_DONE, 2, seq, 0) + bytes(4))
    return b"".join(frames)


def test_a_dump_is_decoded_and_unchanged_entries_are_reused() -> None:
    bodies = [body(r) for r in ROUTES[:2]]
    decode = (rtnl.parse_route, rtnl.route_fingerprint)
    found: list[Route] = []
    parsed: dict[bytes, Route] = {}
    other = rtnl.HEADER.pack(16 + len(bodies[0]), rtnl.RTM_NEWROUTE, 2, 99, 0) + bodies[0]
    data = other + dump_datagram(7, bodies[:1], done=False)
    assert rtnl.read_dump(data, 7, decode, {}, (found, parsed)) == (False, False)
    assert rtnl.read_dump(dump_datagram(7, bodies[1:]), 7, decode, {}, (found, parsed)) == (
        True,
        False,
    )
    assert found == ROUTES[:2]  # the message of another request (seq 99) was skipped
    again: list[Route] = []
    rtnl.read_dump(dump_datagram(8, bodies), 8, decode, parsed, (again, {}))
    assert again == found
    assert all(a is b for a, b in zip(again, found, strict=True))


def test_a_refused_dump_raises_with_the_errno() -> None:
    error = rtnl.HEADER.pack(20, rtnl.NLMSG_ERROR, 0, 5, 0) + rtnl.I32.pack(-22)
    with pytest.raises(rtnl.DumpRefused) as refused:
        rtnl.read_dump(error, 5, (rtnl.parse_route, rtnl.route_fingerprint), {}, ([], {}))
    assert refused.value.code == 22
