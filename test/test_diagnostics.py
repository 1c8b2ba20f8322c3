"""The diagnostics publisher: figures against hand computations, and the message on /diagnostics
as diagnostic_updater lays it out (1 Hz, "<node>: <task>" names, levels, key/values)."""

import math
import time

import pytest
import rclpy
from diagnostic_msgs.msg import DiagnosticArray

from pop_ros.clients.ros_client import RosClient
from pop_ros.ros.diagnostics import ERROR, OK, WARN, DiagnosticsPublisher, NodeHealth
from test.conftest import wait_for


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_frame_rate_pairing_and_latency_against_hand_values():
    clock = FakeClock()
    health = NodeHealth(window_s=5.0, clock=clock)
    assert health.frame_rate_hz() == 0.0 and math.isinf(health.seconds_since_frame())
    for index in range(60):  # 2 s of a 30 Hz camera
        health.frame(1000.0 + index / 30.0)
    clock.now = 1000.0 + 59 / 30.0 + 0.5
    assert health.frame_rate_hz() == pytest.approx(30.0)  # 59 intervals over 59/30 s
    assert health.seconds_since_frame() == pytest.approx(0.5)
    clock.now = 1000.0 + 6.0  # the first 1 s of frames has left the 5 s window: 30 remain
    assert health.frame_rate_hz() == pytest.approx(30.0)
    clock.now = 1000.0 + 8.0
    assert health.frame_rate_hz() == 0.0 and health.frames_total == 60  # window empty, total kept

    for paired in (True, True, False, True):
        health.depth_lookup(paired)
    assert health.depth_pairing_rate() == pytest.approx(0.75)

    for latency in range(100, 0, -1):  # 1..100 ms in any order
        health.query("ok", float(latency))
    health.query("busy")  # refused before running: counted, no latency
    p50, p99 = health.latency_percentiles_ms()
    # Linear interpolation on 1..100: rank 0.5 * 99 = 49.5 -> 50.5; rank 0.99 * 99 = 98.01 -> 99.01.
    assert p50 == pytest.approx(50.5) and p99 == pytest.approx(99.01)
    assert health.outcomes == {"ok": 100, "busy": 1}


@pytest.fixture
def ros():
    client = RosClient("diagnostics_test_client")
    yield client
    client.close()


# The publisher's period and staleness bound, short: what is checked is the bound on the rate and what
# each message holds, not the node's 1 s default (the node's own diagnostics: test_node_hardening.py).
PERIOD_S, STALE_FRAME_S = 0.25, 0.5


def test_published_at_its_period_with_every_task(ros):
    health = NodeHealth()
    state = {"level": OK, "message": "active", "values": {"preset": "tiny", "random weights": True}}
    node = rclpy.create_node("diag_probe", context=ros.context)
    ros.add_node(node)
    received = ros.collect(DiagnosticArray, "/diagnostics", wait_for_publisher=False)

    def ours():
        return [m for m in received if m.status and m.status[0].name.startswith("diag_probe: ")]

    created = time.monotonic()
    publisher = DiagnosticsPublisher(
        node,
        health,
        model_state=lambda: (state["level"], state["message"], state["values"]),
        camera_expected=lambda: True,
        period_s=PERIOD_S,
        stale_frame_s=STALE_FRAME_S,
        hardware_id="test_camera",
    )
    try:
        for index in range(20):
            health.frame(time.monotonic() - (20 - index) / 10.0)  # 10 Hz over the last 2 s
        health.depth_lookup(True)
        health.query("ok", 12.0)
        health.error("internal error")
        health.error("bad input")
        assert wait_for(lambda: len(ours()) >= 3, 30)
        heard, elapsed_s = ours(), time.monotonic() - created
        # The timer publishes at most one message per period (+1 at the edge); a loaded machine may
        # delay some, so only the upper bound is a property (no timing bound from below, no gap widths).
        assert len(heard) <= elapsed_s / PERIOD_S + 1, (len(heard), elapsed_s)
        stamps = [m.header.stamp.sec + m.header.stamp.nanosec * 1e-9 for m in heard]
        assert stamps == sorted(set(stamps)), stamps  # each message its own, increasing stamp
        first = heard[0]
        by_name = {status.name: status for status in first.status}
        assert set(by_name) == {
            "diag_probe: camera input",
            "diag_probe: queries",
            "diag_probe: errors",
            "diag_probe: model",
        }
        assert all(status.hardware_id == "test_camera" for status in first.status)
        camera = {kv.key: kv.value for kv in by_name["diag_probe: camera input"].values}
        assert float(camera["frame rate (Hz)"]) == pytest.approx(10.0, abs=0.1)
        assert camera["depth pairing rate"] == "1.000" and camera["frames received"] == "20"
        queries = {kv.key: kv.value for kv in by_name["diag_probe: queries"].values}
        assert queries["latency p50 (ms)"] == "12.0" and queries["answers ok"] == "1"
        errors = by_name["diag_probe: errors"]
        assert errors.level == WARN and {kv.key: kv.value for kv in errors.values}["internal error"] == "1"
        model = by_name["diag_probe: model"]
        assert model.level == OK and model.message == "active"
        assert {kv.key: kv.value for kv in model.values} == {"preset": "tiny", "random weights": "True"}
        # The camera falls silent and the model fails: the levels follow.
        state.update(level=ERROR, message="configure failed: no such model", values={})
        # The next message after the change; the last frame is older than STALE_FRAME_S by then.
        assert wait_for(lambda: {s.name: s.level for s in ours()[-1].status}["diag_probe: model"] == ERROR, 10)
        latest = {status.name: status for status in ours()[-1].status}
        assert latest["diag_probe: camera input"].level == WARN
        assert latest["diag_probe: camera input"].message.startswith("no frame for")
        assert latest["diag_probe: model"].level == ERROR
    finally:
        publisher.destroy()
        ros.executor.remove_node(node)
        node.destroy_node()
