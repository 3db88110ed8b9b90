"""Moving the calling thread into a test namespace (and back).

``setns`` changes only the calling thread, so a test runs kernel-facing code on a
thread that joined the namespace, and every socket that thread opens (netlink, UDP,
``/dev/net/tun``) lives there. Python 3.11 has no ``os.setns``, hence libc.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def join(name: str) -> None:
    """Move the calling thread into the named namespace (it must exist: never creates)."""
    fd = os.open(f"/var/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        join_fd(fd)
    finally:
        os.close(fd)


def join_fd(fd: int) -> None:
    """Move the calling thread into the namespace ``fd`` refers to, e.g. one saved
    from ``/proc/thread-self/ns/net`` to come back to."""
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def run_in(
    name: str,
    make: Callable[[], Coroutine[Any, Any, T]],
    *,
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
    timeout: float = 60.0,
) -> T:
    """Run ``make()`` on an event loop of its own, in a thread that joined the named
    namespace; return its result or raise its error."""
    box: dict[str, Any] = {}

    def worker() -> None:
        try:
            join(name)
            with asyncio.Runner(loop_factory=loop_factory) as runner:
                box["result"] = runner.run(make())
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=worker, name=f"in-{name}")
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"the work in {name} did not finish in {timeout:g} s"
    if "error" in box:
        raise box["error"]
    result: T = box["result"]
    return result
