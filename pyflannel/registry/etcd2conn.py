"""The connection to etcd's v2 HTTP API: endpoints, TLS, basic auth, failover, errors.

The v2 API is plain HTTP with JSON answers, so httpx is all it takes. What this
module adds around it:

- The ``--etcd-*`` flags mean what they mean for the v3 API (they are parsed by the
  same helpers in :mod:`pyflannel.registry.etcdsettings`): TLS is used when an endpoint
  says ``https`` or a client certificate and key are given, and then for every
  endpoint; a user name turns on HTTP basic auth, which is how etcd's v2 auth works.
- Several endpoints: a call goes to the current one and moves on to the next after
  a connection failure, a timeout or a 5xx answer, trying each endpoint once.
- Long polls (``wait=true``) have no read timeout, since a watch may rightly wait
  for hours; TCP keepalive on every connection instead notices a dead peer in about
  25 s, so a silent partition cannot hang a watch forever.
- Errors: transport failures and 5xx become ``RegistryUnavailable``, refused
  credentials ``RegistryPermissionError``, and a server without the v2 API says how
  to enable it. etcd's own error answers (``errorCode``) are returned to the
  registry, which knows what "key not found" or "index cleared" means for it.

The environment (proxies, ``.netrc``) is deliberately ignored: etcd traffic should go
where ``--etcd-endpoints`` says, with the credentials the flags give.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import socket
import ssl
from collections.abc import Mapping
from typing import Any

import httpx

from pyflannel.errors import (
    ConfigError,
    RegistryError,
    RegistryPermissionError,
    RegistryUnavailable,
)
from pyflannel.registry.etcdsettings import Endpoint, EtcdSettings, parse_endpoint, use_tls

logger = logging.getLogger(__name__)

# etcd v2 error codes (etcd/error/error.go) the registries act on.
KEY_NOT_FOUND = 100
NODE_EXIST = 105
UNAUTHORIZED = 110
WATCHER_CLEARED = 400  # a watch dropped when the member recovered from a snapshot
EVENT_INDEX_CLEARED = 401
_UNAVAILABLE_CODES = frozenset({300, 301})  # raft internal error, leader election

# Probe a quiet connection after 10 s, every 5 s, give up after 3 unanswered probes.
KEEPALIVE_OPTIONS: tuple[tuple[int, int, int], ...] = (
    (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
    (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 10),
    (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 5),
    (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3),
)


@dataclasses.dataclass(frozen=True, slots=True)
class Reply:
    """One JSON answer of the v2 API and the store index (``X-Etcd-Index``) it reflects."""

    status: int
    index: int
    body: Mapping[str, Any]

    @property
    def error_code(self) -> int | None:
        """etcd's ``errorCode`` (None for a successful answer)."""
        code = self.body.get("errorCode")
        return code if isinstance(code, int) and not isinstance(code, bool) else None

    def error_text(self) -> str:
        """``<code>: <message> (<cause>)`` as etcd put it, for messages."""
        body = self.body
        return f"{body.get('errorCode')}: {body.get('message')} ({body.get('cause', '')})"


def base_url(endpoint: Endpoint, tls: bool) -> str:
    """The URL prefix of one endpoint; TLS applies to all of them or none."""
    return f"{'https' if tls else 'http'}://{endpoint.address()}"


def ssl_context(settings: EtcdSettings) -> ssl.SSLContext:
    """Server verification against ``--etcd-cafile`` (or the system CAs) and the
    client certificate when both its files are given; TLS 1.2 at least, as flanneld."""
    if bool(settings.certfile) != bool(settings.keyfile):
        logger.warning(
            "only one of --etcd-certfile and --etcd-keyfile is set; no client certificate is sent"
        )
    try:
        context = ssl.create_default_context(cafile=settings.cafile or None)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if settings.certfile and settings.keyfile:
            context.load_cert_chain(settings.certfile, settings.keyfile)
    except (OSError, ssl.SSLError) as exc:
        files = f"--etcd-cafile={settings.cafile} --etcd-certfile={settings.certfile}"
        raise ConfigError(f"cannot load the etcd TLS files ({files} ...): {exc}") from exc
    return context


class Etcd2Connection:
    """HTTP calls to the v2 API of one cluster, with failover between its endpoints."""

    def __init__(self, settings: EtcdSettings) -> None:
        if not settings.endpoints:
            raise ConfigError("--etcd-endpoints is empty")
        endpoints = [parse_endpoint(text) for text in settings.endpoints]
        self.tls = use_tls(settings, endpoints)
        if settings.cafile and not self.tls:
            logger.warning(
                "--etcd-cafile is set but the endpoints are http:// and no client certificate"
                " is configured: connecting without TLS"
            )
        self.endpoints = settings.endpoints_text()
        self._bases = [base_url(e, self.tls) for e in endpoints]
        self._index = 0
        self._timeout = settings.timeout
        transport = httpx.AsyncHTTPTransport(
            verify=ssl_context(settings) if self.tls else False,
            socket_options=KEEPALIVE_OPTIONS,
            retries=0,
        )
        auth = (settings.username, settings.password) if settings.username else None
        self._client = httpx.AsyncClient(
            transport=transport, auth=auth, timeout=settings.timeout, trust_env=False
        )

    async def call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        form: Mapping[str, str] | None = None,
        long_poll: bool = False,
    ) -> Reply:
        """``method /v2/keys<path>``; etcd's error answers are returned, not raised.

        Raises ``RegistryUnavailable`` when no endpoint answered, and the other
        registry errors for answers that are not etcd's (see the module docstring).
        """
        timeout = httpx.Timeout(self._timeout, read=None) if long_poll else self._timeout
        failure: RegistryUnavailable | None = None
        for _ in self._bases:
            base = self._bases[self._index]
            try:
                response = await self._client.request(
                    method, base + "/v2/keys" + path, params=params, data=form, timeout=timeout
                )
                return self._reply(base, response)
            except httpx.TransportError as exc:
                failure = RegistryUnavailable(
                    f"etcd at {self.endpoints} is unavailable: {base}: {_describe(exc)}"
                )
            except ssl.SSLError as exc:  # an alert from the server after the handshake
                raise RegistryPermissionError(
                    f"etcd at {base} rejected the TLS connection: {exc}; check --etcd-certfile,"
                    " --etcd-keyfile and --etcd-cafile"
                ) from exc
            except RegistryUnavailable as exc:
                failure = exc
            self._index = (self._index + 1) % len(self._bases)
            logger.debug("etcd endpoint failed (%s); next: %s", failure, self._bases[self._index])
        assert failure is not None
        raise failure

    async def close(self) -> None:
        """Close every connection (idempotent)."""
        with contextlib.suppress(httpx.HTTPError, OSError):
            await self._client.aclose()

    def _reply(self, base: str, response: httpx.Response) -> Reply:
        body = _json_object(response)
        if body is None:
            raise self._not_etcd(base, response)
        reply = Reply(response.status_code, _index(response, body), body)
        code = reply.error_code
        if response.status_code >= 500 or code in _UNAVAILABLE_CODES:
            text = reply.error_text() if code is not None else f"HTTP {response.status_code}"
            raise RegistryUnavailable(f"etcd at {base} cannot serve the request now: {text}")
        if response.status_code in (401, 403) or code == UNAUTHORIZED:
            raise RegistryPermissionError(
                f"etcd at {base} refused the request: {reply.error_text()};"
                " check --etcd-username and --etcd-password and the v2 role's key permissions"
            )
        return reply

    def _not_etcd(self, base: str, response: httpx.Response) -> RegistryError:
        status = response.status_code
        if status >= 500:
            return RegistryUnavailable(f"etcd at {base} answered HTTP {status}")
        if status == 404:
            return RegistryError(
                f"etcd at {base} does not serve the v2 API (HTTP 404 on /v2/keys):"
                " start etcd 3.4/3.5 with --enable-v2=true (etcd 3.6 has no v2 API),"
                " or use the v3 API (--etcd-api=v3)"
            )
        return RegistryError(f"{base} answered HTTP {status} without an etcd v2 JSON body")


def _json_object(response: httpx.Response) -> Mapping[str, Any] | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _index(response: httpx.Response, body: Mapping[str, Any]) -> int:
    """``X-Etcd-Index``, or the ``index`` an error body carries when the header is missing."""
    try:
        return int(response.headers["X-Etcd-Index"])
    except (KeyError, ValueError):
        index = body.get("index")
        return index if isinstance(index, int) else 0


def _describe(exc: httpx.TransportError) -> str:
    """httpx's timeouts often carry no text; name the exception then."""
    return str(exc) or type(exc).__name__
