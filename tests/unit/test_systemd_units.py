"""The shipped systemd units pass ``systemd-analyze verify`` and say what the docs promise.

``verify`` checks that every ``ExecStart=`` path is executable, so the units are
verified from a copy in which only those paths are rewritten: ``pyflanneld`` and
``pyflannelctl`` to this virtual environment's console scripts (or a stub when
one is not installed), ``dockerd`` to a stub, since Docker is not installed here.
Docker's own unit is stood in for by docker-ce's (its drop-in directory is what is
tested). ``verify`` exits 0 even for unknown keys, so any output at all fails.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pyflannel.ctl import docgen

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "pyflanneld.service"
DROP_IN = ROOT / "systemd" / "docker.service.d" / "flannel.conf"
INSTALLED_PYFLANNELD = "/usr/local/bin/pyflanneld"
INSTALLED_CTL = "/usr/local/bin/pyflannelctl"
DOCKERD = "/usr/bin/dockerd"

# docker-ce's docker.service (the parts verify looks at), to which the drop-in applies.
DOCKER_SERVICE = """\
[Unit]
Description=Docker Application Container Engine
After=network-online.target containerd.service
Wants=network-online.target containerd.service

[Service]
Type=notify
ExecStart={dockerd} -H fd:// --containerd=/run/containerd/containerd.sock
ExecReload=/bin/kill -s HUP $MAINPID
TimeoutStartSec=0
Restart=always
Delegate=yes
KillMode=process

[Install]
WantedBy=multi-user.target
"""


def lines(path: Path) -> list[str]:
    text = path.read_text()
    return [line.strip() for line in text.splitlines() if line.strip() and line[0] not in "#;"]


def executable(directory: Path, name: str, real: Path | None = None) -> str:
    """A real console script when installed, else a stub that exits 0."""
    if real is not None and real.exists():
        return str(real)
    stub = directory / name
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    return str(stub)


@pytest.fixture
def unit_dir(tmp_path: Path) -> Path:
    """The units, copied with their executables pointed at ones that exist here."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (Debian package: systemd)")
    bindir = Path(sys.executable).parent
    stubs = tmp_path / "bin"
    stubs.mkdir()
    pyflanneld = executable(stubs, "pyflanneld", bindir / "pyflanneld")
    ctl = executable(stubs, "pyflannelctl", bindir / "pyflannelctl")
    dockerd = executable(stubs, "dockerd")
    units = tmp_path / "units"
    (units / "docker.service.d").mkdir(parents=True)
    (units / "pyflanneld.service").write_text(
        UNIT.read_text().replace(INSTALLED_PYFLANNELD, pyflanneld)
    )
    drop_in = DROP_IN.read_text().replace(DOCKERD, dockerd).replace(INSTALLED_CTL, ctl)
    (units / "docker.service.d" / "flannel.conf").write_text(drop_in)
    (units / "docker.service").write_text(DOCKER_SERVICE.format(dockerd=dockerd))
    return units


def verify(*units: Path) -> str:
    result = subprocess.run(
        ["systemd-analyze", "verify", *map(str, units)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return (result.stdout + result.stderr).strip() + ("" if result.returncode == 0 else " [rc]")


def test_units_pass_systemd_analyze_verify(unit_dir: Path) -> None:
    assert verify(unit_dir / "pyflanneld.service", unit_dir / "docker.service") == ""


@pytest.mark.parametrize(
    ("path", "old", "new"),
    [
        ("pyflanneld.service", "Type=notify", "Type=notfy"),
        ("docker.service.d/flannel.conf", "EnvironmentFile=", "EnviromentFile="),
    ],
)
def test_verify_would_catch_a_mistake(unit_dir: Path, path: str, old: str, new: str) -> None:
    target = unit_dir / path
    target.write_text(target.read_text().replace(old, new, 1))
    assert verify(unit_dir / "pyflanneld.service", unit_dir / "docker.service") != ""


def test_daemon_unit_is_notify_restarting_and_configured_by_environment_file() -> None:
    settings = lines(UNIT)
    assert "Type=notify" in settings
    assert "Restart=always" in settings
    assert "RestartPreventExitStatus=2" in settings
    assert "EnvironmentFile=-/etc/pyflannel/pyflanneld.env" in settings
    assert f"ExecStart={INSTALLED_PYFLANNELD} $PYFLANNELD_ARGS" in settings
    after = next(s for s in settings if s.startswith("After="))
    assert "network-online.target" in after and "etcd.service" in after


def test_docker_drop_in_takes_bip_and_mtu_from_subnet_env() -> None:
    settings = lines(DROP_IN)
    assert "After=pyflanneld.service" in settings and "Wants=pyflanneld.service" in settings
    assert "EnvironmentFile=/run/flannel/subnet.env" in settings
    exec_starts = [s for s in settings if s.startswith("ExecStart=")]
    assert exec_starts[0] == "ExecStart=", "the package's ExecStart must be reset first"
    assert len(exec_starts) == 2
    command = exec_starts[1]
    assert "--bip=${FLANNEL_SUBNET}" in command and "--mtu=${FLANNEL_MTU}" in command
    assert command.endswith("$DOCKER_OPT_IPMASQ")
    pre = next(s for s in settings if s.startswith("ExecStartPre="))
    assert pre == f"ExecStartPre={INSTALLED_CTL} docker-opts -i -d /run/flannel/docker_opts.env"
    assert "EnvironmentFile=-/run/flannel/docker_opts.env" in settings


def test_example_environment_file_is_generated_from_the_flag_table() -> None:
    assert (ROOT / docgen.ENV_FILE).read_text() == docgen.env_file()
