"""TLS towards etcd from ``--etcd-cafile/--etcd-certfile/--etcd-keyfile``, for both APIs.

The v3 (:mod:`pyflannel.registry.etcdconn`) and the v2
(:mod:`pyflannel.registry.etcd2conn`) connections take the flags to mean the same
thing, so the context is built here once: whether TLS is used at all is decided by
:func:`~pyflannel.registry.etcdsettings.use_tls`, the server is verified against the
CA file (or the system store), and the client certificate is sent when both of its
files are given. Files that cannot be read are configuration errors, named by flag.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyflannel.errors import ConfigError
from pyflannel.registry.etcdsettings import Endpoint, EtcdSettings, parse_endpoint, use_tls

if TYPE_CHECKING:
    import ssl

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Targets:
    """The parsed endpoints of a cluster, the TLS context for all of them (None: plain
    HTTP) and the hint for a rejected server certificate: what a connection needs."""

    endpoints: list[Endpoint]
    context: ssl.SSLContext | None
    hint: str

    @property
    def tls(self) -> bool:
        return self.context is not None


def targets(settings: EtcdSettings) -> Targets:
    """Parse ``--etcd-endpoints`` and build the TLS context, for either API."""
    if not settings.endpoints:
        raise ConfigError("--etcd-endpoints is empty")
    endpoints = [parse_endpoint(text) for text in settings.endpoints]
    return Targets(endpoints, client_context(settings, endpoints), verify_hint(settings))


def client_context(settings: EtcdSettings, endpoints: Sequence[Endpoint]) -> ssl.SSLContext | None:
    """The TLS context for every endpoint, or None when they are all plain HTTP."""
    if use_tls(settings, endpoints):
        return ssl_context(settings)
    if settings.cafile:
        logger.warning(
            "--etcd-cafile is set but the endpoints are http:// and no client certificate"
            " is configured: connecting without TLS"
        )
    return None


def ssl_context(settings: EtcdSettings) -> ssl.SSLContext:
    """Server verification against ``--etcd-cafile`` (or the system CAs) and the client
    certificate when both its files are given; TLS 1.2 at least, as flanneld."""
    import ssl  # here: a daemon without TLS never loads it (see pyflannel.tlsfree)

    if bool(settings.certfile) != bool(settings.keyfile):
        logger.warning(
            "only one of --etcd-certfile and --etcd-keyfile is set; no client certificate is sent"
        )
    for flag, path in (
        ("--etcd-cafile", settings.cafile),
        ("--etcd-certfile", settings.certfile),
        ("--etcd-keyfile", settings.keyfile),
    ):
        try:
            if path:
                open(path, "rb").close()
        except OSError as exc:
            raise ConfigError(f"{flag}={path}: cannot read it: {exc}") from exc
    try:
        context = ssl.create_default_context(cafile=settings.cafile or None)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if settings.certfile and settings.keyfile:
            context.load_cert_chain(settings.certfile, settings.keyfile)
    except (OSError, ssl.SSLError) as exc:
        files = f"--etcd-cafile={settings.cafile} --etcd-certfile={settings.certfile}"
        raise ConfigError(f"cannot load the etcd TLS files ({files} ...): {exc}") from exc
    return context


def verify_hint(settings: EtcdSettings) -> str:
    """What to check when etcd's certificate is not accepted (appended to the error)."""
    cas = f"--etcd-cafile={settings.cafile}" if settings.cafile else "the system CA store"
    return f" (does {cas} hold the CA that signed etcd's certificate?)"
