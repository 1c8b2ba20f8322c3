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
    getattr(module, sys.argv[2])(["--help"])
except SystemExit as exit:
    status = exit.code
heavy = sorted(name for name in ("torch", "transformers", "rclpy") if name in sys.modules)
print(f"HELP-EXIT={status} HEAVY={','.join(heavy) or 'none'}")
"""
TOOLS = {"pop-point": "pop_ros.cli.point:main", "pop-eval": "pop_ros.cli.evaluate:main",
         "pop-find-heads": "pop_ros.cli.find_heads:main", "pop-bench": "pop_ros.bench.cli:main",
         "pop-bag": "pop_ros.cli.bag:main", "pop-teach": "pop_ros.cli.bag:teach_main"}  # fmt: skip
# Programs whose work is ROS itself: their --help may import rclpy (the node's is tested with the node).
ROS_PROGRAMS = {"pop_node", "find-handle-tree"}


def test_the_tool_table_is_setup_py_s_console_scripts():
    scripts = dict(re.findall(r'"([\w-]+) = ([\w.:]+)"', (SOURCE_ROOT / "setup.py").read_text()))
    assert {name: target for name, target in scripts.items() if name not in ROS_PROGRAMS} == TOOLS


@pytest.mark.parametrize("tool", sorted(TOOLS))
@pytest.mark.slow
def test_help_imports_no_torch_transformers_or_rclpy(tool):
    completed = subprocess.run(
        [sys.executable, "-c", PROBE, *TOOLS[tool].split(":")], capture_output=True, text=True, timeout=120, check=False
    )
    assert completed.returncode == 0, completed.stderr
    assert f"usage: {tool}" in completed.stdout
    assert completed.stdout.strip().splitlines()[-1] == "HELP-EXIT=0 HEAVY=none", completed.stdout[-500:]


@pytest.mark.slow
def test_the_probe_sees_torch_when_it_is_imported():
    """The check above can fail: a module that imports torch at the top is reported."""
    probe = PROBE.replace("getattr(module", "import torch; getattr(module")
    completed = subprocess.run(
        [sys.executable, "-c", probe, "pop_ros.cli.point", "main"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert completed.stdout.strip().splitlines()[-1] == "HELP-EXIT=0 HEAVY=torch"
