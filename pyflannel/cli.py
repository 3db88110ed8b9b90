"""flanneld's command line and ``FLANNELD_*`` environment variables → ``Options``.

Existing unit files, Docker drop-ins and Kubernetes manifests pass flanneld's flags, so
this parser follows Go's ``flag`` package rule for rule instead of argparse's:

- ``-name`` and ``--name`` are the same flag; ``-name=value`` or ``-name value``.
- A bool flag takes no separate value: ``-ip-masq`` or ``-ip-masq=false``. In
  ``-ip-masq false`` the word ``false`` is a positional argument.
- The first positional argument (or a lone ``-``) stops parsing, and it and everything
  after it are ignored, as flanneld ignores them; a bare ``--`` also stops parsing.
- The value after ``-name`` is taken as is, even when it starts with a dash.
- ``--iface`` and ``--iface-regex`` collect every occurrence; any other flag given
  twice keeps its last value.
- Integer flags use Go's ``strconv.ParseInt`` with base 0 (``0x1f``, ``0o17``, ``017``,
  ``0b11``, ``1_000``, a sign); ``-v`` uses klog's decimal 32-bit parse.

After the command line, every flag that it did not set is read from ``FLANNELD_`` +
the upper-cased name with ``-`` as ``_`` (empty values are ignored; ``FLANNELD_IFACE``
gives exactly one interface, commas included). ``--version`` is decided before the
environment is read, so ``FLANNELD_VERSION`` does nothing.

Deliberate difference: flanneld ignores (v0.10) or only logs (v0.28) an environment
value it cannot parse and runs with the default; ``parse_args`` raises ``ConfigError``
naming the variable, since a daemon that silently ignores ``FLANNELD_IP_MASQ=yes``
installs no masquerade rules and nobody notices.

``FLAGS`` is the single table of flags: the parser, ``usage`` and the documentation
are all generated from it.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from pyflannel.errors import ConfigError
from pyflannel.options import Options, check_backtrace_at, go_quote, parse_vmodule

FlagValue = str | int | bool | tuple[str, ...]

_DEFAULTS = Options()
_PARSE_ERROR = "parse error"
_RANGE_ERROR = "value out of range"


class UsageError(ConfigError):
    """The command line is malformed; the message is the one Go's ``flag`` prints."""


class HelpRequested(Exception):
    """``-h``, ``-help`` or ``--help`` was given: show ``usage()`` and stop.

    Not a ``PyflannelError``: nothing went wrong, the user asked for the usage text.
    """


class FlagKind(enum.Enum):
    """How a flag's text becomes a value."""

    BOOL = "bool"
    INT = "int"
    LEVEL = "level"
    STRING = "string"
    LIST = "list"
    REPEATED = "repeated"
    VMODULE = "vmodule"
    BACKTRACE = "backtrace"


_METAVARS = {
    FlagKind.BOOL: "",
    FlagKind.INT: " int",
    FlagKind.LEVEL: " int",
    FlagKind.STRING: " string",
    FlagKind.LIST: " list",
    FlagKind.REPEATED: " string",
    FlagKind.VMODULE: " pattern=N,...",
    FlagKind.BACKTRACE: " file:line",
}


@dataclasses.dataclass(frozen=True, slots=True)
class FlagSpec:
    """One flag: its name on the command line, how it parses, and its help line.

    The default is not stored here: it is the ``Options`` field default, so the two
    can never disagree.
    """

    name: str
    kind: FlagKind
    group: str
    help: str
    from_env: bool = True

    @property
    def field(self) -> str:
        """The ``Options`` attribute this flag sets."""
        return self.name.replace("-", "_")

    @property
    def env(self) -> str | None:
        """The environment variable read when the flag is absent (None: never read)."""
        if not self.from_env:
            return None
        return "FLANNELD_" + self.name.replace("-", "_").upper()

    @property
    def default(self) -> FlagValue:
        """The value the daemon uses when neither the flag nor its variable is set."""
        value: FlagValue = getattr(_DEFAULTS, self.field)
        return value

    @property
    def default_text(self) -> str:
        """The default as an operator would type it (Go-quoted for strings)."""
        value = self.default
        if self.kind is FlagKind.REPEATED:
            return "none"
        if isinstance(value, tuple):
            return go_quote(",".join(value))
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int):
            return str(value)
        return go_quote(value)

    @property
    def metavar(self) -> str:
        """Placeholder shown after the flag name in ``usage`` (empty for bools)."""
        return _METAVARS[self.kind]


_ETCD = "etcd"
_IFACE = "interface"
_SUBNET = "subnet"
_RULES = "masquerade and iptables"
_OPS = "health, logging and version"
_KUBE = "kubernetes (accepted for compatibility, not supported yet)"

# fmt: off
FLAGS: tuple[FlagSpec, ...] = (
    FlagSpec("etcd-endpoints", FlagKind.LIST, _ETCD,
             "comma-separated etcd URLs, used exactly as written (spaces are not trimmed)"),
    FlagSpec("etcd-prefix", FlagKind.STRING, _ETCD,
             "etcd key prefix holding <prefix>/config and the <prefix>/subnets/ leases"),
    FlagSpec("etcd-keyfile", FlagKind.STRING, _ETCD,
             "private key file of the etcd client certificate"),
    FlagSpec("etcd-certfile", FlagKind.STRING, _ETCD,
             "etcd client certificate file; TLS needs both this and --etcd-keyfile"),
    FlagSpec("etcd-cafile", FlagKind.STRING, _ETCD,
             "CA bundle that signs the etcd server certificates"),
    FlagSpec("etcd-username", FlagKind.STRING, _ETCD,
             "user name for etcd authentication"),
    FlagSpec("etcd-password", FlagKind.STRING, _ETCD,
             "password for etcd authentication; the environment variable keeps it off ps"),
    FlagSpec("etcd-api", FlagKind.STRING, _ETCD,
             "etcd store: v3 (flanneld >= 0.18), v2 (<= 0.17), auto (where the config is)"),
    FlagSpec("iface", FlagKind.REPEATED, _IFACE,
             "interface between hosts, by name or IPv4 address; repeat for fallbacks"),
    FlagSpec("iface-regex", FlagKind.REPEATED, _IFACE,
             "regex matched against interface addresses, then names; repeatable"),
    FlagSpec("iface-can-reach", FlagKind.STRING, _IFACE,
             "use the interface and source address of the route to this IP address"),
    FlagSpec("public-ip", FlagKind.STRING, _IFACE,
             "IPv4 address other hosts send overlay traffic to; default: the interface's"),
    FlagSpec("public-ipv6", FlagKind.STRING, _IFACE,
             "IPv6 address advertised in the lease; default: the interface's"),
    FlagSpec("subnet-file", FlagKind.STRING, _SUBNET,
             "file receiving FLANNEL_NETWORK, FLANNEL_SUBNET, FLANNEL_MTU, FLANNEL_IPMASQ"),
    FlagSpec("subnet-lease-renew-margin", FlagKind.INT, _SUBNET,
             "minutes before the 24-hour lease expires to renew it (1 to 1439)"),
    FlagSpec("ip-masq", FlagKind.BOOL, _RULES,
             "masquerade traffic that leaves the flannel network"),
    FlagSpec("ip-masq-fully-random-disable", FlagKind.BOOL, _RULES,
             "leave --random-fully off the MASQUERADE rules"),
    FlagSpec("iptables-resync", FlagKind.INT, _RULES,
             "seconds between checks that the iptables rules are still in place"),
    FlagSpec("iptables-forward-rules", FlagKind.BOOL, _RULES,
             "accept the flannel network in the FORWARD chain (Docker sets policy DROP)"),
    FlagSpec("ip-blackhole-route", FlagKind.BOOL, _RULES,
             "keep a blackhole route for this host's subnet (drops traffic to unused IPs)"),
    FlagSpec("healthz-ip", FlagKind.STRING, _OPS,
             "address the HTTP health endpoint (/healthz) listens on"),
    FlagSpec("healthz-port", FlagKind.INT, _OPS,
             "port of the HTTP health endpoint (/healthz); 0 disables it"),
    FlagSpec("v", FlagKind.LEVEL, _OPS,
             "log verbosity: 0 for normal operation, higher for more detail"),
    FlagSpec("vmodule", FlagKind.VMODULE, _OPS,
             "per-module verbosity overrides, as a comma-separated list of pattern=N"),
    FlagSpec("log_backtrace_at", FlagKind.BACKTRACE, _OPS,
             "accepted for compatibility with flanneld's logger; has no effect"),
    FlagSpec("log-format", FlagKind.STRING, _OPS,
             "log line format: text, json, or auto (text, in colour on a terminal)"),
    FlagSpec("version", FlagKind.BOOL, _OPS,
             "print the version to stderr and exit", from_env=False),
    FlagSpec("kube-subnet-mgr", FlagKind.BOOL, _KUBE,
             "take subnets from Kubernetes instead of etcd (pyflanneld refuses to start)"),
    FlagSpec("kube-api-url", FlagKind.STRING, _KUBE,
             "Kubernetes API server URL"),
    FlagSpec("kubeconfig-file", FlagKind.STRING, _KUBE,
             "kubeconfig file for the Kubernetes API"),
    FlagSpec("kube-annotation-prefix", FlagKind.STRING, _KUBE,
             "prefix of the Node annotations that carry lease data"),
    FlagSpec("net-config-path", FlagKind.STRING, _KUBE,
             "network config file read in kube mode (instead of <prefix>/config in etcd)"),
    FlagSpec("set-node-network-unavailable", FlagKind.BOOL, _KUBE,
             "clear the Node's NetworkUnavailable condition once ready"),
)
# fmt: on

_BY_NAME: dict[str, FlagSpec] = {spec.name: spec for spec in FLAGS}
_GO_BOOLS = {
    **dict.fromkeys(("1", "t", "T", "TRUE", "true", "True"), True),
    **dict.fromkeys(("0", "f", "F", "FALSE", "false", "False"), False),
}


def parse_args(argv: Sequence[str], env: Mapping[str, str]) -> Options:
    """Build ``Options`` from ``argv`` (without the program name) and ``env``.

    Raises ``HelpRequested`` for ``-h``/``-help``, ``UsageError`` for a malformed
    command line, and ``ConfigError`` for a ``FLANNELD_*`` value that does not parse.
    When ``--version`` is set the environment is not read at all, as in flanneld: the
    caller must check ``options.version`` before ``validate``.
    """
    parsed = _parse_command_line(argv)
    if parsed.values.get("version") is not True:
        _apply_env(parsed, env)
    return _build(parsed.values)


def ignored_arguments(argv: Sequence[str]) -> tuple[str, ...]:
    """The arguments flanneld would silently ignore: the first positional and the rest.

    ``-ip-masq false --iface=eth1`` leaves masquerading on and ignores ``--iface``; the
    entry point can log a warning naming these. Raises as ``parse_args`` does.
    """
    return _parse_command_line(argv).ignored


@dataclasses.dataclass(slots=True)
class _Parsed:
    values: dict[str, FlagValue] = dataclasses.field(default_factory=dict)
    seen: set[str] = dataclasses.field(default_factory=set)
    ignored: tuple[str, ...] = ()


def _parse_command_line(argv: Sequence[str]) -> _Parsed:
    """Go's ``FlagSet.Parse``: consume flags until the first non-flag."""
    parsed = _Parsed()
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if len(arg) < 2 or arg[0] != "-":
            parsed.ignored = tuple(args[i:])
            break
        if arg == "--":
            parsed.ignored = tuple(args[i + 1 :])
            break
        i = _parse_flag(args, i, parsed)
    return parsed


def _parse_flag(args: list[str], i: int, parsed: _Parsed) -> int:
    """Go's ``FlagSet.parseOne`` for ``args[i]``; returns the index of the next argument."""
    arg = args[i]
    body = arg[2:] if arg.startswith("--") else arg[1:]
    if not body or body[0] in "-=":
        raise UsageError(f"bad flag syntax: {arg}")
    name, equals, text = body.partition("=")
    spec = _BY_NAME.get(name)
    if spec is None:
        if name in ("h", "help"):
            raise HelpRequested
        raise UsageError(f"flag provided but not defined: -{name}")
    if spec.kind is FlagKind.BOOL:
        try:
            _assign(parsed, spec, _convert(spec, text if equals else "true"))
        except ValueError as err:
            raise UsageError(f"invalid boolean value {go_quote(text)} for -{name}: {err}") from None
        return i + 1
    if not equals:
        if i + 1 >= len(args):
            raise UsageError(f"flag needs an argument: -{name}")
        i += 1
        text = args[i]
    try:
        _assign(parsed, spec, _convert(spec, text))
    except ValueError as err:
        raise UsageError(f"invalid value {go_quote(text)} for flag -{name}: {err}") from None
    return i + 1


def _apply_env(parsed: _Parsed, env: Mapping[str, str]) -> None:
    """flagutil.SetFlagsFromEnv, except that a bad value is an error (see module doc)."""
    for spec in FLAGS:
        if spec.env is None or spec.name in parsed.seen:
            continue
        text = env.get(spec.env, "")
        if not text:
            continue
        try:
            _assign(parsed, spec, _convert(spec, text))
        except ValueError as err:
            raise ConfigError(f"invalid value {go_quote(text)} for {spec.env}: {err}") from None


def _assign(parsed: _Parsed, spec: FlagSpec, value: FlagValue) -> None:
    parsed.seen.add(spec.name)
    if spec.kind is FlagKind.REPEATED:
        previous = parsed.values.get(spec.field, ())
        assert isinstance(previous, tuple) and isinstance(value, str)
        value = (*previous, value)
    parsed.values[spec.field] = value


def _build(values: Mapping[str, FlagValue]) -> Options:
    # Each value's type follows from its flag kind, which the tests tie to the field.
    changes: dict[str, Any] = dict(values)
    return dataclasses.replace(_DEFAULTS, **changes)


def _convert(spec: FlagSpec, text: str) -> FlagValue:
    """Turn one occurrence's text into a value; ``ValueError`` carries Go's reason."""
    return _CONVERTERS[spec.kind](text)


def _to_bool(text: str) -> bool:
    try:
        return _GO_BOOLS[text]
    except KeyError:
        raise ValueError(_PARSE_ERROR) from None


def _to_int(text: str) -> int:
    """Go's ``flag.Int``: ``strconv.ParseInt(text, 0, 64)`` with flag's error words."""
    return parse_go_int(text, base0=True, bits=64)


def _to_level(text: str) -> int:
    """klog's ``Level.Set``: ``strconv.ParseInt(text, 10, 32)``, error text unwrapped."""
    try:
        return parse_go_int(text, base0=False, bits=32)
    except ValueError as err:
        reason = "invalid syntax" if str(err) == _PARSE_ERROR else _RANGE_ERROR
        raise ValueError(f"strconv.ParseInt: parsing {go_quote(text)}: {reason}") from None


def _to_vmodule(text: str) -> str:
    parse_vmodule(text)
    return text


def _to_backtrace(text: str) -> str:
    check_backtrace_at(text)
    return text


def _to_list(text: str) -> tuple[str, ...]:
    return tuple(text.split(","))


def _to_str(text: str) -> str:
    return text


_CONVERTERS: dict[FlagKind, Callable[[str], FlagValue]] = {
    FlagKind.BOOL: _to_bool,
    FlagKind.INT: _to_int,
    FlagKind.LEVEL: _to_level,
    FlagKind.STRING: _to_str,
    FlagKind.LIST: _to_list,
    FlagKind.REPEATED: _to_str,
    FlagKind.VMODULE: _to_vmodule,
    FlagKind.BACKTRACE: _to_backtrace,
}


def parse_go_int(text: str, *, base0: bool, bits: int) -> int:
    """Go's ``strconv.ParseInt(text, 0 if base0 else 10, bits)``.

    Raises ``ValueError("parse error")`` on bad syntax and ``ValueError("value out of
    range")`` on overflow, the words Go's ``flag`` package prints.
    """
    negative = text[:1] == "-"
    body = text[1:] if text[:1] in ("+", "-") else text
    magnitude = _parse_go_uint(body, base0=base0)
    limit = 1 << (bits - 1)
    if magnitude > limit or (magnitude == limit and not negative):
        raise ValueError(_RANGE_ERROR)
    return -magnitude if negative else magnitude


def _parse_go_uint(text: str, *, base0: bool) -> int:
    """Go's ``strconv.ParseUint(text, 0 or 10, 64)``, scanning left to right like Go.

    Go reports overflow as soon as it happens, even if a bad character follows, and
    checks underscores only after all digits are read; so do we.
    """
    if not text:
        raise ValueError(_PARSE_ERROR)
    base, digits = _base_prefix(text) if base0 else (10, text)
    value = 0
    underscores = False
    for ch in digits:
        if ch == "_" and base0:
            underscores = True
            continue
        digit = _digit_value(ch)
        if digit is None or digit >= base:
            raise ValueError(_PARSE_ERROR)
        value = value * base + digit
        if value >= 1 << 64:
            raise ValueError(_RANGE_ERROR)
    if underscores and not _underscores_ok(text):
        raise ValueError(_PARSE_ERROR)
    return value


def _base_prefix(text: str) -> tuple[int, str]:
    """Base-0 prefix rules: 0b, 0o, 0x need a third character; a lone leading 0 is octal."""
    if text[:1] != "0":
        return 10, text
    if len(text) >= 3:
        base = {"b": 2, "o": 8, "x": 16}.get(_ascii_lower(text[1]))
        if base is not None:
            return base, text[2:]
    return 8, text[1:]


def _ascii_lower(ch: str) -> str:
    return chr(ord(ch) | 0x20) if ord(ch) < 0x80 else ch


def _digit_value(ch: str) -> int | None:
    if "0" <= ch <= "9":
        return ord(ch) - ord("0")
    lower = _ascii_lower(ch)
    if "a" <= lower <= "z":
        return ord(lower) - ord("a") + 10
    return None


def _underscores_ok(text: str) -> bool:
    """Go's ``underscoreOK``: '_' only between digits, or between a base prefix and a digit."""
    saw = "^"  # ^ start, 0 digit or prefix, _ underscore, ! anything else
    i = 0
    hexadecimal = False
    if len(text) >= 2 and text[0] == "0" and _ascii_lower(text[1]) in ("b", "o", "x"):
        i, saw, hexadecimal = 2, "0", _ascii_lower(text[1]) == "x"
    for ch in text[i:]:
        if "0" <= ch <= "9" or (hexadecimal and "a" <= _ascii_lower(ch) <= "f"):
            saw = "0"
        elif ch == "_":
            if saw != "0":
                return False
            saw = "_"
        elif saw == "_":
            return False
        else:
            saw = "!"
    return saw != "_"


def usage(prog: str) -> str:
    """The help text: a synopsis, then every flag by group with its default."""
    lines = [
        f"Usage: {prog} [OPTION]...",
        "Flags take one or two dashes: --name=value or --name value; booleans are --name",
        "or --name=false. A flag not given is read from $FLANNELD_<NAME>, e.g. --ip-masq",
        "from FLANNELD_IP_MASQ=true and --iface from FLANNELD_IFACE (one interface).",
        "Arguments after the first non-flag are ignored, as flanneld ignores them.",
    ]
    lines.extend(_usage_groups())
    return "\n".join(lines) + "\n"


def _usage_groups() -> Iterator[str]:
    group = None
    for spec in FLAGS:
        if spec.group != group:
            group = spec.group
            yield ""
            yield f"{group}:"
        yield f"{'  --' + spec.name + spec.metavar:<34} (default {spec.default_text})"
        yield f"        {spec.help}"
