"""Child processes of the test run, tracked so that none of them outlives it.

Every long-running process a test starts (etcd, a daemon, iperf3) goes through `spawn`, which
records it by PID. `stop` ends one process; `stop_all` ends whatever is still recorded and is
called by the fixtures, by the session hook in conftest and at interpreter exit.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from typing import Any, Literal

logger = logging.getLogger(__name__)

_RUNNING: dict[int, subprocess.Popen[Any]] = {}


def spawn(cmd: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
    """Start `cmd` as the leader of a new process group and record it.

    The new group (always; `start_new_session` cannot be turned off) lets `stop` reach
    helpers the command forks itself. When called on the main
    thread the command also runs under `setpriv --pdeathsig KILL`, so that a test run killed
    with SIGKILL takes its children along; the kernel ties that signal to the forking
    *thread*, which is why other threads (whose exit means nothing) go without it.
    """
    argv = list(cmd)
    if threading.current_thread() is threading.main_thread() and shutil.which("setpriv"):
        argv = ["setpriv", "--pdeathsig", "KILL", "--", *argv]
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    kwargs["start_new_session"] = True
    proc: subprocess.Popen[Any] = subprocess.Popen(argv, **kwargs)
    _RUNNING[proc.pid] = proc
    logger.debug("started pid %d: %s", proc.pid, " ".join(cmd))
    return proc


def stop(proc: subprocess.Popen[Any], grace: float = 5.0) -> int | None:
    """End `proc` by PID: SIGTERM to its group, then SIGKILL after `grace` seconds.

    Safe to call twice and on processes that already exited. Returns the exit status.
    """
    try:
        if proc.poll() is None:
            _signal_group(proc.pid, signal.SIGTERM)
            state = _wait_exit(proc.pid, grace)
            if state == "running":
                logger.warning("pid %d ignored SIGTERM for %.1f s; killing it", proc.pid, grace)
            if state != "reaped":
                # Either this ends a leader that ignored SIGTERM, or the leader has exited but
                # is not reaped yet, so its PID still names our group and no other: helpers
                # it forked die here instead of living on as orphans.
                _signal_group(proc.pid, signal.SIGKILL)
            proc.wait(grace)
    finally:
        _RUNNING.pop(proc.pid, None)
    return proc.returncode


def stop_all() -> None:
    """Stop every process `spawn` started that is still recorded."""
    for proc in list(_RUNNING.values()):
        stop(proc)


def running() -> list[subprocess.Popen[Any]]:
    """The recorded processes that have not exited yet."""
    return [proc for proc in _RUNNING.values() if proc.poll() is None]


def _wait_exit(pid: int, timeout: float) -> Literal["exited", "running", "reaped"]:
    """Wait up to `timeout` for `pid` to exit, without reaping it (WNOWAIT)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return "exited"
        except ChildProcessError:  # someone else reaped it: the PID is no longer ours
            return "reaped"
        time.sleep(0.02)
    return "running"


def _signal_group(pgid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signum)


atexit.register(stop_all)
