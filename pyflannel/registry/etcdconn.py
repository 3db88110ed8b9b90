"""The connection to an etcd v3 cluster: channel, TLS, authentication, failover.

aetcd speaks the etcd v3 API over ``grpc.aio`` but leaves four things to its user,
and this module adds them:

- TLS: aetcd 1.0.0 always opens an insecure channel, so ``_Client.connect`` builds
  the channel itself and sets the same private attributes aetcd's own ``connect``
  sets (``channel``, ``metadata``, the stubs). That is why aetcd is pinned exactly.
- Several endpoints: plaintext IP literals share one grpc ``ipv4:``/``ipv6:`` target
  (grpc fails over by itself); otherwise every endpoint gets its own channel, used
  in turn, the next one after a connection failure. TLS always takes the second
  route so each server certificate is checked against its own host name.
- Re-authentication: etcd forgets its simple tokens when it restarts; a call that
  fails with an invalid token authenticates again and is retried once.
- Errors: every gRPC and aetcd error is mapped to :mod:`pyflannel.errors` here, and
  every call has a deadline, so nothing above this module hangs or sees gRPC.

The watch stream is opened here on the raw gRPC stub rather than through aetcd's
watcher, which hides the response boundaries and header revisions the registry
needs, and cannot send etcd's "require leader" metadata.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

import aetcd
import grpc
from aetcd import rpc

from pyflannel.errors import (
    ConfigError,
    RegistryError,
    RegistryPermissionError,
    RegistryUnavailable,
)
from pyflannel.registry.etcdsettings import (
    CHANNEL_OPTIONS,
    Endpoint,
    EtcdSettings,
    channel_targets,
    parse_endpoint,
    use_tls,
)

__all__ = [
    "CHANNEL_OPTIONS",
    "Endpoint",
    "EtcdConnection",
    "EtcdSettings",
    "WatchStream",
    "channel_targets",
    "map_error",
    "parse_endpoint",
    "use_tls",
]

logger = logging.getLogger(__name__)
T = TypeVar("T")
_REQUIRE_LEADER = ("hasleader", "true")


def _read(path: str, flag: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ConfigError(f"{flag}={path}: cannot read it: {exc}") from exc


def tls_credentials(settings: EtcdSettings) -> grpc.ChannelCredentials:
    """Channel credentials from the CA, certificate and key files."""
    if bool(settings.certfile) != bool(settings.keyfile):
        logger.warning(
            "only one of --etcd-certfile and --etcd-keyfile is set; no client certificate is sent"
        )
    with_cert = bool(settings.certfile and settings.keyfile)
    return grpc.ssl_channel_credentials(
        root_certificates=_read(settings.cafile, "--etcd-cafile") if settings.cafile else None,
        private_key=_read(settings.keyfile, "--etcd-keyfile") if with_cert else None,
        certificate_chain=_read(settings.certfile, "--etcd-certfile") if with_cert else None,
    )


def status_code(exc: BaseException) -> grpc.StatusCode | None:
    """The gRPC status behind an error (aetcd chains the original as ``__cause__``)."""
    for err in (exc, exc.__cause__):
        if isinstance(err, grpc.aio.AioRpcError):
            return err.code()
    return None


def map_error(exc: BaseException, endpoints: str) -> RegistryError:
    """Our error for a failed etcd call, by what the caller should do next."""
    if isinstance(exc, RegistryError):
        return exc
    code = status_code(exc)
    detail = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
    detail = detail or type(exc).__name__
    if isinstance(exc, (TimeoutError, grpc.aio.UsageError)) or code in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
    ):
        return RegistryUnavailable(f"etcd at {endpoints} is unavailable: {detail}")
    if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
        return RegistryPermissionError(f"etcd at {endpoints} refused the request: {detail}")
    return RegistryError(f"etcd at {endpoints} failed: {detail}")


_CALL_ERRORS = (
    aetcd.ClientError,
    grpc.RpcError,
    grpc.aio.UsageError,
    TimeoutError,
    RegistryUnavailable,
)


@contextlib.contextmanager
def _closed_channel_is_an_outage(endpoints: str) -> Iterator[None]:
    """grpc raises CancelledError in calls on a channel that another failing call
    closed; that is an outage of this call, not a cancellation of the task."""
    try:
        yield
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is None or task.cancelling():
            raise
        raise RegistryUnavailable(f"connection to etcd at {endpoints} was reset") from None


class _Client(aetcd.Client):  # type: ignore[misc]  # aetcd ships no type hints
    """aetcd's client on a channel we build (see the module docstring)."""

    def __init__(
        self, target: str, settings: EtcdSettings, creds: grpc.ChannelCredentials | None
    ) -> None:
        super().__init__(
            host=target,
            username=settings.username or None,
            password=settings.password if settings.username else None,
            timeout=settings.timeout,
            options=dict(settings.channel_options),
        )
        self._target = target
        self._creds = creds
        self._connect_lock = asyncio.Lock()

    async def connect(self) -> None:
        """Open the channel and authenticate; private attributes as aetcd 1.0.0 sets them."""
        if self._connected.is_set():
            return
        async with self._connect_lock:
            if self._connected.is_set():
                return
            options = list(self._options.items())
            if self._creds is None:
                channel = grpc.aio.insecure_channel(self._target, options=options)
            else:
                channel = grpc.aio.secure_channel(self._target, self._creds, options=options)
            self.channel = channel
            try:
                await self.authenticate()
            except BaseException:
                self.channel = None
                await channel.close()
                raise
            self.kvstub = rpc.KVStub(channel)
            self.leasestub = rpc.LeaseStub(channel)
            self.clusterstub = rpc.ClusterStub(channel)
            self.maintenancestub = rpc.MaintenanceStub(channel)
            self._watcher = None  # aetcd's watcher is not used (see module docstring)
            self._connected.set()

    async def authenticate(self) -> None:
        """Get a fresh token (a no-op without a user name)."""
        if self._username is None:
            return
        self.auth_stub = rpc.AuthStub(self.channel)
        request = rpc.AuthenticateRequest(name=self._username, password=self._password)
        try:
            response = await self.auth_stub.Authenticate(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                logger.warning("etcd has authentication disabled; ignoring --etcd-username")
                self.metadata = None
                return
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise
            raise RegistryPermissionError(
                f"etcd rejected user {self._username!r}: {exc.details()}"
            ) from exc
        self.metadata = (("token", response.token),)


class EtcdConnection:
    """One client at a time on the current target; calls with deadline, re-auth, failover."""

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
        self._settings = settings
        self._creds = tls_credentials(settings) if self.tls else None
        self._targets = channel_targets(endpoints, self.tls)
        self._index = 0
        self._client: _Client | None = None
        self._auth_lock = asyncio.Lock()
        self.closed = False
        self.endpoints = settings.endpoints_text()

    @property
    def timeout(self) -> float:  # of one unary call, in seconds
        return self._settings.timeout

    async def call(self, op: Callable[[Any], Awaitable[T]]) -> T:
        """Run ``op(client)``; try every target once on unavailability, re-auth once."""
        failure: RegistryError | None = None
        reauthenticated = False
        tries = 0
        while tries < len(self._targets):
            client = self._current()
            token = client.metadata
            try:
                # A net under grpc's own per-call deadlines: connect + one RPC.
                async with asyncio.timeout(2 * self.timeout + 1):
                    with _closed_channel_is_an_outage(self.endpoints):
                        await client.connect()
                        return await op(client)
            except _CALL_ERRORS as exc:
                code = status_code(exc)
                if code == grpc.StatusCode.UNAUTHENTICATED and not reauthenticated:
                    reauthenticated = True
                    await self._reauthenticate(client, token)
                    continue
                failure = await self.failed(client, exc)
                if not isinstance(failure, RegistryUnavailable):
                    raise failure from exc
                tries += 1
        assert failure is not None
        raise failure

    async def reauthenticate(self) -> None:
        """Fetch a new token for the current client (after etcd forgot the old one)."""
        client = self._current()
        if client.channel is not None:
            await self._reauthenticate(client, client.metadata)

    async def failed(self, client: _Client, exc: BaseException) -> RegistryError:
        """Map ``exc``; after a connection failure, move on to the next target."""
        failure = map_error(exc, self.endpoints)
        if isinstance(failure, RegistryUnavailable) and self._client is client:
            self._client = None
            self._index = (self._index + 1) % len(self._targets)
            logger.debug("etcd target failed (%s); next: %s", failure, self._targets[self._index])
            with contextlib.suppress(*_CALL_ERRORS):
                await client.close()
        return failure

    @contextlib.asynccontextmanager
    async def watch_stream(self) -> AsyncIterator[WatchStream]:
        """A bidirectional Watch stream that fails when the member has no leader."""
        client = self._current()
        try:
            async with asyncio.timeout(2 * self.timeout + 1):
                await client.connect()
        except _CALL_ERRORS as exc:
            raise await self.failed(client, exc) from exc
        metadata = (*(client.metadata or ()), _REQUIRE_LEADER)
        call = rpc.WatchStub(client.channel).Watch(metadata=metadata)
        try:
            yield WatchStream(self, client, call)
        finally:
            call.cancel()

    async def close(self) -> None:
        """Close the channel for good (idempotent); later calls fail."""
        self.closed = True
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(*_CALL_ERRORS):
                await client.close()

    def _current(self) -> _Client:
        if self.closed:
            raise RegistryUnavailable(f"the connection to etcd at {self.endpoints} is closed")
        if self._client is None:
            target = self._targets[self._index]
            self._client = _Client(target, self._settings, self._creds)
        return self._client

    async def _reauthenticate(self, client: _Client, stale: object) -> None:
        async with self._auth_lock:
            if client.metadata is not stale:
                return  # another call already fetched a new token
            logger.info("etcd token no longer valid; authenticating again")
            try:
                async with asyncio.timeout(self.timeout + 1):
                    await client.authenticate()
            except _CALL_ERRORS as exc:
                raise await self.failed(client, exc) from exc


class WatchStream:
    """One open Watch RPC; reads map errors like every other call."""

    def __init__(self, conn: EtcdConnection, client: _Client, call: Any) -> None:
        self._conn = conn
        self._client = client
        self._call = call

    async def create(self, key: bytes, range_end: bytes, start_revision: int) -> Any:
        """Ask for a watch of ``[key, range_end)`` and return etcd's first answer."""
        create = rpc.WatchCreateRequest(key=key, range_end=range_end, start_revision=start_revision)
        try:
            async with asyncio.timeout(self._conn.timeout):
                with _closed_channel_is_an_outage(self._conn.endpoints):
                    await self._call.write(rpc.WatchRequest(create_request=create))
                return await self.read()
        except _CALL_ERRORS as exc:
            raise await self._conn.failed(self._client, exc) from exc

    async def read(self) -> Any:
        """The next WatchResponse; a closed stream counts as unavailability."""
        try:
            with _closed_channel_is_an_outage(self._conn.endpoints):
                response = await self._call.read()
        except _CALL_ERRORS as exc:
            raise await self._conn.failed(self._client, exc) from exc
        if response is grpc.aio.EOF:
            ended = RegistryUnavailable(f"etcd at {self._conn.endpoints} ended the watch stream")
            raise await self._conn.failed(self._client, ended)
        return response
