"""The vxlan ``Backend`` options of the network config, validated once.

flanneld decodes them with Go's encoding/json into a struct whose defaults were set
first: keys match case-insensitively, ``null`` keeps the default, and a value of
the wrong JSON type is an error. The same here, with the key named in the message.

Rules of this file: pure code, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pyflannel.errors import ConfigError
from pyflannel.model.config import NetworkConfig

ENCAP_OVERHEAD = 50
"""Outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14) headers."""
DEFAULT_PORT = 8472
"""The Linux default VXLAN port, used when ``Port`` is 0 (flanneld then sends none)."""
MAX_VNI = (1 << 24) - 1
MIN_OVERLAY_MTU = 68  # the smallest MTU IPv4 allows


@dataclass(frozen=True, slots=True)
class VxlanSettings:
    """The vxlan options with flanneld's defaults applied."""

    vni: int = 1
    port: int = 0  # 0: the kernel's default, 8472
    gbp: bool = False
    learning: bool = False
    direct_routing: bool = False
    mtu: int = 0  # 0: the external interface's MTU

    @property
    def device_name(self) -> str:
        """``flannel.<VNI>``, as flanneld names the device."""
        return f"flannel.{self.vni}"

    @property
    def effective_port(self) -> int:
        """The UDP port the kernel uses (what it reports for the device)."""
        return self.port or DEFAULT_PORT

    def overlay_mtu(self, iface_mtu: int) -> int:
        """The device MTU and FLANNEL_MTU: the underlay MTU minus the encapsulation."""
        return (self.mtu or iface_mtu) - ENCAP_OVERHEAD


def parse_settings(config: NetworkConfig) -> VxlanSettings:
    """Read and check the vxlan options of ``config``; raise ConfigError naming the key."""
    settings = VxlanSettings(
        vni=_int(config, "VNI", 1, 0, MAX_VNI),
        port=_int(config, "Port", 0, 0, 65535),
        gbp=_bool(config, "GBP"),
        learning=_bool(config, "Learning"),
        direct_routing=_bool(config, "DirectRouting"),
        mtu=_int(config, "MTU", 0, 0, 65535),
    )
    if settings.mtu and settings.mtu - ENCAP_OVERHEAD < MIN_OVERLAY_MTU:
        raise ConfigError(
            f'network config: "Backend.MTU" {settings.mtu} is too small: the VXLAN '
            f"device gets MTU-{ENCAP_OVERHEAD}, and IPv4 needs at least {MIN_OVERLAY_MTU}; "
            f"use at least {MIN_OVERLAY_MTU + ENCAP_OVERHEAD}, or 0 for the interface MTU"
        )
    return settings


def _int(config: NetworkConfig, key: str, default: int, lo: int, hi: int) -> int:
    value: Any = config.backend_option(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(
            f'network config: "Backend.{key}" {value!r} is invalid: it must be a whole number'
        )
    if not lo <= value <= hi:
        raise ConfigError(
            f'network config: "Backend.{key}" {value} is out of range: '
            f"it must be between {lo} and {hi}"
        )
    return value


def _bool(config: NetworkConfig, key: str) -> bool:
    value: Any = config.backend_option(key, False)
    if not isinstance(value, bool):
        raise ConfigError(
            f'network config: "Backend.{key}" {value!r} is invalid: it must be true or false'
        )
    return value
