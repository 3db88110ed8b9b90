"""Choosing the external interface and public IP, over a snapshot of the host.

flanneld (v0.28) tries, in this order, and the first usable candidate wins:

1. each ``--iface`` value: an IPv4 literal names the interface holding exactly that
   address (which becomes the interface address); anything else is an interface name;
2. each ``--iface-regex``: searched (unanchored) first in every interface's usable IPv4
   addresses, interfaces in index order, then in the interface names;
3. ``--iface-can-reach``: the interface, and preferred source, of the route to that IP;
4. only when none of the three is given: the interface holding ``--public-ip`` if that is
   set (an error when no interface has it), else the interface of the default route.

An interface's address is its first usable IPv4 address: global before link-local,
permanent before dynamic, primary before secondary; deprecated, loopback and multicast
addresses are never used (flannel's ``GetInterfaceIP4Addrs``). A candidate without such
an address, or with MTU 0, fails and the next one is tried.

Differences from flanneld, on purpose: every failure is kept and the final error names
them all with the interfaces that exist; a default route that is a blackhole (or has no
outgoing interface) is skipped in favour of the next one by metric; a multipath default
route uses its first hop.

Rules of this file: pure code over frozen snapshots, no I/O and no logging. The caller
(``pyflannel.iface``) reads the host and logs what ``pick`` reports.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from ipaddress import IPv4Address, IPv6Address, ip_address

from pyflannel.backend import ExternalInterface
from pyflannel.errors import ConfigError
from pyflannel.options import go_quote

RTN_UNICAST = 1
_ROUTE_TYPES = {2: "local", 3: "broadcast", 6: "blackhole", 7: "unreachable", 8: "prohibit"}
_LIMITED_BROADCAST = IPv4Address("255.255.255.255")
_HINT = "pass --iface=<name or address>"


@dataclass(frozen=True, slots=True)
class AddrInfo:
    """One IPv4 address of an interface, with the flags that rank it."""

    address: IPv4Address
    prefixlen: int
    permanent: bool = True  # IFA_F_PERMANENT: configured, not from DHCP or another daemon
    secondary: bool = False  # IFA_F_SECONDARY (same bit as IPv6's "temporary")
    deprecated: bool = False  # IFA_F_DEPRECATED: never chosen

    @property
    def link_local(self) -> bool:
        return self.address.is_link_local


@dataclass(frozen=True, slots=True)
class LinkInfo:
    """One interface: index, name, MTU, administrative state and IPv4 addresses."""

    index: int
    name: str
    mtu: int
    up: bool
    addrs: tuple[AddrInfo, ...] = ()


@dataclass(frozen=True, slots=True)
class DefaultRoute:
    """A ``0.0.0.0/0`` route of the main table (``oifs``: one per hop; empty for blackholes)."""

    oifs: tuple[int, ...]
    metric: int = 0
    route_type: int = RTN_UNICAST


@dataclass(frozen=True, slots=True)
class HostSnapshot:
    """The interfaces (in index order) and the main-table default routes of a host."""

    links: tuple[LinkInfo, ...]
    default_routes: tuple[DefaultRoute, ...] = ()


@dataclass(frozen=True, slots=True)
class RouteLookup:
    """What ``ip route get <ip>`` answered: the outgoing interface and preferred source.

    ``error`` is the kernel's complaint (``Network is unreachable``) when there is no route.
    """

    oif: int | None
    prefsrc: IPv4Address | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Rejected:
    """A candidate that did not give a usable interface, and why."""

    candidate: str  # how the operator wrote it: --iface=eth9, --iface-regex="^ens", ...
    reason: str

    def __str__(self) -> str:
        return f"{self.candidate}: {self.reason}"


@dataclass(frozen=True, slots=True)
class Selection:
    """The chosen interface, the candidate that gave it, and what was rejected before it."""

    external: ExternalInterface
    chosen_by: str
    rejected: tuple[Rejected, ...]
    warnings: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Found:
    link: LinkInfo
    addr: IPv4Address


_Attempt = Callable[[], "_Found | str"]
_DEFAULT_ROUTE = "default route"


def pick(
    host: HostSnapshot,
    *,
    iface: Sequence[str],
    iface_regex: Sequence[str],
    iface_can_reach: str,
    can_reach: RouteLookup | None,
    public_ip: str,
) -> Selection:
    """The first usable candidate in flanneld's order, or ConfigError naming every try.

    ``can_reach`` is the kernel's answer for ``iface_can_reach`` (None when it was not
    asked, for instance because the value is not an IPv4 address).
    """
    ext_addr = parse_public_ip(public_ip)
    rejected: list[Rejected] = []
    attempts = _attempts(
        host,
        iface=iface,
        iface_regex=iface_regex,
        iface_can_reach=iface_can_reach,
        can_reach=can_reach,
        public_ip=public_ip,
    )
    for candidate, attempt in attempts:
        outcome = attempt()
        if isinstance(outcome, str):
            rejected.append(Rejected(candidate, outcome))
            continue
        return _selection(outcome, candidate, rejected, ext_addr)
    explicit = bool(iface or iface_regex or iface_can_reach)
    raise ConfigError(_explain(host, rejected, explicit=explicit))


def _selection(
    found: _Found, candidate: str, rejected: list[Rejected], ext_addr: IPv4Address | None
) -> Selection:
    link = found.link
    external = ExternalInterface(
        name=link.name,
        index=link.index,
        mtu=link.mtu,
        iface_addr=found.addr,
        ext_addr=found.addr if ext_addr is None else ext_addr,
    )
    warnings = () if link.up else (f"interface {link.name} is down",)
    return Selection(external, candidate, tuple(rejected), warnings)


def parse_public_ip(text: str) -> IPv4Address | None:
    """``--public-ip`` as an address (None when unset); anything else is a ConfigError."""
    if not text:
        return None
    try:
        return IPv4Address(text)
    except ValueError:
        raise ConfigError(f"--public-ip={go_quote(text)} must parse as an IPv4 address") from None


def can_reach_target(text: str) -> IPv4Address | None:
    """The ``--iface-can-reach`` address to look a route up for, if it is one."""
    try:
        return IPv4Address(text)
    except ValueError:
        return None


def usable_addresses(link: LinkInfo) -> tuple[IPv4Address, ...]:
    """The interface's IPv4 addresses flanneld may use, most preferred first."""
    usable = [a for a in link.addrs if _unicast(a.address) and not a.deprecated]
    usable.sort(key=lambda a: (a.link_local, not a.permanent, a.secondary))
    return tuple(a.address for a in usable)


def describe_links(host: HostSnapshot) -> str:
    """``lo (127.0.0.1), eth0 (192.0.2.10), eth1``: what an operator can pass to --iface."""
    parts = []
    for link in host.links:
        addrs = ", ".join(str(a.address) for a in link.addrs)
        parts.append(f"{link.name} ({addrs})" if addrs else link.name)
    return ", ".join(parts) or "none"


def _attempts(
    host: HostSnapshot,
    *,
    iface: Sequence[str],
    iface_regex: Sequence[str],
    iface_can_reach: str,
    can_reach: RouteLookup | None,
    public_ip: str,
) -> list[tuple[str, _Attempt]]:
    """The candidates in flanneld's order, each with how it is written on the command line."""
    if iface or iface_regex or iface_can_reach:
        attempts: list[tuple[str, _Attempt]] = [
            (f"--iface={value}", partial(_by_iface, host, value)) for value in iface
        ]
        attempts += [
            (f"--iface-regex={go_quote(pattern)}", partial(_by_regex, host, pattern))
            for pattern in iface_regex
        ]
        if iface_can_reach:
            by_route = partial(_by_route, host, iface_can_reach, can_reach)
            attempts.append((f"--iface-can-reach={iface_can_reach}", by_route))
        return attempts
    if public_ip:
        return [(f"--public-ip={public_ip}", partial(_by_public_ip, host, public_ip))]
    return [(_DEFAULT_ROUTE, partial(_by_default_route, host))]


def _by_iface(host: HostSnapshot, value: str) -> _Found | str:
    try:
        addr = ip_address(value)
    except ValueError:
        return _by_name(host, value)
    if isinstance(addr, IPv6Address):
        return "an IPv6 address; pyflanneld picks the interface by IPv4 address or by name"
    return _holding(host, addr) or "no interface has this address"


def _by_name(host: HostSnapshot, name: str) -> _Found | str:
    link = next((link for link in host.links if link.name == name), None)
    if link is None:
        return "no such interface"
    return _with_address(link)


def _by_regex(host: HostSnapshot, pattern: str) -> _Found | str:
    try:
        regex = re.compile(pattern)
    except re.error as err:
        return f"not a valid regular expression: {err}"
    for link in host.links:
        for addr in usable_addresses(link):
            if regex.search(str(addr)):
                return _usable(link, addr)
    for link in host.links:
        if regex.search(link.name):
            return _via(f"matched {link.name} by name", _with_address(link))
    return "matched no interface address or name"


def _by_route(host: HostSnapshot, text: str, lookup: RouteLookup | None) -> _Found | str:
    target = can_reach_target(text)
    if target is None:
        return "not an IPv4 address"
    if lookup is None or lookup.oif is None:
        detail = lookup.error if lookup is not None and lookup.error else "no outgoing interface"
        return f"no route to it ({detail})"
    link = _link(host, lookup.oif)
    if link is None:
        return f"the route to it uses interface index {lookup.oif}, which is not listed"
    where = f"the route to it goes through {link.name}"
    if lookup.prefsrc is not None:
        return _via(where, _usable(link, lookup.prefsrc))
    return _via(where, _with_address(link))


def _by_public_ip(host: HostSnapshot, text: str) -> _Found | str:
    return _holding(host, IPv4Address(text)) or (
        "no local interface has this address (without --iface, --iface-regex or"
        " --iface-can-reach, the interface is the one holding --public-ip)"
    )


def _by_default_route(host: HostSnapshot) -> _Found | str:
    if not host.default_routes:
        return "no default route to pick the interface from"
    routes = sorted(host.default_routes, key=lambda route: route.metric)
    usable = [r for r in routes if r.route_type == RTN_UNICAST and r.oifs]
    if not usable:
        kind = _ROUTE_TYPES.get(routes[0].route_type, f"type {routes[0].route_type}")
        return f"the default route ({kind}) has no outgoing interface to pick"
    oif = usable[0].oifs[0]
    link = _link(host, oif)
    if link is None:
        return f"the default route uses interface index {oif}, which is not listed"
    return _via(f"the default route goes through {link.name}", _with_address(link))


def _holding(host: HostSnapshot, addr: IPv4Address) -> _Found | str | None:
    """The interface that has exactly ``addr`` (any address, even loopback), if any."""
    for link in host.links:
        if any(a.address == addr for a in link.addrs):
            return _usable(link, addr)
    return None


def _with_address(link: LinkInfo) -> _Found | str:
    addrs = usable_addresses(link)
    if not addrs:
        unusable = ", ".join(str(a.address) for a in link.addrs)
        detail = f" (only {unusable})" if unusable else ""
        return f"{link.name} has no usable IPv4 address{detail}"
    return _usable(link, addrs[0])


def _usable(link: LinkInfo, addr: IPv4Address) -> _Found | str:
    if link.mtu == 0:
        return f"{link.name} reports MTU 0"
    return _Found(link, addr)


def _via(where: str, outcome: _Found | str) -> _Found | str:
    return f"{where}, but {outcome}" if isinstance(outcome, str) else outcome


def _link(host: HostSnapshot, index: int) -> LinkInfo | None:
    return next((link for link in host.links if link.index == index), None)


def _unicast(addr: IPv4Address) -> bool:
    """Go's IsGlobalUnicast or IsLinkLocalUnicast, for IPv4."""
    return not (
        addr.is_loopback or addr.is_multicast or addr.is_unspecified or addr == _LIMITED_BROADCAST
    )


def _explain(host: HostSnapshot, rejected: list[Rejected], *, explicit: bool) -> str:
    listing = f"(interfaces here: {describe_links(host)})"
    if explicit:
        return f"no usable interface: {'; '.join(map(str, rejected))} {listing}"
    (only,) = rejected
    text = only.reason if only.candidate == _DEFAULT_ROUTE else str(only)
    return f"{text}; {_HINT} {listing}"
