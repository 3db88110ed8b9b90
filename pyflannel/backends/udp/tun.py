"""The ``flannel0`` TUN device: open it, ask for offloads, give it an address and a route.

The data path needs the device's file descriptor, so the device is opened the classic
way (``/dev/net/tun`` + ``TUNSETIFF``) and then configured over rtnetlink.
It lives in the network namespace of the calling thread and disappears when the fd is
closed: flanneld's ``flannel0`` behaves the same (it is not persistent).

Setup is split in two because the own subnet is only known after the lease is acquired:
:func:`open_tun` and :func:`prepare_link` run in ``prepare()`` (name, MTU, IPv6 off
before the link comes up, so the kernel never sends router solicitations into it), and
:func:`address_link` runs in ``run()`` (flanneld v0.28's layout: the subnet's network
address as a /32, link up, and one route for the whole flannel Network via the device).
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from pyflannel.core.kernelstate import RTPROT_BOOT, Route
from pyflannel.errors import BackendError
from pyflannel.netlink.ops import NetlinkOps

logger = logging.getLogger(__name__)

TUN_PATH = "/dev/net/tun"
TUNSETIFF = 0x400454CA
TUNGETFEATURES = 0x800454CF
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
IFF_TUN = 0x0001
IFF_NAPI = 0x0010
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
VNET_HDR_LEN = 10  # struct virtio_net_hdr, without the mergeable-buffers field


@dataclass(frozen=True, slots=True)
class Tun:
    """An open TUN device. With ``vnet_hdr`` every frame read or written starts with a
    10-byte virtio-net header; ``offloads`` are the TUN_F_* flags the kernel accepted."""

    fd: int
    name: str
    vnet_hdr: bool = False
    offloads: int = 0
    napi: bool = False


def kernel_features() -> int:
    """The IFF_* flags this kernel's TUN driver supports (0 when it cannot be asked)."""
    try:
        fd = os.open(TUN_PATH, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return 0
    try:
        raw = fcntl.ioctl(fd, TUNGETFEATURES, b"\0\0\0\0")
        return int(struct.unpack("I", raw)[0])
    except OSError:
        return 0
    finally:
        os.close(fd)


def open_tun(
    pattern: str = "flannel%d", *, vnet_hdr: bool = False, offloads: int = 0, napi: bool = False
) -> Tun:
    """Open a non-blocking TUN (IFF_TUN|IFF_NO_PI, plus IFF_VNET_HDR and IFF_NAPI when
    asked).

    ``offloads`` (TUN_F_* flags) are requested with TUNSETOFFLOAD; a kernel that refuses
    them leaves a working device without offloads (``Tun.offloads`` says what stuck).
    With ``napi``, packets written go through the kernel's GRO, as from a NIC.
    """
    try:
        fd = os.open(TUN_PATH, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise BackendError(f"cannot open {TUN_PATH}: {exc} (is the tun module loaded?)") from exc
    flags = IFF_TUN | IFF_NO_PI | (IFF_VNET_HDR if vnet_hdr else 0) | (IFF_NAPI if napi else 0)
    try:
        ifreq = fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", pattern.encode(), flags))
        if vnet_hdr:
            fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_LEN))
    except OSError as exc:
        os.close(fd)
        raise BackendError(f"cannot create TUN device {pattern!r}: {exc}") from exc
    name = ifreq[:16].rstrip(b"\0").decode()
    accepted = _set_offloads(fd, name, offloads) if vnet_hdr else 0
    return Tun(fd, name, vnet_hdr, accepted, napi)


def _set_offloads(fd: int, name: str, offloads: int) -> int:
    try:
        fcntl.ioctl(fd, TUNSETOFFLOAD, offloads)
    except OSError as exc:
        logger.info("TUN %s: offloads %#x refused (%s); reading plain packets", name, offloads, exc)
        return 0
    return offloads


def disable_ipv6(name: str) -> None:
    """Turn IPv6 off on the device (nothing to do when IPv6 is absent from the kernel)."""
    path = f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6"
    try:
        with open(path, "w") as knob:
            knob.write("1")
    except FileNotFoundError:
        return
    except OSError as exc:
        logger.warning("could not disable IPv6 on %s: %s", name, exc)


def hold_gro(name: str, nanoseconds: int) -> bool:
    """Let GRO hold packets written to a NAPI TUN for up to ``nanoseconds``.

    By default the kernel ends GRO after every write (one write, one poll), so nothing
    merges. With a flush timeout it keeps what it merged across writes until a segment
    with PSH, a full 64 KiB, or the timeout: the TCP receiver then takes (and ACKs) a
    few large packets instead of many small ones. Only TCP is held; a lone segment
    waits at most the timeout. False when sysfs does not show the device (sysfs mounted
    for another network namespace may show another device of that name: the index tells).
    """
    device = f"/sys/class/net/{name}"
    try:
        with open(f"{device}/ifindex") as index:
            if int(index.read()) != socket.if_nametoindex(name):
                raise OSError(f"{device} is another namespace's device")
        with open(f"{device}/gro_flush_timeout", "w") as knob:
            knob.write(str(nanoseconds))
    except OSError as exc:
        logger.info("TUN %s: GRO flush timeout not set (%s); packets are not merged", name, exc)
        return False
    return True


async def prepare_link(name: str, mtu: int, *, gso_max_segs: int | None = None) -> None:
    """IPv6 off, the MTU and (with TSO) the segments of one TCP super-packet set, before
    the link is up."""
    disable_ipv6(name)
    async with NetlinkOps() as ops:
        await ops.set_link(await _index(ops, name), mtu=mtu, gso_max_segs=gso_max_segs)


async def address_link(name: str, local: IPv4Address, network: IPv4Network) -> None:
    """``local``/32 on the device, link up, and a route for ``network`` through it.

    An address or route that already exists is fine (flanneld tolerates EEXIST too).
    The route is flanneld's, attribute for attribute: scope universe, protocol boot.
    """
    async with NetlinkOps() as ops:
        index = await _index(ops, name)
        await ops.add_address(index, IPv4Interface((local, 32)))
        await ops.set_link(index, up=True)
        await ops.add_route(Route(str(network), "", index, proto=RTPROT_BOOT))


async def _index(ops: NetlinkOps, name: str) -> int:
    link = await ops.link(name)
    if link is None:
        raise BackendError(f"TUN device {name} vanished while it was being configured")
    return link.index


def close_tun(tun: Tun) -> None:
    """Close the fd; the kernel removes the device with it."""
    try:
        os.close(tun.fd)
    except OSError as exc:
        logger.debug("closing TUN %s: %s", tun.name, exc)
