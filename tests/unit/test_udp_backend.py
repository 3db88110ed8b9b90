"""The udp backend's options, registration and counters (no kernel needed)."""

from __future__ import annotations

import errno
from ipaddress import IPv4Address, IPv4Network

import pytest

from pyflannel.backend import BackendContext, ExternalInterface, load_backend
from pyflannel.backends.udp import UdpBackend
from pyflannel.backends.udp.packet import Verdict
from pyflannel.backends.udp.proxy import Counters, icmp_source
from pyflannel.errors import ConfigError
from pyflannel.model.config import parse_config
from pyflannel.model.lease import LeaseFormat
from pyflannel.options import Options


def context(backend: str) -> BackendContext:
    config = parse_config(f'{{"Network":"10.4.0.0/16","Backend":{backend}}}')
    addr = IPv4Address("198.51.100.11")
    iface = ExternalInterface("eth0", 2, 1500, addr, addr)
    return BackendContext(config, iface, Options(), LeaseFormat.V3)


def test_udp_is_registered_under_its_lower_case_name() -> None:
    assert load_backend("udp") is UdpBackend
    assert load_backend("UDP") is UdpBackend


def test_defaults() -> None:
    backend = UdpBackend(context('{"Type":"udp"}'))
    assert backend.stats() == {}


@pytest.mark.parametrize(
    ("backend", "key"),
    [
        ('{"Type":"udp","Port":"8285"}', "Backend.Port"),
        ('{"Type":"udp","Port":8285.5}', "Backend.Port"),
        ('{"Type":"udp","Port":true}', "Backend.Port"),
        ('{"Type":"udp","Port":0}', "Backend.Port"),
        ('{"Type":"udp","port":65536}', "Backend.Port"),
        ('{"Type":"udp","Offload":"yes"}', "Backend.Offload"),
        ('{"Type":"udp","AcceptUnknownPeers":1}', "Backend.AcceptUnknownPeers"),
        ('{"Type":"udp","GROHold":"1ms"}', "Backend.GROHold"),
        ('{"Type":"udp","GROHold":-1}', "Backend.GROHold"),
        ('{"Type":"udp","GROHold":10001}', "Backend.GROHold"),
        ('{"Type":"udp","GROHold":true}', "Backend.GROHold"),
    ],
)
def test_bad_options_are_config_errors_naming_the_key(backend: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        UdpBackend(context(backend))


def test_options_match_case_insensitively() -> None:
    UdpBackend(
        context('{"type":"udp","PORT":9000,"offload":false,"acceptunknownpeers":true,"grohold":0}')
    )


def test_icmp_errors_come_from_the_network_address() -> None:
    assert icmp_source(IPv4Network("10.4.0.0/16")) == IPv4Address("10.4.0.0")


def test_counters_summarise_traffic_and_the_drops_that_happened() -> None:
    counters = Counters()
    counters.tx_packets, counters.tx_bytes, counters.tx_sends = 90, 90_000, 2
    counters.drop(Verdict.UNKNOWN_PEER)
    counters.error(Verdict.SEND_FAILED, OSError(errno.EMSGSIZE, "Message too long"))
    assert counters.summary() == (
        "tun->udp 90 pkts 90000 B in 2 sends, udp->tun 0 pkts 0 B in 0 writes, "
        "unknown_peer 1, send_failed 1, error 'Message too long' 1"
    )
    stats = counters.as_dict()
    assert stats["tx_sends"] == 2 and stats["unknown_peer"] == 1 and "ok" not in stats
