"""Which iptables rules flanneld keeps on a host, rendered as data.

Rules of this file: pure code, no I/O. A :class:`Rule` is a chain and the argument
vector that follows ``-A <chain>``; its :meth:`Rule.save_line` is the exact text
``iptables-save`` prints for it (both the nft and the legacy back ends of iptables
1.8 print the same), so the shell can compare a saved table with the desired rules
without one ``iptables -C`` process per rule.

The rule sets are flanneld v0.28's (facts §9.2): the masquerade rules live in the
``nat`` table in a chain ``FLANNEL-POSTRTG`` reached from ``POSTROUTING``, the
FORWARD accept rules in the ``filter`` table in ``FLANNEL-FWD`` reached from
``FORWARD``, each rule tagged with a comment. Docker sets the FORWARD policy to DROP,
which is why the forward rules are on by default.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Network

from pyflannel.core import subnetenv

NAT = "nat"
FILTER = "filter"
POSTRTG_CHAIN = "FLANNEL-POSTRTG"
FWD_CHAIN = "FLANNEL-FWD"
MASQ_COMMENT = "flanneld masq"
FORWARD_COMMENT = "flanneld forward"
KUBE_PROXY_MARK = "0x4000/0x4000"
"""kube-proxy marks packets it will masquerade itself; flanneld leaves them alone."""
MULTICAST = "224.0.0.0/4"


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule: ``iptables -t <table> -A <chain> <spec...>``."""

    chain: str
    spec: tuple[str, ...]

    def save_line(self) -> str:
        """The rule as ``iptables-save`` prints it, and as iptables-restore reads it."""
        return f"-A {self.chain} {_join(self.spec)}"

    def delete_line(self) -> str:
        """The iptables-restore line that deletes one copy of the rule."""
        return f"-D {self.chain} {_join(self.spec)}"


@dataclass(frozen=True, slots=True)
class RuleSet:
    """The rules pyflannel owns in one table, in the order they must stand.

    ``chain`` is our own chain: it is emptied and refilled as a whole. The rules in
    built-in chains (the jump into ``chain``) are deleted and appended again, so
    every rebuild leaves exactly one copy of each at the end of its chain.
    """

    table: str
    chain: str
    rules: tuple[Rule, ...]

    def in_builtin_chains(self) -> tuple[Rule, ...]:
        """The rules outside our own chain (the jumps into it)."""
        return tuple(rule for rule in self.rules if rule.chain != self.chain)


def render(
    network: IPv4Network,
    subnet: IPv4Network,
    *,
    masq: bool,
    forward: bool,
    random_fully: bool,
) -> dict[str, RuleSet]:
    """The rule sets for a host holding ``subnet`` of ``network``, keyed by table."""
    sets: dict[str, RuleSet] = {}
    if masq:
        sets[NAT] = RuleSet(NAT, POSTRTG_CHAIN, masq_rules(network, subnet, random_fully))
    if forward:
        sets[FILTER] = RuleSet(FILTER, FWD_CHAIN, forward_rules(network))
    return sets


def masq_rules(network: IPv4Network, subnet: IPv4Network, random_fully: bool) -> tuple[Rule, ...]:
    """flanneld v0.28's masquerade rules (facts §9.2), in order.

    Overlay-internal traffic returns un-NATed; traffic from the overlay to anywhere
    else but multicast is masqueraded, as is traffic from outside to the overlay.
    """
    net, sub = str(network), str(subnet)
    masquerade = ("-j", "MASQUERADE", "--random-fully") if random_fully else ("-j", "MASQUERADE")
    return (
        _masq("POSTROUTING", (), ("-j", POSTRTG_CHAIN)),
        _masq(POSTRTG_CHAIN, ("-m", "mark", "--mark", KUBE_PROXY_MARK), ("-j", "RETURN")),
        _masq(POSTRTG_CHAIN, ("-s", sub, "-d", net), ("-j", "RETURN")),
        _masq(POSTRTG_CHAIN, ("-s", net, "-d", sub), ("-j", "RETURN")),
        _masq(POSTRTG_CHAIN, ("!", "-s", net, "-d", sub), ("-j", "RETURN")),
        _masq(POSTRTG_CHAIN, ("-s", net, "!", "-d", MULTICAST), masquerade),
        _masq(POSTRTG_CHAIN, ("!", "-s", net, "-d", net), masquerade),
    )


def forward_rules(network: IPv4Network) -> tuple[Rule, ...]:
    """flanneld v0.28's FORWARD accept rules for the overlay network, in order."""
    comment = ("-m", "comment", "--comment", FORWARD_COMMENT)
    net = str(network)
    return (
        Rule("FORWARD", (*comment, "-j", FWD_CHAIN)),
        Rule(FWD_CHAIN, ("-s", net, *comment, "-j", "ACCEPT")),
        Rule(FWD_CHAIN, ("-d", net, *comment, "-j", "ACCEPT")),
    )


def legacy_masq_rules(network: IPv4Network, subnet: IPv4Network) -> tuple[Rule, ...]:
    """flanneld v0.10's masquerade rules (facts §9.1): straight in POSTROUTING, no comment."""
    net, sub = str(network), str(subnet)
    return (
        Rule("POSTROUTING", ("-s", net, "-d", net, "-j", "RETURN")),
        Rule("POSTROUTING", ("-s", net, "!", "-d", MULTICAST, "-j", "MASQUERADE")),
        Rule("POSTROUTING", ("!", "-s", net, "-d", sub, "-j", "RETURN")),
        Rule("POSTROUTING", ("!", "-s", net, "-d", net, "-j", "MASQUERADE")),
    )


def stale_rules(
    previous_env: Mapping[str, str], desired: Mapping[str, RuleSet]
) -> dict[str, tuple[Rule, ...]]:
    """Rules an earlier run installed for the values in its subnet.env that are unwanted now.

    Candidates are flanneld v0.28's masquerade and forward rules for the previous
    network and subnet (with and without ``--random-fully``), and, when the earlier
    run had ``FLANNEL_IPMASQ=true``, flanneld v0.10's uncommented masquerade rules,
    which our chain replaces. Whatever the desired sets contain is kept. The shell
    deletes only the candidates it finds, so a wrong guess costs nothing.
    """
    network = subnetenv.previous_network(previous_env)
    subnet = subnetenv.previous_subnet(previous_env)
    if network is None or subnet is None:
        return {}
    nat = [*masq_rules(network, subnet, True), *masq_rules(network, subnet, False)]
    if previous_env.get("FLANNEL_IPMASQ") == "true":
        nat.extend(legacy_masq_rules(network, subnet))
    candidates = {NAT: nat, FILTER: list(forward_rules(network))}
    stale: dict[str, tuple[Rule, ...]] = {}
    for table, rules in candidates.items():
        keep = set(desired[table].rules) if table in desired else set()
        unwanted = tuple(dict.fromkeys(rule for rule in rules if rule not in keep))
        if unwanted:
            stale[table] = unwanted
    return stale


def _masq(chain: str, matches: Iterable[str], target: Iterable[str]) -> Rule:
    return Rule(chain, (*matches, "-m", "comment", "--comment", MASQ_COMMENT, *target))


def _join(spec: Iterable[str]) -> str:
    """Join arguments as iptables-save does: words with a space in double quotes."""
    return " ".join(f'"{word}"' if " " in word else word for word in spec)
