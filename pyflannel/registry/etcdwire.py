"""The JSON of etcd's v3 gateway: request bodies, answers and errors. Pure code.

etcd (3.3 and later) serves every v3 RPC on its client port as ``POST
/v3/<service>/<method>`` with the protobuf message as JSON, by grpc-gateway's rules:
bytes are base64, 64-bit integers are strings, enum values are names, and a field
holding its zero value is left out (a PUT event has no ``type``, a key without an
etcd lease no ``lease``, a Txn whose compare failed no ``succeeded``). An error is
``{"error", "code", "message"}`` with the gRPC status code; a streamed answer (the
watch) is one ``{"result": ...}`` or ``{"error": {...}}`` per line. The data is the
same whichever API wrote it, so flanneld's gRPC client and this one share a cluster.

Rules of this file: no I/O. Whatever in an answer lacks the expected shape raises
:class:`MalformedAnswer`, which the connection treats as an unusable member.
"""

from __future__ import annotations

import binascii
import contextlib
import dataclasses
import json
from collections.abc import Iterator, Mapping
from typing import Any

from pyflannel.errors import RegistryError, RegistryPermissionError, RegistryUnavailable

# gRPC status codes (google.golang.org/grpc/codes) that etcd's errors carry.
CANCELLED = 1
INVALID_ARGUMENT = 3
DEADLINE_EXCEEDED = 4
PERMISSION_DENIED = 7
RESOURCE_EXHAUSTED = 8
FAILED_PRECONDITION = 9
UNAVAILABLE = 14
UNAUTHENTICATED = 16
_TRANSIENT = frozenset({CANCELLED, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, UNAVAILABLE})
# etcd answers this (INVALID_ARGUMENT) to a request without a token once auth is on.
_NO_USER = "etcdserver: user name is empty"
_VISIBLE_ASCII = frozenset(map(chr, range(0x21, 0x7F)))


class MalformedAnswer(ValueError):
    """An answer that is not what etcd's gateway sends."""


class InvalidToken(RegistryPermissionError):
    """etcd did not accept the auth token (it restarted, or the token expired): get a
    new one and try again."""


@dataclasses.dataclass(frozen=True, slots=True)
class KeyValue:
    """The fields of an etcd ``KeyValue`` the registries use."""

    key: bytes
    value: bytes
    lease: int  # etcd lease ID, 0 for none
    mod_revision: int


@dataclasses.dataclass(frozen=True, slots=True)
class WatchEvent:
    """One change: a put of ``kv`` or (``deleted``) its removal."""

    deleted: bool
    kv: KeyValue


@dataclasses.dataclass(frozen=True, slots=True)
class WatchResponse:
    """One message of a watch stream."""

    revision: int  # of the header: the store's revision when etcd sent it
    events: tuple[WatchEvent, ...] = ()
    created: bool = False
    canceled: bool = False
    compact_revision: int = 0
    cancel_reason: str = ""


def b64(data: bytes) -> str:
    """A bytes field for a request."""
    return binascii.b2a_base64(data, newline=False).decode("ascii")


def prefix_end(prefix: bytes) -> bytes:
    """The range end that makes ``[prefix, end)`` cover every key with the prefix."""
    return prefix[:-1] + bytes([prefix[-1] + 1])


def range_request(key: bytes, range_end: bytes = b"") -> dict[str, Any]:
    body = {"key": b64(key)}
    if range_end:
        body["range_end"] = b64(range_end)
    return body


def put_request(key: bytes, value: bytes, lease: int = 0) -> dict[str, Any]:
    body = {"key": b64(key), "value": b64(value)}
    if lease:
        body["lease"] = str(lease)
    return body


def create_request(key: bytes, value: bytes, lease: int) -> dict[str, Any]:
    """``Txn(Version(key) == 0) Then Put(key, value, lease)``: create only if absent."""
    compare = {"target": "VERSION", "key": b64(key), "version": "0", "result": "EQUAL"}
    return {"compare": [compare], "success": [{"request_put": put_request(key, value, lease)}]}


def delete_request(key: bytes) -> dict[str, Any]:
    return {"key": b64(key)}


def grant_request(ttl: int) -> dict[str, Any]:
    return {"TTL": str(ttl)}


def lease_request(lease_id: int) -> dict[str, Any]:
    """The body of a revoke or a time-to-live lookup."""
    return {"ID": str(lease_id)}


def auth_request(name: str, password: str) -> dict[str, Any]:
    return {"name": name, "password": password}


def watch_request(key: bytes, range_end: bytes, start_revision: int) -> dict[str, Any]:
    create = {"key": b64(key), "range_end": b64(range_end), "start_revision": str(start_revision)}
    return {"create_request": create}


@contextlib.contextmanager
def _expecting(what: str) -> Iterator[None]:
    """Turn any shape mismatch inside into :class:`MalformedAnswer`."""
    try:
        yield
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise MalformedAnswer(f"malformed {what}: {type(exc).__name__}: {exc}") from exc


def _kv(kv: Any) -> KeyValue:
    return KeyValue(
        binascii.a2b_base64(kv["key"]),
        binascii.a2b_base64(kv.get("value", "")),
        int(kv.get("lease", 0)),
        int(kv.get("mod_revision", 0)),
    )


def _revision(body: Any) -> int:
    return int(body["header"].get("revision", 0))


def parse_range(body: Any) -> tuple[list[KeyValue], int]:
    """The keys of a Range answer and the revision it reflects."""
    with _expecting("range answer"):
        return [_kv(kv) for kv in body.get("kvs", ())], _revision(body)


def parse_txn(body: Any) -> bool:
    """Whether a Txn's comparisons held."""
    with _expecting("txn answer"):
        return _flag(body.get("succeeded", False))


def parse_grant(body: Any) -> tuple[int, int]:
    """The ID and TTL of a granted lease."""
    with _expecting("lease grant answer"):
        if body.get("error"):
            raise ValueError(body["error"])
        return int(body["ID"]), int(body["TTL"])


def parse_ttl(body: Any) -> int:
    """A lease's remaining TTL (-1 once it is gone)."""
    with _expecting("lease time-to-live answer"):
        return int(body.get("TTL", 0))


def parse_token(body: Any) -> str:
    """The token an Authenticate answer carries."""
    with _expecting("authenticate answer"):
        token = body["token"]
        # It goes into a header: visible ASCII only (simple tokens and JWTs are).
        if not isinstance(token, str) or not token or not _VISIBLE_ASCII.issuperset(token):
            raise ValueError(f"not a token: {token!r:.80}")
        return token


def parse_watch(message: Any, where: str) -> WatchResponse:
    """One streamed watch message; an error message raises the matching error."""
    with _expecting("watch message"):
        result = message.get("result")
        if result is None:
            raise _stream_error(message["error"], where)
        events = tuple(
            WatchEvent(ev.get("type", "PUT") in ("DELETE", 1), _kv(ev["kv"]))
            for ev in result.get("events", ())
        )
        return WatchResponse(
            revision=_revision(result),
            events=events,
            created=_flag(result.get("created", False)),
            canceled=_flag(result.get("canceled", False)),
            compact_revision=int(result.get("compact_revision", 0)),
            cancel_reason=str(result.get("cancel_reason", "")),
        )


def _flag(value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, got {value!r}")
    return value


def _stream_error(error: Any, where: str) -> RegistryError:
    """The error of an ``{"error": {...}}`` stream message."""
    if not isinstance(error, Mapping):
        raise TypeError("error is not an object")
    code = error.get("grpc_code", error.get("code"))
    return error_for(code if isinstance(code, int) else None, str(error.get("message")), where)


def error_status(body: bytes) -> tuple[int | None, str]:
    """The gRPC code and message of an error answer; None and the text itself for a
    body that is not the gateway's (a proxy's page, a server that is not etcd)."""
    with contextlib.suppress(ValueError):
        parsed = json.loads(body)
        if isinstance(parsed, Mapping) and isinstance(parsed.get("code"), int):
            message = parsed.get("message") or parsed.get("error") or "no message"
            return parsed["code"], str(message)
    return None, body[:200].decode("utf-8", "replace").strip() or "no body"


def gateway_lost_etcd(body: bytes) -> bool:
    """Whether an error answer comes from the gateway failing to reach etcd's own gRPC
    server (etcd's errors all start with ``etcdserver:``; this one is the gRPC client's).
    Under TLS with ``--client-cert-auth`` that is a server certificate the gateway
    cannot use as a client certificate (see :data:`GATEWAY_TLS_HINT`)."""
    code, message = error_status(body)
    return code == UNAVAILABLE and not message.startswith("etcdserver:")


GATEWAY_TLS_HINT = (
    " (etcd's JSON gateway could not reach etcd itself: with --client-cert-auth, etcd"
    " 3.4 uses its server certificate as a client certificate for that, so the"
    " certificate needs the clientAuth extended key usage too)"
)


def answer_error(status: int, body: bytes, where: str) -> RegistryError:
    """The error an answer with HTTP status ``status`` stands for."""
    code, message = error_status(body)
    if code is not None:
        return error_for(code, message, where)
    if status >= 500 or status == 429:
        return RegistryUnavailable(f"etcd at {where} is unavailable: HTTP {status}: {message}")
    if status == 404:
        return RegistryError(
            f"{where} does not serve the etcd v3 API (etcd 3.3 or later answers POST /v3/...)"
        )
    return RegistryError(f"etcd at {where} failed: HTTP {status}: {message}")


def error_for(code: int | None, message: str, where: str) -> RegistryError:
    """Our error for a gRPC status, by what the caller should do next."""
    if code in _TRANSIENT:
        return RegistryUnavailable(f"etcd at {where} is unavailable: {message}")
    if code == UNAUTHENTICATED or message == _NO_USER:
        return InvalidToken(f"etcd at {where} refused the request: {message}")
    if code == PERMISSION_DENIED:
        return RegistryPermissionError(f"etcd at {where} refused the request: {message}")
    return RegistryError(f"etcd at {where} failed: {message}")


def cancel_error(reason: str, where: str) -> RegistryError:
    """The error for a watch etcd cancelled. The reason is only available as text
    (etcd's Go client reads it the same way)."""
    reason = reason or "no reason given"
    if "invalid auth token" in reason or "Unauthenticated" in reason:
        return InvalidToken(f"etcd at {where} cancelled the watch: {reason}")
    if "permission denied" in reason:
        return RegistryPermissionError(f"etcd at {where} cancelled the watch: {reason}")
    return RegistryUnavailable(f"etcd at {where} cancelled the watch: {reason}")
