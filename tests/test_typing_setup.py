"""What `make lint` type-checks: all of polybroker/, protocols/ and storage/, found under
their installed names, none of it left out or silenced by pyproject's [tool.mypy]."""

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def mypy_settings() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]


def test_make_lint_checks_every_folder():
    typed = re.search(r"^TYPED := (.*)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert typed is not None and typed.group(1).split() == ["polybroker", "protocols", "storage"]


def test_no_module_is_left_out_or_silenced():
    settings = mypy_settings()
    assert not settings.get("exclude")
    assert not any(override.get("follow_imports") == "silent"
                   or override.get("ignore_errors")
                   for override in settings.get("overrides", []))


def test_mypy_finds_protocols_and_storage_under_their_installed_names(tmp_path):
    """The editable install maps them with an import hook mypy does not run: it finds them
    through links that the Makefile makes where mypy_path points."""
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    for name in ("protocols", "storage"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("")
    subprocess.run([make, "--no-print-directory", "build/mypy/polybroker"], cwd=tmp_path,
                   capture_output=True, text=True, timeout=60, check=True)
    assert mypy_settings()["mypy_path"] == "$MYPY_CONFIG_FILE_DIR/build/mypy"
    tree = tmp_path / "build" / "mypy" / "polybroker"
    for name in ("protocols", "storage"):
        assert (tree / name).resolve() == (tmp_path / name).resolve()
        assert (tree / name / "__init__.py").is_file()
