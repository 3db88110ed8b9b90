"""Batching without changing the wire: TCP segmentation and coalescing in userspace.

With ``IFF_VNET_HDR`` and ``TUNSETOFFLOAD(TUN_F_CSUM|TUN_F_TSO4)`` the kernel hands the
TUN reader whole TCP super-packets (up to 64 KiB) behind a 10-byte virtio-net header, and
accepts such super-packets on write. flanneld's peers expect one inner packet per
datagram, with valid checksums, so this module does what a NIC would:

* :func:`segment_tcp4` cuts a super-packet into MSS-sized TCP segments laid end to end,
  each with its own IP total length, IP ID (+1 per segment), IP checksum, TCP sequence
  number, flags (CWR only on the first, FIN and PSH only on the last) and full TCP
  checksum: exactly the layout one ``UDP_SEGMENT`` send turns into one datagram each.
* :func:`coalesce_runs` finds, among the inner packets of one ``UDP_GRO`` receive, runs
  of consecutive segments of one TCP flow that the kernel's own GRO would merge, and
  :func:`merge_headers` turns the first segment's headers into those of the merged
  super-packet, for one TUN write instead of one per segment.
* :func:`complete_checksum` fills in a checksum the kernel left partial (NEEDS_CSUM).

Checksums are summed with ``int.from_bytes(data, "little")``, which CPython converts
about twice as fast as big-endian: multiplying by 256 modulo 0xFFFF swaps the bytes of a
ones'-complement sum, which turns the little-endian sum into the big-endian one.

Rules of this file: pure code, no I/O; functions that build packets write into the
buffer they are given.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from pyflannel.backends.udp.packet import TCP_PROTO, UDP_PROTO, Packet, ipv4_header_checksum

VNET_HDR = struct.Struct("<BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
VNET_HDR_LEN = VNET_HDR.size
F_NEEDS_CSUM = 0x01
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_ECN = 0x80
TCP_CSUM_OFFSET = 16

TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_PSH = 0x08
TCP_ACK = 0x10
TCP_URG = 0x20
TCP_ECE = 0x40
TCP_CWR = 0x80
_LAST_ONLY = TCP_FIN | TCP_PSH
_MERGEABLE = TCP_ACK | TCP_PSH  # flags that may appear on a segment GRO merges
_MAX_COALESCED = 65535  # an IPv4 total length


@dataclass(frozen=True, slots=True)
class VnetHeader:
    """``struct virtio_net_hdr`` (little-endian, as on every host this runs on)."""

    flags: int = 0
    gso_type: int = GSO_NONE
    hdr_len: int = 0
    gso_size: int = 0
    csum_start: int = 0
    csum_offset: int = 0

    @classmethod
    def parse(cls, data: Packet) -> VnetHeader:
        return cls(*VNET_HDR.unpack_from(data))

    def pack_into(self, buffer: bytearray | memoryview, offset: int = 0) -> None:
        VNET_HDR.pack_into(
            buffer,
            offset,
            self.flags,
            self.gso_type,
            self.hdr_len,
            self.gso_size,
            self.csum_start,
            self.csum_offset,
        )


def fast_sum(data: Packet, initial: int = 0) -> int:
    """Ones'-complement sum of ``data`` (big-endian words) plus ``initial``, modulo 0xFFFF.

    The result is congruent to the folded sum; 0 stands for both 0 and 0xFFFF, which
    :func:`finish` resolves.
    """
    return ((int.from_bytes(data, "little") % 0xFFFF) * 256 + initial) % 0xFFFF


def finish(total: int) -> int:
    """The checksum field for a ones'-complement sum residue from :func:`fast_sum`.

    A residue of 0 means a sum of 0xFFFF (data that is not all zero), whose checksum is 0.
    """
    return 0xFFFF - total if total else 0


def pseudo_header_sum(packet: Packet, protocol: int, length: int) -> int:
    """The IPv4 pseudo-header's contribution: source, destination, protocol, L4 length."""
    return (int.from_bytes(packet[12:20], "big") + protocol + length) % 0xFFFF


def complete_checksum(packet: bytearray | memoryview, start: int, offset: int) -> None:
    """Finish a checksum the kernel left partial (virtio NEEDS_CSUM), in place.

    The field at ``start + offset`` holds the folded pseudo-header sum; the checksum is
    the complement of the sum from ``start`` to the end, field included. A UDP checksum
    that comes out 0 is sent as 0xFFFF (0 means "no checksum" for UDP).
    """
    field = start + offset
    check = finish(fast_sum(packet[start:]))
    if check == 0 and packet[9] == UDP_PROTO and offset == 6:
        check = 0xFFFF
    packet[field] = check >> 8
    packet[field + 1] = check & 0xFF


def segment_tcp4(packet: Packet, mss: int, out: memoryview, at: int = 0) -> tuple[int, int]:
    """Cut a TCP/IPv4 super-packet into segments of ``mss`` payload bytes, into ``out``.

    Segments are written back to back from ``out[at]``; all are the same size except
    possibly the last. Returns ``(segment size, bytes written)``. The checksums of the
    input may be partial: every segment gets complete IP and TCP checksums.
    """
    ihl = (packet[0] & 0x0F) << 2
    thl = (packet[ihl + 12] >> 4) << 2
    hlen = ihl + thl
    payload = len(packet) - hlen
    ip_id = packet[4] << 8 | packet[5]
    seq = int.from_bytes(packet[ihl + 4 : ihl + 8], "big")
    flags = packet[ihl + 13]
    pseudo = pseudo_header_sum(packet, TCP_PROTO, 0)
    if at + segmented_size(payload, mss, hlen) > len(out):
        raise ValueError(f"no room for {payload} bytes in segments of {mss} at {at}")
    pos = at
    for index, start in enumerate(range(0, payload, mss)):
        chunk = min(mss, payload - start)
        size = hlen + chunk
        tcp = pos + ihl
        out[pos : pos + hlen] = packet[:hlen]
        out[pos + 2 : pos + 4] = size.to_bytes(2, "big")
        out[pos + 4 : pos + 6] = ((ip_id + index) & 0xFFFF).to_bytes(2, "big")
        out[pos + 10 : pos + 12] = ipv4_header_checksum(out[pos : pos + ihl]).to_bytes(2, "big")
        out[tcp + 4 : tcp + 8] = ((seq + start) & 0xFFFFFFFF).to_bytes(4, "big")
        out[tcp + 13] = _segment_flags(flags, index == 0, start + chunk >= payload)
        out[tcp + 16 : tcp + 18] = b"\0\0"
        out[pos + hlen : pos + size] = packet[hlen + start : hlen + start + chunk]
        total = fast_sum(out[tcp : pos + size], pseudo + thl + chunk)
        out[tcp + 16 : tcp + 18] = finish(total).to_bytes(2, "big")
        pos += size
    return min(hlen + mss, hlen + payload), pos - at


def segmented_size(payload: int, mss: int, hlen: int) -> int:
    """Bytes ``payload`` bytes take once cut into segments of ``mss`` with ``hlen`` headers."""
    return payload + hlen * -(-payload // mss)


def _segment_flags(flags: int, first: bool, last: bool) -> int:
    if not first:
        flags &= ~TCP_CWR
    if not last:
        flags &= ~_LAST_ONLY
    return flags


def flow_key(segment: Packet) -> bytes | None:
    """What must be equal for two TCP/IPv4 segments to merge, or None if this one can't.

    That is the IP header apart from total length, ID and checksum (so version, header
    length, TOS, DF, TTL, protocol, addresses), and the TCP header apart from sequence
    number, flags and checksum (ports, ack, data offset, window, options). Only plain
    ACK segments, possibly with PSH, without IP options or fragmentation, qualify.
    """
    if len(segment) < 40 or segment[0] != 0x45 or segment[9] != TCP_PROTO:
        return None
    if (segment[6] & 0x3F) or segment[7]:  # MF or a fragment offset
        return None
    thl = (segment[32] >> 4) << 2
    flags = segment[33]
    if thl < 20 or 20 + thl > len(segment) or flags & ~_MERGEABLE or not flags & TCP_ACK:
        return None
    return (
        bytes(segment[0:2])
        + bytes(segment[6:10])
        + bytes(segment[12:20])
        + (bytes(segment[20:24]) + bytes(segment[28:33]) + bytes(segment[34:36]))
        + bytes(segment[38 : 20 + thl])
    )


def coalesce_runs(segments: Sequence[Packet]) -> list[tuple[int, int]]:
    """Split ``segments`` (in arrival order) into ``(first index, count)`` runs.

    A run of more than one is a sequence of segments of one flow with contiguous sequence
    numbers, equal payload sizes except for a smaller last one, PSH only on the last, and
    at most 64 KiB once merged. Everything else is a run of one, written as it is.
    """
    runs: list[tuple[int, int]] = []
    index = 0
    while index < len(segments):
        count = _run_length(segments, index)
        runs.append((index, count))
        index += count
    return runs


def _run_length(segments: Sequence[Packet], first: int) -> int:
    head = segments[first]
    key = flow_key(head)
    payload = _payload_len(head)
    if key is None or payload == 0 or head[33] & TCP_PSH:
        return 1
    total = len(head)
    expect = (int.from_bytes(head[24:28], "big") + payload) & 0xFFFFFFFF
    count = 1
    for segment in segments[first + 1 :]:
        size = _payload_len(segment)
        if size == 0 or size > payload or total + size > _MAX_COALESCED:
            break
        if int.from_bytes(segment[24:28], "big") != expect or flow_key(segment) != key:
            break
        count += 1
        total += size
        expect = (expect + size) & 0xFFFFFFFF
        if size < payload or segment[33] & TCP_PSH:
            break
    return count


def _payload_len(segment: Packet) -> int:
    return len(segment) - 20 - ((segment[32] >> 4) << 2)


def merge_headers(first: memoryview, total: int, last_flags: int, mss: int) -> VnetHeader:
    """Turn ``first``'s headers into those of a ``total``-byte super-packet, in place.

    The IP total length and checksum are rewritten, PSH is taken from the last segment,
    and the TCP checksum field gets the pseudo-header sum the kernel expects with
    NEEDS_CSUM. Returns the virtio-net header to write before the super-packet.
    """
    thl = (first[32] >> 4) << 2
    first[2:4] = total.to_bytes(2, "big")
    first[10:12] = ipv4_header_checksum(first[:20]).to_bytes(2, "big")
    first[33] |= last_flags & TCP_PSH
    partial = pseudo_header_sum(first, TCP_PROTO, total - 20) or 0xFFFF
    first[36:38] = partial.to_bytes(2, "big")
    return VnetHeader(F_NEEDS_CSUM, GSO_TCPV4, 20 + thl, mss, 20, TCP_CSUM_OFFSET)
