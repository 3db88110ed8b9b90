"""``python -m pyflannel.demo`` (``scripts/demo.sh``): a flannel cluster on one machine.

It starts etcd and three hosts running pyflanneld in network namespaces, puts a
container behind each host's docker0, and shows, step by step, what the classic
flannel walkthrough shows by hand: the network config, each host's subnet.env, the
leases, what pyflanneld programmed in the kernel, and a ping and a traceroute
between containers on different hosts. Then it removes everything, even after a
failure or Ctrl-C; with ``--keep`` the cluster stays up and ``--down`` removes it
later. Needs root. Every namespace is named ``pfdemo-...``; every ping is bounded.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

from pyflannel.demo import netns, scenario
from pyflannel.demo.netns import DemoError, State

DEFAULT_WORKDIR = Path("/tmp/pyflannel-demo")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/demo.sh",
        description="Run a pyflannel cluster (etcd + hosts + containers) in network namespaces.",
    )
    parser.add_argument("--backend", choices=scenario.BACKENDS, default="vxlan")
    parser.add_argument("--hosts", type=int, choices=range(2, 7), default=3, metavar="2..6")
    parser.add_argument("--keep", action="store_true", help="leave the cluster running")
    parser.add_argument("--down", action="store_true", help="remove a cluster left by --keep")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=DEFAULT_WORKDIR,
        help=f"logs, etcd data and state (default {DEFAULT_WORKDIR})",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the demo (or ``--down``); returns the exit status."""
    args = parse(sys.argv[1:] if argv is None else argv)
    if os.geteuid() != 0:
        print("the demo creates network namespaces: run it as root", file=sys.stderr)
        return 1
    if args.down:
        return down(args.workdir)
    leftovers = netns.existing()
    if leftovers:
        names = ", ".join(leftovers)
        print(f"a demo is set up ({names}); remove it: scripts/demo.sh --down", file=sys.stderr)
        return 1
    args.workdir.mkdir(parents=True, exist_ok=True)
    state = State(args.workdir / "state.json")
    state.save()
    return _run(args, state)


def _run(args: argparse.Namespace, state: State) -> int:
    ok, interrupted = False, False
    with _signals_interrupt():
        try:
            ok = scenario.run(args.backend, args.hosts, state, args.workdir)
        except KeyboardInterrupt:
            interrupted = True
            print("\ninterrupted", flush=True)
        except DemoError as exc:
            print(f"\ndemo failed: {exc}", flush=True)
        finally:
            if args.keep and not interrupted:
                scenario.print_keep_instructions(state, args.workdir)
            else:
                _teardown(state, args.workdir)
    return 0 if ok else 1


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP end the demo as Ctrl-C does: with a teardown."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _teardown(state: State, workdir: Path) -> None:
    """Stop, delete, clean; not interruptible by a second Ctrl-C."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        stopped, deleted = state.teardown()
        _remove_files(workdir)
        done = f"stopped {stopped} processes, deleted {deleted} namespaces"
        print(f"\nteardown: {done}, removed the files in {workdir}", flush=True)
    finally:
        signal.signal(signal.SIGINT, previous)


def _remove_files(workdir: Path) -> None:
    """What the demo wrote in ``workdir``, and the directory itself once empty."""
    for path in (*workdir.glob("h[0-9]"), workdir / "etcd"):
        shutil.rmtree(path, ignore_errors=True)
    for name in ("etcd.log", "network-config.json", "state.json", "state.tmp"):
        (workdir / name).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        workdir.rmdir()


def down(workdir: Path) -> int:
    """Remove a kept cluster: what its state file lists, else any pfdemo- namespace."""
    path = workdir / "state.json"
    if path.exists():
        state = State.load(path)
    else:
        state = State(path, netns.existing())
        for name in state.namespaces:
            state.processes.extend(netns.processes_in(name))
    if not state.namespaces and not state.processes:
        print("no demo cluster to remove")
        return 0
    workdir.mkdir(parents=True, exist_ok=True)
    _teardown(state, workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
