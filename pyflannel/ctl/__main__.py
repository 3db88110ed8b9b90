"""Entry point of ``pyflannelctl`` (and ``python -m pyflannel.ctl``).

Daemon flags are the daemon's: wherever they stand on the command line they are
taken out and handed to :func:`pyflannel.cli.parse_args`, so Go's flag rules, value
conversion and the ``FLANNELD_*`` fallback are exactly the daemon's, and a unit's
flag line can be pasted as it is (flags pyflannelctl has no use for, such as
``--iface``, are accepted and ignored). Where a flag is not given, its value comes
from the process environment, then from the unit's environment file (``--env-file``,
default ``/etc/pyflannel/pyflanneld.env`` when it exists), so on a host
``pyflannelctl status`` sees what the daemon sees.

Exit statuses: 0 success, 1 an error or a problem found, 2 a command-line error.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any

from pyflannel import __version__, dockeropts
from pyflannel.cli import FLAGS, FlagKind, FlagSpec, UsageError, parse_args
from pyflannel.core.subnetenv import parse_env
from pyflannel.ctl import commands
from pyflannel.errors import ConfigError, PyflannelError
from pyflannel.options import Options, validate

DEFAULT_ENV_FILE = "/etc/pyflannel/pyflanneld.env"
_EXTRA_FLAGS = ("subnet-file", "subnet-lease-renew-margin")
CTL_FLAGS: tuple[FlagSpec, ...] = tuple(
    spec for spec in FLAGS if spec.group == "etcd" or spec.name in _EXTRA_FLAGS
)
_BY_NAME = {spec.name: spec for spec in FLAGS if spec.name != "version"}
Command = Callable[[Options, argparse.Namespace], Coroutine[Any, Any, int]]


def split_daemon_flags(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """(the daemon's flags with their values, everything else), order kept in each.

    A flag's value is the next word unless it is a bool or written ``--name=value``,
    as in Go's flag package. ``--version`` stays with pyflannelctl's own options.
    """
    daemon: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        spec = _BY_NAME.get(arg.lstrip("-").partition("=")[0]) if arg.startswith("-") else None
        if arg == "--":
            rest.extend(args[i:])
            break
        if spec is None:
            rest.append(arg)
        elif "=" in arg or spec.kind is FlagKind.BOOL or i + 1 == len(args):
            daemon.append(arg)
        else:
            daemon.extend(args[i : i + 2])
            i += 1
        i += 1
    return daemon, rest


def _flag_parent() -> argparse.ArgumentParser:
    """The daemon's flags pyflannelctl uses, for the help text only (see the docstring)."""
    parent = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    group = parent.add_argument_group(
        "daemon flags (one or two dashes; any other pyflanneld flag is accepted and ignored)"
    )
    for spec in CTL_FLAGS:
        env = f" [${spec.env}]" if spec.env else ""
        group.add_argument(
            f"--{spec.name}",
            metavar=spec.metavar.strip().upper() or None,
            default=argparse.SUPPRESS,
            help=f"{spec.help} (default {spec.default_text}){env}",
        )
    group.add_argument(
        "--env-file",
        default=argparse.SUPPRESS,
        help=f"read FLANNELD_* variables from this file (default {DEFAULT_ENV_FILE}"
        " if it exists; '' for none)",
    )
    return parent


def build_parser() -> argparse.ArgumentParser:
    """The command line: global flags, then a command."""
    parent = _flag_parent()
    parser = argparse.ArgumentParser(
        prog="pyflannelctl",
        description="Inspect and configure a pyflannel/flanneld network stored in etcd.",
        parents=[parent],
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    config = sub.add_parser("config", help="write or read the network config")
    config_sub = config.add_subparsers(dest="action", required=True, metavar="ACTION")
    setter = config_sub.add_parser(
        "set", parents=[parent], help="validate FILE (- for stdin) and store it in etcd"
    )
    setter.add_argument("file", metavar="FILE")
    setter.set_defaults(run=_config_set)
    getter = config_sub.add_parser("get", parents=[parent], help="print the stored config")
    getter.set_defaults(run=_config_get)
    for name, run, text in (
        ("leases", _leases, "list every lease (subnet, public IP, backend, VTEP MAC, time left)"),
        ("status", _status, "check this host: subnet.env, its lease, and the kernel's entries"),
    ):
        command = sub.add_parser(name, parents=[parent], help=text)
        command.add_argument("--json", action="store_true", help="print JSON")
        command.set_defaults(run=run)
    sub.add_parser(
        "docker-opts",
        help="write Docker options from subnet.env, as mk-docker-opts.sh"
        " (-f FILE -d FILE -i -c -m -k KEY; -h for details)",
        add_help=False,
    )
    return parser


async def _config_set(options: Options, ns: argparse.Namespace) -> int:
    path: str = ns.file
    text = sys.stdin.read() if path == "-" else _read(path)
    return await commands.config_set(options, text)


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc


async def _config_get(options: Options, ns: argparse.Namespace) -> int:
    return await commands.config_get(options)


async def _leases(options: Options, ns: argparse.Namespace) -> int:
    return await commands.leases(options, as_json=bool(ns.json))


async def _status(options: Options, ns: argparse.Namespace) -> int:
    return await commands.status(options, as_json=bool(ns.json))


def ctl_options(
    flags: Sequence[str], ns: argparse.Namespace, environ: Mapping[str, str]
) -> Options:
    """``Options`` from the daemon flags given, the environment and the environment file.

    Only the variables of the flags pyflannelctl uses are read: a value the daemon
    would reject in another variable is the daemon's business.
    """
    names = {spec.env for spec in CTL_FLAGS if spec.env}
    env = {k: v for k, v in _env_file(ns).items() if k in names}
    env.update({k: v for k, v in environ.items() if k in names})
    options = parse_args(flags, env)
    validate(options)
    return options


def _env_file(ns: argparse.Namespace) -> dict[str, str]:
    path: str | None = getattr(ns, "env_file", None)
    if path == "":
        return {}
    if path is None:
        if not os.path.exists(DEFAULT_ENV_FILE):
            return {}
        path = DEFAULT_ENV_FILE
    return parse_env(_read(path))


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Run one command; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    env = os.environ if environ is None else environ
    flags, rest = split_daemon_flags(args)
    command = _command_index(rest)
    tail: list[str] = []
    if command is not None and rest[command] == "docker-opts":
        rest, tail = rest[: command + 1], rest[command + 1 :]
    try:
        ns = build_parser().parse_args(rest)
    except SystemExit as exc:  # argparse printed the usage, the help or the version
        return exc.code if isinstance(exc.code, int) else 2
    if ns.command == "docker-opts":
        return dockeropts.main(tail, env, prog="pyflannelctl docker-opts")
    return _run(flags, ns, env)


def _command_index(rest: Sequence[str]) -> int | None:
    """Where the command word is: the first word that is not an option or its value.

    The words after ``docker-opts`` belong to it alone (mk-docker-opts.sh's options).
    """
    i = 0
    while i < len(rest):
        word = rest[i]
        if word == "--env-file":
            i += 2
            continue
        if not word.startswith("-"):
            return i
        i += 1
    return None


def _run(flags: Sequence[str], ns: argparse.Namespace, env: Mapping[str, str]) -> int:
    """Run the parsed command; errors become a message and an exit status."""
    logging.basicConfig(level=logging.WARNING, format="pyflannelctl: %(levelname)s: %(message)s")
    status = 1
    try:
        options = ctl_options(flags, ns, env)
        run: Command = ns.run
        status = asyncio.run(run(options, ns))
    except UsageError as exc:
        sys.stderr.write(f"pyflannelctl: {exc}\n")
        status = 2
    except PyflannelError as exc:
        sys.stderr.write(f"pyflannelctl: {exc}\n")
    except KeyboardInterrupt:
        status = 130
    return status


def console() -> None:
    """Console-script wrapper that exits with :func:`main`'s status."""
    sys.exit(main())


if __name__ == "__main__":
    console()
