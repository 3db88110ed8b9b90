"""IPv4 helpers for the udp backend's data path: checks, TTL, checksums, ICMP.

On the wire a flannel udp datagram *is* an inner IPv4 packet, so every datagram that
arrives is untrusted input that pyflannel is about to inject into the kernel. flanneld
injects whatever it gets; :func:`check_inbound` accepts a datagram only when it is a
well-formed IPv4 packet (header length, total length equal to the datagram length,
header checksum) addressed into our own subnet and still alive after the TTL decrement.
Whatever it refuses is counted under the :class:`Verdict` it returns.

Checksums use the identity the ones'-complement sum of big-endian 16-bit words is
congruent to ``int.from_bytes(data, "big")`` modulo 0xFFFF (an odd length is padded
with a zero byte), which replaces a per-word loop by one big-integer remainder.

Rules of this file: pure code, no I/O. Functions that change a packet change the buffer
they are given, in place, and say so.
"""

from __future__ import annotations

import enum
from ipaddress import IPv4Address

IPV4_HEADER_MIN = 20
ICMP_PROTO = 1
TCP_PROTO = 6
UDP_PROTO = 17
ICMP_DEST_UNREACH = 3
ICMP_NET_UNREACH = 0
ICMP_ERROR_TTL = 8  # flanneld's choice for the ICMP errors it generates
_FRAGMENT_OFFSET = 0x1FFF

Packet = bytes | bytearray | memoryview
"""Any byte buffer; a memoryview must have the default unsigned-byte format."""


class Verdict(enum.IntEnum):
    """Why a packet was forwarded (OK) or dropped; also the index of its counter."""

    OK = 0
    TOO_SHORT = 1
    NOT_IPV4 = 2
    BAD_HEADER_LENGTH = 3
    BAD_TOTAL_LENGTH = 4
    BAD_CHECKSUM = 5
    TTL_EXPIRED = 6
    FOREIGN_DESTINATION = 7  # an inbound packet not addressed into our subnet
    UNKNOWN_PEER = 8  # an inbound datagram from an address that holds no lease
    NO_ROUTE = 9  # an outbound packet for a subnet no peer holds
    SEND_FAILED = 10  # the socket or the TUN refused the packet (full buffers)
    UNSUPPORTED = 11  # a TUN frame the offload path cannot handle


def ones_sum(data: Packet, initial: int = 0) -> int:
    """The ones'-complement sum of ``data`` as big-endian 16-bit words, folded to 16 bits.

    The result is in 1..0xFFFF unless everything summed is zero (then 0), which is what a
    word-by-word end-around-carry loop yields.
    """
    value = int.from_bytes(data, "big")
    if len(data) & 1:
        value <<= 8
    total = value + initial
    if total == 0:
        return 0
    return total % 0xFFFF or 0xFFFF


def checksum(data: Packet, initial: int = 0) -> int:
    """The Internet checksum (RFC 1071) of ``data``: the complement of :func:`ones_sum`."""
    return ~ones_sum(data, initial) & 0xFFFF


def ipv4_header_checksum(header: Packet) -> int:
    """The checksum an IPv4 header must carry; the value in its checksum field is ignored.

    ``header`` is exactly the header (IHL × 4 bytes). Equal to :func:`checksum` over the
    header with the field zeroed (never all-zero data: the version nibble is 4).
    """
    total = (int.from_bytes(header, "big") - (header[10] << 8 | header[11])) % 0xFFFF
    return 0xFFFF - total if total else 0


def header_checksum_ok(packet: Packet) -> bool:
    """Whether an IPv4 header (exactly the header bytes) carries a valid checksum."""
    return int.from_bytes(packet, "big") % 0xFFFF == 0


def check_inbound(packet: Packet, network: int, netmask: int) -> Verdict:
    """Whether a received datagram may go into the TUN, and if not, why.

    ``network``/``netmask`` are our subnet as integers. The datagram must be exactly one
    IPv4 packet (header length, total length equal to the datagram's, header checksum)
    whose destination is in that subnet and whose TTL survives the decrement. One flat
    function: it runs for every packet received.
    """
    size = len(packet)
    if size < IPV4_HEADER_MIN or packet[0] >> 4 != 4:
        return Verdict.TOO_SHORT if size < IPV4_HEADER_MIN else Verdict.NOT_IPV4
    hlen = (packet[0] & 0x0F) << 2
    if hlen < IPV4_HEADER_MIN or hlen > size:
        return Verdict.BAD_HEADER_LENGTH
    if (packet[2] << 8 | packet[3]) != size:
        return Verdict.BAD_TOTAL_LENGTH
    if int.from_bytes(packet[:hlen], "big") % 0xFFFF:
        return Verdict.BAD_CHECKSUM
    if int.from_bytes(packet[16:20], "big") & netmask != network or packet[8] <= 1:
        return Verdict.TTL_EXPIRED if packet[8] <= 1 else Verdict.FOREIGN_DESTINATION
    return Verdict.OK


def check_outbound(packet: Packet) -> Verdict:
    """Whether a packet read from the TUN can be forwarded (the kernel wrote it: light checks)."""
    if len(packet) < IPV4_HEADER_MIN:
        return Verdict.TOO_SHORT
    if packet[0] >> 4 != 4:
        return Verdict.NOT_IPV4
    if packet[8] <= 1:
        return Verdict.TTL_EXPIRED
    return Verdict.OK


def destination(packet: Packet) -> int:
    """The destination address of an IPv4 packet, as an integer."""
    return int.from_bytes(packet[16:20], "big")


def decrement_ttl(packet: bytearray | memoryview) -> None:
    """Decrement the TTL (which must be above 1) and patch the header checksum, in place.

    RFC 1624 eqn. 3, ``HC' = ~(~HC + ~m + m')``: the TTL is the high byte of the word it
    shares with the protocol, so ``~m + m'`` is the constant 0xFEFF. Unlike flanneld's
    shortcut, the result always equals a full recomputation (0x0000, never 0xFFFF).
    """
    packet[8] -= 1
    total = (~(packet[10] << 8 | packet[11]) & 0xFFFF) + 0xFEFF
    total = (total & 0xFFFF) + (total >> 16)
    check = ~total & 0xFFFF
    packet[10] = check >> 8
    packet[11] = check & 0xFF


def icmp_net_unreachable(offender: Packet, source: IPv4Address) -> bytes | None:
    """The ICMP "net unreachable" flanneld sends back into the TUN for an unroutable packet.

    IPv4 header: IHL 5, TOS 0, ID 0, no flags, TTL 8, protocol ICMP, from ``source`` (our
    subnet's network address) to the offender's source. ICMP: type 3 code 0, four zero
    bytes, then the offender's IP header and the first 8 bytes of its payload (zero-padded
    if the packet is shorter). None, as in flanneld, when the offender is itself ICMP, is
    not a first fragment, or has an invalid header length.
    """
    pkt = bytes(offender)
    if len(pkt) < IPV4_HEADER_MIN or pkt[0] >> 4 != 4:
        return None
    hlen = (pkt[0] & 0x0F) << 2
    if hlen < IPV4_HEADER_MIN or hlen > len(pkt) or pkt[9] == ICMP_PROTO:
        return None
    if (pkt[6] << 8 | pkt[7]) & _FRAGMENT_OFFSET:
        return None
    quoted = pkt[: hlen + 8].ljust(hlen + 8, b"\0")
    body = bytearray(bytes((ICMP_DEST_UNREACH, ICMP_NET_UNREACH)) + bytes(6) + quoted)
    body[2:4] = checksum(body).to_bytes(2, "big")
    header = bytearray(IPV4_HEADER_MIN)
    header[0] = 0x45
    header[2:4] = (IPV4_HEADER_MIN + len(body)).to_bytes(2, "big")
    header[8] = ICMP_ERROR_TTL
    header[9] = ICMP_PROTO
    header[12:16] = source.packed
    header[16:20] = pkt[12:16]
    header[10:12] = checksum(header).to_bytes(2, "big")
    return bytes(header + body)
