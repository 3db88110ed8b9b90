"""systemd readiness: READY=1 arrives on $NOTIFY_SOCKET once, after subnet.env is written.

The test plays systemd's part: it binds the AF_UNIX datagram socket that a
``Type=notify`` unit's NOTIFY_SOCKET names (a path, which a daemon in another network
namespace can reach; abstract names are per network namespace) and asks the kernel
for the sender's credentials, as systemd does to attribute the message.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.daemon import start_daemon
from support.etcd import EtcdServer
from support.netns import Topology, TopologyFactory

pytestmark = pytest.mark.e2e

PREFIX = "/coreos.com/network"
CONFIG = '{"Network":"10.7.0.0/16","Backend":{"Type":"alloc"}}'
_UCRED = struct.Struct("3i")  # pid, uid, gid


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(str(tmp_path / "notify.sock"))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        yield sock
    finally:
        sock.close()


def receive(sock: socket.socket, timeout: float) -> tuple[bytes, int] | None:
    """One notification and its sender's PID, or None when none arrives in time."""
    sock.settimeout(timeout)
    try:
        data, ancillary, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(_UCRED.size))
    except TimeoutError:
        return None
    pid = -1
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid = _UCRED.unpack(payload[: _UCRED.size])[0]
    return data, pid


def test_ready_arrives_once_and_only_after_subnet_env_exists(
    topology: TopologyFactory, tmp_path: Path, notify_socket: socket.socket
) -> None:
    topo: Topology = topology(1)
    etcd_host = topo.add_host("etcd", str(topo.underlay.network_address + 2))
    with EtcdServer(tmp_path / "etcd", netns=etcd_host.ns, listen_ip=etcd_host.ip) as server:
        daemon = start_daemon(
            topo.hosts[0],
            tmp_path / "h0",
            f"--etcd-endpoints={server.endpoints}",
            "--iface=eth0",
            env={"NOTIFY_SOCKET": notify_socket.getsockname()},
            wait=False,
        )
        daemon.wait_log("not found")  # running, and waiting for the network config
        assert receive(notify_socket, 1.0) is None, "READY=1 before the daemon holds a lease"
        assert not daemon.subnet_file.exists()

        server.etcdctl("put", f"{PREFIX}/config", CONFIG)
        message = receive(notify_socket, 30.0)
        text = daemon.subnet_file.read_text()  # at the moment READY=1 was read

        assert message is not None, daemon.log_tail()
        assert daemon.proc is not None
        assert message == (b"READY=1", daemon.proc.pid)
        assert text.startswith("FLANNEL_NETWORK=10.7.0.0/16\nFLANNEL_SUBNET=10.7.")
        assert text.endswith("FLANNEL_MTU=1500\nFLANNEL_IPMASQ=false\n")
        assert receive(notify_socket, 1.0) is None, "READY=1 is sent once"
        assert daemon.stop() == 0
