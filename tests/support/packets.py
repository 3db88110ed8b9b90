"""Packets built by hand for the udp backend's tests, with the obvious slow checksums."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address

TCP_ACK = 0x10
TCP_PSH = 0x08

SRC = IPv4Address("10.4.1.5")
DST = IPv4Address("10.4.2.7")
TIMESTAMPS = b"\x01\x01\x08\x0a" + struct.pack("!II", 1000, 2000)


def word_checksum(data: bytes) -> int:
    """RFC 1071 the slow, obvious way: 16-bit words, end-around carry, complement."""
    if len(data) % 2:
        data += b"\0"
    total = 0
    for (word,) in struct.iter_unpack("!H", data):
        total += word
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def pseudo(src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    return src + dst + struct.pack("!BBH", 0, proto, length)


def tcp_packet(
    payload: bytes,
    *,
    seq: int = 0x10000000,
    flags: int = TCP_ACK | TCP_PSH,
    ident: int = 0x0100,
    options: bytes = TIMESTAMPS,
    partial: bool = False,
    src: IPv4Address = SRC,
    sport: int = 40000,
) -> bytes:
    """TCP/IPv4 with correct checksums, or with the pseudo-header sum only (``partial``)."""
    thl = 20 + len(options)
    tcp = struct.pack("!HHIIBBHHH", sport, 5201, seq, 0xABCDEF01, (thl // 4) << 4, flags, 512, 0, 0)
    tcp += options
    ph = pseudo(src.packed, DST.packed, 6, thl + len(payload))
    check = ~word_checksum(ph) & 0xFFFF if partial else word_checksum(ph + tcp + payload)
    tcp = tcp[:16] + struct.pack("!H", check) + tcp[18:]
    total = 20 + thl + len(payload)
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, total, ident, 0x4000, 64, 6, 0, src.packed, DST.packed
    )
    ip = ip[:10] + struct.pack("!H", word_checksum(ip)) + ip[12:]
    return ip + tcp + payload
