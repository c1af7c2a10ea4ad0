"""What running polybroker as a service rests on: the systemd unit in config/ (checked
by systemd-analyze where it is installed) and the licence the package declares."""

import configparser
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from polybroker.cli import build_parser

ROOT = Path(__file__).parent.parent
UNIT = ROOT / "config" / "polybroker.service"
INSTALLED = "/opt/polybroker/bin/polybroker"


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # keys are case-sensitive in systemd
    parser.read_string(UNIT.read_text())
    return parser


def test_unit_runs_as_its_own_user_restarts_and_reloads_with_sighup():
    service = unit()["Service"]
    assert service["DynamicUser"] == "yes" and service["User"] == "polybroker"
    assert service["Restart"] == "on-failure"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    for key in ("NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp",
                "RestrictAddressFamilies", "SystemCallFilter", "CapabilityBoundingSet"):
        assert key in service
    assert unit()["Install"]["WantedBy"] == "multi-user.target"


def test_unit_command_line_is_one_the_cli_accepts():
    command = shlex.split(unit()["Service"]["ExecStart"])
    assert command[0] == INSTALLED
    args = build_parser().parse_args(command[1:])
    assert args.command == "serve" and args.data_dir == Path("/var/lib/polybroker")


def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # verify checks that ExecStart exists: point it at this installation's command.
    command = Path(sys.executable).parent / "polybroker"
    local = tmp_path / "polybroker.service"
    local.write_text(UNIT.read_text().replace(INSTALLED, str(command)))
    out = subprocess.run([analyze, "verify", "--man=no", str(local)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stderr == "" and out.stdout == ""  # not even a warning


def test_license_file_is_the_one_pyproject_declares():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]
    assert "Apache License" in (ROOT / "LICENSE").read_text()[:200]


def test_make_run_installs_only_the_runtime_dependencies(tmp_path):
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    # --no-print-directory: under `make test` the nested make would print where it is.
    run = subprocess.run([make, "--no-print-directory", "-n", "run"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert "pip install --quiet -e .\n" in run and "[test]" not in run
    assert run.rstrip().endswith(".venv/bin/polybroker serve")
    test = subprocess.run([make, "--no-print-directory", "-n", "test"], cwd=tmp_path,
                          capture_output=True,
                          text=True, timeout=60, check=True).stdout
    assert "pip install --quiet -e '.[test]'" in test


def test_every_package_is_installed():
    """pyproject lists packages by name: a new subpackage left out would be missing from a
    `pip install .` (an editable install finds it anyway)."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
                 ["packages"])
    found = set()
    for top, name in (("polybroker", "polybroker"), ("protocols", "polybroker.protocols"),
                      ("storage", "polybroker.storage")):
        for init in (ROOT / top).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT / top).parts
            found.add(".".join((name, *parts)))
    assert found == listed
