"""Small builders for leases and configs used across the test suite."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

from pyflannel.model.config import NetworkConfig, parse_config
from pyflannel.model.lease import Lease, LeaseAttrs
from pyflannel.model.net import SubnetKey


def config(network: str = "10.5.0.0/16", **extra: object) -> NetworkConfig:
    """A parsed config for ``network`` with optional extra keys."""
    import json

    return parse_config(json.dumps({"Network": network, **extra}))


def lease(
    subnet: str,
    public_ip: str = "192.0.2.1",
    expiration: float | None = 1e9,
    backend_type: str = "",
    backend_data: str | None = None,
) -> Lease:
    """A lease on ``subnet`` held by ``public_ip``."""
    attrs = LeaseAttrs(IPv4Address(public_ip), backend_type, backend_data)
    return Lease(SubnetKey(IPv4Network(subnet)), attrs, expiration)
