"""The interpreter `make` builds .venv with: python3.11, else python3.12, found on PATH (Ubuntu 24.04
has only 3.12, Debian 12 only 3.11); PYTHON_BOOTSTRAP overrides; neither -> one clear error.

Each case runs tools/find_python.sh, or `make -n` (prints the recipe, runs nothing), with PATH set to
a temporary folder of shim interpreters that report a version, so the machine's own Pythons are out
of sight."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess

import pytest

from pop_ros.paths import SOURCE_ROOT

FIND_PYTHON = SOURCE_ROOT / "tools" / "find_python.sh"


def shim_folder(folder: pathlib.Path, shims: dict[str, str]) -> pathlib.Path:
    """`name -> version` shims: each answers the version probe with its version, like a real one would."""
    folder.mkdir()
    for name, version in shims.items():
        path = folder / name
        path.write_text(f'#!/bin/sh\nif [ "$1" = -c ]; then echo {version}; exit 0; fi\nexit 3\n')
        path.chmod(0o755)
    return folder


def find_python(folder: pathlib.Path, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["/bin/sh", str(FIND_PYTHON)], env={"PATH": str(folder), **env}, capture_output=True, text=True, check=False
    )


@pytest.mark.parametrize(
    "shims,chosen",
    [
        ({"python3.12": "3.12"}, "python3.12"),  # Ubuntu 24.04
        ({"python3.11": "3.11"}, "python3.11"),  # Debian 12
        ({"python3.11": "3.11", "python3.12": "3.12"}, "python3.11"),  # both: the CI-tested environment
        ({"python3.11": "", "python3.12": "3.12"}, "python3.12"),  # a 3.11 that does not run (pyenv shim)
    ],
)
def test_the_newest_supported_python_on_path_is_chosen(tmp_path, shims, chosen):
    completed = find_python(shim_folder(tmp_path / "bin", shims))
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == chosen


def test_neither_version_is_one_clear_error_naming_both(tmp_path):
    completed = find_python(shim_folder(tmp_path / "bin", {"python3.10": "3.10", "python3": "3.10"}))
    assert completed.returncode == 1 and completed.stdout == ""
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: neither python3.11 nor python3.12 is on PATH")
    assert "PYTHON_BOOTSTRAP=" in lines[0]  # says how to point at one


def test_python_bootstrap_overrides_and_is_checked(tmp_path):
    folder = shim_folder(tmp_path / "bin", {"python3.12": "3.12", "mypython": "3.11", "oldpython": "3.10"})
    assert find_python(folder, PYTHON_BOOTSTRAP="mypython").stdout.strip() == "mypython"
    refused = find_python(folder, PYTHON_BOOTSTRAP="oldpython")
    assert refused.returncode == 1
    expected = "error: PYTHON_BOOTSTRAP=oldpython is Python 3.10; pop_ros needs Python 3.11 or 3.12"
    assert refused.stderr.strip() == expected


@pytest.fixture
def make():
    found = shutil.which("make")
    if found is None:
        pytest.skip("make is not installed")
    return found


def make_dry_run(make: str, folder: pathlib.Path, *args: str) -> subprocess.CompletedProcess:
    """`make -n -B .venv/.stamps/venv`: the venv recipe as make would run it, nothing run."""
    env = {"PATH": str(folder), "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run(
        [make, "-n", "-B", ".venv/.stamps/venv", *args],
        cwd=SOURCE_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.slow
def test_make_creates_the_venv_with_python3_12_when_python3_11_is_absent(tmp_path, make):
    completed = make_dry_run(make, shim_folder(tmp_path / "bin", {"python3.12": "3.12"}))
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.splitlines()[0] == "python3.12 -m venv .venv"


@pytest.mark.slow
def test_make_without_a_supported_python_stops_with_the_reason(tmp_path, make):
    completed = make_dry_run(make, shim_folder(tmp_path / "bin", {"python3.10": "3.10"}))
    assert completed.returncode == 2 and completed.stdout == ""
    assert "error: neither python3.11 nor python3.12 is on PATH" in completed.stderr
    assert "pop_ros needs Python 3.11 or 3.12 to make .venv" in completed.stderr


@pytest.mark.slow
def test_make_honours_python_bootstrap(tmp_path, make):
    folder = shim_folder(tmp_path / "bin", {"python3.12": "3.12", "mypython": "3.11"})
    completed = make_dry_run(make, folder, "PYTHON_BOOTSTRAP=mypython")
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.splitlines()[0] == "mypython -m venv .venv"
