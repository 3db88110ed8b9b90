"""Network config parsing and validation (facts §2)."""

from __future__ import annotations

import contextlib
import json
from ipaddress import IPv4Address, IPv4Network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyflannel.errors import ConfigError
from pyflannel.model.config import parse_config


def test_defaults_for_a_slash_16() -> None:
    cfg = parse_config('{"Network":"10.5.0.0/16"}')
    assert cfg.network == IPv4Network("10.5.0.0/16")
    assert cfg.subnet_len == 24
    assert cfg.subnet_min == IPv4Address("10.5.1.0")
    assert cfg.subnet_max == IPv4Address("10.5.255.0")
    assert cfg.backend_type == "udp"  # no Backend key means udp, as flanneld


def test_documented_slash_8_example() -> None:
    cfg = parse_config(
        '{"Network":"10.0.0.0/8","SubnetLen":20,"SubnetMin":"10.10.0.0","SubnetMax":"10.99.0.0"}'
    )
    assert (cfg.subnet_len, str(cfg.subnet_min), str(cfg.subnet_max)) == (
        20,
        "10.10.0.0",
        "10.99.0.0",
    )


def test_keys_are_case_insensitive_and_host_bits_masked() -> None:
    cfg = parse_config('{"network":"10.5.1.0/16","backend":{"type":"VXLAN","vni":2}}')
    assert cfg.network == IPv4Network("10.5.0.0/16")
    assert cfg.backend_type == "vxlan"
    assert cfg.backend_option("VNI", 1) == 2
    assert cfg.backend_option("Port", 0) == 0


@pytest.mark.parametrize(
    ("network", "subnet_len"),
    [("10.0.0.0/22", 24), ("10.0.0.0/23", 25), ("10.0.0.0/26", 28), ("10.0.0.0/28", 30)],
)
def test_default_subnet_len_is_24_or_prefix_plus_2(network: str, subnet_len: int) -> None:
    assert parse_config(json.dumps({"Network": network})).subnet_len == subnet_len


def test_last_duplicate_key_wins_as_in_go() -> None:
    cfg = parse_config('{"Network":"10.1.0.0/16","NETWORK":"10.2.0.0/16"}')
    assert cfg.network == IPv4Network("10.2.0.0/16")


def test_unknown_keys_are_ignored() -> None:
    assert parse_config('{"Network":"10.5.0.0/16","Comment":"x"}').subnet_len == 24


@pytest.mark.parametrize(
    ("doc", "fragment"),
    [
        ("{}", '"Network" is missing'),
        ('{"Network":""}', '"Network" is missing'),
        ('{"Network":5}', "Network 5 is invalid"),
        ('{"Network":"10.5.0.0"}', None),  # a bare address is a /32: too small
        ('{"Network":"banana"}', 'Network "banana" is invalid'),
        ('{"Network":"10.5.0.0/29"}', "minimum useful network prefix is /28"),
        ('{"Network":"10.5.0.0/16","SubnetLen":31}', "SubnetLen 31 is invalid"),
        ('{"Network":"10.5.0.0/16","SubnetLen":17}', "at least four subnets"),
        ('{"Network":"10.5.0.0/16","SubnetLen":"24"}', "whole number"),
        ('{"Network":"10.5.0.0/16","SubnetLen":24.5}', "whole number"),
        ('{"Network":"10.5.0.0/16","SubnetMin":"10.6.0.0"}', "not in the range of the Network"),
        ('{"Network":"10.5.0.0/16","SubnetMax":"10.5.3.7"}', "not on a SubnetLen boundary"),
        ('{"Network":"10.5.0.0/16","SubnetMin":"10.5.9.0","SubnetMax":"10.5.3.0"}', "greater"),
        ('{"Network":"10.5.0.0/16","Backend":"vxlan"}', "Backend"),
        ('{"Network":"10.5.0.0/16","Backend":{"Type":7}}', "Backend.Type"),
        ('{"Network":"10.5.0.0/16","EnableIPv6":true}', "EnableIPv6"),
        ("[1,2]", "must be a JSON object"),
        ("{", "not valid JSON"),
    ],
)
def test_rejections_name_key_and_rule(doc: str, fragment: str | None) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(doc)
    assert str(info.value).startswith("network config")
    if fragment:
        assert fragment in str(info.value)


def test_backend_without_type_gives_empty_type() -> None:
    assert parse_config('{"Network":"10.5.0.0/16","Backend":{}}').backend_type == ""


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
_keys = st.sampled_from(
    ["Network", "network", "SubnetLen", "SubnetMin", "SubnetMax", "Backend", "x"]
)
_values = st.one_of(
    _json,
    st.sampled_from(["10.5.0.0/16", "10.5.1.0", "10.5.0.0/30", "1.2.3.4/8", "::1/64", "10.5.3.7"]),
    st.integers(0, 40),
)


@given(st.dictionaries(_keys, _values, max_size=6))
def test_fuzz_only_config_errors(doc: dict[str, object]) -> None:
    try:
        cfg = parse_config(json.dumps(doc))
    except ConfigError:
        return
    assert cfg.subnet_min <= cfg.subnet_max
    assert cfg.subnet_min in cfg.network and cfg.subnet_max in cfg.network


@given(st.binary(max_size=200))
def test_fuzz_bytes(data: bytes) -> None:
    with contextlib.suppress(ConfigError):
        parse_config(data)
