"""The connection to an etcd v3 cluster: endpoints, TLS, authentication, failover.

etcd serves its v3 API as JSON over HTTP on the client port (the encoding is in
:mod:`pyflannel.registry.etcdwire`), so a small HTTP/1.1 client
(:mod:`pyflannel.httpc`) is all it takes; a gRPC stack would cost the daemon more
memory than everything else together. What this module adds around the client:

- Several endpoints: a call goes to the current one and, when it gets no answer or
  an "unavailable" one, moves on to the next, trying each endpoint once.
- TLS from ``--etcd-cafile/--etcd-certfile/--etcd-keyfile``, for every endpoint or
  none (:mod:`pyflannel.registry.etcdtls`, shared with the v2 API); each server
  certificate is checked against the host name of its own endpoint.
- Authentication: with ``--etcd-username`` a token from Authenticate goes with each
  request. etcd forgets its tokens when it restarts (and simple tokens expire when
  unused); a call refused for its token authenticates again and is retried once.
- Watches ask for a leader (etcd's require-leader metadata, as a gateway header) and
  probe their member when quiet, so a stopped or cut-off etcd ends them within
  ``probe_interval + probe_timeout`` (gRPC used keepalive pings for this).
- The API path: ``/v3`` (etcd 3.4 and later), or ``/v3beta`` for an etcd 3.3 that
  answers 404 to the former.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from pyflannel.errors import (
    RegistryError,
    RegistryPermissionError,
    RegistryUnavailable,
)
from pyflannel.httpc.client import Origin, Response
from pyflannel.registry.etcdsettings import Endpoint, EtcdSettings, parse_endpoint
from pyflannel.registry.etcdtls import targets
from pyflannel.registry.etcdwatch import WatchStream
from pyflannel.registry.etcdwire import (
    FAILED_PRECONDITION,
    GATEWAY_TLS_HINT,
    InvalidToken,
    MalformedAnswer,
    answer_error,
    auth_request,
    error_status,
    gateway_lost_etcd,
    parse_token,
)

if TYPE_CHECKING:
    import ssl

__all__ = ["Endpoint", "EtcdConnection", "EtcdSettings", "WatchStream", "parse_endpoint"]

logger = logging.getLogger(__name__)
T = TypeVar("T")
_JSON = ("Content-Type", "application/json")
_REQUIRE_LEADER = ("Grpc-Metadata-hasleader", "true")
# A burst of lease writes (hundreds of hosts starting at once) arrives as one watch
# message each, about a millisecond apart. Reading the socket at most every few ms
# handles them many at a time instead of one wake-up each: a few times less CPU for
# a few ms of latency. A lone event is not delayed.
WATCH_COALESCE = 0.005
# etcd answers the requests of one connection one after the other: many calls at once
# (a lease TTL lookup per host) go out on a few connections.
_SPREAD = 4


class _Member:
    """One endpoint: its HTTP connections, API path and auth token."""

    def __init__(self, url: str, origin: Origin) -> None:
        self.url = url
        self.origin = origin
        self.api = "/v3"
        self.token: str | None = None
        self.auth_disabled = False  # etcd said so; try again if it asks for a token
        self.auth_lock = asyncio.Lock()


def _member(url: str, endpoint: Endpoint, context: ssl.SSLContext | None, hint: str) -> _Member:
    origin = Origin(
        endpoint.host, endpoint.port, ssl_context=context, name=f"etcd at {url}", tls_hint=hint
    )
    return _Member(url, origin)


class EtcdConnection:
    """Calls to the v3 API of one cluster: deadlines, failover, re-authentication."""

    def __init__(self, settings: EtcdSettings) -> None:
        found = targets(settings)
        self.tls = found.tls
        self._members = [
            _member(e.url(self.tls), e, found.context, found.hint) for e in found.endpoints
        ]
        self._settings = settings
        self._index = 0
        self._warned_auth_disabled = False
        self.closed = False
        self.endpoints = settings.endpoints_text()

    @property
    def timeout(self) -> float:
        """Deadline of one call, in seconds."""
        return self._settings.timeout

    @property
    def probe_interval(self) -> float:
        """How long a watch may be quiet before its member is probed, in seconds."""
        return self._settings.probe_interval

    async def call(self, method: str, body: Mapping[str, Any], parse: Callable[[Any], T]) -> T:
        """POST ``body`` to ``<api><method>`` (``/kv/range``, ...) and ``parse`` the answer."""
        [answer] = await self.call_many(method, [body], parse)
        return answer

    async def call_many(
        self, method: str, bodies: Sequence[Mapping[str, Any]], parse: Callable[[Any], T]
    ) -> list[T]:
        """Several calls of one method, sent at once (HTTP pipelining) to one member; each
        member is tried once while they fail to answer."""
        failure: RegistryUnavailable | None = None
        for _ in self._members:
            member = self._current()
            try:
                answers = await self._attempt(member, method, bodies)
                return [parse(answer) for answer in answers]
            except MalformedAnswer as exc:
                failure = RegistryUnavailable(f"etcd at {member.url} is unavailable: {exc}")
            except RegistryUnavailable as exc:
                failure = exc
            self._failed(member, failure)
        assert failure is not None
        if len(self._members) > 1:
            raise RegistryUnavailable(f"no etcd endpoint answered ({failure})") from failure
        raise failure

    def reauthenticate(self) -> None:
        """Drop the current member's token: the next call authenticates again."""
        if not self.closed:
            member = self._current()
            self._forget_token(member, member.token)

    @contextlib.asynccontextmanager
    async def watch(self, request: Mapping[str, Any]) -> AsyncIterator[WatchStream]:
        """A Watch stream on the current member that fails when it has no leader."""
        member = self._current()
        try:
            headers = [_JSON, _REQUIRE_LEADER, *self._auth(await self._token(member))]
            body = json.dumps(request).encode()
            target = f"{member.api}/watch"
            async with member.origin.stream(
                "POST", target, body, headers, timeout=self.timeout, coalesce=WATCH_COALESCE
            ) as stream:
                if stream.head.status != 200:
                    text = await stream.read_body(timeout=self.timeout)
                    raise self._error(member, stream.head.status, text)
                yield WatchStream(
                    stream, member.url, functools.partial(self.probe, member), self.probe_interval
                )
        except RegistryUnavailable as exc:
            self._failed(member, exc)
            raise

    async def probe(self, member: _Member) -> None:
        """Raise RegistryUnavailable unless ``member`` answers at all, and in time."""
        target = f"{member.api}/maintenance/status"
        timeout = self._settings.probe_timeout
        await member.origin.request("POST", target, b"{}", [_JSON], timeout=timeout)

    async def close(self) -> None:
        """Close every connection, watches included (idempotent); later calls fail."""
        self.closed = True
        for member in self._members:
            await member.origin.close()

    def _current(self) -> _Member:
        if self.closed:
            raise RegistryUnavailable(f"the connection to etcd at {self.endpoints} is closed")
        return self._members[self._index]

    def _failed(self, member: _Member, failure: RegistryUnavailable) -> None:
        """After ``member`` failed to answer, the next call goes to the next member."""
        member.origin.drop_idle()  # they may be just as stuck
        if self._members[self._index] is member and len(self._members) > 1:
            self._index = (self._index + 1) % len(self._members)
            logger.debug("%s; next etcd endpoint: %s", failure, self._current().url)

    async def _attempt(
        self, member: _Member, method: str, bodies: Sequence[Mapping[str, Any]]
    ) -> list[Any]:
        """The calls on one member; once more with a new token if it refused the old one."""
        token = await self._token(member)
        try:
            return await self._post(member, method, bodies, token)
        except InvalidToken:
            if not self._settings.username:
                raise
            logger.info("etcd at %s refused the auth token; authenticating again", member.url)
            self._forget_token(member, token)
        return await self._post(member, method, bodies, await self._token(member))

    async def _post(
        self, member: _Member, method: str, bodies: Sequence[Mapping[str, Any]], token: str | None
    ) -> list[Any]:
        data = [json.dumps(body).encode() for body in bodies]
        responses = await self._send(member, method, data, [_JSON, *self._auth(token)])
        answers = []
        for response in responses:
            if response.status != 200:
                raise self._error(member, response.status, response.body)
            try:
                answers.append(json.loads(response.body))
            except ValueError as exc:
                raise MalformedAnswer(f"answer that is not JSON: {response.body[:80]!r}") from exc
        return answers

    async def _send(
        self,
        member: _Member,
        method: str,
        data: Sequence[bytes],
        headers: Sequence[tuple[str, str]],
    ) -> list[Response]:
        """POST each of ``data`` (pipelined), under ``/v3beta`` if ``/v3`` is not there."""
        target = member.api + method
        responses = await member.origin.pipeline(
            "POST", target, data, headers, timeout=self.timeout, spread=_SPREAD
        )
        if member.api == "/v3" and _not_found(responses[0].status, responses[0].body):
            member.api = "/v3beta"  # etcd 3.3 serves the same API there
            logger.info("etcd at %s has no /v3 API; using /v3beta (etcd 3.3)", member.url)
            return await self._send(member, method, data, headers)
        return responses

    def _error(self, member: _Member, status: int, body: bytes) -> RegistryError:
        error = answer_error(status, body, member.url)
        if self.tls and gateway_lost_etcd(body):
            return RegistryUnavailable(f"{error}{GATEWAY_TLS_HINT}")
        return error

    async def _token(self, member: _Member) -> str | None:
        """The member's auth token, authenticating first if there is none yet."""
        if not self._settings.username or member.auth_disabled or member.token is not None:
            return member.token
        async with member.auth_lock:
            if member.token is None and not member.auth_disabled:
                member.token = await self._authenticate(member)
        return member.token

    async def _authenticate(self, member: _Member) -> str | None:
        """A fresh token (None when etcd has authentication turned off)."""
        name = self._settings.username
        body = json.dumps(auth_request(name, self._settings.password)).encode()
        [response] = await self._send(member, "/auth/authenticate", [body], [_JSON])
        if response.status == 200:
            try:
                return parse_token(json.loads(response.body))
            except ValueError as exc:  # MalformedAnswer included
                raise RegistryUnavailable(f"etcd at {member.url} is unavailable: {exc}") from exc
        code, message = error_status(response.body)
        if code == FAILED_PRECONDITION:
            if not self._warned_auth_disabled:
                logger.warning("etcd has authentication disabled; ignoring --etcd-username")
                self._warned_auth_disabled = True
            member.auth_disabled = True
            return None
        error = self._error(member, response.status, response.body)
        if isinstance(error, RegistryUnavailable):
            raise error
        raise RegistryPermissionError(f"etcd at {member.url} rejected user {name!r}: {message}")

    @staticmethod
    def _forget_token(member: _Member, stale: str | None) -> None:
        if member.token == stale:  # not yet replaced by a concurrent call
            member.token = None
            member.auth_disabled = False

    @staticmethod
    def _auth(token: str | None) -> list[tuple[str, str]]:
        return [("Authorization", token)] if token else []


def _not_found(status: int, body: bytes) -> bool:
    """A plain 404: the path does not exist (not an etcd error that maps to 404)."""
    return status == 404 and error_status(body)[0] is None
