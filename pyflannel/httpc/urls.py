"""Request targets, form bodies and basic auth for :mod:`pyflannel.httpc`: pure code.

etcd's v2 API takes a key as the URL path, options as a query string and values as
``application/x-www-form-urlencoded`` bodies. The encodings are the ones common
Python HTTP clients use, so the bytes on the wire do not change with the client: a
path keeps every printable character but the WHATWG path percent-encode set (and
``%``, so that a key is never read as an escape), and queries and forms are
Python's ``urlencode`` (``+`` for a space, only ``-._~`` and alphanumerics left as
they are).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from urllib.parse import urlencode

# Printable ASCII a path may carry as is; "%" is not among them, so a key is sent as
# the key it is, never read as an escape.
_PATH_KEPT = frozenset(map(chr, range(0x21, 0x7F))) - set('"#<>?`{}%')


def quote_path(path: str) -> str:
    """``path`` with what cannot stand in a request path percent-encoded (as UTF-8)."""
    if all(char in _PATH_KEPT for char in path):
        return path
    return "".join(char if char in _PATH_KEPT else _escape(char) for char in path)


def request_target(path: str, query: Mapping[str, str] | None = None) -> str:
    """The request target for ``path`` and the ``query`` parameters (in their order)."""
    target = quote_path(path)
    return f"{target}?{urlencode(query)}" if query else target


def form_body(fields: Mapping[str, str]) -> bytes:
    """An ``application/x-www-form-urlencoded`` body, fields in their order."""
    return urlencode(fields).encode("ascii")


def basic_auth(username: str, password: str) -> tuple[str, str]:
    """The ``Authorization`` header of HTTP basic auth (RFC 7617, UTF-8)."""
    token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
    return ("Authorization", f"Basic {token}")


def _escape(char: str) -> str:
    return "".join(f"%{byte:02X}" for byte in char.encode())
