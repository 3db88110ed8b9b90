"""The ``--etcd-*`` settings and the endpoint rules shared by the v3 and v2 registries.

Pure code: parsing and deciding only, no connections. How the v3 registry reaches
etcd is decided here (one grpc target or several, TLS or not) and done in
:mod:`pyflannel.registry.etcdconn`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
from collections.abc import Sequence
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from pyflannel.errors import ConfigError

if TYPE_CHECKING:
    from pyflannel.options import Options

DEFAULT_PORT = 2379

# etcd refuses pings more often than every 5 s (--grpc-keepalive-min-time), so ping
# an open stream every 10 s and give up on it after 5 s without an answer: a silent
# partition then breaks a watch within about 15 s instead of never. grpc 1.85 times
# pings out by http2.ping_timeout_ms (default 60 s), not by keepalive_timeout_ms alone.
# Reconnect backoff follows flanneld's 100 ms ... 5 s instead of grpc's up to 120 s.
CHANNEL_OPTIONS: dict[str, int] = {
    "grpc.keepalive_time_ms": 10_000,
    "grpc.keepalive_timeout_ms": 5_000,
    "grpc.http2.ping_timeout_ms": 5_000,
    "grpc.keepalive_permit_without_calls": 0,
    "grpc.http2.max_pings_without_data": 0,
    "grpc.initial_reconnect_backoff_ms": 100,
    "grpc.min_reconnect_backoff_ms": 100,
    "grpc.max_reconnect_backoff_ms": 5_000,
    "grpc.max_receive_message_length": -1,  # a listing of many leases exceeds 4 MiB
}


@dataclasses.dataclass(frozen=True, slots=True)
class EtcdSettings:
    """How to reach etcd: the ``--etcd-*`` flags, plus the per-call deadline."""

    endpoints: tuple[str, ...]
    cafile: str = ""
    certfile: str = ""
    keyfile: str = ""
    username: str = ""
    password: str = dataclasses.field(default="", repr=False)
    timeout: float = 5.0
    channel_options: tuple[tuple[str, int], ...] = tuple(CHANNEL_OPTIONS.items())

    def endpoints_text(self) -> str:
        """The endpoints as the flag spells them, for messages."""
        return ",".join(self.endpoints)

    @classmethod
    def from_options(cls, options: Options) -> EtcdSettings:
        """The settings the command line asked for."""
        return cls(
            endpoints=tuple(options.etcd_endpoints),
            cafile=options.etcd_cafile,
            certfile=options.etcd_certfile,
            keyfile=options.etcd_keyfile,
            username=options.etcd_username,
            password=options.etcd_password,
        )


@dataclasses.dataclass(frozen=True, slots=True)
class Endpoint:
    """One parsed ``--etcd-endpoints`` entry."""

    scheme: str
    host: str
    port: int

    def address(self) -> str:
        """``host:port`` as grpc wants it (IPv6 literals in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_endpoint(text: str) -> Endpoint:
    """Parse ``http(s)://host[:port]``; anything else is a configuration error."""
    parts = urlsplit(text.strip())
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError as exc:
        raise ConfigError(f"--etcd-endpoints: {text!r} has an invalid port: {exc}") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"--etcd-endpoints: {text!r} is not an http:// or https:// URL with a host"
        )
    return Endpoint(parts.scheme, parts.hostname, port)


def use_tls(settings: EtcdSettings, endpoints: Sequence[Endpoint]) -> bool:
    """TLS when an endpoint says https or a client certificate and key are given."""
    return any(e.scheme == "https" for e in endpoints) or bool(
        settings.certfile and settings.keyfile
    )


def channel_targets(endpoints: Sequence[Endpoint], tls: bool) -> list[str]:
    """The grpc targets to use in turn, the next one after a connection failure.

    Plaintext IP literals of one family become multi-address targets, on which grpc
    skips a dead address by itself; the address order is rotated from one target to
    the next because grpc always settles on the first address that accepts a
    connection, even a member cut off from its cluster. Names (and every endpoint
    under TLS, so that each certificate is checked against its own host) get one
    target each.
    """
    addresses = [e.address() for e in endpoints]
    if not tls and len(endpoints) > 1:
        for family in (4, 6):
            if all(_ip_version(e.host) == family for e in endpoints):
                return [
                    f"ipv{family}:" + ",".join(addresses[i:] + addresses[:i])
                    for i in range(len(addresses))
                ]
    return addresses


def _ip_version(host: str) -> int:
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host).version
    return 0
