"""`pop_node`, the program: `--help` / `-h` answered from the parameter table (usage.py) before rclpy,
torch or any model is imported; otherwise the node (node.py) runs until it is stopped."""

from __future__ import annotations

import sys

from pop_ros.ros.usage import exit_if_help


def main(args: list[str] | None = None) -> None:
    """The console script: `args` as rclpy takes them (the program name first; None = sys.argv)."""
    exit_if_help((sys.argv if args is None else args)[1:])
    from pop_ros.ros.node import main as run_node  # rclpy and the pipeline: only once it is not --help

    run_node(args)


if __name__ == "__main__":
    main()
