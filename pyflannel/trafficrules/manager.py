"""Keeping the masquerade and FORWARD rules in place: bootstrap, then a resync loop.

The decisions (which rules, which are stale, what to restore) are in ``rules`` and
``plan``; this module only reads tables, hands the text to them and runs the
payloads they return. Per period it costs one ``iptables-save`` per table, plus an
``iptables -C`` for a rule only when the saved text does not show it (a guard
against a future iptables printing a rule differently, which would otherwise look
like a missing rule forever).

Failures of iptables commands are never fatal here: flanneld logs them and tries
again at the next period, and so do we, logging once when a failure starts and once
when it ends. Only a missing iptables binary, when rules are wanted, stops start-up.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from pathlib import Path

from pyflannel.trafficrules.iptables import IptablesFailed, IptablesTool, other_backend
from pyflannel.trafficrules.plan import SavedTable, missing_rules, parse_save, restore_payload
from pyflannel.trafficrules.rules import FILTER, Rule, RuleSet

logger = logging.getLogger(__name__)

LEGACY_TABLES = Path("/proc/thread-self/net/ip_tables_names")
"""The legacy x_tables loaded in our network namespace; reading it loads none.

Running ``iptables-legacy-save`` instead would load the legacy filter module and so
create the very tables we are asking about.
"""


class TrafficRules:
    """The rule sets of this host and the loop that keeps them installed."""

    def __init__(
        self, tool: IptablesTool | None, desired: Mapping[str, RuleSet], resync_seconds: float
    ) -> None:
        self._tool = tool
        self._desired = dict(desired)
        self._resync = resync_seconds
        self._failing = False

    @property
    def desired(self) -> Mapping[str, RuleSet]:
        """The rule sets kept in place, keyed by table (empty when there is nothing to do)."""
        return self._desired

    async def bootstrap(self, stale: Mapping[str, tuple[Rule, ...]]) -> None:
        """Install every rule set and delete the stale rules, one transaction per table.

        A failure is logged, not raised: the resync loop tries again.
        """
        if self._tool is None:
            return
        for table in sorted(set(self._desired) | set(stale)):
            try:
                await self._rebuild(self._tool, table, stale.get(table, ()))
            except IptablesFailed as exc:
                self._note_failure("installing the iptables rules", exc)

    async def run(self) -> None:
        """Re-check the rules every resync period and restore them; returns if none are kept."""
        if self._tool is None or not self._desired:
            return
        while True:
            await asyncio.sleep(self._resync)
            try:
                await self.ensure()
            except IptablesFailed as exc:
                self._note_failure("checking the iptables rules", exc)
            else:
                if self._failing:
                    logger.info("iptables rules are in place again")
                self._failing = False

    async def ensure(self) -> tuple[Rule, ...]:
        """Restore every table with missing rules; the rules that were missing."""
        if self._tool is None:
            return ()
        repaired: list[Rule] = []
        for table, ruleset in self._desired.items():
            saved = await _saved(self._tool, table)
            missing = await _confirm_missing(self._tool, ruleset, saved)
            if not missing:
                continue
            logger.warning(
                "Some iptables rules are missing; deleting and recreating rules (%s table: %s)",
                table,
                "; ".join(rule.save_line() for rule in missing),
            )
            await self._restore(self._tool, restore_payload(table, ruleset, (), saved))
            repaired.extend(missing)
        return tuple(repaired)

    async def warn_if_other_backend_drops(self, search_path: str | None = None) -> None:
        """Warn when the back end we do not use also drops forwarded packets.

        Packets pass the FORWARD chains of both back ends, so our accept rules in one
        do not help against a DROP policy in the other.
        """
        if self._tool is None or FILTER not in self._desired:
            return
        other = other_backend(self._tool, search_path)
        if other is None or (other.mode == "legacy" and not _legacy_filter_loaded()):
            return
        try:
            saved = await _saved(other, FILTER)
        except IptablesFailed:
            return
        if saved.policies.get("FORWARD") == "DROP":
            logger.warning(
                "the FORWARD chain of the %s iptables back end has policy DROP, but the rules "
                "go to the %s back end (the one the iptables command uses): forwarded container "
                "traffic is still dropped there; point the iptables alternative at the back end "
                "Docker uses, or accept the overlay network in the other back end",
                other.mode,
                self._tool.mode,
            )

    async def _rebuild(self, tool: IptablesTool, table: str, stale: tuple[Rule, ...]) -> None:
        saved = await _saved(tool, table)
        found = [rule for rule in stale if saved.count(rule)]
        if found:
            logger.info(
                "deleting %d stale rules of an earlier run from the %s table: %s",
                len(found),
                table,
                "; ".join(rule.save_line() for rule in found),
            )
        await self._restore(tool, restore_payload(table, self._desired.get(table), stale, saved))

    async def _restore(self, tool: IptablesTool, payload: str | None) -> None:
        if payload is None:
            return
        logger.debug("iptables-restore --noflush <<EOF\n%sEOF", payload)
        await tool.restore_noflush(payload)

    def _note_failure(self, what: str, exc: IptablesFailed) -> None:
        if not self._failing:
            logger.error("%s failed (retrying every %s s): %s", what, self._resync, exc)
        self._failing = True


async def _saved(tool: IptablesTool, table: str) -> SavedTable:
    return parse_save(await tool.save_table(table)).get(table, SavedTable())


async def _confirm_missing(
    tool: IptablesTool, ruleset: RuleSet, saved: SavedTable
) -> tuple[Rule, ...]:
    """The rules the saved text lacks, confirmed with ``iptables -C`` when their chain exists."""
    missing = missing_rules(ruleset, saved)
    if not missing or ruleset.chain not in saved.chains:
        return missing
    confirmed: list[Rule] = []
    for rule in missing:
        if rule.chain not in saved.chains:
            confirmed.append(rule)
        elif await tool.check(ruleset.table, rule.chain, rule.spec):
            logger.debug("iptables -C finds %s although iptables-save shows it otherwise", rule)
        else:
            confirmed.append(rule)
    return tuple(confirmed)


def _legacy_filter_loaded() -> bool:
    try:
        return "filter" in LEGACY_TABLES.read_text().split()
    except OSError:
        return False
