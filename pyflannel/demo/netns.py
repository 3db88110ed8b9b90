"""Namespaces and processes of the demo, and the record that lets ``--down`` remove them.

Everything the demo creates is named ``pfdemo-...`` and written to ``state.json`` in
the work directory the moment it exists, so a later ``--down`` (or the teardown of
an interrupted run) removes exactly that: processes by PID, checked against the
start time recorded with them so a recycled PID is never signalled, then the
namespaces. Long-running processes get a session of their own, so a Ctrl-C in the
terminal reaches only the demo, which then tears down in order.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

PREFIX = "pfdemo-"


class DemoError(Exception):
    """A step failed; the message says which and why."""


def run(
    *cmd: str, check: bool = True, timeout: float = 30.0, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion, output captured; DemoError (with stderr) on failure."""
    try:
        result = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise DemoError(f"{' '.join(cmd)} did not finish within {timeout} s") from exc
    if check and result.returncode != 0:
        raise DemoError(f"{' '.join(cmd)} failed: {(result.stderr or result.stdout).strip()}")
    return result


def in_ns(ns: str, *cmd: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a command inside namespace ``ns``."""
    return run("ip", "netns", "exec", ns, *cmd, **kwargs)


def ip(ns: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``ip -n <ns> ...``."""
    return run("ip", "-n", ns, *args)


def existing() -> list[str]:
    """The demo namespaces on this machine (from this or an earlier run)."""
    names = run("ip", "netns", "list").stdout.split("\n")
    return sorted(line.split()[0] for line in names if line.startswith(PREFIX))


@dataclasses.dataclass(frozen=True, slots=True)
class Proc:
    """A long-running process of the demo, identified by PID and kernel start time."""

    name: str
    pid: int
    starttime: int


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks after boot (None if it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


@dataclasses.dataclass
class State:
    """What the demo created, saved after every change."""

    path: Path
    namespaces: list[str] = dataclasses.field(default_factory=list)
    processes: list[Proc] = dataclasses.field(default_factory=list)
    _popens: dict[int, subprocess.Popen[bytes]] = dataclasses.field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> State:
        data = json.loads(path.read_text())
        procs = [Proc(**entry) for entry in data.get("processes", [])]
        return cls(path, list(data.get("namespaces", [])), procs)

    def save(self) -> None:
        data = {
            "namespaces": self.namespaces,
            "processes": [dataclasses.asdict(p) for p in self.processes],
        }
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        tmp.replace(self.path)

    def add_namespace(self, name: str, *sysctls: str) -> str:
        """Create ``name`` (with ``lo`` up and IPv6 off, plus ``sysctls``) and record it."""
        if not name.startswith(PREFIX):
            raise ValueError(f"demo namespaces start with {PREFIX}: {name}")
        run("ip", "netns", "add", name)
        self.namespaces.append(name)
        self.save()
        ip(name, "link", "set", "lo", "up")
        settings = ("net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
        in_ns(name, "sysctl", "-q", "-w", *settings, *sysctls)
        return name

    def spawn(
        self, name: str, ns: str, cmd: Sequence[str], log: IO[bytes], env: Mapping[str, str]
    ) -> subprocess.Popen[bytes]:
        """Start ``cmd`` in ``ns`` in a session of its own; record it by PID."""
        popen = subprocess.Popen(
            ["ip", "netns", "exec", ns, *cmd],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env),
            start_new_session=True,
        )
        self._popens[popen.pid] = popen
        self.processes.append(Proc(name, popen.pid, start_time(popen.pid) or 0))
        self.save()
        return popen

    def teardown(self) -> tuple[int, int]:
        """Stop every process, newest first, then delete every namespace.

        Returns (processes stopped, namespaces deleted).
        """
        stopped = sum(self._stop(proc) for proc in reversed(self.processes))
        self.processes.clear()
        self.save()
        deleted = 0
        for name in reversed(self.namespaces):
            if run("ip", "netns", "delete", name, check=False).returncode == 0:
                deleted += 1
        self.namespaces.clear()
        self.save()
        return stopped, deleted

    def _stop(self, proc: Proc) -> bool:
        """SIGTERM to the process's group, SIGKILL after 5 s; only if it is still ours."""
        popen = self._popens.pop(proc.pid, None)
        if popen is None and start_time(proc.pid) != proc.starttime:
            return False  # gone, or the PID now belongs to another process
        if popen is not None and popen.poll() is not None:
            return False
        _signal(proc.pid, signal.SIGTERM)
        if not _wait_gone(proc, popen, 5.0):
            _signal(proc.pid, signal.SIGKILL)
            _wait_gone(proc, popen, 5.0)
        return True


def _signal(pid: int, sig: signal.Signals) -> None:
    """Signal the process's group when it leads one (helpers it forked go too)."""
    with contextlib.suppress(ProcessLookupError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def processes_in(ns: str) -> list[Proc]:
    """The processes running in namespace ``ns`` (for ``--down`` without a state file)."""
    pids = run("ip", "netns", "pids", ns, check=False).stdout.split()
    found = [(int(pid), start_time(int(pid))) for pid in pids if pid.isdigit()]
    return [Proc(f"pid {pid} in {ns}", pid, started) for pid, started in found if started]


def _wait_gone(proc: Proc, popen: subprocess.Popen[bytes] | None, timeout: float) -> bool:
    if popen is not None:
        try:
            popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if start_time(proc.pid) != proc.starttime:
            return True
        time.sleep(0.05)
    return False
