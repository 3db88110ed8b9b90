"""The daemon: wires options, registry, lease manager and backend together.

Start-up follows flanneld: pick the interface, wait for the network config, prepare
the backend, acquire the lease, write subnet.env, tell systemd we are ready. Then one
TaskGroup runs the renewal loop, the peer watch and the backend until a signal
(exit 0, lease kept), the revocation of our lease (exit 0, as flanneld) or a failure.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass

from pyflannel import gcpolicy
from pyflannel.backend import Backend, BackendContext, load_backend
from pyflannel.channel import PeerChannel
from pyflannel.core import subnetenv
from pyflannel.errors import LeaseRevoked
from pyflannel.files import read_text_or_none, write_atomic
from pyflannel.health import HealthServer
from pyflannel.iface import select_interface
from pyflannel.manager import LeaseManager
from pyflannel.model.config import NetworkConfig
from pyflannel.model.lease import Lease, LeaseAttrs
from pyflannel.options import Options
from pyflannel.registry.base import SubnetRegistry
from pyflannel.registry.factory import open_registry
from pyflannel.sdnotify import sd_notify
from pyflannel.trafficrules import start_traffic_rules

logger = logging.getLogger(__name__)


class _Stopped(Exception):
    """A stop signal arrived."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """Why the daemon ended (it only returns on a clean stop)."""

    reason: str


async def run_daemon(options: Options) -> Outcome:
    """Run until stopped; raise (ConfigError, BackendError, ...) on failure."""
    stop = asyncio.Event()
    _install_signal_handlers(stop)
    health = HealthServer(options.healthz_ip, options.healthz_port)
    if options.healthz_port > 0:
        await health.start()
    registry = await open_registry(options)
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(_raise_on(stop), name="signals")
            group.create_task(_serve(options, registry, health, group), name="daemon")
    except BaseExceptionGroup as group_error:
        return _outcome_of(group_error)
    finally:
        await registry.close()
        await health.close()
    return Outcome("finished")


def _outcome_of(group_error: BaseExceptionGroup[BaseException]) -> Outcome:
    """Turn the TaskGroup's failure into a clean outcome, or re-raise what is an error."""
    revoked, rest = group_error.split(LeaseRevoked)
    if revoked is not None:
        logger.warning("Lease has been revoked. Shutting down daemon. (%s)", revoked.exceptions[0])
        return Outcome("lease revoked")
    _, rest = group_error.split(_Stopped)
    if rest is not None:
        raise rest
    return Outcome("stopped by signal")


def _install_signal_handlers(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, _on_signal, loop, sig, stop)


def _on_signal(loop: asyncio.AbstractEventLoop, sig: signal.Signals, stop: asyncio.Event) -> None:
    # A second signal kills the process with the default action, as in flanneld.
    loop.remove_signal_handler(sig)
    logger.info("received %s, shutting down", sig.name)
    stop.set()


async def _raise_on(stop: asyncio.Event) -> None:
    await stop.wait()
    raise _Stopped


async def _serve(
    options: Options, registry: SubnetRegistry, health: HealthServer, group: asyncio.TaskGroup
) -> None:
    iface = await select_interface(
        iface=options.iface,
        iface_regex=options.iface_regex,
        iface_can_reach=options.iface_can_reach,
        public_ip=options.public_ip,
    )
    previous = subnetenv.parse_env(read_text_or_none(options.subnet_file) or "")
    manager = LeaseManager(
        registry,
        renew_margin_minutes=options.subnet_lease_renew_margin,
        previous_subnet=subnetenv.previous_subnet(previous),
    )
    logger.info("waiting for the network config from %s", registry.describe())
    config = await manager.wait_for_config()
    logger.info(
        "network config: network %s, subnet length %d, backend %s",
        config.network,
        config.subnet_len,
        config.backend_type,
    )
    backend = load_backend(config.backend_type)(
        BackendContext(config, iface, options, registry.lease_format)
    )
    try:
        prepared = await backend.prepare()
        attrs = LeaseAttrs(iface.ext_addr, prepared.backend_type, prepared.backend_data)
        lease = await manager.acquire(config, attrs)
        traffic = await start_traffic_rules(options, config.network, lease.subnet, previous)
        _write_subnet_env(options, config, lease, prepared.mtu)
        health.ready = True
        sd_notify("READY=1")
        logger.info("pyflanneld is ready: subnet %s, MTU %d", lease.subnet, prepared.mtu)
        gcpolicy.settle()
        group.create_task(traffic.run(), name="traffic-rules")
        await _run_loops(manager, backend, lease, group)
    finally:
        await backend.close()


async def _run_loops(
    manager: LeaseManager, backend: Backend, lease: Lease, group: asyncio.TaskGroup
) -> None:
    channel = PeerChannel()
    group.create_task(manager.keep_renewed(), name="lease-renewal")
    group.create_task(manager.feed_peers(channel), name="lease-watch")
    await backend.run(lease, aiter(channel))


def _write_subnet_env(options: Options, config: NetworkConfig, lease: Lease, mtu: int) -> None:
    text = subnetenv.render(subnetenv.SubnetEnv(config.network, lease.subnet, mtu, options.ip_masq))
    try:
        write_atomic(options.subnet_file, text)
    except OSError as exc:
        # flanneld only warns here; without the file Docker cannot start with our subnet,
        # so say loudly what failed.
        logger.error("failed to write subnet file %s: %s", options.subnet_file, exc)
        return
    logger.info("wrote %s", options.subnet_file)
