"""Continuous tracking in pop_node (real rclpy, in-process node on the tiny preset): a 30 Hz-like
colour stream with aligned depth on the same stamps, the camera panning over a textured scene by a
known step, so every pixel's true motion is known. Random weights place the full answer anywhere:
what is checked is that the tracked pixel follows that pixel, and its 3D point comes from its own
frame's depth."""

import math
import threading
import time

import cv2
import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from sensor_msgs.msg import CameraInfo, Image

from pop_ros.clients.ros_client import LIBRARY
from pop_ros.messages.image_conversion import from_array
from pop_ros.tracking.scenes import texture
from pop_ros_interfaces.msg import PartPointResult
from test.conftest import HEIGHT, WIDTH, K, wait_for

STEP = (1.0, 0.5)  # the scene moves this much (pixels, x and y) from one frame to the next
TOLERANCE_PX = 1.5
FRAME_PERIOD_S = 1.0 / 30.0


def stamp_s(stamp) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


class PanningCamera:
    """Publishes frame i of a scene moved by i * STEP, its depth (flat, 1.0 + 0.002 i metres: each
    frame's own) and camera_info, all stamped alike, about 30 times a second from a thread."""

    def __init__(self, ros, namespace: str):
        self.ros = ros
        self.scene = texture(np.random.default_rng(11), HEIGHT, WIDTH, blur=2.0)
        self.flat = False  # True: publish a textureless grey scene (nothing to follow)
        self.colour = ros.publisher(Image, f"/{namespace}/image")
        self.depth = ros.publisher(Image, f"/{namespace}/depth")
        self.info = ros.publisher(CameraInfo, f"/{namespace}/camera_info")
        self.stamps: dict[float, int] = {}  # stamp (s) -> frame index
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def image(self, index: int) -> np.ndarray:
        if self.flat:
            return np.full((HEIGHT, WIDTH, 3), 128, np.uint8)
        shift = np.float32([[1, 0, STEP[0] * index], [0, 1, STEP[1] * index]])
        return cv2.warpAffine(self.scene, shift, (WIDTH, HEIGHT), borderMode=cv2.BORDER_REFLECT)

    @staticmethod
    def depth_m(index: int) -> float:
        return 1.0 + 0.002 * index

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._thread.join()

    def _run(self):
        index = 0
        while not self._stop.is_set():
            stamp = self.ros.now_stamp()
            self.stamps[stamp_s(stamp)] = index
            colour = from_array(cv2.cvtColor(self.image(index), cv2.COLOR_RGB2BGR), "bgr8")
            depth = from_array(np.full((HEIGHT, WIDTH), self.depth_m(index), np.float32), "32FC1")
            info = CameraInfo(width=WIDTH, height=HEIGHT, k=K, distortion_model="plumb_bob")
            for msg in (colour, depth, info):
                msg.header.stamp, msg.header.frame_id = stamp, "cam_color_optical_frame"
            self.info.publish(info)
            self.colour.publish(colour)
            self.depth.publish(depth)
            index += 1
            time.sleep(FRAME_PERIOD_S)


def start_tracking(inprocess, namespace, *overrides):
    """The node, its ~/result messages, and the full answers its tracks start from (recorded where
    continuous mode hands them over: a full answer about a frame older than a tracked answer already
    published is not published itself, by the frame-order rule, but still starts the track)."""
    ros, node, _ = inprocess(
        namespace,
        f"support_library:={LIBRARY}",
        "continuous_support_set:=mug_handle",
        "continuous_tracking:=true",
        "max_frame_age:=0.0",  # a loaded machine must not make frames stale
        "depth_max_dt:=0.001",  # only the frame's own depth
        *overrides,
    )
    results = ros.collect(PartPointResult, f"/{namespace}/pop_node/result", qos=1000)
    anchors = {}  # frame stamp (s) -> the full answer about it
    hand_over = node.continuous.answered

    def recorded(answer):
        if answer.capture is not None:
            anchors[answer.capture.stamp_s] = answer
        hand_over(answer)

    node.continuous.answered = recorded
    return ros, node, results, anchors


def anchor_of(result, anchors):
    """The full answer a tracked result continues: the one about the frame track_age_s before it."""
    stamp = min(anchors, key=lambda s: abs(s - (stamp_s(result.header.stamp) - result.track_age_s)))
    assert abs(stamp_s(result.header.stamp) - result.track_age_s - stamp) < 1e-3
    return stamp, anchors[stamp]


def first_answer_now(node) -> None:
    """The first full answer (a track's start) once a frame is in, not at the rate's first tick 1 /
    continuous_rate after activation (2 s at 0.5 Hz); later ones still come at the rate."""
    assert wait_for(lambda: node.camera.latest is not None, timeout=30.0)
    node.continuous.tick_soon()


def test_tracked_answers_follow_the_pixel_with_their_own_depth(inprocess):
    ros, node, results, anchors = start_tracking(inprocess, "tracked", "continuous_rate:=0.5")
    camera = PanningCamera(ros, "tracked").start()
    try:
        first_answer_now(node)
        # A loaded machine may still drop a depth image; such a frame says so instead of a 3D point.
        assert wait_for(lambda: sum(r.tracked and r.has_3d for r in list(results)) >= 20, timeout=120.0)
    finally:
        camera.stop()
    tracked = [r for r in list(results) if r.tracked and r.success]
    for result in tracked:
        index = camera.stamps[stamp_s(result.header.stamp)]  # stamped like a published colour frame
        anchor_stamp, anchor = anchor_of(result, anchors)
        frames = index - camera.stamps[anchor_stamp]
        assert frames > 0
        true_u, true_v = anchor.u + STEP[0] * frames, anchor.v + STEP[1] * frames
        assert math.hypot(result.u - true_u, result.v - true_v) <= TOLERANCE_PX, (result.u, result.v, true_u, true_v)
        assert result.query == anchor.query and result.score == anchor.score
        # Its 3D point: this frame's own depth (each frame's differs), through the camera's K.
        if not result.has_3d:
            assert "no 3D point: nearest depth is" in result.message
            continue
        depth = camera.depth_m(index)
        assert abs(result.point.z - depth) < 1e-4
        assert abs(result.point.x - (result.u - K[2]) * depth / K[0]) < 1e-3


def test_a_lost_track_says_why_and_publishes_nothing_further(inprocess):
    ros, node, results, anchors = start_tracking(inprocess, "lost", "continuous_rate:=0.5")
    diagnostics = ros.collect(DiagnosticArray, "/diagnostics", qos=100)
    camera = PanningCamera(ros, "lost").start()
    try:
        first_answer_now(node)
        assert wait_for(lambda: any(r.tracked and r.success for r in list(results)), timeout=120.0)
        # The part's texture is gone: nothing left to follow. (On a loaded machine the pan may first
        # carry a track out of the image; a full answer then starts a new one: the loss looked at is
        # the first one after the texture went.)
        flat_from = len(results)
        camera.flat = True

        def lost_features() -> int | None:
            received = list(results)
            return next(
                (
                    i
                    for i in range(flat_from, len(received))
                    if received[i].tracked and not received[i].success and "features" in received[i].message
                ),
                None,
            )

        assert wait_for(lambda: lost_features() is not None, timeout=60.0)
        lost_at = lost_features()
        assert wait_for(
            lambda: any(
                "tracking" in s.name and "track lost" in s.message for a in list(diagnostics) for s in a.status
            ),
            timeout=30.0,
        )
    finally:
        camera.stop()
    received = list(results)
    lost = received[lost_at]
    assert lost.message.startswith("track lost: ") and "features" in lost.message
    assert not lost.has_3d
    # After a loss, no tracked point from that track: only from a later full answer's.
    lost_anchor, _ = anchor_of(lost, anchors)
    for result in received[lost_at + 1 :]:
        if result.tracked and result.success:
            assert anchor_of(result, anchors)[0] > lost_anchor


def test_a_lost_track_asks_for_a_full_answer_at_once(inprocess):
    """continuous_rate 0.01 Hz: the rate's first tick would come after 100 s. The first full answer is
    asked for by hand (tick_soon); the second comes from the track's loss, long before the rate's."""
    ros, node, results, anchors = start_tracking(inprocess, "reanchor", "continuous_rate:=0.01")
    camera = PanningCamera(ros, "reanchor").start()
    try:
        assert wait_for(lambda: node.camera.latest is not None, timeout=30.0)
        node.continuous.tick_soon()
        assert wait_for(lambda: any(r.tracked and r.success for r in list(results)), timeout=60.0)
        assert len(anchors) == 1
        camera.flat = True
        assert wait_for(lambda: len(anchors) >= 2, timeout=60.0)
    finally:
        camera.stop()
    assert any(r.tracked and not r.success for r in list(results))  # what asked for it
    first, second = sorted(anchors)[:2]
    assert second > first  # a later frame (the newest with its depth when the models were free)


def test_a_tracked_answers_markers_can_leave_out_the_part_points():
    """Every tracked frame's markers (Outputs.publish passes part_points=False for a tracked answer):
    the point and its label, but not the part cloud's points (thousands of Point messages a frame)."""
    from types import SimpleNamespace

    from visualization_msgs.msg import Marker

    from pop_ros.ros.answers import Answer, Outcome
    from pop_ros.ros.outputs import Outputs

    cloud = SimpleNamespace(points=np.ones((50, 3), np.float32))
    answer = Answer(
        Outcome.OK, "ok", Image().header, has_3d=True, xyz=(0.0, 0.0, 1.0), query="q", tracked=True, cloud=cloud
    )
    with_points = [m.type for m in Outputs.markers_message([answer]).markers]
    without = [m.type for m in Outputs.markers_message([answer], part_points=False).markers]
    assert Marker.POINTS in with_points and Marker.POINTS not in without
    assert Marker.SPHERE in without and Marker.TEXT_VIEW_FACING in without


def test_colour_frames_keep_arriving_while_one_is_being_tracked(inprocess):
    """Tracking runs on a thread of its own: a frame that takes long to track (held here) does not
    hold the colour callback: the frames published meanwhile
    are all received (the camera's rate is not capped by the tracker's), and the tracker goes on with
    the newest, the ones between counted as skipped in /diagnostics."""
    from test.conftest import colour_msg

    ros, node, results, anchors = start_tracking(inprocess, "held", "continuous_rate:=0.01")
    held, entered = threading.Event(), threading.Event()
    track = node.tracking.follower.track
    tracked_stamps = []

    def held_track(image, stamp):
        entered.set()
        assert held.wait(60), "the test never let the tracker go"
        tracked_stamps.append(stamp)
        return track(image, stamp)

    node.tracking.follower.track = held_track
    colour = ros.publisher(Image, "/held/image")
    try:
        colour.publish(colour_msg(ros.now_stamp()))
        assert entered.wait(30)  # the tracker holds the first frame
        for count in range(2, 8):
            colour.publish(colour_msg(ros.now_stamp()))
            assert wait_for(lambda count=count: node.camera.latest_seq >= count, 30), f"frame {count} was not received"
    finally:
        held.set()
    newest = node.camera.latest.stamp_s
    assert wait_for(lambda: newest in tracked_stamps, 30)  # then straight to the newest
    assert len(tracked_stamps) == 2 and node.tracking.skipped_total == 5  # frames 2-6 were never tracked


def test_an_exception_while_tracking_is_logged_and_the_next_frame_is_tracked(inprocess):
    """The tracking thread goes through the node's callback guard: one failing frame is counted as an
    internal error, and tracking goes on with the next frame (the thread does not end)."""
    from test.conftest import colour_msg

    ros, node, results, anchors = start_tracking(inprocess, "fails", "continuous_rate:=0.01")
    track = node.tracking.follower.track
    calls = []

    def failing_once(image, stamp):
        calls.append(stamp)
        if len(calls) == 1:
            raise RuntimeError("a frame the tracker cannot take")
        return track(image, stamp)

    node.tracking.follower.track = failing_once
    colour = ros.publisher(Image, "/fails/image")
    colour.publish(colour_msg(ros.now_stamp()))
    assert wait_for(lambda: node.internal_errors["_step"] == 1, 30)
    colour.publish(colour_msg(ros.now_stamp()))
    assert wait_for(lambda: len(calls) == 2, 30)  # the next frame reached the tracker
    assert node.tracking._thread.is_alive()
