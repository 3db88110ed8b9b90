"""Running without Python's ``ssl`` module when etcd is reached over plain HTTP.

Loading ``ssl`` maps and initialises OpenSSL, about 5 MB of the daemon's memory (a
sixth of it); asyncio imports it whenever it can, whether TLS is used or not. So when
the flags ask for no TLS, the entry point makes ``import ssl`` fail before anything
imports asyncio (asyncio then just lacks TLS support), and the modules that mention
TLS errors look for ``ssl`` only if it is loaded: without it, no such error can occur.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import cast


def forgo_ssl() -> None:
    """Make every later ``import ssl`` fail (a no-op once ``ssl`` is loaded)."""
    cast("dict[str, ModuleType | None]", sys.modules).setdefault("ssl", None)


def loaded_ssl() -> ModuleType | None:
    """The ``ssl`` module if it is loaded, else None."""
    return sys.modules.get("ssl")
