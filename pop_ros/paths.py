"""Where the package's shipped files are: the colcon install's share folder, else the source tree."""

from __future__ import annotations

import pathlib

SOURCE_ROOT = pathlib.Path(__file__).resolve().parents[1]
SAMPLE_DIR = pathlib.Path(__file__).resolve().parent / "data"  # demo scenes, shipped as package data


def share_dir() -> pathlib.Path:
    """`share/pop_ros` of a colcon install when the ament index knows the package, else the source
    tree (the editable install the Makefile makes, where `config/` sits beside `pop_ros/`)."""
    try:
        from ament_index_python.packages import get_package_share_directory

        return pathlib.Path(get_package_share_directory("pop_ros"))
    except (ImportError, LookupError, OSError):  # not installed, not found, or no AMENT_PREFIX_PATH
        return SOURCE_ROOT


def config_dir() -> pathlib.Path:
    return share_dir() / "config"
