"""The ``flannel.<VNI>`` device: reuse it, create it, or recreate it (facts §6.1).

A device left by an earlier run (of pyflanneld or flanneld) is kept when its
VXLAN attributes match, *with its MAC*: peers have that MAC in their FDB and
neighbour entries and in our lease, so keeping it means a restart breaks nothing.
A device with other attributes is deleted and created afresh. A new device gets a
random locally administered unicast MAC chosen here, as flanneld v0.28 does, so the
MAC is known before the kernel creates the device; recreating a device that
vanished while we ran reuses the MAC already advertised in our lease.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from ipaddress import IPv4Interface, IPv4Network

from pyflannel.backend import ExternalInterface
from pyflannel.backends.vxlan.options import VxlanSettings
from pyflannel.errors import BackendError
from pyflannel.netlink.ops import LinkState, NetlinkOps, VxlanAttrs

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """What ``flannel.<VNI>`` must look like."""

    name: str
    attrs: VxlanAttrs
    mtu: int


def device_spec(settings: VxlanSettings, iface: ExternalInterface) -> DeviceSpec:
    """The device for these options on this interface (local address: the public IP)."""
    attrs = VxlanAttrs(
        vni=settings.vni,
        lower=iface.index,
        local=iface.ext_addr,
        port=settings.effective_port,
        learning=settings.learning,
        gbp=settings.gbp,
    )
    return DeviceSpec(settings.device_name, attrs, settings.overlay_mtu(iface.mtu))


def incompatibility(link: LinkState, spec: DeviceSpec) -> str | None:
    """Why an existing device cannot be reused, or None when it can."""
    if link.kind != "vxlan" or link.vxlan is None:
        return f"it is a {link.kind or 'non-vxlan'} device"
    if link.vxlan != spec.attrs:
        return f"it has {link.vxlan}, wanted {spec.attrs}"
    return None


def random_mac(raw: bytes) -> str:
    """A locally administered unicast MAC from six random bytes."""
    first = (raw[0] & 0xFE) | 0x02
    return ":".join(f"{b:02x}" for b in (first, *raw[1:6]))


async def ensure_device(ops: NetlinkOps, spec: DeviceSpec, mac: str | None) -> LinkState:
    """The device as ``spec`` wants it; ``mac`` is the MAC to keep (None at start-up)."""
    link = await ops.link(spec.name)
    if link is not None:
        reason = incompatibility(link, spec)
        if reason is None:
            return await _adjust(ops, link, spec, mac)
        logger.warning("device %s is incompatible (%s): recreating it", spec.name, reason)
        await ops.delete_link(link.index)
    chosen = mac or random_mac(os.urandom(6))
    await ops.create_vxlan(spec.name, spec.attrs, mac=chosen, mtu=spec.mtu)
    link = await ops.link(spec.name)
    if link is None:
        raise BackendError(f"device {spec.name} vanished right after it was created")
    logger.info("created device %s (VNI %d, MAC %s)", spec.name, spec.attrs.vni, link.mac)
    _disable_accept_ra(spec.name)
    return link


async def _adjust(ops: NetlinkOps, link: LinkState, spec: DeviceSpec, mac: str | None) -> LinkState:
    """Reuse a compatible device, fixing its MTU (and MAC, if one is imposed)."""
    new_mac = mac if mac is not None and mac != link.mac else None
    new_mtu = spec.mtu if link.mtu != spec.mtu else None
    if new_mac is None and new_mtu is None:
        _disable_accept_ra(spec.name)
        return link
    await ops.set_link(link.index, mtu=new_mtu, mac=new_mac)
    fresh = await ops.link(spec.name)
    if fresh is None:
        raise BackendError(f"device {spec.name} vanished while being configured")
    logger.info("reusing device %s (MAC %s, MTU %d)", spec.name, fresh.mac, fresh.mtu)
    _disable_accept_ra(spec.name)
    return fresh


async def configure_device(
    ops: NetlinkOps, link: LinkState, own: IPv4Network, network: IPv4Network
) -> None:
    """Give the device our subnet's network address as /32, and bring it up.

    /32 so that no connected route appears; other addresses inside the overlay
    network (from an earlier subnet) are removed, others kept, as flanneld v0.28.
    """
    wanted = IPv4Interface((own.network_address, 32))
    present = await ops.addresses(link.index)
    for address in present:
        if address != wanted and address.ip in network:
            logger.info("removing stale address %s from %s", address, link.name)
            await ops.delete_address(link.index, address)
    if wanted not in present:
        await ops.add_address(link.index, wanted)
    if not link.up:
        await ops.set_link(link.index, up=True)


def _disable_accept_ra(name: str) -> None:
    """No IPv6 router advertisements on the overlay device (skipped without IPv6)."""
    path = f"/proc/sys/net/ipv6/conf/{name}/accept_ra"
    if not os.path.exists(path):
        return
    try:
        with open(path, "w", encoding="ascii") as knob:
            knob.write("0")
    except OSError as exc:
        logger.warning("cannot set %s to 0: %s", path, exc)
