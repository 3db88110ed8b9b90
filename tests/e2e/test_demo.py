"""The README's demo command runs to completion, its pings succeed, and it leaves nothing.

``scripts/demo.sh`` is run as an operator runs it (set-up included), with its own work
directory. It runs with vxlan, the default, once that backend is registered (alloc
until then, which has no data path and skips the pings), and with udp, which has one.
A run interrupted with Ctrl-C must tear down all the same.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyflannel.backends import BACKENDS

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
STEPS = 11
RUNTIME_LIMIT = 60.0


def demo_namespaces() -> list[str]:
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return [line.split()[0] for line in listing.stdout.splitlines() if line.startswith("pfdemo-")]


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    """The demo's work directory; whatever a failed run left is removed afterwards."""
    if demo_namespaces():
        pytest.skip("a demo cluster is set up on this machine (scripts/demo.sh --down)")
    path = tmp_path / "demo"
    try:
        yield path
    finally:
        down = [sys.executable, "-m", "pyflannel.demo", "--down", f"--workdir={path}"]
        subprocess.run(down, capture_output=True, timeout=60, check=False)
        assert demo_namespaces() == []


def processes_using(workdir: Path) -> list[int]:
    """PIDs whose command line names ``workdir`` (etcd's data directory, for one)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(workdir).encode() in cmdline.read_bytes():
                found.append(int(cmdline.parent.name))
        except OSError:
            continue
    return found


def backends() -> list[str]:
    first = "vxlan" if "vxlan" in BACKENDS else "alloc"
    return [first, *(["udp"] if "udp" in BACKENDS else [])]


@pytest.mark.parametrize("backend", backends())
def test_demo_runs_to_completion_and_cleans_up(workdir: Path, backend: str) -> None:
    command = ["bash", str(ROOT / "scripts" / "demo.sh"), f"--backend={backend}"]
    # set-up first (a no-op once everything is installed), so the timing is the demo's
    subprocess.run(["bash", str(ROOT / "scripts" / "setup.sh")], capture_output=True, check=True)
    started = time.monotonic()
    result = subprocess.run(
        [*command, f"--workdir={workdir}"], capture_output=True, text=True, timeout=180, check=False
    )
    took = time.monotonic() - started
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    for index in range(1, STEPS + 1):
        assert f"\n[{index}/{STEPS}] " in out, f"step {index} missing:\n{out}"
    assert "$ pyflannelctl leases" in out and "FLANNEL_SUBNET=10.5." in out
    assert "The cluster works." in out
    if backend == "alloc":
        assert "skipped: alloc has no data path" in out
    else:
        assert out.count("-> ok") == 2 and "FAILED" not in out
        assert "traceroute to 10.5." in out
    assert "teardown: stopped 4 processes, deleted 8 namespaces" in out
    assert demo_namespaces() == [] and not workdir.exists()
    assert processes_using(workdir) == []
    assert took < RUNTIME_LIMIT, f"the demo took {took:.1f} s"


def test_interrupted_demo_tears_down(workdir: Path) -> None:
    command = [sys.executable, "-m", "pyflannel.demo", "--backend=alloc", f"--workdir={workdir}"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while not (workdir / "etcd.log").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, out
    assert "interrupted" in out and "teardown: stopped" in out
    assert demo_namespaces() == [] and not workdir.exists()
    assert processes_using(workdir) == []
