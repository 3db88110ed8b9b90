"""The network config JSON stored at ``<prefix>/config``: parsing and validation.

Validation follows flanneld (facts §2) exactly, including its defaults: SubnetLen 24
for networks of /22 or larger, prefix+2 for smaller ones; SubnetMin skips the first
subnet; SubnetMax is the last one. A config without ``Backend`` uses ``udp``.
pyflannel additionally rejects SubnetMin > SubnetMax (flanneld accepts it and then
finds no free subnet). Every rejection names the key, the value and the rule.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from types import MappingProxyType
from typing import Any

from pyflannel.errors import ConfigError
from pyflannel.model import gojson

_FIELDS = (
    "Network",
    "SubnetLen",
    "SubnetMin",
    "SubnetMax",
    "Backend",
    "EnableIPv4",
    "EnableIPv6",
    "EnableNFTables",
    "IPv6Network",
)
DEFAULT_BACKEND = "udp"


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    """A validated network config with every default filled in."""

    network: IPv4Network
    subnet_len: int
    subnet_min: IPv4Address
    subnet_max: IPv4Address
    backend_type: str
    backend: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def backend_option(self, name: str, default: Any) -> Any:
        """A ``Backend`` option looked up case-insensitively (Go json semantics)."""
        folded = gojson.fold_keys(self.backend, (name,))
        value = folded.get(name)
        return default if value is None else value

    def subnet_size(self) -> int:
        """Number of addresses in one host subnet."""
        return 1 << (32 - self.subnet_len)


def _fail(key: str, value: object, rule: str) -> ConfigError:
    return ConfigError(f"network config: {key} {json.dumps(value)} is invalid: {rule}")


def parse_config(text: str | bytes) -> NetworkConfig:
    """Parse and validate the network config JSON, as flanneld does."""
    try:
        obj = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"network config is not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise ConfigError(
            "network config must be a JSON object such as "
            '{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}'
        )
    fields = gojson.fold_keys(obj, _FIELDS)
    _check_families(fields)
    network = _network(fields.get("Network"))
    subnet_len = _subnet_len(network, fields.get("SubnetLen"))
    size = 1 << (32 - subnet_len)
    first = network.network_address + size
    last = IPv4Address(int(network.network_address) + network.num_addresses - size)
    lo = _bound("SubnetMin", fields.get("SubnetMin"), network, subnet_len, first)
    hi = _bound("SubnetMax", fields.get("SubnetMax"), network, subnet_len, last)
    if lo > hi:
        raise _fail(
            "SubnetMin", str(lo), f"it is greater than SubnetMax {hi}, so no subnet can be leased"
        )
    backend_type, backend = _backend(fields)
    return NetworkConfig(network, subnet_len, lo, hi, backend_type, MappingProxyType(backend))


def _check_families(fields: dict[str, Any]) -> None:
    for name in ("EnableIPv4", "EnableIPv6", "EnableNFTables"):
        value = fields.get(name)
        if value is not None and not isinstance(value, bool):
            raise _fail(name, value, "it must be true or false")
    if fields.get("EnableIPv4") is False:
        raise _fail("EnableIPv4", False, "IPv6-only networks are not supported yet; remove the key")
    if fields.get("EnableIPv6"):
        raise _fail("EnableIPv6", True, "dual-stack networks are not supported yet; remove the key")
    if fields.get("EnableNFTables"):
        raise _fail("EnableNFTables", True, "nftables mode is not supported yet; remove the key")


def _network(value: object) -> IPv4Network:
    if value is None or value == "":
        raise ConfigError(
            'network config: "Network" is missing: set it to the overlay range, '
            'e.g. "Network": "10.5.0.0/16"'
        )
    if not isinstance(value, str):
        raise _fail("Network", value, 'it must be a string in CIDR notation such as "10.5.0.0/16"')
    try:
        return IPv4Network(value, strict=False)
    except ValueError:
        raise _fail(
            "Network", value, 'it must be an IPv4 range in CIDR notation such as "10.5.0.0/16"'
        ) from None


def _subnet_len(network: IPv4Network, value: object) -> int:
    plen = network.prefixlen
    if value is None or value == 0:
        if plen > 28:
            raise _fail(
                "Network",
                str(network),
                "the network is too small: the minimum useful network prefix is /28",
            )
        return 24 if plen <= 22 else plen + 2
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail("SubnetLen", value, "it must be a whole number such as 24")
    if value > 30:
        raise _fail("SubnetLen", value, "it must be 30 or less (SubnetLen must be less than /31)")
    if value < plen + 2:
        raise _fail(
            "SubnetLen",
            value,
            f"it must be at least {plen + 2} so that the /{plen} "
            "network can accommodate at least four subnets",
        )
    return value


def _bound(
    key: str, value: object, network: IPv4Network, subnet_len: int, default: IPv4Address
) -> IPv4Address:
    if value is None or value == "":
        return default
    if not isinstance(value, str):
        raise _fail(key, value, "it must be an IPv4 address string")
    try:
        addr = IPv4Address(value)
    except ValueError:
        raise _fail(key, value, 'it must be an IPv4 address such as "10.5.1.0"') from None
    if addr not in network:
        raise _fail(key, value, f"it is not in the range of the Network {network}")
    if int(addr) & ((1 << (32 - subnet_len)) - 1):
        raise _fail(key, value, f"it is not on a SubnetLen boundary (/{subnet_len})")
    return addr


def _backend(fields: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    if "Backend" not in fields or fields["Backend"] is None:
        return DEFAULT_BACKEND, {}
    backend = fields["Backend"]
    if not isinstance(backend, dict):
        raise _fail("Backend", backend, 'it must be an object such as {"Type": "vxlan"}')
    kind = gojson.fold_keys(backend, ("Type",)).get("Type")
    if kind is not None and not isinstance(kind, str):
        raise _fail("Backend.Type", kind, 'it must be a string such as "vxlan"')
    return (kind or "").lower(), dict(backend)
