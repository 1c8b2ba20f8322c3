"""`pop_node --help` / `-h`: the parameter table, printed before rclpy, torch or any model is imported.

The console script `pop_node` (program.py) and `python -m pop_ros.ros.node --help` ask `exit_if_help`
before node.py imports rclpy. Only arguments before `--ros-args` are the program's own."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Sequence

HELP_FLAGS = ("-h", "--help")


def wants_help(argv: Sequence[str]) -> bool:
    """Whether the program's own arguments (`argv` without the program name) ask for help."""
    own = list(argv)
    if "--ros-args" in own:
        own = own[: own.index("--ros-args")]
    return any(argument in HELP_FLAGS for argument in own)


def help_text() -> str:
    from pop_ros.ros.parameters import PARAMETERS, yaml_value

    lines = [
        "usage: pop_node [-h] [--ros-args [--params-file FILE] [-p NAME:=VALUE ...] [-r FROM:=TO ...]]",
        "",
        "pop_node: camera in; 3D part point, heatmap and the part-query services out (a lifecycle node).",
        "  ros2 run pop_ros pop_node --ros-args --params-file config/pop_ros.yaml -p preset:=tiny",
        "",
        "parameters (runtime: `ros2 param set` takes effect at once; configure: read when the node configures,",
        "refused while it is configured). Reference: docs/parameters.md",
    ]
    for spec in PARAMETERS.values():
        lines.append(f"  {spec.name} ({spec.type.__name__}, default {yaml_value(spec.default)}, {spec.when})")
        lines += textwrap.wrap(
            spec.described(code_marks=False), width=100, initial_indent=" " * 6, subsequent_indent=" " * 6
        )
    return "\n".join(lines) + "\n"


def exit_if_help(argv: Sequence[str]) -> None:
    """Print the help and exit 0 when `argv` (without the program name) asks for it."""
    if wants_help(argv):
        sys.stdout.write(help_text())
        raise SystemExit(0)
