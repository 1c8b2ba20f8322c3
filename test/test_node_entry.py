"""pop_node's edges: `--help` (the parameters, no rclpy, torch or model), `~/list_support_sets` on an
unconfigured node, SIGINT (stops with a log line), and the shipped params file and table agreeing."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from pop_ros.clients.ros_client import LIBRARY, PARAMS_FILE, RosClient
from pop_ros.clients.testing import NodeProcess
from pop_ros.paths import SOURCE_ROOT

# Runs a way in to pop_node with --help in a fresh interpreter; reports its exit code, what it printed
# and which heavy modules got imported.
PROBE = """
import runpy, sys
way, flag = sys.argv[1], sys.argv[2]
try:
    if way == "console script":
        from pop_ros.ros.program import main
        main(["pop_node", flag])
    else:
        sys.argv = ["pop_node", flag]
        runpy.run_module("pop_ros.ros.node", run_name="__main__")
    status = "no exit"
except SystemExit as exit:
    status = exit.code
heavy = sorted(name for name in ("torch", "transformers", "rclpy", "pop_ros.pipeline") if name in sys.modules)
print(f"HELP-EXIT={status} HEAVY={','.join(heavy) or 'none'}")
"""


@pytest.mark.parametrize("way", ["console script", "python -m pop_ros.ros.node"])
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_prints_the_parameters_and_exits_without_rclpy_torch_or_a_model(way, flag):
    completed = subprocess.run(
        [sys.executable, "-c", PROBE, way, flag], capture_output=True, text=True, timeout=120, check=False
    )
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    assert lines[-1] == "HELP-EXIT=0 HEAVY=none", completed.stdout[-500:]
    assert lines[0].startswith("usage: pop_node")
    # name, type, default, when; then the description (with its limits) below it
    for expected in (
        "  autostart (bool, default true, configure)",
        '  preset (str, default "qwen2.5-vl-7b", configure)',
        "  depth_window (int, default 5, runtime)",
        "  continuous_rate (float, default 0.0, runtime)",
        '  teach_set (str, default "", runtime)',
    ):
        assert expected in lines, expected
    assert "      median of valid depths in this box around the point, pixels (>= 1; odd)" in lines
    assert "[INFO]" not in completed.stdout + completed.stderr  # no node started


def test_help_is_only_the_program_s_own_flag():
    from pop_ros.ros.usage import wants_help

    assert wants_help(["--help"]) and wants_help(["-h", "--ros-args", "-p", "preset:=tiny"])
    assert not wants_help(["--ros-args", "-p", "preset:=tiny"])
    assert not wants_help(["--ros-args", "-r", "__ns:=/h", "-h"])  # after --ros-args: rcl's


def test_a_real_pop_node_help_process_exits_0():
    completed = subprocess.run(
        [sys.executable, "-m", "pop_ros.ros.node", "--help"], capture_output=True, text=True, timeout=120, check=False
    )
    assert completed.returncode == 0 and "max_frame_age (float, default 1.0, runtime)" in completed.stdout


# ---- ~/list_support_sets -------------------------------------------------------------------------------------
def list_sets(ros, namespace):
    from pop_ros_interfaces.srv import ListSupportSets

    return ros.call(ListSupportSets, f"/{namespace}/pop_node/list_support_sets", ListSupportSets.Request())


def test_list_support_sets_says_when_it_cannot_list_and_where_the_sets_come_from(inprocess, tmp_path):
    from pop_ros.ros.node import PopNode

    # Never configured (autostart false, nobody drove the lifecycle).
    ros = RosClient("listun_client", args=["--ros-args", "-p", "preset:=tiny", "-p", "autostart:=false"])
    node = PopNode(context=ros.context, namespace="listun")
    ros.add_node(node)
    try:
        response = list_sets(ros, "listun")
        assert not response.success and list(response.names) == []
        assert response.message.startswith("node is not configured (unconfigured)"), response.message
    finally:
        ros.executor.remove_node(node)
        node.destroy_node()
        ros.close()

    ros, node, _ = inprocess("listfail", f"support_library:={tmp_path / 'missing.yaml'}")
    response = list_sets(ros, "listfail")
    assert not response.success and "configure failed: support library" in response.message, response.message

    ros, node, _ = inprocess("listlib", f"support_library:={LIBRARY}")
    response = list_sets(ros, "listlib")
    assert response.success and sorted(response.names) == ["bottle_neck", "mug_handle"]
    assert response.message == f"2 sets from {LIBRARY}"

    ros, node, _ = inprocess("listnone")
    response = list_sets(ros, "listnone")
    assert response.success and response.message == "0 sets from memory (no support_library)"


# ---- SIGINT ----------------------------------------------------------------------------------------------------
def test_sigint_stops_the_node_promptly_with_a_log_line(tmp_path):
    client = RosClient("pop_sigint_client")
    try:
        node = NodeProcess("-p", "preset:=tiny", "-r", "__ns:=/sigint", log_path=tmp_path / "node.log")
        node.wait_until_serving(client, "/sigint")
        node.process.send_signal(signal.SIGINT)
        # A deadline only: the exit itself is what is checked (it took ~4 s before, silent).
        assert node.process.wait(timeout=20) == 0
    finally:
        node.stop()
        client.close()
    log = node.log()
    assert "[pop_node.shutdown]: stopping: SIGINT" in log and "[pop_node.shutdown]: stopped in" in log, log[-2000:]
    # Ctrl-C is an ordinary way to stop a node: no thread reports the shutdown as an exception.
    assert "Traceback" not in log and "Exception in thread" not in log, log[-3000:]


# ---- the shipped params file and the table ---------------------------------------------------------------------
def test_params_file_is_the_table_s_rendering():
    from pop_ros.ros.parameters import render_yaml

    assert PARAMS_FILE.read_text() == render_yaml(), (
        "regenerate: python -m pop_ros.ros.parameters --yaml > config/pop_ros.yaml"
    )
    text = PARAMS_FILE.read_text()
    # Spot checks against the table's meaning, written out here.
    assert "    # approach pose: plane-fit inliers lie within this distance, metres (> 0) [runtime]\n" in text
    assert "    pose_inlier_distance: 0.005\n" in text
    assert "    # camera subscriptions' QoS reliability (best_effort | reliable) [configure]\n" in text
    assert '    image_reliability: "best_effort"\n' in text


def test_the_table_s_pipeline_choices_are_the_pipeline_s_and_load_without_torch():
    from pop_ros import pipeline
    from pop_ros.pipeline import PointerError
    from pop_ros.ros.parameters import PARAMETERS

    # The same objects, not equal copies: one place defines them.
    assert PARAMETERS["similarity"].choices is pipeline.SIMILARITY_MODES
    assert PARAMETERS["shots_combination"].choices is pipeline.SHOT_COMBINATIONS
    assert PARAMETERS["retrieval"].choices is pipeline.RETRIEVALS
    assert PARAMETERS["frame_cache_size"].maximum == pipeline.MAX_FRAME_CACHE_SIZE
    with pytest.raises((ValueError, PointerError)):  # and the pipeline refuses what the table refuses
        pipeline.PointerSettings(frame_cache_size=pipeline.MAX_FRAME_CACHE_SIZE + 1).validate()
    completed = subprocess.run(
        [sys.executable, "-c", "import sys, pop_ros.ros.parameters; print('torch' in sys.modules)"],
        capture_output=True, text=True, timeout=120, check=False, cwd=SOURCE_ROOT,
    )  # fmt: skip
    assert completed.stdout.strip() == "False", completed.stderr
