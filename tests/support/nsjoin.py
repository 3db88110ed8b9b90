"""Moving the calling thread into a test namespace (and back).

``setns`` changes only the calling thread, so a test runs kernel-facing code on a
thread that joined the namespace, and every socket that thread opens (netlink, UDP,
``/dev/net/tun``) lives there. Python 3.11 has no ``os.setns``, hence libc.
"""

from __future__ import annotations

import ctypes
import os

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
