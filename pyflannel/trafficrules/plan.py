"""Reading ``iptables-save`` output and deciding what to restore.

Rules of this file: pure code, no I/O. The shell hands in the text of
``iptables-save -t <table>`` and gets back either the rules that are missing or the
exact ``iptables-restore --noflush`` payload that puts a table right.

A payload changes one table in one transaction (both iptables back ends commit a
``*table`` … ``COMMIT`` block atomically), so there is no moment in which the
chain is empty or a rule stands twice. It declares our chain (which creates it, or
empties it when it exists), deletes every copy of the jumps into it and of the stale
rules it found, and appends the rule set in order.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from pyflannel.trafficrules.rules import Rule, RuleSet


@dataclass(frozen=True, slots=True)
class SavedTable:
    """One table as iptables-save printed it: chains, their policies, rule lines."""

    chains: frozenset[str] = frozenset()
    lines: Counter[str] = field(default_factory=Counter)
    policies: Mapping[str, str] = field(default_factory=dict)  # built-in chains only

    def count(self, rule: Rule) -> int:
        """How many copies of ``rule`` the table holds."""
        return self.lines[rule.save_line()]

    def holds(self, rule: Rule) -> bool:
        """True when the rule's chain exists and holds at least one copy of it."""
        return rule.chain in self.chains and self.count(rule) > 0


def parse_save(text: str) -> dict[str, SavedTable]:
    """Parse iptables-save output (any number of tables; comments and counters ignored)."""
    tables: dict[str, SavedTable] = {}
    name: str | None = None
    policies: dict[str, str] = {}
    lines: Counter[str] = Counter()
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("*"):
            name, policies, lines = line[1:], {}, Counter()
        elif name is None or not line or line.startswith("#"):
            continue
        elif line.startswith(":"):
            chain, policy, *_ = [*line[1:].split(), "-"]
            policies[chain] = policy
        elif line.startswith("-A "):
            lines[line] += 1
        elif line == "COMMIT":
            builtin = {chain: policy for chain, policy in policies.items() if policy != "-"}
            tables[name] = SavedTable(frozenset(policies), lines, builtin)
            name = None
    return tables


def missing_rules(ruleset: RuleSet, saved: SavedTable) -> tuple[Rule, ...]:
    """The rules of ``ruleset`` that ``saved`` does not show (order is not checked)."""
    return tuple(rule for rule in ruleset.rules if not saved.holds(rule))


def restore_payload(
    table: str,
    ruleset: RuleSet | None,
    stale: Sequence[Rule],
    saved: SavedTable,
) -> str | None:
    """The iptables-restore input that leaves ``table`` right, or None if nothing to do.

    ``ruleset`` None means pyflannel wants no rules in this table; the stale rules
    found are deleted all the same.
    """
    flushed = ruleset.chain if ruleset is not None else None
    lines = [f"*{table}"]
    if ruleset is not None:
        lines.append(f":{ruleset.chain} - [0:0]")
    # Rules in the chain being emptied need no delete line (it would fail after the flush).
    deletions = [rule for rule in stale if rule.chain != flushed]
    if ruleset is not None:
        deletions.extend(ruleset.in_builtin_chains())
    for rule in dict.fromkeys(deletions):
        lines.extend([rule.delete_line()] * saved.count(rule))
    if ruleset is not None:
        lines.extend(rule.save_line() for rule in ruleset.rules)
    if len(lines) == 1:
        return None
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"
