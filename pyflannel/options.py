"""The daemon's settings, one field per flanneld flag, and their validation.

``pyflannel.cli`` fills an ``Options`` from the command line and ``FLANNELD_*``
environment variables; ``pyflannel.__main__`` calls ``validate`` and then hands the
result to the daemon. Defaults are flanneld's (v0.28.9), so a unit file written for
flanneld means the same thing here.

Rules of this file: pure code, no I/O. ``validate`` checks what flanneld checks at
start-up, plus the checks that flanneld leaves to a late crash or a silent misbehaviour
(a malformed ``--public-ip``, a non-positive ``--iptables-resync``). Every message names
the flag, the value and the rule, so an operator can fix the unit file from the log
line alone.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Callable, Iterator

from pyflannel.errors import ConfigError

DEFAULT_ETCD_ENDPOINTS = "http://127.0.0.1:4001,http://127.0.0.1:2379"
"""flanneld's ``--etcd-endpoints`` default, as text; the field holds it split on commas."""

ETCD_APIS = ("auto", "v3", "v2")
LOG_FORMATS = ("auto", "text", "json")
LEASE_MINUTES = 24 * 60
"""Subnet leases last 24 hours; the renew margin must fall strictly inside that."""

VMODULE_SYNTAX = "syntax error: expect comma-separated list of filename=N"
BACKTRACE_SYNTAX = "syntax error: expect file.go:234"


@dataclasses.dataclass(frozen=True, slots=True)
class Options:
    """Everything the command line and ``FLANNELD_*`` variables can set.

    Field names are the flag names in snake case. ``etcd_api`` and ``log_format`` are
    pyflannel extensions; the ``kube_*`` fields are accepted for unit-file compatibility
    but the Kubernetes subnet manager is not implemented (``validate`` says so).
    """

    etcd_endpoints: tuple[str, ...] = tuple(DEFAULT_ETCD_ENDPOINTS.split(","))
    etcd_prefix: str = "/coreos.com/network"
    etcd_keyfile: str = ""
    etcd_certfile: str = ""
    etcd_cafile: str = ""
    etcd_username: str = ""
    # Kept out of repr() so logging the options never leaks it (flanneld v0.28 does).
    etcd_password: str = dataclasses.field(default="", repr=False)
    etcd_api: str = "auto"
    iface: tuple[str, ...] = ()
    iface_regex: tuple[str, ...] = ()
    iface_can_reach: str = ""
    public_ip: str = ""
    public_ipv6: str = ""
    subnet_file: str = "/run/flannel/subnet.env"
    subnet_lease_renew_margin: int = 60
    ip_masq: bool = False
    ip_masq_fully_random_disable: bool = False
    kube_subnet_mgr: bool = False
    kube_api_url: str = ""
    kubeconfig_file: str = ""
    kube_annotation_prefix: str = "flannel.alpha.coreos.com"
    net_config_path: str = "/etc/kube-flannel/net-conf.json"
    set_node_network_unavailable: bool = True
    healthz_ip: str = "0.0.0.0"
    healthz_port: int = 0
    iptables_resync: int = 5
    iptables_forward_rules: bool = True
    ip_blackhole_route: bool = False
    version: bool = False
    v: int = 0
    vmodule: str = ""
    log_backtrace_at: str = ""
    log_format: str = "auto"


def go_quote(text: str) -> str:
    """Quote ``text`` the way Go's ``%q`` does, so messages match flanneld's.

    Bytes that were not valid UTF-8 reach Python as surrogate escapes; Go prints them
    as ``\\xNN``, and so do we.
    """
    return '"' + "".join(_quote_char(ch) for ch in text) + '"'


_GO_ESCAPES = {
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
    "\\": "\\\\",
    '"': '\\"',
}


def _quote_char(ch: str) -> str:
    code = ord(ch)
    if ch in _GO_ESCAPES:
        return _GO_ESCAPES[ch]
    if 0xDC80 <= code <= 0xDCFF:
        return f"\\x{code - 0xDC00:02x}"
    if ch.isprintable():
        return ch
    if code < 0x80:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def parse_vmodule(spec: str) -> tuple[tuple[str, int], ...]:
    """Parse a ``--vmodule`` value into ``(pattern, level)`` pairs, with klog's rules.

    Empty items (a trailing comma) are skipped and level-0 items dropped, as klog does.
    Raises ``ValueError`` with klog's message on bad syntax or a negative level.
    """
    rules: list[tuple[str, int]] = []
    for item in spec.split(","):
        if not item:
            continue
        parts = item.split("=")
        if len(parts) != 2 or not parts[0] or not parts[1]:
            raise ValueError(VMODULE_SYNTAX)
        level = _decimal(parts[1])
        if level is None or not -(2**31) <= level < 2**31:
            raise ValueError(VMODULE_SYNTAX)
        if level < 0:
            raise ValueError("negative value for vmodule level")
        if level:
            rules.append((parts[0], level))
    return tuple(rules)


def check_backtrace_at(spec: str) -> None:
    """Check a ``--log_backtrace_at`` value (``file.go:N``, N > 0; empty unsets), as klog."""
    if not spec:
        return
    fields = spec.split(":")
    if len(fields) != 2 or "." not in fields[0]:
        raise ValueError(BACKTRACE_SYNTAX)
    line = _decimal(fields[1])
    if line is None:
        raise ValueError(BACKTRACE_SYNTAX)
    if line <= 0:
        raise ValueError("negative or zero value for level")


def _decimal(text: str) -> int | None:
    """Go ``strconv.Atoi`` syntax: optional sign, ASCII digits only."""
    digits = text[1:] if text[:1] in ("+", "-") else text
    if not digits or not all("0" <= ch <= "9" for ch in digits):
        return None
    return int(text)


def validate(options: Options) -> None:
    """Raise ``ConfigError`` naming every setting that cannot work.

    All problems are reported at once (joined with ``"; "``) so that one restart is
    enough to fix a unit file.
    """
    problems = list(_problems(options))
    if problems:
        raise ConfigError("; ".join(problems))


def _problems(o: Options) -> Iterator[str]:
    for check in _CHECKS:
        problem = check(o)
        if problem is not None:
            yield problem
    for pattern in o.iface_regex:
        try:
            re.compile(pattern)
        except re.error as err:
            yield f"--iface-regex={go_quote(pattern)} is not a valid regular expression: {err}"


def _check_kube(o: Options) -> str | None:
    if o.kube_subnet_mgr:
        return (
            "--kube-subnet-mgr is not supported yet: pyflanneld only runs with etcd"
            " (use --etcd-endpoints)"
        )
    return None


def _check_margin(o: Options) -> str | None:
    m = o.subnet_lease_renew_margin
    if 0 < m < LEASE_MINUTES:
        return None
    return (
        f"--subnet-lease-renew-margin={m} is out of range: it must satisfy"
        f" 0 < m < {LEASE_MINUTES} (minutes before the 24-hour lease expires)"
    )


def _check_healthz_port(o: Options) -> str | None:
    if 0 <= o.healthz_port <= 65535:
        return None
    return (
        f"--healthz-port={o.healthz_port} is out of range: it must be 0..65535"
        " (0 disables the health server)"
    )


def _check_resync(o: Options) -> str | None:
    if o.iptables_resync > 0:
        return None
    return f"--iptables-resync={o.iptables_resync} must be a positive number of seconds"


def _check_etcd_api(o: Options) -> str | None:
    if o.etcd_api in ETCD_APIS:
        return None
    return f"--etcd-api={go_quote(o.etcd_api)} must be one of {'|'.join(ETCD_APIS)}"


def _check_log_format(o: Options) -> str | None:
    if o.log_format in LOG_FORMATS:
        return None
    return f"--log-format={go_quote(o.log_format)} must be one of {'|'.join(LOG_FORMATS)}"


def _check_public_ip(o: Options) -> str | None:
    if not o.public_ip or _is_ip(o.public_ip, ipaddress.IPv4Address):
        return None
    return f"--public-ip={go_quote(o.public_ip)} must parse as an IPv4 address"


def _check_public_ipv6(o: Options) -> str | None:
    if not o.public_ipv6 or _is_ip(o.public_ipv6, ipaddress.IPv6Address):
        return None
    return f"--public-ipv6={go_quote(o.public_ipv6)} must parse as an IPv6 address"


def _check_can_reach(o: Options) -> str | None:
    if not o.iface_can_reach or _is_ip(o.iface_can_reach, ipaddress.ip_address):
        return None
    return f"--iface-can-reach={go_quote(o.iface_can_reach)} must parse as an IP address"


def _check_vmodule(o: Options) -> str | None:
    try:
        parse_vmodule(o.vmodule)
    except ValueError as err:
        return f"--vmodule={go_quote(o.vmodule)}: {err}"
    return None


def _check_backtrace(o: Options) -> str | None:
    try:
        check_backtrace_at(o.log_backtrace_at)
    except ValueError as err:
        return f"--log_backtrace_at={go_quote(o.log_backtrace_at)}: {err}"
    return None


def _is_ip(text: str, parse: Callable[[str], object]) -> bool:
    if "%" in text:  # Go's net.ParseIP has no zone ("fe80::1%eth0"); Python accepts one
        return False
    try:
        parse(text)
    except ValueError:
        return False
    return True


_CHECKS: tuple[Callable[[Options], str | None], ...] = (
    _check_kube,
    _check_margin,
    _check_healthz_port,
    _check_resync,
    _check_etcd_api,
    _check_log_format,
    _check_public_ip,
    _check_public_ipv6,
    _check_can_reach,
    _check_vmodule,
    _check_backtrace,
)
