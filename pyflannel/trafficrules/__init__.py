"""The host's iptables rules for the overlay: FORWARD accepts and masquerading.

Neighbours: ``rules`` (pure: which rules, which are stale), ``plan`` (pure: reading
iptables-save, writing iptables-restore input), ``iptables`` (which binaries, running
them) and ``manager`` (bootstrap and the resync loop). The daemon uses the one entry
point below, after the lease is acquired and before subnet.env is written, as
flanneld v0.28 does, then runs :meth:`TrafficRules.run` beside the backend::

    rules = await start_traffic_rules(options, config.network, lease.subnet, previous_env)
    ...
    group.create_task(rules.run(), name="traffic-rules")

Nothing is removed on exit, as with flanneld: a restart must not interrupt traffic.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from ipaddress import IPv4Network

from pyflannel.errors import ConfigError
from pyflannel.options import Options
from pyflannel.trafficrules.iptables import IptablesMissing, detect
from pyflannel.trafficrules.manager import TrafficRules
from pyflannel.trafficrules.rules import render, stale_rules

__all__ = ["TrafficRules", "start_traffic_rules"]

logger = logging.getLogger(__name__)


async def start_traffic_rules(
    options: Options,
    network: IPv4Network,
    subnet: IPv4Network,
    previous_env: Mapping[str, str],
    *,
    search_path: str | None = None,
) -> TrafficRules:
    """Install the rules for ``subnet`` of ``network`` and delete stale ones; the keeper.

    ``previous_env`` is the subnet.env of the earlier run (empty if none): rules for
    its network and subnet that are not wanted now are deleted. ``search_path``
    replaces PATH when looking for the iptables binaries. Raises ConfigError when
    rules are wanted and iptables cannot be found; iptables failures after that are
    logged and retried by :meth:`TrafficRules.run`.
    """
    wanted = options.ip_masq or options.iptables_forward_rules
    try:
        tool = await detect(search_path)
    except IptablesMissing as exc:
        if wanted:
            raise ConfigError(_missing_message(options, exc)) from exc
        logger.debug("iptables not found, and no rules are wanted: %s", exc)
        return TrafficRules(None, {}, options.iptables_resync)
    random_fully = tool.has_random_fully and not options.ip_masq_fully_random_disable
    desired = render(
        network,
        subnet,
        masq=options.ip_masq,
        forward=options.iptables_forward_rules,
        random_fully=random_fully,
    )
    logger.info(
        "iptables rules via %s: masquerade %s%s, FORWARD accept %s, re-checked every %d s",
        tool.describe(),
        "on" if options.ip_masq else "off",
        " with --random-fully" if options.ip_masq and random_fully else "",
        "on" if options.iptables_forward_rules else "off",
        options.iptables_resync,
    )
    rules = TrafficRules(tool, desired, options.iptables_resync)
    await rules.bootstrap(stale_rules(previous_env, desired))
    await rules.warn_if_other_backend_drops(search_path)
    return rules


def _missing_message(options: Options, exc: IptablesMissing) -> str:
    needs = []
    if options.ip_masq:
        needs.append("--ip-masq (masquerade rules)")
    if options.iptables_forward_rules:
        needs.append("--iptables-forward-rules=true, the default (FORWARD accept rules)")
    return (
        f"iptables is needed for {' and '.join(needs)}, but {exc}; install the iptables "
        "package, or run without --ip-masq and with --iptables-forward-rules=false"
    )
