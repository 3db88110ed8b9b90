"""Leases, their JSON value (``LeaseAttrs``) and lease events.

The JSON codec is byte-exact with flanneld. Field order is struct order, and the
``PublicIPv6`` field exists only in the v3-era format (v0.15+), where it is always
present and ``null`` for IPv4-only hosts:

- v0.28 (etcd v3): ``{"PublicIP":"P","PublicIPv6":null,"BackendType":"vxlan","BackendData":{...}}``
- v0.10 (etcd v2): ``{"PublicIP":"P","BackendType":"vxlan","BackendData":{...}}``

``BackendType`` and ``BackendData`` are omitted when empty, which is how the udp and
alloc backends write ``{"PublicIP":"P"}``. ``BackendData`` is kept as compact JSON
text so a backend can decode it with its own schema.
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from pyflannel.errors import PeerDataError
from pyflannel.model import gojson
from pyflannel.model.net import SubnetKey, parse_ipv4

_FIELDS = ("PublicIP", "PublicIPv6", "BackendType", "BackendData", "BackendV6Data")
# A lease value in one of the forms flanneld writes for IPv4 hosts (see the module
# docstring), with the vxlan BackendData; for these, the BackendData text is exactly
# what decoding and compact re-encoding would give.
_COMMON_VALUE = re.compile(
    r'\{"PublicIP":"([0-9.]{7,15})"(?:,"PublicIPv6":null)?'
    r'(?:,"BackendType":"([a-z-]{1,20})"'
    r'(?:,"BackendData":(\{(?:"VNI":(?:0|[1-9][0-9]{0,8}),)?"VtepMAC":"[0-9a-fA-F:]{17}"\}))?)?\}'
)


class LeaseFormat(enum.Enum):
    """Which flanneld generation's lease JSON to write."""

    V2 = "v2"  # flanneld <= v0.14 on the etcd v2 API: no PublicIPv6 field
    V3 = "v3"  # flanneld >= v0.15 (and every etcd v3 release): PublicIPv6 always present


@dataclass(frozen=True, slots=True)
class LeaseAttrs:
    """The value of a lease key: who holds the subnet and how to reach it."""

    public_ip: IPv4Address
    backend_type: str = ""
    backend_data: str | None = None  # compact JSON text, or None when absent
    public_ipv6: str | None = None
    backend_v6_data: str | None = None

    def backend_json(self) -> Any:
        """Decoded ``BackendData`` (None when absent)."""
        return None if self.backend_data is None else json.loads(self.backend_data)


@dataclass(frozen=True, slots=True)
class Lease:
    """A subnet held by a host until ``expiration`` (unix seconds; None = reservation)."""

    key: SubnetKey
    attrs: LeaseAttrs
    expiration: float | None

    @property
    def subnet(self) -> IPv4Network:
        """The IPv4 subnet this lease holds."""
        return self.key.subnet


class EventKind(enum.Enum):
    """What happened to a lease."""

    ADDED = "added"
    REMOVED = "removed"


@dataclass(frozen=True, slots=True)
class LeaseEvent:
    """A lease was added (created, renewed or changed) or removed (deleted, expired)."""

    kind: EventKind
    lease: Lease


@dataclass(frozen=True, slots=True)
class WatchBatch:
    """What a registry watch yields: either incremental events or a full snapshot.

    A snapshot replaces everything known before (it follows a compaction, an
    "event index cleared" error or a reconnect that could not resume).
    """

    revision: int
    events: tuple[LeaseEvent, ...] = ()
    snapshot: tuple[Lease, ...] | None = None


def encode_attrs(attrs: LeaseAttrs, fmt: LeaseFormat) -> str:
    """Render a lease value exactly as flanneld of the given generation does."""
    parts = [f'"PublicIP":{gojson.dumps(str(attrs.public_ip))}']
    if fmt is LeaseFormat.V3:
        parts.append(f'"PublicIPv6":{gojson.dumps(attrs.public_ipv6)}')
    if attrs.backend_type:
        parts.append(f'"BackendType":{gojson.dumps(attrs.backend_type)}')
    if attrs.backend_data is not None:
        parts.append(f'"BackendData":{attrs.backend_data}')
    if attrs.backend_v6_data is not None and fmt is LeaseFormat.V3:
        parts.append(f'"BackendV6Data":{attrs.backend_v6_data}')
    return "{" + ",".join(parts) + "}"


def decode_attrs(text: str | bytes) -> LeaseAttrs:
    """Parse a lease value written by any flanneld generation or by pyflannel.

    Keys match case-insensitively and unknown keys are ignored, as in Go. Anything
    that is not a usable lease raises :class:`PeerDataError`.

    A value exactly as flanneld writes it is read with one regular expression (every
    watch event carries one); anything else goes through the JSON decoder, with the
    same result.
    """
    common = _COMMON_VALUE.fullmatch(
        text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    )
    if common is not None:
        public_ip, backend_type, backend_data = common.groups()
        return LeaseAttrs(_public_ip(public_ip), backend_type or "", backend_data)
    return _decode_json(text)


def _decode_json(text: str | bytes) -> LeaseAttrs:
    """:func:`decode_attrs` for any value, through the JSON decoder."""
    try:
        obj = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PeerDataError(f"lease value is not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise PeerDataError("lease value is not a JSON object")
    fields = gojson.fold_keys(obj, _FIELDS)
    return LeaseAttrs(
        public_ip=_public_ip(fields.get("PublicIP")),
        backend_type=_optional_str(fields, "BackendType") or "",
        backend_data=_raw(fields, "BackendData"),
        public_ipv6=_optional_str(fields, "PublicIPv6"),
        backend_v6_data=_raw(fields, "BackendV6Data"),
    )


def _public_ip(value: object) -> IPv4Address:
    if not isinstance(value, str):
        raise PeerDataError(f"lease PublicIP {value!r} is not a string")
    try:
        return parse_ipv4(value)
    except ValueError as exc:
        raise PeerDataError(f"lease PublicIP {value!r} is not an IPv4 address") from exc


def _optional_str(fields: dict[str, Any], name: str) -> str | None:
    value = fields.get(name)
    if value is None or isinstance(value, str):
        return value
    raise PeerDataError(f"lease {name} {value!r} is not a string")


def _raw(fields: dict[str, Any], name: str) -> str | None:
    value = fields.get(name)
    return None if value is None else gojson.dumps(value)
