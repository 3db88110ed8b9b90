"""/run/flannel/subnet.env: rendering it and reading the previous one back.

The file is four ``NAME=value`` lines in flanneld's order (facts §4), no quotes, no
blank line at the end. Docker (``--bip``/``--mtu``), mk-docker-opts and the CNI
flannel plugin read it, so the bytes must not change.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Interface, IPv4Network

from pyflannel.model.net import subnet_gateway


@dataclass(frozen=True, slots=True)
class SubnetEnv:
    """The values written to subnet.env."""

    network: IPv4Network
    subnet: IPv4Network
    mtu: int
    ipmasq: bool


def render(env: SubnetEnv) -> str:
    """The file's exact contents."""
    return (
        f"FLANNEL_NETWORK={env.network}\n"
        f"FLANNEL_SUBNET={subnet_gateway(env.subnet)}\n"
        f"FLANNEL_MTU={env.mtu}\n"
        f"FLANNEL_IPMASQ={'true' if env.ipmasq else 'false'}\n"
    )


def parse_env(text: str) -> dict[str, str]:
    """Parse dotenv-style ``NAME=value`` lines (comments, ``export`` and quotes allowed)."""
    values: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        name, value = line.split("=", 1)
        name = name.removeprefix("export ").strip()
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[name] = value
    return values


def previous_subnet(values: Mapping[str, str]) -> IPv4Network | None:
    """The subnet recorded by an earlier run (``FLANNEL_SUBNET`` with host bits masked).

    Anything unreadable is treated as no previous subnet, as flanneld does; a comma
    separated list (several subnets) is ignored too.
    """
    return _network_of(values.get("FLANNEL_SUBNET"))


def previous_network(values: Mapping[str, str]) -> IPv4Network | None:
    """The overlay network recorded by an earlier run (``FLANNEL_NETWORK``)."""
    return _network_of(values.get("FLANNEL_NETWORK"))


def _network_of(value: str | None) -> IPv4Network | None:
    if not value or "," in value:
        return None
    try:
        return IPv4Interface(value).network
    except ValueError:
        return None
