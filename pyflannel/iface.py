"""Choosing the external interface at start-up: read the host, decide, log like flanneld.

The decision is ``pyflannel.core.ifacepick.pick`` (pure, with the rules and their
order); this module only gathers its inputs from the kernel and reports the outcome with
flanneld's log lines, so operators grepping for them find them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from pyflannel.backend import ExternalInterface
from pyflannel.core.ifacepick import RouteLookup, Selection, can_reach_target, pick
from pyflannel.netlink.hostinfo import read_host, route_to
from pyflannel.netlink.rtnl.transport import RtnlSocket

logger = logging.getLogger(__name__)


async def select_interface(
    *,
    iface: Sequence[str],
    iface_regex: Sequence[str],
    iface_can_reach: str,
    public_ip: str,
) -> ExternalInterface:
    """The interface overlay traffic leaves by and the address peers reach us at.

    Raises ConfigError when no candidate works; its message names each one tried and the
    interfaces that exist.
    """
    explicit = bool(iface or iface_regex or iface_can_reach)
    if not explicit and not public_ip:
        logger.info("Determining IP address of default interface")
    async with RtnlSocket() as sock:
        host = await read_host(sock)
        can_reach: RouteLookup | None = None
        target = can_reach_target(iface_can_reach) if iface_can_reach else None
        if target is not None:
            can_reach = await route_to(sock, target)
    selection = pick(
        host,
        iface=iface,
        iface_regex=iface_regex,
        iface_can_reach=iface_can_reach,
        can_reach=can_reach,
        public_ip=public_ip,
    )
    _report(selection, public_ip)
    return selection.external


def _report(selection: Selection, public_ip: str) -> None:
    for rejected in selection.rejected:
        logger.info("Could not find valid interface matching %s", rejected)
    external = selection.external
    logger.info("Using interface with name %s and address %s", external.name, external.iface_addr)
    logger.debug("interface chosen by %s", selection.chosen_by)
    for warning in selection.warnings:
        logger.warning("%s", warning)
    if public_ip:
        logger.info("Using %s as external address", external.ext_addr)
    else:
        logger.info("Defaulting external address to interface address (%s)", external.iface_addr)
