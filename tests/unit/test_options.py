"""``Options`` carries flanneld's defaults and ``validate`` names what cannot work."""

from __future__ import annotations

import dataclasses

import pytest

from pyflannel.errors import ConfigError
from pyflannel.options import (
    Options,
    check_backtrace_at,
    go_quote,
    parse_vmodule,
    validate,
)


def problem(**changes: object) -> str:
    options = dataclasses.replace(Options(), **changes)  # type: ignore[arg-type]
    with pytest.raises(ConfigError) as info:
        validate(options)
    return str(info.value)


def valid(**changes: object) -> None:
    validate(dataclasses.replace(Options(), **changes))  # type: ignore[arg-type]


def test_defaults_are_flanneld_defaults() -> None:
    o = Options()
    assert o.etcd_endpoints == ("http://127.0.0.1:4001", "http://127.0.0.1:2379")
    assert (o.etcd_prefix, o.etcd_api, o.subnet_file) == (
        "/coreos.com/network",
        "auto",
        "/run/flannel/subnet.env",
    )
    assert (o.subnet_lease_renew_margin, o.healthz_ip, o.healthz_port) == (60, "0.0.0.0", 0)
    assert (o.iptables_resync, o.iptables_forward_rules, o.ip_masq) == (5, True, False)
    assert (o.set_node_network_unavailable, o.kube_subnet_mgr) == (True, False)
    assert o.kube_annotation_prefix == "flannel.alpha.coreos.com"
    assert o.net_config_path == "/etc/kube-flannel/net-conf.json"
    assert (o.iface, o.iface_regex, o.v, o.log_format) == ((), (), 0, "auto")


def test_options_are_frozen_and_slotted() -> None:
    o = Options()
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.ip_masq = True  # type: ignore[misc]
    assert not hasattr(o, "__dict__")


def test_repr_never_shows_the_etcd_password() -> None:
    assert "s3cret" not in repr(Options(etcd_password="s3cret"))


def test_defaults_validate() -> None:
    validate(Options())


@pytest.mark.parametrize("margin", [1, 60, 1439])
def test_renew_margin_inside_the_lease_is_accepted(margin: int) -> None:
    valid(subnet_lease_renew_margin=margin)


@pytest.mark.parametrize("margin", [0, -5, 1440, 10_000])
def test_renew_margin_outside_the_lease_is_rejected(margin: int) -> None:
    message = problem(subnet_lease_renew_margin=margin)
    assert f"--subnet-lease-renew-margin={margin}" in message
    assert "0 < m < 1440" in message


@pytest.mark.parametrize("port", [0, 1, 65535])
def test_healthz_port_in_range(port: int) -> None:
    valid(healthz_port=port)


@pytest.mark.parametrize("port", [-1, 65536])
def test_healthz_port_out_of_range(port: int) -> None:
    assert problem(healthz_port=port) == (
        f"--healthz-port={port} is out of range: it must be 0..65535 (0 disables the health server)"
    )


def test_iptables_resync_must_be_positive() -> None:
    assert "--iptables-resync=0" in problem(iptables_resync=0)


@pytest.mark.parametrize("api", ["auto", "v3", "v2"])
def test_known_etcd_apis(api: str) -> None:
    valid(etcd_api=api)


def test_unknown_etcd_api() -> None:
    assert problem(etcd_api="V3") == '--etcd-api="V3" must be one of auto|v3|v2'


def test_unknown_log_format() -> None:
    assert problem(log_format="xml") == '--log-format="xml" must be one of auto|text|json'


@pytest.mark.parametrize("ip", ["", "10.0.0.1", "192.168.64.3"])
def test_public_ip_accepts_ipv4(ip: str) -> None:
    valid(public_ip=ip)


@pytest.mark.parametrize("ip", ["10.0.0", "010.0.0.1", "fe80::1", "host", "10.0.0.1/24"])
def test_public_ip_rejects_non_ipv4(ip: str) -> None:
    assert problem(public_ip=ip) == f'--public-ip="{ip}" must parse as an IPv4 address'


def test_public_ipv6_must_be_ipv6() -> None:
    valid(public_ipv6="fc00::1")
    assert "--public-ipv6" in problem(public_ipv6="10.0.0.1")
    assert "--public-ipv6" in problem(public_ipv6="fe80::1%eth0")


def test_iface_can_reach_must_be_an_address() -> None:
    valid(iface_can_reach="10.0.0.1")
    valid(iface_can_reach="fc00::1")
    assert "--iface-can-reach" in problem(iface_can_reach="example.com")


def test_iface_regex_must_compile() -> None:
    valid(iface_regex=("^eth[0-9]+$", "10\\.0\\."))
    assert problem(iface_regex=("ok", "(")).startswith(
        '--iface-regex="(" is not a valid regular expression'
    )


def test_kube_subnet_manager_is_refused_with_a_way_out() -> None:
    assert problem(kube_subnet_mgr=True) == (
        "--kube-subnet-mgr is not supported yet: pyflanneld only runs with etcd"
        " (use --etcd-endpoints)"
    )


def test_kube_companion_flags_alone_are_harmless() -> None:
    valid(kube_api_url="https://k8s:6443", kubeconfig_file="/etc/kube", net_config_path="/x")


def test_all_problems_are_reported_together() -> None:
    message = problem(healthz_port=-1, etcd_api="v4", public_ip="x")
    assert message.count("; ") == 2
    assert "--healthz-port" in message and "--etcd-api" in message and "--public-ip" in message


def test_vmodule_and_backtrace_are_validated() -> None:
    valid(vmodule="main=2", log_backtrace_at="main.go:3")
    assert problem(vmodule="main=-1") == ('--vmodule="main=-1": negative value for vmodule level')
    assert "--log_backtrace_at" in problem(log_backtrace_at="main.go:0")


@pytest.mark.parametrize(
    ("spec", "rules"),
    [
        ("", ()),
        ("main=2", (("main", 2),)),
        ("main=2,,etcd*=1,", (("main", 2), ("etcd*", 1))),
        ("quiet=0,loud=+3", (("loud", 3),)),
    ],
)
def test_parse_vmodule(spec: str, rules: tuple[tuple[str, int], ...]) -> None:
    assert parse_vmodule(spec) == rules


@pytest.mark.parametrize("spec", ["main", "=1", "main=", "a=b=1", "main=x", "main=1.5"])
def test_parse_vmodule_rejects_bad_syntax(spec: str) -> None:
    with pytest.raises(ValueError, match="expect comma-separated list of filename=N"):
        parse_vmodule(spec)


@pytest.mark.parametrize("spec", ["", "main.go:1", "a.b:999"])
def test_backtrace_accepts(spec: str) -> None:
    check_backtrace_at(spec)


@pytest.mark.parametrize("spec", ["main:1", "main.go", "main.go:x", "a.go:1:2", "main.go:0"])
def test_backtrace_rejects(spec: str) -> None:
    with pytest.raises(ValueError):
        check_backtrace_at(spec)


@pytest.mark.parametrize(
    ("text", "quoted"),
    [
        ("abc", '"abc"'),
        ('a"b\\c', '"a\\"b\\\\c"'),
        ("\n\t\x00\x7f", '"\\n\\t\\x00\\x7f"'),
        ("é€", '"é€"'),
        ("\u00a0", '"\\u00a0"'),
        ("\U000e0001", '"\\U000e0001"'),
        ("\udcff", '"\\xff"'),
    ],
)
def test_go_quote(text: str, quoted: str) -> None:
    assert go_quote(text) == quoted
