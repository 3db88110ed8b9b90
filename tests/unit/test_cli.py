"""The command line follows Go's ``flag`` package, and ``FLANNELD_*`` fills the gaps."""

from __future__ import annotations

import dataclasses
import shlex

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyflannel.cli import (
    FLAGS,
    FlagKind,
    FlagSpec,
    HelpRequested,
    UsageError,
    ignored_arguments,
    parse_args,
    parse_go_int,
    usage,
)
from pyflannel.errors import ConfigError
from pyflannel.options import Options


def parse(line: str, **env: str) -> Options:
    return parse_args(shlex.split(line), env)


def usage_error(line: str) -> str:
    with pytest.raises(UsageError) as info:
        parse(line)
    return str(info.value)


# --- the unit-file line that has to keep working -----------------------------------------


def test_unit_file_line_from_a_flanneld_deployment() -> None:
    line = (
        "--etcd-endpoints=http://10.2.40.223:2379,http://10.2.40.224:2379"
        " -etcd-prefix=/docker-flannel/network  --iface=eth0"
    )
    assert parse(line) == Options(
        etcd_endpoints=("http://10.2.40.223:2379", "http://10.2.40.224:2379"),
        etcd_prefix="/docker-flannel/network",
        iface=("eth0",),
    )


def test_no_arguments_give_flanneld_defaults() -> None:
    assert parse_args([], {}) == Options()


# --- dashes, values, terminators -----------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    ["-etcd-prefix=/a", "--etcd-prefix=/a", "-etcd-prefix /a", "--etcd-prefix /a"],
)
def test_one_or_two_dashes_and_both_value_forms(line: str) -> None:
    assert parse(line).etcd_prefix == "/a"


def test_separate_value_is_taken_even_when_it_looks_like_a_flag() -> None:
    assert parse("-etcd-prefix -ip-masq").etcd_prefix == "-ip-masq"
    assert parse("-etcd-prefix -h").etcd_prefix == "-h"
    assert parse("-etcd-prefix --").etcd_prefix == "--"


def test_value_may_contain_equals_signs_and_be_empty() -> None:
    assert parse("-etcd-password=a=b=").etcd_password == "a=b="
    assert parse("-etcd-prefix=").etcd_prefix == ""


def test_double_dash_ends_the_flags() -> None:
    assert parse("-- -ip-masq").ip_masq is False
    assert ignored_arguments(["--", "-ip-masq"]) == ("-ip-masq",)


def test_lone_dash_is_a_positional_and_stops_parsing() -> None:
    assert parse("- -ip-masq").ip_masq is False
    assert ignored_arguments(["-", "-ip-masq"]) == ("-", "-ip-masq")


def test_first_positional_stops_parsing_and_the_rest_is_ignored() -> None:
    options = parse("-iface=eth0 extra --iface=eth1 --nonsense")
    assert options.iface == ("eth0",)
    assert ignored_arguments(["-iface=eth0", "extra", "--nonsense"]) == ("extra", "--nonsense")


def test_nothing_ignored_for_a_clean_command_line() -> None:
    assert ignored_arguments(["--ip-masq", "--iface", "eth0"]) == ()


def test_last_occurrence_of_a_plain_flag_wins() -> None:
    assert parse("-etcd-prefix=/a --etcd-prefix /b").etcd_prefix == "/b"
    assert parse("-ip-masq -ip-masq=false").ip_masq is False
    assert parse("-healthz-port=1 -healthz-port=2").healthz_port == 2


def test_repeatable_flags_collect_every_occurrence() -> None:
    options = parse("--iface a --iface b -iface=c --iface-regex ^e -iface-regex=x$")
    assert options.iface == ("a", "b", "c")
    assert options.iface_regex == ("^e", "x$")
    assert parse("-iface=").iface == ("",)


def test_etcd_endpoints_split_on_commas_without_trimming() -> None:
    assert parse("--etcd-endpoints='http://a:2379, http://b:2379'").etcd_endpoints == (
        "http://a:2379",
        " http://b:2379",
    )
    assert parse("--etcd-endpoints=").etcd_endpoints == ("",)
    assert parse("--etcd-endpoints=http://a:2379,").etcd_endpoints == ("http://a:2379", "")


# --- bool flags ----------------------------------------------------------------------------


def test_bare_bool_flag_sets_true() -> None:
    options = parse("-ip-masq --ip-blackhole-route -kube-subnet-mgr")
    assert (options.ip_masq, options.ip_blackhole_route, options.kube_subnet_mgr) == (
        True,
        True,
        True,
    )


@pytest.mark.parametrize("text", ["1", "t", "T", "TRUE", "true", "True"])
def test_go_true_spellings(text: str) -> None:
    assert parse(f"-ip-masq={text}").ip_masq is True


@pytest.mark.parametrize("text", ["0", "f", "F", "FALSE", "false", "False"])
def test_go_false_spellings(text: str) -> None:
    assert parse(f"--iptables-forward-rules={text}").iptables_forward_rules is False


def test_bool_with_a_separate_false_keeps_true_and_ignores_the_rest() -> None:
    options = parse("-ip-masq false --iface=eth1 -healthz-port=8080")
    assert options.ip_masq is True
    assert options.iface == ()
    assert options.healthz_port == 0
    assert ignored_arguments(["-ip-masq", "false", "--iface=eth1"]) == ("false", "--iface=eth1")


@pytest.mark.parametrize("text", ["yes", "no", "on", "tRUE", "2", " true", ""])
def test_invalid_bool_spelling_is_rejected(text: str) -> None:
    assert usage_error(f"-ip-masq='{text}'") == (
        f'invalid boolean value "{text}" for -ip-masq: parse error'
    )


# --- int flags (Go strconv.ParseInt base 0) ------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("10", 10),
        ("+7", 7),
        ("-7", -7),
        ("0", 0),
        ("-0", 0),
        ("0x1f", 31),
        ("0X1F", 31),
        ("0o17", 15),
        ("0O17", 15),
        ("017", 15),
        ("0b101", 5),
        ("0B101", 5),
        ("1_000", 1000),
        ("0x_1f", 31),
        ("0_17", 15),
        ("9223372036854775807", 2**63 - 1),
        ("-9223372036854775808", -(2**63)),
        ("-0x8000000000000000", -(2**63)),
    ],
)
def test_int_flags_accept_go_integer_literals(text: str, value: int) -> None:
    assert parse(f"-healthz-port={text}").healthz_port == value


@pytest.mark.parametrize(
    "text",
    ["", "abc", "1_", "_1", "1__0", "08", "0x", "0b2", "0o8", "+-1", "--1", " 1", "1 ", "1.0",
     "1e3", "٣", "９", "0x1g", "12a"],
)  # fmt: skip
def test_int_flags_reject_what_go_rejects(text: str) -> None:
    assert parse_error(text) == "parse error"


@pytest.mark.parametrize(
    "text",
    ["9223372036854775808", "-9223372036854775809", "0x10000000000000000",
     "99999999999999999999x"],  # Go reports the overflow before the bad character
)  # fmt: skip
def test_int_flags_report_overflow(text: str) -> None:
    assert parse_error(text) == "value out of range"


def parse_error(text: str) -> str:
    message = usage_error(f"-subnet-lease-renew-margin='{text}'")
    prefix = f'invalid value "{text}" for flag -subnet-lease-renew-margin: '
    assert message.startswith(prefix)
    return message.removeprefix(prefix)


def test_bad_int_message_names_flag_and_value() -> None:
    assert usage_error("-healthz-port=abc") == (
        'invalid value "abc" for flag -healthz-port: parse error'
    )
    assert usage_error("--iptables-resync x") == (
        'invalid value "x" for flag -iptables-resync: parse error'
    )


@given(st.integers(min_value=-(2**63), max_value=2**63 - 1))
def test_go_int_parser_reads_python_literals(n: int) -> None:
    for text in (str(n), hex(n), oct(n), bin(n), f"{n:_}"):
        assert parse_go_int(text, base0=True, bits=64) == n


# --- the verbosity flag (klog: decimal, 32 bits) -------------------------------------------


def test_verbosity_forms() -> None:
    assert parse("-v=10").v == 10
    assert parse("-v 3").v == 3
    assert parse("--v=-1").v == -1
    assert parse("-v=+2").v == 2


def test_verbosity_is_decimal_only_with_klogs_message() -> None:
    assert usage_error("-v=0x10") == (
        'invalid value "0x10" for flag -v: strconv.ParseInt: parsing "0x10": invalid syntax'
    )
    assert usage_error("-v 2147483648") == (
        'invalid value "2147483648" for flag -v: strconv.ParseInt: parsing "2147483648":'
        " value out of range"
    )


def test_verbosity_takes_the_next_argument_even_a_flag() -> None:
    assert usage_error("-v -ip-masq") == (
        'invalid value "-ip-masq" for flag -v: strconv.ParseInt: parsing "-ip-masq": invalid syntax'
    )


def test_vmodule_and_backtrace_are_checked_like_klog() -> None:
    assert parse("-vmodule=main=2,registry*=3,").vmodule == "main=2,registry*=3,"
    assert parse("-log_backtrace_at=main.go:12").log_backtrace_at == "main.go:12"
    assert usage_error("-vmodule=main") == (
        'invalid value "main" for flag -vmodule: syntax error: expect comma-separated list'
        " of filename=N"
    )
    assert usage_error("-log_backtrace_at=main:12") == (
        'invalid value "main:12" for flag -log_backtrace_at: syntax error: expect file.go:234'
    )


# --- malformed command lines and help ------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("-x", "flag provided but not defined: -x"),
        ("--nope=1", "flag provided but not defined: -nope"),
        ("--log_dir=/tmp", "flag provided but not defined: -log_dir"),
        ("-V", "flag provided but not defined: -V"),
        ("-iface=eth0 -subnet-dir=/run", "flag provided but not defined: -subnet-dir"),
        ("-healthz-port", "flag needs an argument: -healthz-port"),
        ("--etcd-prefix", "flag needs an argument: -etcd-prefix"),
        ("-iface", "flag needs an argument: -iface"),
        ("---x", "bad flag syntax: ---x"),
        ("-=x", "bad flag syntax: -=x"),
        ("--=", "bad flag syntax: --="),
    ],
)
def test_malformed_command_lines(line: str, message: str) -> None:
    assert usage_error(line) == message


def test_usage_error_is_a_config_error() -> None:
    assert issubclass(UsageError, ConfigError)


def test_messages_quote_values_like_go() -> None:
    assert usage_error("-healthz-port='a\"b\n\t'") == (
        'invalid value "a\\"b\\n\\t" for flag -healthz-port: parse error'
    )
    with pytest.raises(UsageError, match=r'"\\xff"'):
        parse_args(["-healthz-port=\udcff"], {})


@pytest.mark.parametrize("line", ["-h", "-help", "--help", "--h", "-h=1", "--help=x", "-h -x"])
def test_help_flags(line: str) -> None:
    with pytest.raises(HelpRequested):
        parse(line)


def test_errors_and_help_come_in_command_line_order() -> None:
    assert usage_error("-x -h") == "flag provided but not defined: -x"
    assert parse("extra -h") == Options()


# --- environment ---------------------------------------------------------------------------


def test_env_fills_flags_absent_from_the_command_line() -> None:
    options = parse(
        "--iface=eth0",
        FLANNELD_ETCD_PREFIX="/env",
        FLANNELD_SUBNET_LEASE_RENEW_MARGIN="30",
        FLANNELD_V="4",
        FLANNELD_LOG_BACKTRACE_AT="main.go:1",
        FLANNELD_ETCD_API="v2",
        FLANNELD_LOG_FORMAT="json",
    )
    assert options == Options(
        iface=("eth0",),
        etcd_prefix="/env",
        subnet_lease_renew_margin=30,
        v=4,
        log_backtrace_at="main.go:1",
        etcd_api="v2",
        log_format="json",
    )


def test_command_line_wins_over_env() -> None:
    assert parse("-etcd-prefix=/cli", FLANNELD_ETCD_PREFIX="/env").etcd_prefix == "/cli"
    assert parse("--iface=a", FLANNELD_IFACE="b").iface == ("a",)


def test_flag_given_with_its_default_value_still_blocks_env() -> None:
    assert parse("-ip-masq=false", FLANNELD_IP_MASQ="true").ip_masq is False


def test_env_gives_a_repeatable_flag_exactly_one_value() -> None:
    assert parse("", FLANNELD_IFACE="eth0,eth1").iface == ("eth0,eth1",)
    assert parse("", FLANNELD_IFACE_REGEX="^en").iface_regex == ("^en",)


def test_env_endpoints_are_split_like_the_flag() -> None:
    assert parse("", FLANNELD_ETCD_ENDPOINTS="http://a:1,http://b:2").etcd_endpoints == (
        "http://a:1",
        "http://b:2",
    )


@pytest.mark.parametrize(
    ("text", "value"),
    [("1", True), ("t", True), ("TRUE", True), ("True", True), ("0", False), ("F", False)],
)
def test_env_bools_use_go_spellings(text: str, value: bool) -> None:
    options = parse("", FLANNELD_IP_MASQ=text, FLANNELD_IPTABLES_FORWARD_RULES=text)
    assert (options.ip_masq, options.iptables_forward_rules) == (value, value)


def test_empty_env_values_are_ignored() -> None:
    assert parse("", FLANNELD_HEALTHZ_PORT="", FLANNELD_ETCD_PREFIX="") == Options()


def test_unrelated_and_lower_case_variables_are_ignored() -> None:
    assert parse("", flanneld_ip_masq="true", FLANNEL_IP_MASQ="true", IP_MASQ="1") == Options()


@pytest.mark.parametrize(
    ("name", "text", "reason"),
    [
        ("FLANNELD_IP_MASQ", "yes", "parse error"),
        ("FLANNELD_HEALTHZ_PORT", "80a", "parse error"),
        ("FLANNELD_V", "x", 'strconv.ParseInt: parsing "x": invalid syntax'),
    ],
)
def test_invalid_env_value_is_a_config_error_naming_the_variable(
    name: str, text: str, reason: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse("", **{name: text})
    assert not isinstance(info.value, UsageError)
    assert str(info.value) == f'invalid value "{text}" for {name}: {reason}'


def test_invalid_env_value_is_harmless_when_the_flag_is_given() -> None:
    assert parse("--ip-masq", FLANNELD_IP_MASQ="yes").ip_masq is True


def test_flanneld_version_variable_has_no_effect() -> None:
    assert parse("", FLANNELD_VERSION="true").version is False


def test_version_is_decided_before_env_is_read() -> None:
    options = parse("--version", FLANNELD_ETCD_PREFIX="/env", FLANNELD_HEALTHZ_PORT="bad")
    assert options == Options(version=True)
    assert parse("-version=false", FLANNELD_ETCD_PREFIX="/env").etcd_prefix == "/env"


# --- the flag table and usage --------------------------------------------------------------


def test_every_option_field_has_exactly_one_flag() -> None:
    fields = [f.name for f in dataclasses.fields(Options)]
    assert sorted(spec.field for spec in FLAGS) == sorted(fields)


_KIND_TYPES = {
    FlagKind.BOOL: bool,
    FlagKind.INT: int,
    FlagKind.LEVEL: int,
    FlagKind.STRING: str,
    FlagKind.LIST: tuple,
    FlagKind.REPEATED: tuple,
    FlagKind.VMODULE: str,
    FlagKind.BACKTRACE: str,
}


@pytest.mark.parametrize("spec", FLAGS, ids=lambda spec: spec.name)
def test_flag_kind_matches_the_field_type(spec: FlagSpec) -> None:
    assert type(spec.default) is _KIND_TYPES[spec.kind]


def test_env_names_follow_flanneld() -> None:
    names = {spec.name: spec.env for spec in FLAGS}
    assert names["etcd-endpoints"] == "FLANNELD_ETCD_ENDPOINTS"
    assert names["subnet-lease-renew-margin"] == "FLANNELD_SUBNET_LEASE_RENEW_MARGIN"
    assert names["log_backtrace_at"] == "FLANNELD_LOG_BACKTRACE_AT"
    assert names["v"] == "FLANNELD_V"
    assert names["version"] is None


def test_usage_lists_every_flag_with_its_default() -> None:
    text = usage("pyflanneld")
    assert text.startswith("Usage: pyflanneld [OPTION]...\n")
    for spec in FLAGS:
        assert f"--{spec.name}{spec.metavar} " in text
        assert spec.help in text
    assert '(default "http://127.0.0.1:4001,http://127.0.0.1:2379")' in text
    assert "(default true)" in text
    assert max(len(line) for line in text.splitlines()) <= 100


def test_usage_groups_appear_in_operator_order() -> None:
    text = usage("x")
    headings = [line for line in text.splitlines() if line.endswith(":") and line[0] != " "]
    assert [h.split()[0] for h in headings] == [
        "etcd:",
        "interface:",
        "subnet:",
        "masquerade",
        "health,",
        "kubernetes",
    ]


# --- robustness ----------------------------------------------------------------------------

_FLAG_WORDS = st.sampled_from(
    [f"{dashes}{spec.name}" for spec in FLAGS for dashes in ("-", "--")]
    + ["-", "--", "-h", "---", "-=", "false", "0x1f", "1_0", "eth0"]
)
_ARGS = st.one_of(
    _FLAG_WORDS,
    st.text(max_size=12),
    st.builds(lambda f, v: f"{f}={v}", _FLAG_WORDS, st.text(max_size=8)),
    st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=6),
)


@given(st.lists(_ARGS, max_size=8))
def test_parse_args_fails_only_with_usage_error_or_help(argv: list[str]) -> None:
    try:
        options = parse_args(argv, {})
    except (UsageError, HelpRequested):
        return
    for spec in FLAGS:
        assert type(getattr(options, spec.field)) is _KIND_TYPES[spec.kind]


@given(st.dictionaries(st.sampled_from([s.env for s in FLAGS if s.env]), st.text(max_size=8)))
def test_env_fails_only_with_config_error(env: dict[str, str]) -> None:
    try:
        options = parse_args([], env)
    except ConfigError:
        return
    assert isinstance(options, Options)
