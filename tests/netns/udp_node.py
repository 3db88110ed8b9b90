"""Run the udp backend alone, with static peers, inside the current network namespace.

Used by the udp data-path tests and the throughput benchmark through
``ip netns exec <ns> .venv/bin/python tests/netns/udp_node.py ...``: it builds the
``BackendContext`` by hand and feeds the backend one ``PeerUpdate`` through a
``PeerChannel``, so no etcd or daemon is involved. The data path's counters are written
as JSON to ``--stats`` whenever they change (checked every 0.2 s) and at exit.

    udp_node.py --iface-addr 198.51.100.11 --subnet 10.4.1.0/24 \
        --peer 10.4.2.0/24=198.51.100.12 --backend '{"Type":"udp","Offload":false}'
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

from pyflannel.backend import BackendContext, ExternalInterface
from pyflannel.backends.udp import UdpBackend
from pyflannel.channel import PeerChannel
from pyflannel.model.config import parse_config
from pyflannel.model.lease import EventKind, Lease, LeaseAttrs, LeaseEvent, LeaseFormat
from pyflannel.model.net import SubnetKey
from pyflannel.options import Options


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iface", default="eth0")
    parser.add_argument("--iface-addr", required=True)
    parser.add_argument("--network", default="10.4.0.0/16")
    parser.add_argument("--subnet", required=True)
    parser.add_argument("--peer", action="append", default=[], help="SUBNET=PUBLIC_IP")
    parser.add_argument("--backend", default='{"Type":"udp"}', help="the Backend JSON object")
    parser.add_argument("--stats", type=Path, help="where to write the counters as JSON")
    return parser.parse_args()


def _lease(subnet: str, public_ip: str) -> Lease:
    return Lease(SubnetKey(IPv4Network(subnet)), LeaseAttrs(IPv4Address(public_ip)), None)


def _context(args: argparse.Namespace) -> BackendContext:
    config = parse_config(f'{{"Network":"{args.network}","Backend":{args.backend}}}')
    mtu = int(Path(f"/sys/class/net/{args.iface}/mtu").read_text())
    iface = ExternalInterface(
        name=args.iface,
        index=socket.if_nametoindex(args.iface),
        mtu=mtu,
        iface_addr=IPv4Address(args.iface_addr),
        ext_addr=IPv4Address(args.iface_addr),
    )
    return BackendContext(config, iface, Options(), LeaseFormat.V3)


def _dump(path: Path | None, stats: dict[str, Any]) -> None:
    if path is None:
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(stats))
    os.replace(tmp, path)


async def _report(backend: UdpBackend, path: Path | None) -> None:
    last: dict[str, Any] = {}
    while True:
        stats = backend.stats()
        if stats != last:
            _dump(path, stats)
            last = stats
        await asyncio.sleep(0.2)


async def main() -> None:
    args = _args()
    backend = UdpBackend(_context(args))
    prepared = await backend.prepare()
    own = _lease(args.subnet, args.iface_addr)
    channel = PeerChannel()
    peers = tuple(_lease(*spec.split("=", 1)) for spec in args.peer)
    channel.publish([LeaseEvent(EventKind.ADDED, lease) for lease in peers], lambda: peers)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"prepared mtu={prepared.mtu}", flush=True)
    try:
        async with asyncio.TaskGroup() as group:
            runner = group.create_task(backend.run(own, aiter(channel)), name="udp-backend")
            reporter = group.create_task(_report(backend, args.stats), name="udp-stats")
            await stop.wait()
            runner.cancel()
            reporter.cancel()
    finally:
        stats = backend.stats()
        await backend.close()
        _dump(args.stats, stats)


if __name__ == "__main__":
    logging.basicConfig(level=logging.DEBUG, format="%(levelname)s %(name)s: %(message)s")
    asyncio.run(main())
