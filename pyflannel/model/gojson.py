"""JSON as Go's ``encoding/json`` writes and reads it.

flanneld marshals lease values with ``json.Marshal``: no spaces, struct field order,
``<``, ``>`` and ``&`` escaped as ``\\u003c`` etc., U+2028/U+2029 escaped, other
non-ASCII left as UTF-8. Decoding matches object keys to struct fields without regard
to case, the last duplicate winning. Both matter for byte-exact interop.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any

_GO_ESCAPES = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}


_ESCAPE_TABLE = str.maketrans(_GO_ESCAPES)
# One encoder for every call: json.dumps with options builds a new one each time.
_ENCODE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def dumps(value: Any) -> str:
    """Serialise ``value`` compactly, escaping exactly as Go's json.Marshal does."""
    return _ENCODE(value).translate(_ESCAPE_TABLE)


@functools.lru_cache(maxsize=32)
def _folds(fields: tuple[str, ...]) -> dict[str, str]:
    return {f.casefold(): f for f in fields}


def fold_keys(obj: Mapping[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    """Map an object's keys onto ``fields`` case-insensitively, as Go's decoder does.

    Keys that match no field are ignored; when several keys fold to the same field the
    last one wins. The result is keyed by the canonical field name.
    """
    by_fold = _folds(fields)
    out: dict[str, Any] = {}
    for key, value in obj.items():
        field = by_fold.get(key.casefold())
        if field is not None:
            out[field] = value
    return out
