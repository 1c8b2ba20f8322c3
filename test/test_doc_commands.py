"""Docs that run as written: every command block (```bash) of README.md and docs/*.md is either run
here, extracted from the Markdown, or marked as needing what this machine lacks. The marker is an
HTML comment on the line before the block (docs/development.md, "Command blocks in the docs"):

    <!-- runs-here -->            run by test_documented_block_runs_as_written (in `make test-fast`)
    <!-- runs-here: slow -->      run too, marked slow (in `make test` only)
    <!-- needs: robot, weights --> not run: the reasons, from NEEDS

A block runs with bash -euo pipefail in a scratch folder holding the files the examples name
(scene.png, ex1.png, depth.png, camera.yaml, workcell/, config/ -> the source tree's config/), with
the project's tools first on PATH (run through the tests' preloaded tool server: test/tool_server.py) and the
hub offline; it passes when bash exits 0. The troubleshooting
table's quoted messages must be worded as the code words them."""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import sys

import cv2
import pytest

from pop_ros.paths import SAMPLE_DIR, SOURCE_ROOT

PAGES = [SOURCE_ROOT / "README.md", *sorted((SOURCE_ROOT / "docs").glob("*.md"))]
COMMAND_LANGUAGES = {"bash", "sh", "shell", "console"}
# What a block may need, each a reason it cannot run in a test here (development.md lists them).
NEEDS = {
    "robot": "a ROS 2 install (ros2 CLI, colcon workspace, rviz2, apt) and usually a camera",
    "gpu": "a CUDA GPU",
    "weights": "real model weights from the Hugging Face hub (gigabytes; the tests are offline)",
    "dataset": "a benchmark dataset on disk",
    "make": "a Makefile target that (re)builds .venv or runs the whole suite: run from a fresh clone, not from a test",
}
MARKER = re.compile(r"^<!--\s*(runs-here(?::\s*slow)?|needs:\s*[a-z0-9, -]+?)\s*-->$")
FENCE = re.compile(r"^(```|~~~)\s*([A-Za-z0-9_+-]*)\s*$")
COMMAND_START = re.compile(r"^\s*(make|pop-|pop_node|ros2|\.venv/|python|pip|colcon|rviz2)\b")


class Block:
    def __init__(self, page: pathlib.Path, line: int, language: str, text: str, marker: str | None):
        self.page, self.line, self.language, self.text, self.marker = page, line, language, text, marker

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(SOURCE_ROOT)}:{self.line}"

    @property
    def runs_here(self) -> bool:
        return self.marker is not None and self.marker.startswith("runs-here")

    @property
    def needs(self) -> list[str]:
        if self.marker is None or not self.marker.startswith("needs:"):
            return []
        return [need.strip() for need in self.marker.split(":", 1)[1].split(",") if need.strip()]


def blocks(page: pathlib.Path) -> list[Block]:
    """Every fenced block of a page with the marker on the line before it (None without one)."""
    found, lines = [], page.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        end = next(i for i in range(index + 1, len(lines)) if lines[i].strip() == opening.group(1))
        before = lines[index - 1].strip() if index > 0 else ""
        marker = MARKER.match(before)
        text = "\n".join(lines[index + 1 : end]) + "\n"
        found.append(Block(page, index + 1, opening.group(2), text, marker.group(1) if marker else None))
        index = end + 1
    return found


ALL_BLOCKS = [block for page in PAGES for block in blocks(page)]
COMMAND_BLOCKS = [block for block in ALL_BLOCKS if block.language in COMMAND_LANGUAGES]
RUNNABLE = [block for block in COMMAND_BLOCKS if block.runs_here]


def test_every_command_block_is_run_here_or_says_what_it_needs():
    problems = []
    for block in COMMAND_BLOCKS:
        if block.marker is None:
            problems.append(f"{block.where}: no marker (<!-- runs-here --> or <!-- needs: ... -->) before the block")
        elif not block.runs_here:
            unknown = [need for need in block.needs if need not in NEEDS] or ([] if block.needs else ["(none)"])
            if unknown:
                problems.append(f"{block.where}: unknown needs {unknown}; known: {', '.join(NEEDS)}")
    for block in ALL_BLOCKS:  # a command in an untagged block would escape the check above
        if block.language not in COMMAND_LANGUAGES and block.language in ("", "text"):
            commands = [line for line in block.text.splitlines() if COMMAND_START.match(line)]
            if commands:
                problems.append(f"{block.where}: commands in a block not tagged bash: {commands[0]!r}")
    assert problems == [], "\n".join(problems)


def test_the_docs_run_something_here():
    """The marker convention is not a way out: the pages' own examples of the tools run here."""
    tools = {word for block in RUNNABLE for word in re.findall(r"^\s*(pop-[a-z]+)", block.text, re.M)}
    assert {"pop-point", "pop-bag", "pop-teach", "pop-bench"} <= tools, tools


# ---- running them --------------------------------------------------------------------------------------------
CAMERA_YAML = """image_width: 640
image_height: 480
camera_name: doc_camera
camera_matrix: {rows: 3, cols: 3, data: [600.0, 0, 319.5, 0, 600.0, 239.5, 0, 0, 1]}
distortion_model: plumb_bob
distortion_coefficients: {rows: 1, cols: 5, data: [0, 0, 0, 0, 0]}
"""


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> pathlib.Path:
    """The files the examples name, small: a 640x480 scene with its depth (1 m) and camera, an exemplar,
    and a 1.2 s RealSense-like recording (320x240, 10 Hz) as workcell/ and workcell.mcap: 12 frames are
    enough for every option the blocks use (pop-teach's --time 0.5, pop-bag's --rate 2 picks 3 of them);
    each frame costs every pop-bag line of a block a query per part."""
    import numpy as np

    from test.test_bag import write_bag

    folder = tmp_path_factory.mktemp("doc_commands")
    scene = cv2.resize(cv2.imread(str(SAMPLE_DIR / "scene_0.png")), (640, 480), interpolation=cv2.INTER_LINEAR)
    cv2.imwrite(str(folder / "scene.png"), scene)
    cv2.imwrite(str(folder / "depth.png"), np.full((480, 640), 1000, np.uint16))
    (folder / "camera.yaml").write_text(CAMERA_YAML)
    for name in ("ex1.png", "mug.png"):
        shutil.copy(SOURCE_ROOT / "config" / "supports" / "images" / "mug_0.png", folder / name)
    (folder / "config").symlink_to(SOURCE_ROOT / "config")
    write_bag(folder / "workcell", "mcap", 12)
    shutil.copy(next((folder / "workcell").glob("*.mcap")), folder / "workcell.mcap")
    return folder


def block_params():
    return [
        pytest.param(block, id=block.where, marks=[pytest.mark.slow] if block.marker == "runs-here: slow" else [])
        for block in RUNNABLE
    ]


@pytest.mark.parametrize("block", block_params())
def test_documented_block_runs_as_written(block, scratch, tmp_path, tool_shims):
    work = tmp_path / "work"
    shutil.copytree(scratch, work, symlinks=True)  # each block starts from the same files
    tools = pathlib.Path(sys.executable).parent  # pop-point, pop-bag, ... as `source .venv/bin/activate` puts them
    # Before them on PATH, their shims: each runs its tool through the session's preloaded tool server.
    env = dict(os.environ, HF_HUB_OFFLINE="1", PATH=os.pathsep.join([str(tool_shims), str(tools), os.environ["PATH"]]))
    completed = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block.text],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    failure = f"{block.where} failed ({completed.returncode}):\n{block.text}\n{completed.stderr[-3000:]}"
    assert completed.returncode == 0, failure


# ---- the troubleshooting table ------------------------------------------------------------------------------
# Messages that come from Python or torch, not from this project's code.
EXTERNAL_MESSAGES = {"No module named 'torch'", "operator torchvision::nms does not exist"}
SOURCES = [*sorted((SOURCE_ROOT / "pop_ros").rglob("*.py")), *sorted((SOURCE_ROOT / "tools").iterdir()),
           SOURCE_ROOT / "launch" / "pop_ros.launch.py", SOURCE_ROOT / "Makefile"]  # fmt: skip


def source_text() -> str:
    """The project's code with Python's adjacent string literals joined ("a " "b" -> "a b")."""
    text = "\n".join(path.read_text(encoding="utf-8") for path in SOURCES if path.is_file())
    return re.sub(r"\"\s*\n\s*f?\"", "", text)


def quoted_messages() -> list[str]:
    """The quoted message of each row of the troubleshooting table (its first column's first `code`)."""
    text = (SOURCE_ROOT / "README.md").read_text(encoding="utf-8")
    table = text.split("## Troubleshooting", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1] for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    return [quoted[0] for quoted in (re.findall(r"`([^`]+)`", row) for row in rows) if quoted]


def literal_pieces(message: str) -> list[str]:
    """The parts of a quoted message the code must hold verbatim, of two words or more: what lies
    between '...', quoted values, paths and numbers (those vary) and ': ' (where messages are joined)."""
    pieces = re.split(r"\.\.\.|'[^']*'|\S*/\S*|(?<![\w.])\d+(?:\.\d+)?(?![\w.])|: ", message)
    stripped = [piece.strip(" :,.>") for piece in pieces]
    return [piece for piece in stripped if len(piece.split()) >= 2]


def in_code(piece: str, code: str) -> bool:
    """Whether the code holds `piece`, where any one word may be an f-string's {placeholder}."""
    words = [rf"(?:{re.escape(word)}|\{{[^}}]*\}})" for word in piece.split()]
    return re.search(r"\s+".join(words), code) is not None


def test_troubleshooting_quotes_messages_as_the_code_words_them():
    code = source_text()
    messages = [message for message in quoted_messages() if message not in EXTERNAL_MESSAGES]
    assert len(messages) >= 6, messages
    pieces = [(message, piece) for message in messages for piece in literal_pieces(message)]
    missing = [(message, piece) for message, piece in pieces if not in_code(piece, code)]
    assert missing == [], missing


def test_the_pages_name_the_interpreters_in_the_order_make_tries_them():
    script = (SOURCE_ROOT / "tools" / "find_python.sh").read_text(encoding="utf-8")
    order = re.search(r'^SUPPORTED="([^"]+)"', script, re.M).group(1).split()
    said = []
    for page in [*PAGES, SOURCE_ROOT / "Makefile"]:
        text = page.read_text(encoding="utf-8")
        for first, second in re.findall(r"(?:python|Python )?(3\.\d+),? else (?:python|Python )?(3\.\d+)", text):
            said.append((page.name, [first, second]))
    assert said and all(versions == order for _, versions in said), (order, said)
