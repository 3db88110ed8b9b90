"""pyflannelctl's command line: the daemon's flags anywhere, its variables, its env file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pyflannel.cli import FLAGS
from pyflannel.ctl import docgen
from pyflannel.ctl.__main__ import build_parser, ctl_options, main, split_daemon_flags
from pyflannel.errors import ConfigError
from pyflannel.options import Options

ROOT = Path(__file__).resolve().parents[2]


def options_for(argv: list[str], env: dict[str, str] | None = None) -> Options:
    flags, rest = split_daemon_flags(argv)
    return ctl_options(flags, build_parser().parse_args(rest), env or {})


def test_daemon_flags_are_taken_from_anywhere_with_go_rules() -> None:
    argv = ["-etcd-prefix", "/x", "leases", "--json", "--ip-masq", "--iface=eth0", "--etcd-api=v2"]
    assert split_daemon_flags(argv) == (
        ["-etcd-prefix", "/x", "--ip-masq", "--iface=eth0", "--etcd-api=v2"],
        ["leases", "--json"],
    )
    assert split_daemon_flags(["--version", "--", "--etcd-prefix"]) == (
        [],
        ["--version", "--", "--etcd-prefix"],
    )


def test_precedence_flag_then_environment_then_env_file(tmp_path: Path) -> None:
    env_file = tmp_path / "pyflanneld.env"
    env_file.write_text(
        "# the unit's file\n"
        "FLANNELD_ETCD_ENDPOINTS=http://192.0.2.1:2379\n"
        'FLANNELD_ETCD_PREFIX="/from/file"\n'
        "FLANNELD_SUBNET_FILE=/from/file/subnet.env\n"
        "FLANNELD_IP_MASQ=not-a-bool\n"  # not a variable pyflannelctl reads
    )
    argv = [f"--env-file={env_file}", "status", "--subnet-file=/from/flag"]
    env = {"FLANNELD_ETCD_PREFIX": "/from/env", "FLANNELD_V": "also-ignored"}
    options = options_for(argv, env)
    assert options.etcd_endpoints == ("http://192.0.2.1:2379",)
    assert options.etcd_prefix == "/from/env"
    assert options.subnet_file == "/from/flag"
    assert options_for(["--env-file=", "leases"]).etcd_prefix == "/coreos.com/network"


def test_a_bad_value_is_reported_like_the_daemon_does(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="FLANNELD_SUBNET_LEASE_RENEW_MARGIN"):
        options_for(["leases"], {"FLANNELD_SUBNET_LEASE_RENEW_MARGIN": "soon"})
    with pytest.raises(ConfigError, match="--etcd-api"):
        options_for(["leases", "--etcd-api=v4"])


@pytest.mark.parametrize(
    ("argv", "status", "stream", "text"),
    [
        (["--help"], 0, "out", "config"),
        ([], 2, "err", "required"),
        (["leases", "--etcd-prefix"], 2, "err", "flag needs an argument: -etcd-prefix"),
        (["leases", "--etcd-api=v4", "--env-file="], 1, "err", "must be one of auto|v3|v2"),
        (["config", "set", "/nonexistent.json", "--env-file="], 1, "err", "cannot read"),
        (["docker-opts", "-h"], 1, "err", "[-f FLANNEL-ENV-FILE]"),
    ],
)
def test_exit_statuses(
    argv: list[str], status: int, stream: str, text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv, {}) == status
    captured = capsys.readouterr()
    assert text in (captured.out if stream == "out" else captured.err)


def test_invalid_config_is_rejected_before_etcd_is_contacted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{"Network":"10.5.0.0/16","SubnetLen":31}')
    unreachable = "--etcd-endpoints=http://127.0.0.1:1"
    assert main([unreachable, "--env-file=", "config", "set", str(path)], {}) == 1
    assert capsys.readouterr().err == (
        "network config: SubnetLen 31 is invalid: it must be 30 or less"
        " (SubnetLen must be less than /31)\nnothing was written\n"
    )


def test_docs_and_env_file_are_generated_from_the_flag_table() -> None:
    document = (ROOT / docgen.CONFIG_DOC).read_text()
    assert docgen.splice(document, docgen.flag_table()) == document
    assert (ROOT / docgen.ENV_FILE).read_text() == docgen.env_file()
    assert docgen.main(["--root", str(ROOT), "--check"]) == 0


def test_every_flag_variable_and_config_key_is_documented() -> None:
    document = (ROOT / docgen.CONFIG_DOC).read_text()
    for spec in FLAGS:
        assert f"`--{spec.name}" in document, spec.name
        if spec.env:
            assert f"`{spec.env}`" in document, spec.env
    keys = ("Network", "SubnetLen", "SubnetMin", "SubnetMax", "Backend", "Type", "VNI", "Port")
    for key in (*keys, "GBP", "DirectRouting", "EnableIPv4", "EnableIPv6", "EnableNFTables"):
        assert re.search(rf"\| `{key}`", document), key


def test_links_between_the_documents_resolve() -> None:
    for doc in (ROOT / "docs").glob("*.md"):
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", doc.read_text()):
            assert (doc.parent / target).exists(), f"{doc.name} links to missing {target}"
