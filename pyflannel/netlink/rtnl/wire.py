"""Netlink framing: message headers, attributes, dumps and error answers.

Everything is in host byte order, as netlink is. The functions here know nothing of
routes or links; :mod:`.entries`, :mod:`.links` and :mod:`.addrs` build their
payloads with :func:`attr` and :func:`nested` and read them back with
:func:`attributes` (or a walk of their own where speed matters).

Rules of this file: bytes in, bytes or values out; no I/O.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from typing import NamedTuple, TypeVar

NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP_INTR = 0x10
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLM_F_DUMP = 0x300
NLM_F_CAPPED = 0x100  # in an error answer: the request was not echoed in full
NLM_F_ACK_TLVS = 0x200  # in an error answer: extended-ack attributes follow
NLMSGERR_ATTR_MSG = 1
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED and NLA_F_NET_BYTEORDER

Buffer = bytes | bytearray | memoryview
T = TypeVar("T")
HEADER = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
ATTR = struct.Struct("=HH")  # nlattr: len, type
U8 = struct.Struct("=B")
U32 = struct.Struct("=I")
I32 = struct.Struct("=i")
BE16 = struct.Struct("!H")


class Request(NamedTuple):
    """One netlink request without its header's length, sequence number and port."""

    msg_type: int
    flags: int
    body: bytes

    def frame(self, seq: int, extra_flags: int = 0) -> bytes:
        """The complete message with ``seq`` and NLM_F_REQUEST set."""
        flags = self.flags | extra_flags | NLM_F_REQUEST
        return HEADER.pack(HEADER.size + len(self.body), self.msg_type, flags, seq, 0) + self.body


def attr(kind: int, data: bytes) -> bytes:
    """One attribute, padded to four bytes."""
    length = ATTR.size + len(data)
    return ATTR.pack(length, kind) + data + b"\0" * (-length % 4)


def nested(kind: int, *children: bytes) -> bytes:
    """An attribute holding other attributes (without NLA_F_NESTED, as iproute2 sends it)."""
    return attr(kind, b"".join(children))


def attributes(data: Buffer, offset: int, end: int) -> dict[int, bytes]:
    """The attributes between ``offset`` and ``end``, by type (the last one wins)."""
    found: dict[int, bytes] = {}
    while offset + ATTR.size <= end:
        length, kind = ATTR.unpack_from(data, offset)
        if length < ATTR.size or offset + length > end:
            break
        found[kind & NLA_TYPE_MASK] = bytes(data[offset + ATTR.size : offset + length])
        offset += (length + 3) & ~3
    return found


def text(value: bytes | None) -> str:
    """A NUL-terminated string attribute ("" when absent)."""
    return value.split(b"\0", 1)[0].decode(errors="replace") if value else ""


class Message(NamedTuple):
    """A received netlink message: header fields and the payload's place in the buffer.

    A named tuple, because a dump yields thousands of them.
    """

    msg_type: int
    flags: int
    seq: int
    pid: int
    start: int  # payload offset
    end: int

    def error_code(self, data: Buffer) -> int:
        """For NLMSG_ERROR: 0 for an acknowledgement, else a positive errno."""
        code: int = I32.unpack_from(data, self.start)[0]
        return -code

    def error_text(self, data: Buffer) -> str:
        """For NLMSG_ERROR: the kernel's explanation (extended ack), or ""."""
        if not self.flags & NLM_F_ACK_TLVS or self.end - self.start < I32.size + HEADER.size:
            return ""
        echoed = HEADER.size
        if not self.flags & NLM_F_CAPPED:
            echoed = HEADER.unpack_from(data, self.start + I32.size)[0]
        tlvs = self.start + I32.size + ((echoed + 3) & ~3)
        return text(attributes(data, tlvs, self.end).get(NLMSGERR_ATTR_MSG))


def messages(data: Buffer) -> Iterator[Message]:
    """The messages in one datagram from a netlink socket."""
    offset = 0
    size = len(data)
    while offset + HEADER.size <= size:
        length, msg_type, flags, seq, pid = HEADER.unpack_from(data, offset)
        if length < HEADER.size or offset + length > size:
            return
        yield Message(msg_type, flags, seq, pid, offset + HEADER.size, offset + length)
        offset += (length + 3) & ~3


class DumpRefused(Exception):
    """The kernel answered a dump request with an error (``code``: a positive errno)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def read_dump(
    data: Buffer,
    seq: int,
    decode: tuple[
        Callable[[Buffer, int, int], T | None], Callable[[Buffer, int, int], bytes | None]
    ],
    previous: dict[bytes, T],
    into: tuple[list[T], dict[bytes, T]],
) -> tuple[bool, bool]:
    """Decode one datagram of the dump ``seq``; return (finished, interrupted).

    ``decode`` is (parse, fingerprint); entries go to ``into`` (the list of entries and
    the fingerprint → entry map for the next dump). A message whose fingerprint is in
    ``previous`` is not parsed again. The loop is written out (no generator, no message
    objects) because a resync decodes tens of thousands of messages.
    """
    (parse, fingerprint), (found, parsed) = decode, into
    offset, size, interrupted = 0, len(data), False
    while offset + HEADER.size <= size:
        length, msg_type, flags, msg_seq, _ = HEADER.unpack_from(data, offset)
        if length < HEADER.size or offset + length > size:
            break
        start, end = offset + HEADER.size, offset + length
        offset += (length + 3) & ~3
        if msg_seq != seq:
            continue
        if msg_type == NLMSG_DONE:
            return True, interrupted
        if msg_type == NLMSG_ERROR:
            raise DumpRefused(-I32.unpack_from(data, start)[0])
        interrupted |= bool(flags & NLM_F_DUMP_INTR)
        key = fingerprint(data, start, end)
        item = previous.get(key) if key is not None else None
        if item is None:
            item = parse(data, start, end)
        if item is not None:
            found.append(item)
            if key is not None:
                parsed[key] = item
    return False, interrupted


def no_fingerprint(data: Buffer, start: int, end: int) -> bytes | None:
    """For dumps whose entries are parsed afresh every time (links, addresses)."""
    return None
