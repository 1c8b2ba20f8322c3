"""How long after a cancel pop_node's models are free: the ~/point_to_part action, an in-process
node on the tiny preset made slow (`resolution` 1024, frame cache off: each goal runs the visual
encoder and the MLLM prefix), a real rclpy action client.

Each round sends goal A, cancels it about half-way through a query, and sends goal B right after
the cancel: B waits behind A, and the time from the cancel to B's first stage past waiting
("image features") is when the models went to the next goal, end to end (cancel request, A's
stop at its next stage boundary, the slot released, B woken). Random weights: the figures are
latency, never accuracy.
Run: `python tools/measure_cancel.py [ROUNDS] [RESOLUTION]` (default 10, 1024); prints JSON,
progress on stderr.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time


def progress(message: str) -> None:
    print(f"[measure_cancel {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Goal:
    """A goal and the moment (perf_counter) each feedback stage first arrived."""

    def __init__(self, client, goal_msg, ros):
        self.stages: dict[str, float] = {}
        self.sent_at = time.perf_counter()
        sent = client.send_goal_async(goal_msg, feedback_callback=self._on_feedback)
        self.handle = ros.wait(sent, 60)
        self.result = self.handle.get_result_async()

    def _on_feedback(self, message) -> None:
        self.stages.setdefault(message.feedback.stage, time.perf_counter())

    def last_stage(self) -> str:
        return max(self.stages, key=self.stages.get) if self.stages else "accepted"


def wait_until(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(0.001)


def main() -> int:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    resolution = int(sys.argv[2]) if len(sys.argv) > 2 else 1024
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    from action_msgs.msg import GoalStatus

    from pop_ros.clients.ros_client import LIBRARY, SpinSafeActionClient
    from pop_ros.clients.testing import node_in_process
    from pop_ros.messages.image_conversion import from_array
    from pop_ros_interfaces.action import PointToPart

    overrides = ["preset:=tiny", "autostart:=false", f"support_library:={LIBRARY}", f"resolution:={resolution}"]
    overrides += ["frame_cache_size:=0", "max_frame_age:=0.0", "busy_timeout:=60.0"]
    ros, node = node_in_process("measure_cancel", "measure_cancel_client", overrides)
    client = SpinSafeActionClient(ros.node, PointToPart, "/measure_cancel/pop_node/point_to_part")
    assert client.wait_for_server(timeout_sec=60)

    import cv2

    from pop_ros.paths import SAMPLE_DIR

    image = from_array(cv2.imread(str(SAMPLE_DIR / "scene_0.png")), "bgr8")

    def goal_msg():
        image.header.stamp = ros.now_stamp()
        image.header.frame_id = "camera"
        return PointToPart.Goal(query="handle of the mug", support_set="mug_handle", image=image)

    progress(f"warm-up and {rounds} plain queries at resolution {resolution}")
    ros.wait(Goal(client, goal_msg(), ros).result, 120)  # warm-up
    query_ms = []
    for _ in range(rounds):
        plain = Goal(client, goal_msg(), ros)
        ros.wait(plain.result, 120)
        query_ms.append((time.perf_counter() - plain.sent_at) * 1000.0)
    half = statistics.median(query_ms) / 2000.0
    progress(f"query median {statistics.median(query_ms):.0f} ms; {rounds} cancels about {half * 1000:.0f} ms in")
    free_ms, cancelled_ms, stages = [], [], []
    for index in range(rounds):
        first = Goal(client, goal_msg(), ros)
        wait_until(lambda first=first: "image features" in first.stages)
        time.sleep(max(0.0, half - (time.perf_counter() - first.sent_at)))  # about half-way through
        stages.append(first.last_stage())
        cancelled_at = time.perf_counter()
        first.handle.cancel_goal_async()
        second = Goal(client, goal_msg(), ros)  # queued behind the cancelled one
        status = ros.wait(first.result, 120).status
        cancelled_ms.append((time.perf_counter() - cancelled_at) * 1000.0)
        wait_until(lambda second=second: "image features" in second.stages)
        free_ms.append((second.stages["image features"] - cancelled_at) * 1000.0)
        ros.wait(second.result, 120)
        if status != GoalStatus.STATUS_CANCELED:
            progress(f"round {index}: the goal ended with status {status} before the cancel took effect")
            free_ms.pop()
            cancelled_ms.pop()
    report = {
        "preset": "tiny (random weights)",
        "resolution": resolution,
        "rounds": rounds,
        "cpus": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0],
        "query_ms_median": round(statistics.median(query_ms), 1),
        "cancel_to_models_free_ms_median": round(statistics.median(free_ms), 1),
        "cancel_to_models_free_ms": [round(ms, 1) for ms in free_ms],
        "cancel_to_canceled_result_ms_median": round(statistics.median(cancelled_ms), 1),
        "stage_when_cancelled": {stage: stages.count(stage) for stage in sorted(set(stages))},
    }
    print(json.dumps(report, indent=2))
    sys.stdout.flush()
    os._exit(0)  # as pop_node does: no slow interpreter teardown of the models


if __name__ == "__main__":
    sys.exit(main())
