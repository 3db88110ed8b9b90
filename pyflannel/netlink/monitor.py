"""Kernel notifications that may mean "someone changed our entries": a prompt to resync.

A socket subscribed to the link, neighbour and IPv4 route groups hears about every
such change on the host. While a backend programs thousands of peers, its own
additions would wake it thousands of times; a classic BPF filter attached to the
socket lets through only deletions and link changes, so the kernel drops the rest
before Python sees them and an idle daemon stays idle.

The monitor does not decide anything: it yields :class:`~pyflannel.netlink.rtnl.Notice`
batches, or None when the kernel dropped notifications (socket overrun), which the
consumer must treat as "anything may have changed".
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import socket
import sys
from collections.abc import AsyncIterator

from pyflannel.netlink import rtnl
from pyflannel.netlink.rtnl.transport import route_socket

logger = logging.getLogger(__name__)

RTMGRP_LINK = 0x1
RTMGRP_NEIGH = 0x4
RTMGRP_IPV4_ROUTE = 0x40
SO_ATTACH_FILTER = 26
RECEIVE_BUFFER = 1 << 20
PASSED_TYPES = (rtnl.RTM_NEWLINK, rtnl.RTM_DELLINK, rtnl.RTM_DELROUTE, rtnl.RTM_DELNEIGH)

# Classic BPF opcodes.
_LDB_ABS = 0x30  # BPF_LD | BPF_B | BPF_ABS
_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_RET_K = 0x06  # BPF_RET | BPF_K


class _Insn(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


class _Program(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_Insn))]


def _filter_program() -> list[tuple[int, int, int, int]]:
    """Accept a notification when its message type is one of PASSED_TYPES.

    Every type fits in one byte, so loading the low-order byte of ``nlmsg_type``
    (host byte order) is enough; the high byte is always zero for these groups.
    """
    low_byte = 4 if sys.byteorder == "little" else 5
    count = len(PASSED_TYPES)
    program = [(_LDB_ABS, 0, 0, low_byte)]
    for i, msg_type in enumerate(PASSED_TYPES):
        program.append((_JEQ_K, count - i, 0, msg_type))  # jump to "accept"
    program += [(_RET_K, 0, 0, 0), (_RET_K, 0, 0, 0xFFFF)]
    return program


def _attach_filter(sock: socket.socket) -> None:
    program = _filter_program()
    insns = (_Insn * len(program))(*(_Insn(*insn) for insn in program))
    fprog = _Program(len(program), ctypes.cast(insns, ctypes.POINTER(_Insn)))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, bytes(fprog))  # the kernel copies it


class NetlinkMonitor:
    """Deletions of routes and neighbours, and link changes, as they happen."""

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        self._buffer = bytearray(64 << 10)

    def open(self) -> None:
        """Subscribe (in the calling thread's network namespace)."""
        sock = route_socket()
        try:
            _attach_filter(sock)
        except OSError as exc:  # without it the monitor still works, just wakes more often
            logger.debug("no BPF filter on the netlink monitor: %s", exc)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        sock.bind((0, RTMGRP_LINK | RTMGRP_NEIGH | RTMGRP_IPV4_ROUTE))
        self._sock = sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def notices(self) -> AsyncIterator[list[rtnl.Notice] | None]:
        """Each datagram's notices; None after an overrun (some were lost)."""
        loop = asyncio.get_running_loop()
        while self._sock is not None:
            try:
                size = await loop.sock_recv_into(self._sock, self._buffer)
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                yield None
                continue
            data = memoryview(self._buffer)[:size]
            batch = [rtnl.parse_notice(data, msg) for msg in rtnl.messages(data)]
            yield [notice for notice in batch if notice is not None]
