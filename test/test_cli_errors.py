"""Command-line tools: every bad argument is one line on stderr and exit 2, found before any model
loads; an unreachable hub fails at once with the clear loading error, without retry warnings."""

import os
import subprocess
import sys

import cv2
import pytest

from test.conftest import random_image

# An MLLM id that is in no cache: if a bad argument were only found after the model load, the run
# would fail with a loading error instead of the argument's own message.
UNLOADABLE = ["--preset", "qwen2.5-vl-3b", "--mllm", "pop-ros-test/not-a-model", "--visual", "pop-ros-test/none"]


def run(module, *args, env=None):
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=300, check=False, env=env
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    import numpy as np

    folder = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    cv2.imwrite(str(folder / "target.png"), random_image(rng, 60, 80))
    cv2.imwrite(str(folder / "support.png"), random_image(rng, 60, 80))
    (folder / "broken.yaml").write_text("sets:\n  mug: [unclosed\n    query: x\n")
    (folder / "library.yaml").write_text(
        "sets:\n"
        "  mug_handle:\n    query: handle\n    exemplars:\n      - {image: support.png, click: [10, 10]}\n"
        "  lid:\n    query: lid\n    exemplars:\n      - {image: missing.png, click: [1, 1]}\n"
    )
    return folder


@pytest.mark.parametrize(
    "args,message",
    [
        (["--save-heatmap", "{d}/out"], "--save-heatmap {d}/out: needs an image file name ending in .png"),
        (["--save-heatmap", "{d}/out.txt"], "needs an image file name"),
        (["--save-heatmap", "{d}/nowhere/out.png"], "--save-heatmap folder {d}/nowhere does not exist"),
        (["--library", "{d}/library.yaml"], "--library needs --support-set NAME"),
        (["--library", "{d}/library.yaml", "--support-set", "nope"], "{d}/library.yaml (known: mug_handle)"),
        (["--library", "{d}/library.yaml", "--support-set", "lid"], "support set 'lid' is not in {d}/library.yaml: "),
        (["--library", "{d}/broken.yaml", "--support-set", "mug"], "is not valid YAML"),
        (["--library", "{d}/absent.yaml", "--support-set", "mug"], "support library {d}/absent.yaml does not exist"),
        (["--support-set", "mug"], "--support-set needs --library"),
        (["--shots", "0"], "--shots must be >= 1"),
        (["--support", "{d}/support.png:90,5"], "outside its 80x60 image"),
    ],
)  # fmt: skip
def test_pop_point_bad_arguments_are_one_line_before_any_model_loads(files, capsys, args, message):
    from pop_ros.cli import point

    args = [a.replace("{d}", str(files)) for a in args]
    status = point.main([*UNLOADABLE, "--target", str(files / "target.png"), "--query", "lid", *args])
    stderr = capsys.readouterr().err
    assert status == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert message.replace("{d}", str(files)) in lines[0]
    assert "could not load" not in lines[0]  # found before the model load


def test_pop_find_heads_refuses_a_head_file_name_before_loading(files, capsys):
    from pop_ros.cli import find_heads

    status = find_heads.main([*UNLOADABLE[:4], "--data", str(files), "--out", str(files / "heads")])
    assert status == 2 and capsys.readouterr().err.strip().splitlines() == [
        f"error: --out {files / 'heads'}: a head file name ends in .yaml or .yml"
    ]


@pytest.mark.slow
def test_unreachable_hub_fails_at_once_without_retry_warnings(files):
    """With HF_HUB_OFFLINE unset and no network route to the hub (the endpoint points at a closed
    local port, so this holds on connected machines too), the first uncached model fails with the
    loading error after one refused connection instead of huggingface_hub's retry backoff."""
    env = dict(os.environ, HF_HUB_OFFLINE="0", HF_ENDPOINT="http://127.0.0.1:9", HF_HUB_DISABLE_TELEMETRY="1")
    completed = run("pop_ros.cli.point", *UNLOADABLE, "--target", str(files / "target.png"), "--query", "lid", env=env)
    lines = completed.stderr.strip().splitlines()
    assert completed.returncode == 2 and len(lines) == 1, completed.stderr
    expected = "visual model 'pop-ros-test/none': it is not in the local cache and the hub is unreachable"
    assert expected in lines[0]
    # The backoff printed one warning per retry (23 lines over 26 s); one line means no retries.
    # Time itself is not asserted: tests hold no timing bounds.
    assert "Retrying" not in completed.stderr


def test_a_tool_s_log_lines_reach_stderr_one_named_line_each():
    """The tools' logging set-up (`cli.common.run_cli`) in a process of its own: the in-process tool runs of
    other tests (`tool_here`) see log records through pytest's capture, which would hide a lost set-up."""
    code = (
        "import logging\n"
        "from pop_ros.cli.common import run_cli\n"
        "def work():\n"
        "    logging.getLogger('pop_ros.example').info('hello from the tool')\n"
        "    logging.getLogger('pop_ros.example').debug('not for users')\n"
        "    return {'done': True}\n"
        "raise SystemExit(run_cli(work, json_output=True))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "INFO pop_ros.example: hello from the tool" in done.stderr.splitlines()
    assert "not for users" not in done.stderr and done.stdout.strip() == '{\n  "done": true\n}'
