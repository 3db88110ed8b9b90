"""The fast dotted-quad parser accepts and refuses exactly what IPv4Address does."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyflannel.model.net import parse_ipv4

OCTETS = st.one_of(
    st.integers(0, 300).map(str),
    st.sampled_from(["00", "01", "007", "1000", "", " 1", "1 ", "+1", "-1", "١", "0x1"]),
)


def stdlib(text: str) -> IPv4Address | None:
    try:
        return IPv4Address(text)
    except ValueError:
        return None


def ours(text: str) -> IPv4Address | None:
    try:
        return parse_ipv4(text)
    except ValueError:
        return None


@given(st.lists(OCTETS, min_size=1, max_size=6).map(".".join))
def test_same_verdict_as_the_standard_library(text: str) -> None:
    assert ours(text) == stdlib(text)


@given(st.text(max_size=20))
def test_same_verdict_on_any_text(text: str) -> None:
    assert ours(text) == stdlib(text)


@pytest.mark.parametrize("text", ["0.0.0.0", "255.255.255.255", "10.5.72.1", "192.168.0.10"])
def test_ordinary_addresses(text: str) -> None:
    assert parse_ipv4(text) == IPv4Address(text)
