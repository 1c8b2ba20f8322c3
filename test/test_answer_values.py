"""The node's answer for one query as a value (ros/answers.result_answer): built in one pass from a
pipeline result and its capture, without a node, the same for the service, the action, the topics and
pop-bag."""

import dataclasses

import numpy as np
import pytest
from sensor_msgs.msg import CameraInfo, Image

from pop_ros.messages.capture import Capture, Frame
from pop_ros.messages.image_conversion import from_array
from pop_ros.pipeline.api import Instance, PointResult
from pop_ros.ros.answers import Answer, AnswerSettings, Outcome, result_answer
from pop_ros.spatial.grasp import GraspSettings
from pop_ros.spatial.locate import LocateSettings, locate_capture

WIDTH, HEIGHT = 64, 48
K = [50.0, 0.0, 32.0, 0.0, 50.0, 24.0, 0.0, 0.0, 1.0]
LOCATE = LocateSettings(
    depth_max_dt=0.05,
    depth_window=3,
    pose_window=7,
    pose_inlier_distance=0.01,
    pose_min_inlier_ratio=0.5,
    image_is_rectified=True,
)
SETTINGS = AnswerSettings(LOCATE, GraspSettings(part_threshold=0.5), min_score=0.5)


def capture(with_depth: bool = True) -> Capture:
    """A 64x48 frame with (optionally) a flat depth 1 m away and its camera_info."""
    colour = from_array(np.zeros((HEIGHT, WIDTH, 3), np.uint8), "rgb8")
    colour.header.frame_id = "cam"
    info = CameraInfo(width=WIDTH, height=HEIGHT, k=K, distortion_model="plumb_bob")
    info.header.frame_id = "cam"
    depth = from_array(np.full((HEIGHT, WIDTH), 1.0, np.float32), "32FC1") if with_depth else None
    note = "" if with_depth else "no 3D point: no depth image within depth_max_dt"
    return Capture(Frame(colour, 0.0, 1), depth, info, note)


def two_peak_result(second_score: float = 0.8) -> PointResult:
    """Two parts: a blob around (16, 12) scoring 1.0, another around (48, 36) scoring `second_score`."""
    heatmap = np.zeros((HEIGHT, WIDTH), np.float32)
    heatmap[8:17, 12:21] = 1.0
    heatmap[32:41, 44:53] = 0.9
    instances = [Instance(16.0, 12.0, 1.0), Instance(48.0, 36.0, second_score)]
    return PointResult(16.0, 12.0, 1.0, heatmap, {"total": 5.0}, "handle", "mugs", 1, True, instances=instances)


def answer_of(result: PointResult, taken: Capture) -> Answer:
    placement = locate_capture(taken, result.u, result.v, (HEIGHT, WIDTH), LOCATE)
    return result_answer(result, taken, placement, (HEIGHT, WIDTH), SETTINGS, query_index=2, total_ms=7.0)


def test_an_answer_holds_its_other_instances_but_never_itself():
    answer = answer_of(two_peak_result(), capture())
    best, other = answer.instances
    assert best is answer and other is answer.others[0]
    assert answer not in answer.others and other.others == ()
    assert [item.instance for item in answer.instances] == [0, 1]
    assert [item.query_index for item in answer.instances] == [2, 2]
    assert (answer.total_ms, other.total_ms) == (7.0, 0.0)  # the query's time is the best instance's
    # A value: asdict follows every field (it recursed without end while instances[0] was the answer).
    assert dataclasses.asdict(answer)["others"][0]["u"] == 48.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        answer.message = "changed"  # type: ignore[misc]


def test_every_instance_is_located_in_the_same_depth_with_its_own_region():
    answer = answer_of(two_peak_result(), capture())
    best, other = answer.instances
    assert best.success and other.success
    assert best.has_3d and other.has_3d
    assert best.xyz[2] == pytest.approx(1.0) and other.xyz[2] == pytest.approx(1.0)
    assert best.xyz[0] < 0 < other.xyz[0]  # left and right of the principal point
    assert best.mask[12, 16] and not best.mask[36, 48]
    assert other.mask[36, 48] and not other.mask[12, 16]
    assert best.cloud is not None and other.cloud is not None


def test_without_depth_every_instance_says_why_and_a_weak_one_is_rejected_without_a_region():
    answer = answer_of(two_peak_result(second_score=0.3), capture(with_depth=False))
    best, weak = answer.instances
    assert not best.has_3d and not weak.has_3d
    assert best.message == "no 3D point: no depth image within depth_max_dt"
    assert weak.outcome is Outcome.REJECTED and weak.mask is None
    assert weak.message == (
        "part not visible: score 0.300 < min_score 0.5; no 3D point: no depth image within depth_max_dt"
    )


def test_an_answer_without_a_point_has_no_instances():
    assert Answer(Outcome.NO_FRAME, "no frame yet", Image().header).instances == ()
