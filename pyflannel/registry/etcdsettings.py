"""The ``--etcd-*`` settings and the endpoint rules shared by the v3 and v2 registries.

Pure code: parsing and deciding only, no connections. Which endpoints there are and
whether they use TLS is decided here; :mod:`pyflannel.registry.etcdconn` (v3) and
:mod:`pyflannel.registry.etcd2conn` (v2) connect accordingly, with the TLS context of
:mod:`pyflannel.registry.etcdtls`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from pyflannel.errors import ConfigError

if TYPE_CHECKING:
    from pyflannel.options import Options

DEFAULT_PORT = 2379

# A watch can rightly stay silent for hours, and a stopped or cut-off etcd sends
# nothing either: after this long without a message, ask the same member for its
# status, and give up on the stream if that gets no answer in time. A silent
# partition then breaks a watch within about 15 s instead of never.
PROBE_INTERVAL = 10.0
PROBE_TIMEOUT = 5.0
# The v2 API has no probe: a watch is a long poll, asked again after this long without
# an answer. That bounds how long a stuck member holds a watch, and lets the watch
# follow the other calls to the next endpoint after a failover.
LONG_POLL = 60.0


@dataclasses.dataclass(frozen=True, slots=True)
class EtcdSettings:
    """How to reach etcd: the ``--etcd-*`` flags, plus the per-call deadline."""

    endpoints: tuple[str, ...]
    cafile: str = ""
    certfile: str = ""
    keyfile: str = ""
    username: str = ""
    password: str = dataclasses.field(default="", repr=False)
    timeout: float = 5.0  # of one call, connecting included
    probe_interval: float = PROBE_INTERVAL
    probe_timeout: float = PROBE_TIMEOUT
    long_poll: float = LONG_POLL  # v2 watches: how long one poll waits for a change

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
        """``host:port`` (IPv6 literals in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def url(self, tls: bool) -> str:
        """The base URL: TLS applies to every endpoint or to none (see :func:`use_tls`)."""
        return f"{'https' if tls else 'http'}://{self.address()}"


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


def needs_tls(settings: EtcdSettings) -> bool:
    """Whether talking to etcd will take TLS (endpoints that do not parse: assume it
    will, and leave the error to the registry, which explains it)."""
    try:
        return use_tls(settings, [parse_endpoint(text) for text in settings.endpoints])
    except ConfigError:
        return True


def use_tls(settings: EtcdSettings, endpoints: Sequence[Endpoint]) -> bool:
    """TLS when an endpoint says https or a client certificate and key are given."""
    return any(e.scheme == "https" for e in endpoints) or bool(
        settings.certfile and settings.keyfile
    )
