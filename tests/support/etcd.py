"""A real etcd for tests: single servers and small clusters, on loopback or in namespaces.

An `EtcdServer` on loopback takes free ports and a data directory under the given work
directory; one inside a `Namespace` listens on that namespace's underlay address with the
standard ports 2379/2380, so daemons in other namespaces of the topology reach it. Start-up
flags are tuned so that a server is healthy in well under a second.

Every etcd process is started through `support.procs` and stopped by PID, and `close`
removes the data directory (etcd preallocates over 100 MB of WAL per server).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import pytest

from support import procs
from support.netns import Host, Namespace, run
from support.pki import Pki

Api = Literal[2, 3]

# Elect a leader quickly and keep the server quiet; a one-member cluster still waits one
# election timeout before it campaigns.
FAST_FLAGS = (
    "--heartbeat-interval=50",
    "--election-timeout=500",
    "--snapshot-count=10000",
    "--logger=zap",
    "--log-outputs=stderr",
)
STANDARD_PORTS = (2379, 2380)
ROOT_PASSWORD = "pft-root-password"


class EtcdError(RuntimeError):
    """etcd did not start or did not become healthy; the message ends with its log."""


def unavailable() -> str | None:
    """Why etcd tests cannot run here, or None if they can."""
    missing = [tool for tool in ("etcd", "etcdctl") if shutil.which(tool) is None]
    return f"etcd tests need {', '.join(missing)} on PATH" if missing else None


def skip_unless_available() -> None:
    """Skip the calling test or fixture when no etcd binary is installed."""
    reason = unavailable()
    if reason is not None:
        pytest.skip(reason)


def free_port(ip: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (another process may still take it later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((ip, 0))
        return int(sock.getsockname()[1])


class EtcdServer:
    """One etcd member. Use as a context manager, or call `start` and `close` yourself.

    `stop` + `start` (or `restart`) keeps the data directory and the ports, which is what an
    outage test needs; `close` also deletes the data.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        name: str = "default",
        enable_v2: bool = False,
        tls: Pki | None = None,
        netns: Namespace | None = None,
        listen_ip: str = "127.0.0.1",
        ports: tuple[int, int] | None = None,
        initial_cluster: str | None = None,
        cluster_token: str = "pft-etcd",
    ) -> None:
        """`ports` is (client, peer): free ones on loopback, 2379/2380 in a namespace.

        `initial_cluster` (`name=peer_url,...`) is for members of an `EtcdCluster`.
        """
        self.workdir = workdir
        self.name = name
        self.enable_v2 = enable_v2
        self.tls = tls
        self.netns = netns
        self.listen_ip = listen_ip
        self._pick_ports = ports is None and netns is None
        self.client_port, self.peer_port = ports or (
            STANDARD_PORTS if netns else (free_port(listen_ip), free_port(listen_ip))
        )
        self.initial_cluster = initial_cluster or f"{name}={self.peer_url}"
        self.cluster_token = cluster_token
        self.data_dir = workdir / f"{name}.etcd"
        self.log_path = workdir / f"{name}.log"
        self.process: subprocess.Popen[Any] | None = None
        self.root_credentials: tuple[str, str] | None = None  # set by enable_auth

    @property
    def endpoint(self) -> str:
        """The client URL, as given to `--etcd-endpoints`."""
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.listen_ip}:{self.client_port}"

    @property
    def endpoints(self) -> str:
        """All client URLs, comma-separated (for one server, `endpoint`)."""
        return self.endpoint

    @property
    def peer_url(self) -> str:
        return f"http://{self.listen_ip}:{self.peer_port}"

    def command(self) -> list[str]:
        """The etcd command line (flags of etcd 3.4)."""
        cmd = [
            "etcd", f"--name={self.name}", f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.endpoint}", f"--advertise-client-urls={self.endpoint}",
            f"--listen-peer-urls={self.peer_url}",
            f"--initial-advertise-peer-urls={self.peer_url}",
            f"--initial-cluster={self.initial_cluster}",
            f"--initial-cluster-token={self.cluster_token}", *FAST_FLAGS,
        ]  # fmt: skip
        if self.enable_v2:
            cmd.append("--enable-v2=true")
        if self.tls:
            cmd += [
                "--client-cert-auth", f"--trusted-ca-file={self.tls.ca_cert}",
                f"--cert-file={self.tls.server_cert}", f"--key-file={self.tls.server_key}",
            ]  # fmt: skip
        return cmd

    def spawn(self) -> None:
        """Start the process without waiting for it; see `start`."""
        if self.process is not None and self.process.poll() is None:
            raise EtcdError(f"etcd {self.name} is already running (pid {self.process.pid})")
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            if self.netns is not None:
                self.process = self.netns.popen(*self.command(), stdout=log, stderr=log)
            else:
                self.process = procs.spawn(self.command(), stdout=log, stderr=log)

    def start(self, timeout: float = 15.0) -> EtcdServer:
        """Start and wait until healthy.

        Free loopback ports can be taken by another process between `free_port` and etcd's
        bind; then the server moves to other free ports, at most twice.
        """
        retries = 2 if self._pick_ports else 0
        while True:
            self.spawn()
            try:
                self.wait_healthy(timeout)
                return self
            except EtcdError:
                self.stop()  # it may still run, just not healthy
                if retries == 0 or "address already in use" not in self.log_tail():
                    raise
            retries -= 1
            self.client_port = free_port(self.listen_ip)
            self.peer_port = free_port(self.listen_ip)
            self.initial_cluster = f"{self.name}={self.peer_url}"
            self.log_path.unlink()
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def wait_healthy(self, timeout: float = 15.0) -> None:
        """Poll `etcdctl endpoint health` until it succeeds; raise EtcdError on timeout or exit."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise EtcdError(f"etcd {self.name} exited during start-up\n{self.log_tail()}")
            health = self.etcdctl("endpoint", "health", "--command-timeout=1s", check=False)
            if health.returncode == 0:
                return
            time.sleep(0.05)
        raise EtcdError(f"etcd {self.name} not healthy after {timeout} s\n{self.log_tail()}")

    def stop(self) -> None:
        """Stop the process by PID (SIGTERM, then SIGKILL); the data stays."""
        if self.process is not None:
            procs.stop(self.process)

    def restart(self, timeout: float = 15.0) -> None:
        """Stop, then start again on the same data directory and ports."""
        self.stop()
        self.spawn()
        self.wait_healthy(timeout)

    def close(self) -> None:
        """Stop and delete the data directory."""
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(FileNotFoundError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"

    def client_env(self, api: Api = 3) -> dict[str, str]:
        """The `ETCDCTL_*` variables that point `etcdctl` at this server (merge into os.environ)."""
        return _client_env(self.endpoints, self.tls, self.root_credentials, api)

    def etcdctl(
        self,
        *args: str,
        api: Api = 3,
        input: str | None = None,
        check: bool = True,
        timeout: float = 10.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run etcdctl against this server (inside its namespace, if it has one)."""
        return _etcdctl(
            self.netns,
            client_env=self.client_env(api),
            args=args,
            input=input,
            check=check,
            timeout=timeout,
        )

    def enable_auth(
        self, user: str, password: str, *, prefix: str = "/coreos.com/network/"
    ) -> None:
        """Create root and `user` (readwrite on `prefix`, through a role of the same name),
        then turn authentication on. Later `etcdctl` calls here act as root."""
        for args in (
            ("user", "add", "root", f"--new-user-password={ROOT_PASSWORD}"),
            ("role", "add", user),
            ("role", "grant-permission", user, "--prefix=true", "readwrite", prefix),
            ("user", "add", user, f"--new-user-password={password}"),
            ("user", "grant-role", user, user),
            ("auth", "enable"),
        ):
            self.etcdctl(*args)
        self.root_credentials = ("root", ROOT_PASSWORD)

    def __enter__(self) -> EtcdServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class EtcdCluster:
    """Several etcd members forming one cluster, started together.

    With `hosts` (namespaces of a `Topology`), member i runs in `hosts[i]` on its underlay
    address with ports 2379/2380, as in the classic flannel walkthrough; without, members
    listen on 127.0.0.1 with free ports.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        hosts: Sequence[Host] = (),
        size: int = 2,
        enable_v2: bool = False,
    ) -> None:
        places: list[tuple[Namespace | None, str, tuple[int, int]]]
        if hosts:
            places = [(host.ns, host.ip, STANDARD_PORTS) for host in hosts]
        else:
            places = [(None, "127.0.0.1", (free_port(), free_port())) for _ in range(size)]
        token = f"pft-{secrets.token_hex(4)}"
        self.members = [
            EtcdServer(
                workdir,
                name=f"etcd{index}",
                enable_v2=enable_v2,
                netns=ns,
                listen_ip=ip,
                ports=ports,
                cluster_token=token,
            )
            for index, (ns, ip, ports) in enumerate(places, start=1)
        ]
        initial_cluster = ",".join(f"{member.name}={member.peer_url}" for member in self.members)
        for member in self.members:
            member.initial_cluster = initial_cluster

    @property
    def endpoints(self) -> str:
        """All client URLs, comma-separated, as given to `--etcd-endpoints`."""
        return ",".join(member.endpoint for member in self.members)

    def start(self, timeout: float = 15.0) -> EtcdCluster:
        """Start every member, then wait for each (none is healthy before a quorum is up)."""
        try:
            for member in self.members:
                member.spawn()
            for member in self.members:
                member.wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for member in self.members:
            member.stop()

    def close(self) -> None:
        for member in self.members:
            member.close()

    def client_env(self, api: Api = 3) -> dict[str, str]:
        return _client_env(self.endpoints, None, None, api)

    def etcdctl(
        self,
        *args: str,
        api: Api = 3,
        input: str | None = None,
        check: bool = True,
        timeout: float = 10.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run etcdctl against all members (from the first member's namespace, if any)."""
        ns = self.members[0].netns
        return _etcdctl(
            ns,
            client_env=self.client_env(api),
            args=args,
            input=input,
            check=check,
            timeout=timeout,
        )

    def __enter__(self) -> EtcdCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _client_env(
    endpoints: str, tls: Pki | None, credentials: tuple[str, str] | None, api: Api
) -> dict[str, str]:
    """etcdctl's variables differ per API version, and it warns about ones it does not know."""
    env = {"ETCDCTL_API": str(api), "ETCDCTL_ENDPOINTS": endpoints}
    if tls is not None:
        names = ("CACERT", "CERT", "KEY") if api == 3 else ("CA_FILE", "CERT_FILE", "KEY_FILE")
        paths = (tls.ca_cert, tls.client_cert, tls.client_key)
        env.update({f"ETCDCTL_{name}": str(path) for name, path in zip(names, paths, strict=True)})
    if credentials is not None and api == 3:
        env["ETCDCTL_USER"] = ":".join(credentials)
    return env


def etcdctl_env(client_env: dict[str, str]) -> dict[str, str]:
    """os.environ without any `ETCDCTL_*` of the caller's shell, plus `client_env`."""
    base = {key: value for key, value in os.environ.items() if not key.startswith("ETCDCTL_")}
    return base | client_env


def _etcdctl(
    ns: Namespace | None,
    *,
    client_env: dict[str, str],
    args: Sequence[str],
    input: str | None,
    check: bool,
    timeout: float,
) -> subprocess.CompletedProcess[str]:
    env = etcdctl_env(client_env)
    if ns is not None:
        return ns.run("etcdctl", *args, input=input, env=env, check=check, timeout=timeout)
    return run("etcdctl", *args, input=input, env=env, check=check, timeout=timeout)
