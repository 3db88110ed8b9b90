"""The iptables rule sets, stale-rule choice and restore payloads (pure code)."""

from __future__ import annotations

from ipaddress import IPv4Network

import pytest

from pyflannel.trafficrules.iptables import IptablesMissing, parse_version
from pyflannel.trafficrules.plan import (
    SavedTable,
    missing_rules,
    parse_save,
    restore_payload,
)
from pyflannel.trafficrules.rules import (
    FILTER,
    NAT,
    Rule,
    legacy_masq_rules,
    render,
    stale_rules,
)

NET = IPv4Network("10.5.0.0/16")
SUB = IPv4Network("10.5.34.0/24")

# facts §9.2, written out by hand as iptables-save prints them.
MC = '-m comment --comment "flanneld masq"'
MASQ_LINES = [
    f"-A POSTROUTING {MC} -j FLANNEL-POSTRTG",
    f"-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 {MC} -j RETURN",
    f"-A FLANNEL-POSTRTG -s 10.5.34.0/24 -d 10.5.0.0/16 {MC} -j RETURN",
    f"-A FLANNEL-POSTRTG -s 10.5.0.0/16 -d 10.5.34.0/24 {MC} -j RETURN",
    f"-A FLANNEL-POSTRTG ! -s 10.5.0.0/16 -d 10.5.34.0/24 {MC} -j RETURN",
    f"-A FLANNEL-POSTRTG -s 10.5.0.0/16 ! -d 224.0.0.0/4 {MC} -j MASQUERADE --random-fully",
    f"-A FLANNEL-POSTRTG ! -s 10.5.0.0/16 -d 10.5.0.0/16 {MC} -j MASQUERADE --random-fully",
]
FORWARD_LINES = [
    '-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD',
    '-A FLANNEL-FWD -s 10.5.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT',
    '-A FLANNEL-FWD -d 10.5.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT',
]


def lines(rules: tuple[Rule, ...]) -> list[str]:
    return [rule.save_line() for rule in rules]


def test_masquerade_rules_are_flanneld_v028s_in_order() -> None:
    sets = render(NET, SUB, masq=True, forward=False, random_fully=True)
    assert list(sets) == [NAT]
    assert sets[NAT].chain == "FLANNEL-POSTRTG"
    assert lines(sets[NAT].rules) == MASQ_LINES


def test_random_fully_is_left_out_when_unsupported_or_disabled() -> None:
    sets = render(NET, SUB, masq=True, forward=False, random_fully=False)
    expected = [line.removesuffix(" --random-fully") for line in MASQ_LINES]
    assert lines(sets[NAT].rules) == expected


def test_forward_rules_are_flanneld_v028s_in_order() -> None:
    sets = render(NET, SUB, masq=False, forward=True, random_fully=True)
    assert list(sets) == [FILTER]
    assert sets[FILTER].chain == "FLANNEL-FWD"
    assert lines(sets[FILTER].rules) == FORWARD_LINES


def test_argument_vectors_are_what_iptables_dash_c_takes() -> None:
    jump = render(NET, SUB, masq=False, forward=True, random_fully=True)[FILTER].rules[0]
    assert jump.chain == "FORWARD"
    assert jump.spec == ("-m", "comment", "--comment", "flanneld forward", "-j", "FLANNEL-FWD")
    assert jump.delete_line() == '-D FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD'


def test_no_flags_no_rules() -> None:
    assert render(NET, SUB, masq=False, forward=False, random_fully=True) == {}


def test_legacy_v010_masquerade_rules() -> None:
    assert lines(legacy_masq_rules(NET, SUB)) == [
        "-A POSTROUTING -s 10.5.0.0/16 -d 10.5.0.0/16 -j RETURN",
        "-A POSTROUTING -s 10.5.0.0/16 ! -d 224.0.0.0/4 -j MASQUERADE",
        "-A POSTROUTING ! -s 10.5.0.0/16 -d 10.5.34.0/24 -j RETURN",
        "-A POSTROUTING ! -s 10.5.0.0/16 -d 10.5.0.0/16 -j MASQUERADE",
    ]


def previous(network: str, subnet_gw: str, masq: bool = True) -> dict[str, str]:
    return {
        "FLANNEL_NETWORK": network,
        "FLANNEL_SUBNET": subnet_gw,
        "FLANNEL_MTU": "1450",
        "FLANNEL_IPMASQ": "true" if masq else "false",
    }


def test_no_previous_env_means_nothing_stale() -> None:
    desired = render(NET, SUB, masq=True, forward=True, random_fully=True)
    assert stale_rules({}, desired) == {}
    assert stale_rules({"FLANNEL_NETWORK": "10.5.0.0/16"}, desired) == {}
    assert stale_rules(previous("10.5.0.0/16,10.6.0.0/16", "10.5.34.1/24"), desired) == {}


def test_same_values_leave_only_the_other_random_fully_variant_and_v010_rules() -> None:
    desired = render(NET, SUB, masq=True, forward=True, random_fully=True)
    stale = stale_rules(previous("10.5.0.0/16", "10.5.34.1/24"), desired)
    assert FILTER not in stale
    plain = [line.removesuffix(" --random-fully") for line in MASQ_LINES[5:]]
    legacy = lines(legacy_masq_rules(NET, SUB))
    assert lines(stale[NAT]) == plain + legacy


def test_changed_network_makes_the_old_rules_stale() -> None:
    desired = render(NET, SUB, masq=True, forward=True, random_fully=True)
    stale = stale_rules(previous("10.9.0.0/16", "10.9.7.1/24", masq=False), desired)
    nat = lines(stale[NAT])
    # The jump into the chain is wanted now, so it is never stale.
    assert '-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG' not in nat
    # Three RETURN rules, two MASQUERADE rules with and without --random-fully; the
    # kube-proxy mark rule does not depend on the network and is wanted now.
    assert len(nat) == 7
    assert all("10.9." in line for line in nat)
    assert not any("10.5." in line for line in nat)
    # Without FLANNEL_IPMASQ=true no v0.10 rules are suspected.
    assert not any(line.startswith("-A POSTROUTING") for line in nat)
    assert lines(stale[FILTER]) == [line.replace("10.5.", "10.9.") for line in FORWARD_LINES[1:]]


def test_masquerade_turned_off_makes_all_masquerade_rules_stale() -> None:
    desired = render(NET, SUB, masq=False, forward=True, random_fully=True)
    stale = stale_rules(previous("10.5.0.0/16", "10.5.34.1/24"), desired)
    assert set(MASQ_LINES) <= set(lines(stale[NAT]))
    assert FILTER not in stale


SAVE_TEXT = """# Generated by iptables-nft-save v1.8.9 (nf_tables) on Wed Nov 25 22:03:32 2026
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER - [0:0]
:FLANNEL-FWD - [0:0]
-A FORWARD -j DOCKER
-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD
-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD
-A FLANNEL-FWD -s 10.5.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT
COMMIT
# Completed on Wed Nov 25 22:03:32 2026
*nat
:POSTROUTING ACCEPT [0:0]
COMMIT
"""


def test_parse_save_reads_chains_policies_and_rule_counts() -> None:
    tables = parse_save(SAVE_TEXT)
    assert set(tables) == {"filter", "nat"}
    saved = tables["filter"]
    assert saved.chains == {"INPUT", "FORWARD", "OUTPUT", "DOCKER", "FLANNEL-FWD"}
    assert saved.policies == {"INPUT": "ACCEPT", "FORWARD": "DROP", "OUTPUT": "ACCEPT"}
    forward = render(NET, SUB, masq=False, forward=True, random_fully=True)[FILTER]
    assert [saved.count(rule) for rule in forward.rules] == [2, 1, 0]
    assert missing_rules(forward, saved) == forward.rules[2:]


def test_a_rule_in_a_missing_chain_is_missing() -> None:
    forward = render(NET, SUB, masq=False, forward=True, random_fully=True)[FILTER]
    saved = SavedTable(frozenset({"FORWARD"}), parse_save(SAVE_TEXT)["filter"].lines)
    assert missing_rules(forward, saved) == forward.rules[1:]


def test_payload_flushes_our_chain_deletes_every_jump_copy_and_appends_in_order() -> None:
    forward = render(NET, SUB, masq=False, forward=True, random_fully=True)[FILTER]
    payload = restore_payload(FILTER, forward, (), parse_save(SAVE_TEXT)["filter"])
    assert payload == "\n".join(
        [
            "*filter",
            ":FLANNEL-FWD - [0:0]",
            '-D FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD',
            '-D FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD',
            *FORWARD_LINES,
            "COMMIT",
            "",
        ]
    )


def test_payload_on_an_empty_table_only_creates_and_appends() -> None:
    masq = render(NET, SUB, masq=True, forward=False, random_fully=True)[NAT]
    payload = restore_payload(NAT, masq, (), SavedTable())
    assert payload == "*nat\n:FLANNEL-POSTRTG - [0:0]\n" + "\n".join(MASQ_LINES) + "\nCOMMIT\n"


def test_payload_deletes_only_stale_rules_that_exist_outside_the_flushed_chain() -> None:
    old_net, old_sub = IPv4Network("10.9.0.0/16"), IPv4Network("10.9.7.0/24")
    legacy = legacy_masq_rules(old_net, old_sub)
    saved_text = "*nat\n:POSTROUTING ACCEPT [0:0]\n:FLANNEL-POSTRTG - [0:0]\n"
    saved_text += f"{legacy[1].save_line()}\n"
    saved_text += "-A FLANNEL-POSTRTG -s 10.9.0.0/16 -d 10.9.7.0/24 -j RETURN\nCOMMIT\n"
    saved = parse_save(saved_text)["nat"]
    masq = render(NET, SUB, masq=True, forward=False, random_fully=True)[NAT]
    stale = (
        *legacy,
        Rule("FLANNEL-POSTRTG", ("-s", "10.9.0.0/16", "-d", "10.9.7.0/24", "-j", "RETURN")),
    )
    payload = restore_payload(NAT, masq, stale, saved)
    assert payload is not None
    assert payload.splitlines()[:3] == [
        "*nat",
        ":FLANNEL-POSTRTG - [0:0]",
        "-D POSTROUTING -s 10.9.0.0/16 ! -d 224.0.0.0/4 -j MASQUERADE",
    ]
    assert "-D FLANNEL-POSTRTG" not in payload  # emptied by the chain line anyway


def test_payload_without_a_rule_set_only_deletes_and_may_be_empty() -> None:
    old = render(NET, SUB, masq=True, forward=False, random_fully=True)[NAT].rules
    assert restore_payload(NAT, None, old, SavedTable()) is None
    saved = parse_save(
        "*nat\n:FLANNEL-POSTRTG - [0:0]\n" + f"{old[0].save_line()}\n{old[3].save_line()}\nCOMMIT\n"
    )
    assert restore_payload(NAT, None, old, saved["nat"]) == (
        f"*nat\n{old[0].delete_line()}\n{old[3].delete_line()}\nCOMMIT\n"
    )


@pytest.mark.parametrize(
    ("text", "version", "mode"),
    [
        ("iptables v1.8.9 (nf_tables)\n", (1, 8, 9), "nf_tables"),
        ("iptables v1.8.9 (legacy)\n", (1, 8, 9), "legacy"),
        ("iptables v1.6.1\n", (1, 6, 1), "legacy"),
    ],
)
def test_parse_version(text: str, version: tuple[int, int, int], mode: str) -> None:
    assert parse_version(text) == (version, mode)


def test_parse_version_rejects_garbage() -> None:
    with pytest.raises(IptablesMissing):
        parse_version("command not found")
