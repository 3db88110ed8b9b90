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

import functools
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

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
_pack_len_id = struct.Struct("!HH").pack_into
_pack_u16 = struct.Struct("!H").pack_into
_pack_u32 = struct.Struct("!I").pack_into
_KEY_MASKS: dict[int, int] = {}
_FOLLOWER_MASKS: dict[int, tuple[int, int, int]] = {}


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
    input may be partial: every segment gets complete IP and TCP checksums, computed from
    the sums of the unchanging header fields plus those of the fields that change.
    """
    ihl = (packet[0] & 0x0F) << 2
    thl = (packet[ihl + 12] >> 4) << 2
    hlen = ihl + thl
    payload = len(packet) - hlen
    if payload <= 0 or at + segmented_size(payload, mss, hlen) > len(out):
        raise ValueError(f"no room for {payload} bytes in segments of {mss} at {at}")
    header, ip_base, tcp_base = _template(packet, ihl)
    ip_id = packet[4] << 8 | packet[5]
    seq = int.from_bytes(packet[ihl + 4 : ihl + 8], "big")
    last = (payload - 1) // mss
    flags = _flag_sequence(packet[ihl + 13], last)
    pos = at
    for index in range(last + 1):
        start = hlen + index * mss
        chunk = mss if index < last else len(packet) - start
        segment = Segment(
            packet[start : start + chunk],
            (ip_id + index) & 0xFFFF,
            (seq + start - hlen) & 0xFFFFFFFF,
            flags[0 if index == 0 else 2 if index == last else 1],
        )
        pos += write_segment(out, pos, (header, ip_base, tcp_base), segment)
    return hlen + min(mss, payload), pos - at


class Segment(NamedTuple):
    """What sets one segment apart from the others of its super-packet."""

    body: Packet  # its payload
    ident: int  # IP ID
    number: int  # TCP sequence number
    bits: int  # TCP flags


def write_segment(
    out: memoryview, pos: int, template: tuple[bytearray, int, int], segment: Segment
) -> int:
    """Write one segment at ``out[pos]``: the :func:`_template` headers with the
    segment's own fields and both checksums, then its payload. Returns its size."""
    header, ip_base, tcp_base = template
    hlen = len(header)
    ihl = (header[0] & 0x0F) << 2
    body = segment.body
    size = hlen + len(body)
    out[pos : pos + hlen] = header
    out[pos + hlen : pos + size] = body
    ip_sum = (ip_base + size + segment.ident) % 0xFFFF
    _pack_len_id(out, pos + 2, size, segment.ident)
    _pack_u16(out, pos + 10, 0xFFFF - ip_sum if ip_sum else 0)
    number = segment.number
    tcp_sum = (int.from_bytes(body, "little") % 0xFFFF) << 8
    tcp_sum += tcp_base + (number >> 16) + (number & 0xFFFF) + segment.bits + len(body)
    tcp_sum %= 0xFFFF
    _pack_u32(out, pos + ihl + 4, number)
    out[pos + ihl + 13] = segment.bits
    _pack_u16(out, pos + ihl + 16, 0xFFFF - tcp_sum if tcp_sum else 0)
    return size


def _template(packet: Packet, ihl: int) -> tuple[bytearray, int, int]:
    """The headers with every per-segment field zeroed, and the sums of what remains.

    The TCP sum includes the pseudo-header, whose length field is counted for the TCP
    header here; each segment adds its payload length.
    """
    thl = (packet[ihl + 12] >> 4) << 2
    header = bytearray(packet[: ihl + thl])
    header[2:6] = header[ihl + 4 : ihl + 8] = b"\0\0\0\0"  # length, ID; sequence number
    header[10:12] = header[ihl + 16 : ihl + 18] = b"\0\0"  # both checksums
    header[ihl + 13] = 0  # flags
    ip_base = int.from_bytes(header[:ihl], "big") % 0xFFFF
    tcp_base = int.from_bytes(header[ihl:], "big") + pseudo_header_sum(packet, TCP_PROTO, thl)
    return header, ip_base, tcp_base % 0xFFFF


def _flag_sequence(flags: int, last: int) -> tuple[int, int, int]:
    """TCP flags for the first, middle and last segments (as Linux's tcp_gso_segment)."""
    if last == 0:
        return flags, flags, flags
    return flags & ~_LAST_ONLY, flags & ~(_LAST_ONLY | TCP_CWR), flags & ~TCP_CWR


def segmented_size(payload: int, mss: int, hlen: int) -> int:
    """Bytes ``payload`` bytes take once cut into segments of ``mss`` with ``hlen`` headers."""
    return payload + hlen * -(-payload // mss)


def flow_key(segment: Packet) -> int | None:
    """What must be equal for two TCP/IPv4 segments to merge, or None if this one can't.

    That is the IP header apart from total length, ID and checksum (so version, header
    length, TOS, DF, TTL, protocol, addresses), and the TCP header apart from sequence
    number, flags and checksum (ports, ack, data offset, window, options): the headers
    as one integer with those fields masked out. Only plain ACK segments, possibly with
    PSH, without IP options or fragmentation, qualify.
    """
    if len(segment) < 40 or segment[0] != 0x45 or segment[9] != TCP_PROTO:
        return None
    if (segment[6] & 0x3F) or segment[7]:  # MF or a fragment offset
        return None
    hlen = 20 + ((segment[32] >> 4) << 2)
    flags = segment[33]
    if hlen < 40 or hlen > len(segment) or flags & ~_MERGEABLE or not flags & TCP_ACK:
        return None
    return int.from_bytes(segment[:hlen], "big") & _key_mask(hlen)


def _key_mask(hlen: int) -> int:
    mask = _KEY_MASKS.get(hlen)
    if mask is None:
        keep = bytearray(b"\xff" * hlen)
        for begin, end in ((2, 6), (10, 12), (24, 28), (33, 34), (36, 38)):
            keep[begin:end] = bytes(end - begin)
        mask = _KEY_MASKS[hlen] = int.from_bytes(keep, "big")
    return mask


def coalesce_runs(segments: Sequence[Packet]) -> list[tuple[int, int]]:
    """Split ``segments`` (in arrival order) into ``(first index, count)`` runs.

    A run of more than one is a sequence of segments of one flow with contiguous sequence
    numbers, equal payload sizes except for a smaller last one, PSH only on the last, and
    at most 64 KiB once merged; every segment after the first must hold exactly one
    packet (its IP total length is its size). The first is not checked beyond
    :func:`flow_key`: the caller checks it and drops the run with it.
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
    if key is None or head[33] & TCP_PSH:
        return 1
    hlen = 20 + ((head[32] >> 4) << 2)
    payload = len(head) - hlen
    if payload == 0:
        return 1
    # A follower must equal the head on every bit the key keeps, carry its own length as
    # IP total length, the next sequence number, and ACK as its only flag besides PSH.
    mask, length_at, seq_at = _follower_mask(hlen)
    want = key | TCP_ACK << (8 * (hlen - 34))
    total = len(head)
    expect = int.from_bytes(head[24:28], "big") + payload
    index = first + 1
    while index < len(segments):
        segment = segments[index]
        size = len(segment) - hlen
        if size <= 0 or size > payload or total + size > _MAX_COALESCED:
            break
        expected = want | len(segment) << length_at | (expect & 0xFFFFFFFF) << seq_at
        if int.from_bytes(segment[:hlen], "big") & mask != expected:
            break
        index += 1
        total += size
        expect += size
        if size < payload or segment[33] & TCP_PSH:
            break
    return index - first


def _follower_mask(hlen: int) -> tuple[int, int, int]:
    """The key mask plus total length, sequence number and flags but PSH; their shifts."""
    found = _FOLLOWER_MASKS.get(hlen)
    if found is None:
        length_at, seq_at, flags_at = 8 * (hlen - 4), 8 * (hlen - 28), 8 * (hlen - 34)
        extra = 0xFFFF << length_at | 0xFFFFFFFF << seq_at | (0xFF & ~TCP_PSH) << flags_at
        found = _FOLLOWER_MASKS[hlen] = (_key_mask(hlen) | extra, length_at, seq_at)
    return found


def same_flow(first: Packet, other: Packet, hlen: int) -> bool:
    """Whether ``other``'s headers may follow ``first``'s in one merged run: equal on
    every bit a follower must share (:func:`_follower_mask`) but the sequence number,
    which the caller checks against the run's next one."""
    mask, _, seq_at = _follower_mask(hlen)
    differ = int.from_bytes(first[:hlen], "big") ^ int.from_bytes(other[:hlen], "big")
    return not differ & mask & ~(0xFFFFFFFF << seq_at)


def merge_headers(first: memoryview, total: int, last_flags: int, mss: int) -> bytes:
    """Turn ``first``'s headers into those of a ``total``-byte super-packet, in place.

    The IP total length and checksum are rewritten, PSH is taken from the last segment,
    and the TCP checksum field gets the pseudo-header sum the kernel expects with
    NEEDS_CSUM. Returns the virtio-net header to write before the super-packet, packed.
    """
    first[2:4] = total.to_bytes(2, "big")
    first[10:12] = ipv4_header_checksum(first[:20]).to_bytes(2, "big")
    first[33] |= last_flags & TCP_PSH
    partial = pseudo_header_sum(first, TCP_PROTO, total - 20) or 0xFFFF
    first[36:38] = partial.to_bytes(2, "big")
    return _tcp4_gso_header(20 + ((first[32] >> 4) << 2), mss)


@functools.lru_cache(maxsize=64)
def _tcp4_gso_header(hdr_len: int, mss: int) -> bytes:
    """The packed virtio-net header of a TCP/IPv4 super-packet (one stream repeats it)."""
    packed = bytearray(VNET_HDR_LEN)
    VnetHeader(F_NEEDS_CSUM, GSO_TCPV4, hdr_len, mss, 20, TCP_CSUM_OFFSET).pack_into(packed)
    return bytes(packed)
