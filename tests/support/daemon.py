"""Running the real ``pyflanneld`` inside a test host namespace.

`start_daemon` launches the console script of this virtual environment in the host's
namespace with the given flags (plus ``--subnet-file`` in the test's directory, since
``ip netns exec`` does not isolate /run), records the process so teardown stops it by
PID, and captures its log. `Daemon.wait_ready` waits for subnet.env, which the daemon
writes only after it holds a lease.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from support import procs
from support.netns import Host

PYFLANNELD = str(Path(sys.executable).with_name("pyflanneld"))


class DaemonError(RuntimeError):
    """The daemon did not behave as the test expected; the message holds its log tail."""


@dataclass
class Daemon:
    """One pyflanneld process on a test host."""

    host: Host
    args: tuple[str, ...]
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[Any] | None = None
    _stale: tuple[int, int] | None = None  # (inode, mtime) of subnet.env from an earlier run

    @property
    def subnet_file(self) -> Path:
        return self.workdir / "subnet.env"

    @property
    def log_path(self) -> Path:
        return self.workdir / "pyflanneld.log"

    def start(self) -> Daemon:
        """Start (or start again after a stop) with the same flags and subnet file."""
        if self.proc is not None and self.proc.poll() is None:
            raise DaemonError(f"daemon on {self.host.ip} is already running")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._stale = _identity(self.subnet_file)
        cmd = [PYFLANNELD, *self.args, f"--subnet-file={self.subnet_file}"]
        env = {**os.environ, **self.env}
        with self.log_path.open("ab") as log:
            self.proc = self.host.ns.popen(*cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        return self

    def log(self) -> str:
        """Everything the daemon printed so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def wait_ready(self, timeout: float = 30.0) -> dict[str, str]:
        """Wait for the subnet.env this run writes and return its values; fail with the log
        if the daemon died. A file left by an earlier run does not count."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.subnet_file.exists() and _identity(self.subnet_file) != self._stale:
                text = self.subnet_file.read_text()
                if text.endswith("\n") and "FLANNEL_IPMASQ" in text:
                    return dict(line.split("=", 1) for line in text.splitlines())
            if self.proc is not None and self.proc.poll() is not None:
                raise DaemonError(
                    f"pyflanneld exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            time.sleep(0.05)
        raise DaemonError(f"pyflanneld not ready after {timeout} s:\n{self.log_tail()}")

    def wait_log(self, text: str, timeout: float = 20.0) -> None:
        """Wait until ``text`` appears in the log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return
            time.sleep(0.05)
        raise DaemonError(f"{text!r} not logged within {timeout} s:\n{self.log_tail()}")

    def wait_exit(self, timeout: float = 15.0) -> int:
        """Wait for the process to end by itself; its exit status."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise DaemonError(
                f"pyflanneld still running after {timeout} s:\n{self.log_tail()}"
            ) from None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, as systemd stops it; the exit status (SIGKILL after ``timeout``)."""
        if self.proc is None:
            return None
        return procs.stop(self.proc, grace=timeout)

    def kill(self) -> int | None:
        """SIGKILL: a crash."""
        if self.proc is None:
            return None
        self.signal(signal.SIGKILL)
        return self.proc.wait(10)


def _identity(path: Path) -> tuple[int, int] | None:
    """Changes whenever the file is replaced (the daemon writes it by atomic rename)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def start_daemon(
    host: Host, workdir: Path, *args: str, env: dict[str, str] | None = None, wait: bool = True
) -> Daemon:
    """Start pyflanneld on ``host`` with ``args``; by default wait until it is ready."""
    daemon = Daemon(host, tuple(args), workdir, dict(env or {})).start()
    if wait:
        daemon.wait_ready()
    return daemon
