"""What a robot install relies on besides the build itself: package.xml names every dependency
(rosdep keys) or requirements-robot.txt does (pip-only), and user-made head files live in the user's
data folder, where pop-find-heads writes them and the heads lookup finds them."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import pathlib
import re
import sys
import xml.etree.ElementTree as ElementTree

import pytest

from pop_ros import paths
from pop_ros.models.heads import head_file_name
from pop_ros.models.presets import default_head_file, head_file_candidates, user_head_file
from pop_ros.paths import SOURCE_ROOT

# Python import name -> rosdep key (ros/rosdistro rosdep/python.yaml, resolved for Ubuntu noble).
ROSDEP_KEYS = {
    "numpy": "python3-numpy",
    "scipy": "python3-scipy",
    "cv2": "python3-opencv",
    "yaml": "python3-yaml",
    "PIL": "python3-pil",
    "tqdm": "python3-tqdm",
    "matplotlib": "python3-matplotlib",
    "psutil": "python3-psutil",
    "rosbags": "python3-rosbags-pip",  # a pip key: rosdep installs it with pip
    "pytest": "python3-pytest",
    "hypothesis": "python3-hypothesis",
}
# ROS packages: the rosdep key is the package name (resolved through the distro's distribution.yaml).
ROS_PACKAGES = {
    "rclpy", "rcl_interfaces", "lifecycle_msgs", "sensor_msgs", "geometry_msgs", "std_msgs", "std_srvs",
    "diagnostic_msgs", "visualization_msgs", "action_msgs", "builtin_interfaces", "pop_ros_interfaces",
    "ament_index_python", "launch", "launch_ros", "py_trees",
}  # fmt: skip
# Import name -> pip distribution in requirements-robot.txt (no usable apt package on noble).
PIP_ONLY = {
    "torch": "torch",
    "torchvision": "torchvision",
    "transformers": "transformers",
    "pycocotools": "pycocotools",
    "mcap": "mcap",
    "torchao": "torchao",
}
# Imported directly but installed by transformers' own requirements.
VIA_TRANSFORMERS = {"huggingface_hub": "huggingface-hub", "tokenizers": "tokenizers", "safetensors": "safetensors"}


def imported_modules(folder: pathlib.Path) -> set[str]:
    """Top-level names of every import in the folder's Python files, lazy ones inside functions too."""
    names = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"pop_ros", "test"}


def package_dependencies() -> dict[str, set[str]]:
    root = ElementTree.parse(SOURCE_ROOT / "package.xml").getroot()
    kinds = {"exec_depend": "exec", "depend": "exec", "test_depend": "test", "build_depend": "build"}
    found: dict[str, set[str]] = {"exec": set(), "test": set(), "build": set()}
    for element in root:
        if element.tag in kinds:
            found[kinds[element.tag]].add(element.text.strip())
    return found


def robot_requirements() -> dict[str, str]:
    """Distribution name (lower case) -> its version specifier in requirements-robot.txt."""
    pins = {}
    for line in (SOURCE_ROOT / "requirements-robot.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, specifier = re.match(r"([A-Za-z0-9_.-]+)\s*(.*)", line).groups()
            pins[name.lower()] = specifier
    return pins


def missing_keys(modules: set[str], keys: set[str]) -> list[str]:
    problems = []
    for module in sorted(modules):
        if module in PIP_ONLY or module in VIA_TRANSFORMERS:
            continue
        key = ROSDEP_KEYS.get(module, module if module in ROS_PACKAGES else None)
        if key is None:
            problems.append(f"{module}: unknown import; add its rosdep key to package.xml and to this test's table")
        elif key not in keys:
            problems.append(f"{module}: rosdep key {key} missing from package.xml")
    return problems


def test_package_xml_has_a_rosdep_key_for_every_runtime_import():
    depends = package_dependencies()
    runtime = imported_modules(SOURCE_ROOT / "pop_ros") | imported_modules(SOURCE_ROOT / "launch")
    assert {"rclpy", "numpy", "cv2", "torch", "transformers"} <= runtime  # the scan sees real imports
    assert missing_keys(runtime, depends["exec"]) == []
    # The launch file needs `ros2 launch` itself; the tests' configuration needs pytest-timeout.
    assert "ros2launch" in depends["exec"]
    assert "python3-pytest-timeout" in depends["test"]


def test_package_xml_has_a_rosdep_key_for_every_test_import():
    depends = package_dependencies()
    assert missing_keys(imported_modules(SOURCE_ROOT / "test"), depends["exec"] | depends["test"]) == []


def test_pip_only_imports_are_listed_once_in_the_robot_requirements_at_the_tested_versions():
    runtime = imported_modules(SOURCE_ROOT / "pop_ros")
    robot = robot_requirements()
    for module in sorted(runtime & set(PIP_ONLY)):
        assert PIP_ONLY[module] in robot, f"{module} is imported but not in requirements-robot.txt"
    # Nothing apt gives through package.xml is installed by pip a second time (besides the pins below).
    assert set(robot) == set(PIP_ONLY.values()) | {"setuptools", "numpy"}
    # The versions this project's tests ran with (requirements.txt) are the ones a robot gets.
    tested = dict(
        line.split("==") for line in (SOURCE_ROOT / "requirements.txt").read_text().splitlines() if "==" in line
    )
    for name in ("torch", "transformers", "pycocotools", "mcap", "torchao"):
        assert robot[name] == f"=={tested[name]}", name
    # Modules we import that pip brings with transformers: transformers must really require them.
    transformers_requires = " ".join(importlib.metadata.requires("transformers") or []).lower()
    for distribution in VIA_TRANSFORMERS.values():
        assert distribution in transformers_requires.replace("_", "-"), distribution
    # The pins the README explains: torch's setuptools floor, colcon's ceiling, apt's numpy.
    assert robot["setuptools"] == ">=77.0.3,<80" and robot["numpy"] == "<2"


def test_user_data_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert paths.user_heads_dir() == tmp_path / "data" / "pop_ros" / "heads"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/data")  # invalid per the XDG spec: ignored
    assert paths.user_heads_dir() == tmp_path / "home" / ".local" / "share" / "pop_ros" / "heads"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert paths.user_heads_dir() == tmp_path / "home" / ".local" / "share" / "pop_ros" / "heads"


def test_heads_lookup_prefers_the_user_folder_then_the_shipped_one(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    shipped_config = tmp_path / "share" / "config"
    monkeypatch.setattr(paths, "config_dir", lambda: shipped_config)
    model = "Qwen/Qwen2.5-VL-7B-Instruct"
    user_file = tmp_path / "data" / "pop_ros" / "heads" / "Qwen__Qwen2.5-VL-7B-Instruct.yaml"
    shipped_file = shipped_config / "heads" / "Qwen__Qwen2.5-VL-7B-Instruct.yaml"
    assert head_file_candidates(model) == [user_file, shipped_file]
    assert default_head_file(model) == user_file == user_head_file(model)  # none yet: where one will be written
    shipped_file.parent.mkdir(parents=True)
    shipped_file.write_text("heads: [[1, 0]]\n")
    assert default_head_file(model) == shipped_file
    user_file.parent.mkdir(parents=True)
    user_file.write_text("heads: [[2, 0]]\n")
    assert default_head_file(model) == user_file


def test_pipeline_uses_a_head_file_in_the_user_folder(monkeypatch, tmp_path):
    from pop_ros.pipeline import PartPointer

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    head_file = tmp_path / "pop_ros" / "heads" / head_file_name("tiny:qwen2_5_vl")
    head_file.parent.mkdir(parents=True)
    head_file.write_text("model: tiny:qwen2_5_vl\nheads: [[3, 1], [4, 0]]\n")
    pointer = PartPointer.from_preset("tiny")
    assert pointer.heads_source == str(head_file)
    assert pointer.text_heads()[0] == [(3, 1), (4, 0)]


@pytest.mark.slow
def test_pop_find_heads_writes_to_the_user_folder_by_default(monkeypatch, tmp_path, rng, tool_here):
    from pop_ros.cli import find_heads
    from test.conftest import random_image
    from test.test_pipeline import _sharpened_checkpoint, write_image

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    lines = []
    for index in range(2):
        write_image(tmp_path / f"img{index}.png", random_image(rng, 224, 224))
        lines.append(json.dumps({"image": f"img{index}.png", "expression": "the red mug"}))
    (tmp_path / "pairs.jsonl").write_text("\n".join(lines))
    model = _sharpened_checkpoint(tmp_path / "sharp")
    completed = tool_here(
        find_heads.main, "--preset", "tiny", "--mllm", model, "--data", tmp_path / "pairs.jsonl", "-k", "2", "--json"
    )
    assert completed.returncode == 0, completed.stderr
    written = pathlib.Path(json.loads(completed.stdout)["head_file"])
    assert written == tmp_path / "data" / "pop_ros" / "heads" / head_file_name(str(model))
    assert written.is_file()
    assert default_head_file(str(model)) == written  # what the node and tools then load
    assert f"wrote {written}: pop_node, pop-point and pop-eval of this user load it" in completed.stderr
