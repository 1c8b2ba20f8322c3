"""`--help` of every command-line tool answers without importing torch, transformers or rclpy (the
imports that made it take 3-4 s): each runs in a fresh interpreter that reports what got imported.
pop_node's --help belongs to the node's own tests."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from pop_ros.paths import SOURCE_ROOT

PROBE = """
import importlib, sys
module = importlib.import_module(sys.argv[1])
try:
    module.main(["--help"])
except SystemExit as exit:
    status = exit.code
heavy = sorted(name for name in ("torch", "transformers", "rclpy") if name in sys.modules)
print(f"HELP-EXIT={status} HEAVY={','.join(heavy) or 'none'}")
"""
TOOLS = {"pop-point": "pop_ros.cli.point", "pop-eval": "pop_ros.cli.evaluate",
         "pop-find-heads": "pop_ros.cli.find_heads", "pop-bench": "pop_ros.bench"}  # fmt: skip


def test_the_tool_table_is_setup_py_s_console_scripts():
    scripts = dict(re.findall(r'"([\w-]+) = ([\w.]+):main"', (SOURCE_ROOT / "setup.py").read_text()))
    assert {name: module for name, module in scripts.items() if name != "pop_node"} == TOOLS


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_help_imports_no_torch_transformers_or_rclpy(tool):
    completed = subprocess.run(
        [sys.executable, "-c", PROBE, TOOLS[tool]], capture_output=True, text=True, timeout=120, check=False
    )
    assert completed.returncode == 0, completed.stderr
    assert f"usage: {tool}" in completed.stdout
    assert completed.stdout.strip().splitlines()[-1] == "HELP-EXIT=0 HEAVY=none", completed.stdout[-500:]


def test_the_probe_sees_torch_when_it_is_imported():
    """The check above can fail: a module that imports torch at the top is reported."""
    completed = subprocess.run(
        [sys.executable, "-c", PROBE.replace("module.main", "import torch; module.main"), "pop_ros.cli.point"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert completed.stdout.strip().splitlines()[-1] == "HELP-EXIT=0 HEAVY=torch"
