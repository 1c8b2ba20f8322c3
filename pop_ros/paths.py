"""Where pop_ros finds its files: the shipped ones (the colcon install's share folder, else the
source tree) and the ones a user makes (head files from `pop-find-heads`), which live in a per-user
data folder because a clean colcon build deletes `install/` and a binary install cannot be written."""

from __future__ import annotations

import os
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


def user_data_dir() -> pathlib.Path:
    """`$XDG_DATA_HOME/pop_ros`, else `~/.local/share/pop_ros` (the XDG base directory spec: a
    relative `XDG_DATA_HOME` is invalid and ignored)."""
    xdg_data_home = os.environ.get("XDG_DATA_HOME", "")
    base = pathlib.Path(xdg_data_home) if os.path.isabs(xdg_data_home) else pathlib.Path.home() / ".local" / "share"
    return base / "pop_ros"


def user_heads_dir() -> pathlib.Path:
    """Where `pop-find-heads` writes head files by default."""
    return user_data_dir() / "heads"


def heads_dirs() -> list[pathlib.Path]:
    """Folders searched, in order, for `<model id>.yaml` when `heads_file` is empty: the user's own
    calibration wins over one shipped in `config/heads/`."""
    return [user_heads_dir(), config_dir() / "heads"]


def shipped_supports_dirs() -> set[pathlib.Path]:
    """The folders of the shipped example support library: the source tree's and the install's."""
    return {(SOURCE_ROOT / "config" / "supports").resolve(), (config_dir() / "supports").resolve()}


def shipped_library_refusal(library: pathlib.Path | str) -> str | None:
    """Why `library` may not be written (taught into), or None: a YAML in the shipped example's folder
    would rewrite the example (its comments dropped, `.bak` and `<stem>_images/` made in the package)."""
    folder = pathlib.Path(library).expanduser().resolve().parent
    if folder not in shipped_supports_dirs():
        return None
    return (
        f"{library} is in the shipped example library's folder ({folder}), which is read-only; teach into a "
        f"copy: cp -r {folder} my_supports, then give my_supports/library.yaml"
    )


# Fast DDS reads its default XML profile from FASTRTPS_DEFAULT_PROFILES_FILE up to Fast DDS 2.x (ROS 2
# Humble, Jazzy) and from FASTDDS_DEFAULT_PROFILES_FILE since 3.0 (Kilted on; the old name still read).
FASTDDS_PROFILE_VARIABLES = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")
FAST_DDS_2_DISTROS = ("humble", "iron", "jazzy")


def large_images_dds_environment(environment=os.environ, config: pathlib.Path | str | None = None) -> dict[str, str]:
    """The environment that gives a process the shipped Fast DDS profile for large images
    (config/fastdds_large_images.xml, docs/tracking.md), under the variable its distro's Fast DDS
    reads; empty when the process has a profile already (either variable) or another RMW."""
    rmw = environment.get("RMW_IMPLEMENTATION", "")
    if (rmw and not rmw.startswith("rmw_fastrtps")) or any(environment.get(v) for v in FASTDDS_PROFILE_VARIABLES):
        return {}
    fast_dds_2 = environment.get("ROS_DISTRO", "") in FAST_DDS_2_DISTROS
    variable = FASTDDS_PROFILE_VARIABLES[1] if fast_dds_2 else FASTDDS_PROFILE_VARIABLES[0]
    return {variable: str(pathlib.Path(config or config_dir()) / "fastdds_large_images.xml")}
