"""The I/O shell of ``pyflannelctl``: each command gathers facts and prints a report.

Every command returns its exit status: 0 when all is well, 1 when something is
wrong (an invalid config, a problem found by ``status``). Errors worth a message
are raised as :mod:`pyflannel.errors` and printed by ``pyflannel.ctl.__main__``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time

from pyflannel.backend import load_backend
from pyflannel.core import subnetenv
from pyflannel.ctl import kernel, report
from pyflannel.ctl.store import locate
from pyflannel.errors import ConfigError, RegistryError
from pyflannel.files import read_text_or_none
from pyflannel.model.config import NetworkConfig, parse_config
from pyflannel.model.lease import Lease
from pyflannel.options import Options
from pyflannel.registry.base import SubnetRegistry
from pyflannel.registry.etcd2 import Etcd2Registry
from pyflannel.registry.etcd3 import Etcd3Registry

logger = logging.getLogger(__name__)


def _out(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _err(text: str) -> None:
    sys.stderr.write(text)
    sys.stderr.flush()


def check_config(text: str) -> NetworkConfig:
    """Validate a network config exactly as the daemon does; raises ``ConfigError``.

    The same two steps as at daemon start-up: :func:`parse_config`, then the backend
    lookup that turns an unknown ``Backend.Type`` into a fatal error.
    """
    config = parse_config(text)
    load_backend(config.backend_type)
    return config


def registry_for(options: Options, api: str) -> SubnetRegistry:
    """The lease registry on the API the config store was found on."""
    if api == "v2":
        return Etcd2Registry.from_options(options)
    return Etcd3Registry.from_options(options)


async def config_set(options: Options, text: str) -> int:
    """Validate ``text`` and store it as the network config; nothing is written if invalid."""
    try:
        config = check_config(text)
    except ConfigError as exc:
        _err(f"{exc}\nnothing was written\n")
        return 1
    located = await locate(options)
    try:
        if located.note:
            _err(f"{located.note}\n")
        await located.store.write(text.strip())
        api = located.store.api
        _out(f"wrote {located.store.describe()}\n{describe_config(config)}\n")
    finally:
        await located.store.close()
    if located.text is not None and located.text.strip() != text.strip():
        await _warn_about_change(options, api, config)
    return 0


def describe_config(config: NetworkConfig) -> str:
    """One line naming what the config means after defaulting."""
    count = (int(config.subnet_max) - int(config.subnet_min)) // config.subnet_size() + 1
    return (
        f"network {config.network}: {count} subnets /{config.subnet_len} from"
        f" {config.subnet_min} to {config.subnet_max}, backend {config.backend_type}"
    )


async def _warn_about_change(options: Options, api: str, config: NetworkConfig) -> None:
    registry = registry_for(options, api)
    try:
        leases, _ = await registry.list_leases()
    finally:
        await registry.close()
    outside = [str(x.subnet) for x in leases if not _fits(x, config)]
    _err(
        "the config changed: running pyflanneld daemons keep the config they started with;"
        " restart them (and then Docker) to apply it\n"
    )
    if outside:
        _err(
            f"{len(outside)} lease(s) do not fit the new config ({', '.join(sorted(outside))}):"
            " those hosts get new subnets when pyflanneld restarts\n"
        )


def _fits(lease: Lease, config: NetworkConfig) -> bool:
    start = lease.subnet.network_address
    return (
        lease.subnet.prefixlen == config.subnet_len
        and config.subnet_min <= start <= config.subnet_max
    )


async def config_get(options: Options) -> int:
    """Print the stored config verbatim; exit 1 if it is missing or would be rejected."""
    located = await locate(options)
    await located.store.close()
    if located.text is None:
        _err(
            f"no network config at {located.store.describe()}; write one with"
            " pyflannelctl config set FILE\n"
        )
        return 1
    if located.note:
        _err(f"{located.note}\n")
    _out(located.text if located.text.endswith("\n") else located.text + "\n")
    try:
        check_config(located.text)
    except ConfigError as exc:
        _err(f"the stored config would be rejected: {exc}\n")
        return 1
    return 0


async def leases(options: Options, *, as_json: bool) -> int:
    """Print every lease, as a table or as JSON."""
    located = await locate(options)
    await located.store.close()
    registry = registry_for(options, located.store.api)
    try:
        found, _ = await registry.list_leases()
    finally:
        await registry.close()
    rows = report.lease_rows(found, time.time())
    if as_json:
        _out(json.dumps([row.as_json() for row in rows], indent=2) + "\n")
    else:
        _out(report.lease_table(rows))
    return 0


async def status(options: Options, *, as_json: bool) -> int:
    """Report this host's subnet.env, lease and kernel state; exit 1 on any problem."""
    facts = await gather_facts(options)
    verdict = report.assess(facts)
    summary, problems = await _kernel_findings(facts, verdict)
    verdict = dataclasses.replace(verdict, kernel=summary, problems=(*verdict.problems, *problems))
    if as_json:
        _out(json.dumps(report.status_json(facts, verdict), indent=2) + "\n")
    else:
        _out(report.status_text(facts, verdict))
    return 1 if verdict.problems else 0


async def gather_facts(options: Options) -> report.HostFacts:
    """subnet.env, the config and the leases; etcd failures become findings."""
    text = read_text_or_none(options.subnet_file)
    env = subnetenv.parse_env(text) if text is not None else None
    config: NetworkConfig | None = None
    problem: str | None = None
    leases_found: tuple[Lease, ...] | None = None
    where = ""
    try:
        located = await locate(options)
        await located.store.close()
        where = located.store.describe()
        config, problem = _parse_stored(located.text, where)
        registry = registry_for(options, located.store.api)
        try:
            leases_found = tuple((await registry.list_leases())[0])
        finally:
            await registry.close()
    except RegistryError as exc:
        problem = f"cannot read etcd: {exc}"
    return report.HostFacts(
        subnet_file=options.subnet_file,
        subnet_env=env,
        config=config,
        config_problem=problem,
        leases=leases_found,
        now=time.time(),
        renew_margin_minutes=options.subnet_lease_renew_margin,
        registry=where,
    )


def _parse_stored(text: str | None, where: str) -> tuple[NetworkConfig | None, str | None]:
    """The config as the hosts read it; a backend pyflannel lacks is not a problem here
    (the hosts may run flanneld), the kernel check just skips it."""
    if text is None:
        return None, f"no network config at {where}"
    try:
        return parse_config(text), None
    except ConfigError as exc:
        return None, f"the stored network config is rejected: {exc}"


async def _kernel_findings(
    facts: report.HostFacts, verdict: report.Status
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Kernel comparison (summary lines, problems), once the lease and config are known."""
    if facts.config is None or verdict.own is None or facts.subnet_env is None:
        return (), ()
    mtu_text = facts.subnet_env.get("FLANNEL_MTU", "")
    mtu = int(mtu_text) if mtu_text.isdigit() else None
    return await kernel.kernel_findings(facts.config, verdict.own, verdict.peers, mtu)
