"""Docker daemon options from subnet.env: flanneld's ``mk-docker-opts.sh``, in Python.

Run as ``pyflannelctl docker-opts``, with the script's options and output::

    pyflannelctl docker-opts [-f FLANNEL-ENV-FILE] [-d DOCKER-ENV-FILE] [-i] [-c] [-m]
                             [-k COMBINED-KEY]

It reads ``/run/flannel/subnet.env`` (``-f``) and writes ``/run/docker_opts.env``
(``-d``), whose lines a Docker unit can load with ``EnvironmentFile=``::

    DOCKER_OPT_BIP="--bip=10.1.74.1/24"
    DOCKER_OPT_IPMASQ="--ip-masq=true"
    DOCKER_OPT_MTU="--mtu=1472"
    DOCKER_OPTS=" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472"

The rules are the script's, including its quirks, so that units written for it keep
working:

- Options are parsed as POSIX ``getopts "f:d:icmk:?h"`` does: grouped flags (``-ic``),
  ``-fFILE`` or ``-f FILE``, parsing stops at ``--`` or the first other word;
  ``-h``, ``-?`` or an unknown option print the usage and exit 1.
- ``-i`` writes the ``DOCKER_OPT_*`` lines, ``-c`` the combined line; with neither,
  both. ``-m`` leaves out ``--ip-masq`` (for Docker versions without it).
- ``--ip-masq`` is the inverse of ``FLANNEL_IPMASQ``: when flannel masquerades,
  Docker must not. A value other than ``true``/``false`` is an error.
- The variables seen are the process environment overlaid with the file, so
  ``DOCKER_OPT_*`` variables already in the environment are written too, and the
  combined value starts with the combined variable's existing value. The leading
  space of the combined value is the script's.
- Lines are sorted by variable name, as the shell's ``set`` lists them.
- After writing, an existing route with a gateway for this host's own subnet is an
  error ("Your routing table already contains the subnet"), as in flannel v0.28.

Differences: the output is written atomically (temp file and rename) and its
directory is created when missing; the route check reads ``/proc/net/route``
rather than grepping ``ip route show``, so it matches the exact subnet only.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from collections.abc import Mapping, Sequence
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any

from pyflannel.core.subnetenv import parse_env
from pyflannel.errors import ConfigError
from pyflannel.files import write_atomic

OPTSTRING = "f:d:icmk:?h"
INDIVIDUAL_PREFIX = "DOCKER_OPT_"
PROC_NET_ROUTE = "/proc/net/route"
RTF_GATEWAY = 0x2
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

USAGE = """\
{prog} [-f FLANNEL-ENV-FILE] [-d DOCKER-ENV-FILE] [-i] [-c] [-m] [-k COMBINED-KEY]

Generate Docker daemon options based on flannel env file
OPTIONS:
\t-f\tPath to flannel env file. Defaults to /run/flannel/subnet.env
\t-d\tPath to Docker env file to write to. Defaults to /run/docker_opts.env
\t-i\tOutput each Docker option as individual var. e.g. DOCKER_OPT_MTU=1500
\t-c\tOutput combined Docker options into DOCKER_OPTS var
\t-k\tSet the combined options key to this value (default DOCKER_OPTS=)
\t-m\tDo not output --ip-masq (useful for older Docker version)
"""


class DockerOptsUsage(Exception):
    """The options were malformed or help was asked for: print the usage, exit 1.

    ``diagnostic`` is what ``getopts`` prints first ("" for ``-h``).
    """

    def __init__(self, diagnostic: str = "") -> None:
        super().__init__(diagnostic)
        self.diagnostic = diagnostic


@dataclasses.dataclass(frozen=True, slots=True)
class DockerOptsArgs:
    """The script's settings, with its defaults."""

    flannel_env: str = "/run/flannel/subnet.env"
    docker_env: str = "/run/docker_opts.env"
    individual: bool = False
    combined: bool = False
    ipmasq: bool = True
    combined_key: str = "DOCKER_OPTS"

    def outputs(self) -> tuple[bool, bool]:
        """(individual lines, combined line): both when neither was asked for."""
        if not self.individual and not self.combined:
            return True, True
        return self.individual, self.combined


def parse_getopts(argv: Sequence[str]) -> DockerOptsArgs:
    """Parse ``argv`` as ``getopts "f:d:icmk:?h"``; raise ``DockerOptsUsage`` on errors."""
    # Keys are DockerOptsArgs fields; each value's type follows from the option table.
    values: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            break
        if len(arg) < 2 or arg[0] != "-":
            break
        i = _parse_group(argv, i, values)
    args = dataclasses.replace(DockerOptsArgs(), **values)
    if not _IDENTIFIER.fullmatch(args.combined_key):
        raise DockerOptsUsage(f"-k {args.combined_key!r} is not a shell variable name")
    return args


_FLAG_FIELDS = {"i": ("individual", True), "c": ("combined", True), "m": ("ipmasq", False)}
_VALUE_FIELDS = {"f": "flannel_env", "d": "docker_env", "k": "combined_key"}


def _parse_group(argv: Sequence[str], i: int, values: dict[str, Any]) -> int:
    """One word of grouped options (``-ic``, ``-fFILE``); the index of the next word."""
    group = argv[i]
    pos = 1
    while pos < len(group):
        letter = group[pos]
        pos += 1
        if letter in _FLAG_FIELDS:
            name, value = _FLAG_FIELDS[letter]
            values[name] = value
        elif letter in _VALUE_FIELDS:
            if pos < len(group):
                values[_VALUE_FIELDS[letter]] = group[pos:]
                return i + 1
            if i + 1 >= len(argv):
                raise DockerOptsUsage(f"No arg for -{letter} option")
            values[_VALUE_FIELDS[letter]] = argv[i + 1]
            return i + 2
        elif letter in "?h":
            raise DockerOptsUsage()
        else:
            raise DockerOptsUsage(f"Illegal option -{letter}")
    return i + 1


def docker_variables(variables: Mapping[str, str], *, ipmasq: bool) -> dict[str, str]:
    """Every ``DOCKER_OPT_*`` variable after the script's derivation, sorted by name.

    ``variables`` is the environment overlaid with subnet.env. Raises ``ConfigError``
    for a ``FLANNEL_IPMASQ`` that is neither ``true`` nor ``false``.
    """
    derived = {
        name: value
        for name, value in variables.items()
        if name.startswith(INDIVIDUAL_PREFIX) and _IDENTIFIER.fullmatch(name)
    }
    if variables.get("FLANNEL_SUBNET"):
        derived["DOCKER_OPT_BIP"] = f"--bip={variables['FLANNEL_SUBNET']}"
    if variables.get("FLANNEL_MTU"):
        derived["DOCKER_OPT_MTU"] = f"--mtu={variables['FLANNEL_MTU']}"
    masq = variables.get("FLANNEL_IPMASQ", "")
    if masq and ipmasq:
        if masq not in ("true", "false"):
            raise ConfigError(f"Invalid value of FLANNEL_IPMASQ: {masq}")
        derived["DOCKER_OPT_IPMASQ"] = f"--ip-masq={'false' if masq == 'true' else 'true'}"
    return dict(sorted(derived.items()))


def render(variables: Mapping[str, str], args: DockerOptsArgs) -> str:
    """The output file's exact contents."""
    options = docker_variables(variables, ipmasq=args.ipmasq)
    individual, combined = args.outputs()
    lines = [f'{name}="{value}"' for name, value in options.items()] if individual else []
    if combined:
        joined = variables.get(args.combined_key, "")
        if joined:
            joined += " "
        for value in options.values():
            joined += f" {value}"
        lines.append(f'{args.combined_key}="{joined}"')
    return "".join(line + "\n" for line in lines)


def route_conflict(flannel_subnet: str, proc_net_route: str) -> str | None:
    """A main-table route with a gateway for this host's own subnet, described, or None.

    Such a route (left by an earlier lease, or a host-gw peer that held the subnet)
    would send the traffic of Docker's bridge elsewhere.
    """
    try:
        subnet = IPv4Interface(flannel_subnet).network
    except ValueError:
        return None
    for line in proc_net_route.splitlines()[1:]:
        route = _parse_route_line(line)
        if route is not None and route[0] == subnet:
            return f"{subnet} via {route[1]} dev {route[2]}"
    return None


def _parse_route_line(line: str) -> tuple[IPv4Network, IPv4Address, str] | None:
    """(destination, gateway, device) of a /proc/net/route line with a gateway, or None."""
    fields = line.split()
    if len(fields) < 8:
        return None
    try:
        if not int(fields[3], 16) & RTF_GATEWAY:
            return None
        dst = IPv4Network(f"{_hex_ip(fields[1])}/{_hex_ip(fields[7])}", strict=False)
        return dst, _hex_ip(fields[2]), fields[0]
    except ValueError:
        return None


def _hex_ip(text: str) -> IPv4Address:
    """An address as /proc/net/route prints it: host-order (little-endian) hex."""
    return IPv4Address(int(text, 16).to_bytes(4, "little"))


def main(
    argv: Sequence[str],
    environ: Mapping[str, str],
    *,
    prog: str = "docker-opts",
    proc_net_route: str | None = None,
) -> int:
    """Run the command; returns the exit status (messages go to stderr).

    ``proc_net_route`` replaces the contents of /proc/net/route (for tests).
    """
    try:
        args = parse_getopts(argv)
    except DockerOptsUsage as exc:
        if exc.diagnostic:
            sys.stderr.write(f"{prog}: {exc.diagnostic}\n")
        sys.stderr.write(USAGE.format(prog=prog))
        return 1
    variables = dict(environ)
    env_file = Path(args.flannel_env)
    try:
        if env_file.is_file():
            variables.update(parse_env(env_file.read_text(encoding="utf-8")))
        write_atomic(args.docker_env, render(variables, args))
    except (ConfigError, OSError, UnicodeDecodeError) as exc:
        sys.stderr.write(f"{exc}\n")
        return 1
    return _check_routes(variables.get("FLANNEL_SUBNET", ""), proc_net_route)


def _check_routes(flannel_subnet: str, proc_net_route: str | None) -> int:
    if not flannel_subnet:
        return 0
    if proc_net_route is None:
        try:
            proc_net_route = Path(PROC_NET_ROUTE).read_text(encoding="ascii")
        except OSError:
            return 0
    conflict = route_conflict(flannel_subnet, proc_net_route)
    if conflict is None:
        return 0
    sys.stderr.write(f"Your routing table already contains the subnet: {conflict}\n")
    return 1
