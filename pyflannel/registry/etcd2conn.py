"""The connection to etcd's v2 HTTP API: endpoints, TLS, basic auth, failover, errors.

The v2 API is plain HTTP with JSON answers, spoken here with pyflannel's own small
client (:mod:`pyflannel.httpc`), as the v3 API is. What this module adds around it:

- The ``--etcd-*`` flags mean what they mean for the v3 API: endpoints are parsed by
  :mod:`pyflannel.registry.etcdsettings` and the TLS context comes from
  :mod:`pyflannel.registry.etcdtls` (TLS for every endpoint when one says ``https``
  or a client certificate and key are given); a user name turns on HTTP basic auth,
  which is how etcd's v2 auth works.
- Several endpoints: a call goes to the current one and moves on to the next after
  a connection failure, a timeout or a 5xx answer, trying each endpoint once.
- Long polls (``wait=true``): connecting and the answer's head (which etcd sends as
  soon as the watch is registered) have the usual deadline, the change itself may
  take ``EtcdSettings.long_poll``; after that the poll ends without an answer
  (:attr:`Reply.expired`) and the watch asks again. TCP keepalive notices a dead
  peer within about 25 s in between.
- Errors: transport failures and 5xx become ``RegistryUnavailable``, refused
  credentials (a 401/403, or a TLS alert from the server) ``RegistryPermissionError``,
  and a server without the v2 API says how to enable it. etcd's own error answers
  (``errorCode``) are returned to the registry, which knows what "key not found" or
  "index cleared" means for it.

Request targets and form bodies are encoded by :mod:`pyflannel.httpc.urls`, as a
general-purpose client encodes them (tests pin the exact bytes). Proxies and
``.netrc`` play no part: etcd traffic goes where ``--etcd-endpoints`` says, with the
credentials the flags give.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pyflannel.errors import (
    RegistryError,
    RegistryPermissionError,
    RegistryUnavailable,
)
from pyflannel.httpc.longpoll import PollingOrigin
from pyflannel.httpc.urls import basic_auth, form_body, request_target
from pyflannel.registry.etcdsettings import Endpoint, EtcdSettings
from pyflannel.registry.etcdtls import targets
from pyflannel.tlsfree import loaded_ssl

if TYPE_CHECKING:
    import ssl

logger = logging.getLogger(__name__)

# etcd v2 error codes (etcd/error/error.go) the registries act on.
KEY_NOT_FOUND = 100
NODE_EXIST = 105
UNAUTHORIZED = 110
WATCHER_CLEARED = 400  # a watch dropped when the member recovered from a snapshot
EVENT_INDEX_CLEARED = 401
_UNAVAILABLE_CODES = frozenset({300, 301})  # raft internal error, leader election
_FORM = ("Content-Type", "application/x-www-form-urlencoded")


@dataclasses.dataclass(frozen=True, slots=True)
class Reply:
    """One JSON answer of the v2 API and the store index (``X-Etcd-Index``) it reflects.

    ``expired``: a long poll that saw no change in time; ``body`` is empty then. Its
    ``index`` is not a safe cursor: a change found in etcd's history may have been on
    its way after the head when the poll gave up.
    """

    status: int
    index: int
    body: Mapping[str, Any]
    expired: bool = False

    @property
    def error_code(self) -> int | None:
        """etcd's ``errorCode`` (None for a successful answer)."""
        code = self.body.get("errorCode")
        return code if isinstance(code, int) and not isinstance(code, bool) else None

    def error_text(self) -> str:
        """``<code>: <message> (<cause>)`` as etcd put it, for messages."""
        body = self.body
        return f"{body.get('errorCode')}: {body.get('message')} ({body.get('cause', '')})"


class Etcd2Connection:
    """HTTP calls to the v2 API of one cluster, with failover between its endpoints."""

    def __init__(self, settings: EtcdSettings) -> None:
        found = targets(settings)
        self.tls = found.tls
        self.endpoints = settings.endpoints_text()
        self._origins = [_origin(e, found.context, found.hint) for e in found.endpoints]
        self._index = 0
        self._settings = settings
        self._auth = [basic_auth(settings.username, settings.password)] if settings.username else []

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
        target = request_target("/v2/keys" + path, params)
        body = b"" if form is None else form_body(form)
        headers = self._auth if form is None else [_FORM, *self._auth]
        failure: RegistryUnavailable | None = None
        for _ in self._origins:
            origin = self._origins[self._index]
            try:
                return await self._send(origin, method, target, body, headers, long_poll=long_poll)
            except RegistryUnavailable as exc:
                failure = exc
            self._failed(origin, failure)
        assert failure is not None
        if len(self._origins) > 1:
            raise RegistryUnavailable(f"no etcd endpoint answered ({failure})") from failure
        raise failure

    async def close(self) -> None:
        """Close every connection, long polls included (idempotent); later calls fail."""
        for origin in self._origins:
            await origin.close()

    async def _send(
        self,
        origin: PollingOrigin,
        method: str,
        target: str,
        body: bytes,
        headers: list[tuple[str, str]],
        *,
        long_poll: bool,
    ) -> Reply:
        timeout = self._settings.timeout
        data: bytes | None
        try:
            if long_poll:
                polled = await origin.long_poll(
                    method, target, body, headers, timeout=timeout, wait=self._settings.long_poll
                )
                status, fields, data = polled.head.status, polled.head.headers, polled.body
            else:
                response = await origin.request(method, target, body, headers, timeout=timeout)
                status, fields, data = response.status, response.headers, response.body
        except RegistryUnavailable as exc:
            if _tls_alert(exc.__cause__):  # the server refused our certificate
                raise RegistryPermissionError(
                    f"{origin.name} rejected the TLS connection: {exc.__cause__}; check"
                    " --etcd-certfile, --etcd-keyfile and --etcd-cafile"
                ) from exc
            raise
        return _reply(origin.name, status, fields, data)

    def _failed(self, origin: PollingOrigin, failure: RegistryUnavailable) -> None:
        """After ``origin`` failed to answer, the next call goes to the next endpoint."""
        origin.drop_idle()  # they may be just as stuck
        if self._origins[self._index] is origin and len(self._origins) > 1:
            self._index = (self._index + 1) % len(self._origins)
            logger.debug("%s; next etcd endpoint: %s", failure, self._origins[self._index].name)


def _tls_alert(cause: BaseException | None) -> bool:
    tls = loaded_ssl()
    return tls is not None and isinstance(cause, tls.SSLError) and "ALERT" in (cause.reason or "")


def _origin(endpoint: Endpoint, context: ssl.SSLContext | None, hint: str) -> PollingOrigin:
    name = f"etcd at {endpoint.url(context is not None)}"
    return PollingOrigin(
        endpoint.host, endpoint.port, ssl_context=context, name=name, tls_hint=hint
    )


def _reply(name: str, status: int, headers: Mapping[str, str], data: bytes | None) -> Reply:
    """The answer as a :class:`Reply`, or the error it means (see the module docstring)."""
    if data is None:  # a long poll that saw no change
        if status != 200:
            raise RegistryUnavailable(f"{name} did not finish its HTTP {status} answer")
        return Reply(status, _index(headers, {}), {}, expired=True)
    body = _json_object(data)
    if body is None:
        raise _not_etcd(name, status)
    reply = Reply(status, _index(headers, body), body)
    code = reply.error_code
    if status >= 500 or code in _UNAVAILABLE_CODES:
        text = reply.error_text() if code is not None else f"HTTP {status}"
        raise RegistryUnavailable(f"{name} cannot serve the request now: {text}")
    if status in (401, 403) or code == UNAUTHORIZED:
        raise RegistryPermissionError(
            f"{name} refused the request: {reply.error_text()};"
            " check --etcd-username and --etcd-password and the v2 role's key permissions"
        )
    return reply


def _not_etcd(name: str, status: int) -> RegistryError:
    if status >= 500:
        return RegistryUnavailable(f"{name} answered HTTP {status}")
    if status == 404:
        return RegistryError(
            f"{name} does not serve the v2 API (HTTP 404 on /v2/keys):"
            " start etcd 3.4/3.5 with --enable-v2=true (etcd 3.6 has no v2 API),"
            " or use the v3 API (--etcd-api=v3)"
        )
    return RegistryError(f"{name} answered HTTP {status} without an etcd v2 JSON body")


def _json_object(data: bytes) -> Mapping[str, Any] | None:
    try:
        body = json.loads(data)
    except ValueError:  # UnicodeDecodeError included
        return None
    return body if isinstance(body, dict) else None


def _index(headers: Mapping[str, str], body: Mapping[str, Any]) -> int:
    """``X-Etcd-Index``, or the ``index`` an error body carries when the header is missing."""
    try:
        return int(headers["x-etcd-index"])
    except (KeyError, ValueError):
        index = body.get("index")
        return index if isinstance(index, int) else 0
