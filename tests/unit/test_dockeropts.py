"""``pyflannelctl docker-opts`` writes what flannel's mk-docker-opts.sh writes, byte for byte."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyflannel.dockeropts import (
    DockerOptsArgs,
    DockerOptsUsage,
    main,
    parse_getopts,
    render,
    route_conflict,
)

# flannel's dist/sample_subnet.env, the input of the script's own tests.
SAMPLE_SUBNET_ENV = (
    "FLANNEL_NETWORK=10.1.0.0/16\n"
    "FLANNEL_SUBNET=10.1.74.1/24\n"
    "FLANNEL_MTU=1472\n"
    "FLANNEL_IPMASQ=false\n"
)
ALL = (
    'DOCKER_OPT_BIP="--bip=10.1.74.1/24"\n'
    'DOCKER_OPT_IPMASQ="--ip-masq=true"\n'
    'DOCKER_OPT_MTU="--mtu=1472"\n'
)
NO_ROUTES = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"


def run(tmp_path: Path, *flags: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    source = tmp_path / "subnet.env"
    source.write_text(SAMPLE_SUBNET_ENV)
    target = tmp_path / "docker_opts.env"
    argv = ["-f", str(source), "-d", str(target), *flags]
    status = main(argv, env or {}, proc_net_route=NO_ROUTES)
    return status, target.read_text() if target.exists() else ""


# The five cases of flannel's mk-docker-opts tests, compared byte for byte (flannel's own
# test ignores blank lines and trailing blanks; the leading space is part of the vector).
@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ((), ALL + 'DOCKER_OPTS=" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472"\n'),
        (("-i",), ALL),
        (("-c",), 'DOCKER_OPTS=" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472"\n'),
        (
            ("-k", "CUSTOM_KEY"),
            ALL + 'CUSTOM_KEY=" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472"\n',
        ),
        (
            ("-m",),
            'DOCKER_OPT_BIP="--bip=10.1.74.1/24"\n'
            'DOCKER_OPT_MTU="--mtu=1472"\n'
            'DOCKER_OPTS=" --bip=10.1.74.1/24 --mtu=1472"\n',
        ),
    ],
    ids=["default", "individual", "combined", "custom-key", "no-ipmasq"],
)
def test_flannel_test_vectors(tmp_path: Path, flags: tuple[str, ...], expected: str) -> None:
    assert run(tmp_path, *flags) == (0, expected)


def test_ipmasq_is_the_inverse_of_flannels() -> None:
    values = {"FLANNEL_SUBNET": "10.5.3.1/24", "FLANNEL_MTU": "1450", "FLANNEL_IPMASQ": "true"}
    assert render(values, DockerOptsArgs(combined=True)) == (
        'DOCKER_OPTS=" --bip=10.5.3.1/24 --ip-masq=false --mtu=1450"\n'
    )


def test_invalid_ipmasq_fails_before_the_output_is_touched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "docker_opts.env"
    target.write_text("old\n")
    argv = ["-f", str(tmp_path / "absent"), "-d", str(target)]
    assert main(argv, {"FLANNEL_IPMASQ": "yes"}, proc_net_route=NO_ROUTES) == 1
    assert capsys.readouterr().err == "Invalid value of FLANNEL_IPMASQ: yes\n"
    assert target.read_text() == "old\n"


def test_environment_is_overlaid_by_the_file_and_existing_options_are_kept(
    tmp_path: Path,
) -> None:
    env = {
        "FLANNEL_MTU": "9000",  # the file wins
        "DOCKER_OPTS": "--dns=192.0.2.53",  # the combined value starts with it
        "DOCKER_OPT_DEBUG": "--debug",  # written like the derived ones, in name order
    }
    status, text = run(tmp_path, env=env)
    assert status == 0
    assert text == (
        'DOCKER_OPT_BIP="--bip=10.1.74.1/24"\n'
        'DOCKER_OPT_DEBUG="--debug"\n'
        'DOCKER_OPT_IPMASQ="--ip-masq=true"\n'
        'DOCKER_OPT_MTU="--mtu=1472"\n'
        'DOCKER_OPTS="--dns=192.0.2.53  --bip=10.1.74.1/24 --debug --ip-masq=true --mtu=1472"\n'
    )


def test_missing_input_file_gives_an_empty_combined_value(tmp_path: Path) -> None:
    target = tmp_path / "out" / "docker_opts.env"  # the directory is created
    assert main(["-d", str(target), "-f", str(tmp_path / "none")], {}, proc_net_route="") == 0
    assert target.read_text() == 'DOCKER_OPTS=""\n'


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["-ic"], DockerOptsArgs(individual=True, combined=True)),
        (["-fin.env", "-dout.env"], DockerOptsArgs(flannel_env="in.env", docker_env="out.env")),
        (["-f", "-d"], DockerOptsArgs(flannel_env="-d")),  # a value may start with a dash
        (["-m", "--", "-i"], DockerOptsArgs(ipmasq=False)),
        (["-c", "extra", "-i"], DockerOptsArgs(combined=True)),  # stops at the first word
        (["-kMY_OPTS"], DockerOptsArgs(combined_key="MY_OPTS")),
    ],
)
def test_options_follow_getopts(argv: list[str], expected: DockerOptsArgs) -> None:
    assert parse_getopts(argv) == expected


@pytest.mark.parametrize(
    ("argv", "diagnostic"),
    [
        (["-h"], ""),
        (["-?"], ""),
        (["-x"], "Illegal option -x"),
        (["-i", "-f"], "No arg for -f option"),
    ],
)
def test_usage_errors_exit_1(
    argv: list[str], diagnostic: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(DockerOptsUsage) as info:
        parse_getopts(argv)
    assert info.value.diagnostic == diagnostic
    assert main(argv, {}) == 1
    err = capsys.readouterr().err
    assert "[-f FLANNEL-ENV-FILE] [-d DOCKER-ENV-FILE]" in err and diagnostic in err


def test_route_with_a_gateway_for_the_own_subnet_is_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 10.1.74.0/24 via 192.0.2.7 dev eth0, as the kernel lists it (host byte order).
    routes = NO_ROUTES + "eth0\t004A010A\t070200C0\t0003\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
    assert route_conflict("10.1.74.1/24", routes) == "10.1.74.0/24 via 192.0.2.7 dev eth0"
    assert route_conflict("10.1.75.1/24", routes) is None
    source = tmp_path / "subnet.env"
    source.write_text(SAMPLE_SUBNET_ENV)
    target = tmp_path / "docker_opts.env"
    assert main(["-f", str(source), "-d", str(target)], {}, proc_net_route=routes) == 1
    assert target.exists()  # written first, as the script does
    assert "already contains the subnet: 10.1.74.0/24 via 192.0.2.7" in capsys.readouterr().err


def test_connected_route_is_not_a_conflict() -> None:
    routes = NO_ROUTES + "docker0\t004A010A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
    assert route_conflict("10.1.74.1/24", routes) is None
