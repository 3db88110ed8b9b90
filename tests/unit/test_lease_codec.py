"""Lease keys and values, byte-exact with flanneld (facts §3.1, §3.2)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyflannel.errors import PeerDataError
from pyflannel.model.lease import (
    LeaseAttrs,
    LeaseFormat,
    _decode_json,
    decode_attrs,
    encode_attrs,
)
from pyflannel.model.net import SubnetKey, parse_subnet_key, subnet_gateway

VXLAN = LeaseAttrs(IPv4Address("192.168.64.3"), "vxlan", '{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}')


def test_v3_vxlan_value_is_byte_exact() -> None:
    assert encode_attrs(VXLAN, LeaseFormat.V3) == (
        '{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan",'
        '"BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}'
    )


def test_v2_vxlan_value_is_byte_exact() -> None:
    attrs = LeaseAttrs(IPv4Address("10.37.7.195"), "vxlan", '{"VtepMAC":"82:4b:b6:2f:54:4e"}')
    assert encode_attrs(attrs, LeaseFormat.V2) == (
        '{"PublicIP":"10.37.7.195","BackendType":"vxlan","BackendData":{"VtepMAC":"82:4b:b6:2f:54:4e"}}'
    )


@pytest.mark.parametrize(
    ("attrs", "v3", "v2"),
    [
        (
            LeaseAttrs(IPv4Address("10.0.0.1")),
            '{"PublicIP":"10.0.0.1","PublicIPv6":null}',
            '{"PublicIP":"10.0.0.1"}',
        ),
        (
            LeaseAttrs(IPv4Address("10.0.0.1"), "host-gw"),
            '{"PublicIP":"10.0.0.1","PublicIPv6":null,"BackendType":"host-gw"}',
            '{"PublicIP":"10.0.0.1","BackendType":"host-gw"}',
        ),
    ],
)
def test_udp_alloc_and_hostgw_values(attrs: LeaseAttrs, v3: str, v2: str) -> None:
    assert encode_attrs(attrs, LeaseFormat.V3) == v3
    assert encode_attrs(attrs, LeaseFormat.V2) == v2


def test_decode_round_trips_and_ignores_unknown_fields() -> None:
    text = encode_attrs(VXLAN, LeaseFormat.V3)
    assert decode_attrs(text) == VXLAN
    assert decode_attrs('{"publicip":"1.2.3.4","Extra":[1],"BackendType":"udp"}') == LeaseAttrs(
        IPv4Address("1.2.3.4"), "udp"
    )


def test_backend_data_is_compacted_like_go() -> None:
    attrs = decode_attrs('{"PublicIP":"1.2.3.4","BackendData": { "VNI" : 1 , "x":"<&>" }}')
    assert attrs.backend_data == '{"VNI":1,"x":"\\u003c\\u0026\\u003e"}'


@pytest.mark.parametrize(
    "text",
    [
        "",
        "null",
        "[]",
        '{"PublicIP":5}',
        '{"PublicIP":"1.2.3"}',
        '{"BackendType":"vxlan"}',
        '{"PublicIP":"::1"}',
        '{"PublicIP":"1.2.3.4","BackendType":3}',
        b"\xff\xfe",
    ],
)
def test_malformed_values_raise_peer_data_error(text: str | bytes) -> None:
    with pytest.raises(PeerDataError):
        decode_attrs(text)


def test_subnet_keys() -> None:
    assert parse_subnet_key("10.5.34.0-24") == SubnetKey(IPv4Network("10.5.34.0/24"))
    dual = parse_subnet_key("10.5.1.0-24&fc00::-64")
    assert dual.ipv6 == "fc00::-64" and dual.name() == "10.5.1.0-24&fc00::-64"
    assert SubnetKey(IPv4Network("10.5.34.0/24")).name() == "10.5.34.0-24"
    assert subnet_gateway(IPv4Network("10.5.34.0/24")) == "10.5.34.1/24"


@pytest.mark.parametrize(
    "name",
    [
        "",
        "10.5.34.0",
        "10.5.34.0-33",
        "10.5.34.1-24",
        "10.5.34.0-24x",
        "300.1.1.0-24",
        "config",
        "10.5.34.0-24&ZZ-64",
    ],
)
def test_bad_keys_raise_peer_data_error(name: str) -> None:
    with pytest.raises(PeerDataError):
        parse_subnet_key(name)


@given(st.text(max_size=80))
def test_fuzz_keys(name: str) -> None:
    try:
        key = parse_subnet_key(name)
    except PeerDataError:
        return
    assert key.name() == name


_ip = st.ip_addresses(v=4).map(str)
_scalar = st.none() | st.booleans() | st.integers() | st.text(max_size=10) | _ip


@given(
    st.dictionaries(
        st.sampled_from(
            ["PublicIP", "publicIP", "BackendType", "BackendData", "PublicIPv6", "junk"]
        ),
        _scalar,
        max_size=5,
    )
)
def test_fuzz_values_never_crash(doc: dict[str, object]) -> None:
    import json

    try:
        attrs = decode_attrs(json.dumps(doc))
    except PeerDataError:
        return
    assert decode_attrs(encode_attrs(attrs, LeaseFormat.V3)) == attrs


def _decoded(text: str | bytes) -> LeaseAttrs | str:
    try:
        return decode_attrs(text)
    except PeerDataError as exc:
        return f"error: {type(exc).__name__}"


def _decoded_json(text: str) -> LeaseAttrs | str:
    try:
        return _decode_json(text)
    except PeerDataError as exc:
        return f"error: {type(exc).__name__}"


_VALUES = st.builds(
    lambda ip, v6, kind, data, end: '{"PublicIP":"' + ip + '"' + v6 + kind + data + end,
    st.sampled_from(["198.51.100.7", "10.0.0.1", "256.1.1.1", "1.2.3", "01.2.3.4"]),
    st.sampled_from(["", ',"PublicIPv6":null', ',"PublicIPv6":"::1"', ',"publicipv6":null']),
    st.sampled_from(
        ["", ',"BackendType":"vxlan"', ',"BackendType":"host-gw"', ',"BackendType":""',
         ',"backendtype":"udp"']
    ),
    st.sampled_from(
        ["", ',"BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:0f"}',
         ',"BackendData":{"VtepMAC":"AA:BB:CC:DD:EE:0F"}',
         ',"BackendData":{"VNI":01,"VtepMAC":"aa:bb:cc:dd:ee:0f"}',
         ',"BackendData":{"VNI":1.0,"VtepMAC":"aa:bb:cc:dd:ee:0f"}',
         ',"BackendData":{"VNI":1, "VtepMAC":"aa:bb:cc:dd:ee:0f"}', ',"BackendData":null']
    ),
    st.sampled_from(["}", ',"BackendV6Data":null}', ',"Extra":1}', "} ", "}}", ""]),
)  # fmt: skip


@given(_VALUES)
def test_the_fast_reading_of_common_values_is_the_json_reading(text: str) -> None:
    assert _decoded(text) == _decoded_json(text)
    assert _decoded(text.encode()) == _decoded_json(text)


@pytest.mark.parametrize(
    "text",
    [
        '{"PublicIP":"198.51.100.7","PublicIPv6":null,"BackendType":"vxlan",'
        '"BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:0f"}}',
        '{"PublicIP":"198.51.100.7","BackendType":"vxlan","BackendData":{"VtepMAC":"aa:bb:cc:dd:ee:0f"}}',
        '{"PublicIP":"198.51.100.7","PublicIPv6":null,"BackendType":"host-gw"}',
        '{"PublicIP":"198.51.100.7","PublicIPv6":null}',
        '{"PublicIP":"198.51.100.7"}',
        '{"PublicIP":"198.51.100.700"}',
    ],
)
def test_values_as_flanneld_writes_them_read_alike_either_way(text: str) -> None:
    assert _decoded(text) == _decoded_json(text)
    assert _decoded(text.encode()) == _decoded_json(text)
