"""pop_node's several instances, region of interest, depth in the request, part mask / cloud / grasp frame,
with real rclpy (in-process nodes, tiny preset). Where the test needs a known fused map (two copies of
an object, an elongated part) the node runs visual-only and the visual similarity map is constructed
(`constructed_visual_map` in conftest); the rest of the node's and the pipeline's path is the real one."""

from __future__ import annotations

import math

import numpy as np
import pytest
from geometry_msgs.msg import PoseStamped
from rclpy.parameter import Parameter
from sensor_msgs.msg import Image, PointCloud2, RegionOfInterest

from pop_ros.clients.ros_client import LIBRARY
from pop_ros.messages.image_conversion import from_array
from pop_ros_interfaces.msg import PartPointResult
from pop_ros_interfaces.srv import PointToPart, PointToParts
from test.conftest import colour_msg, scene, wait_for
from test.test_camera_model import camera_info
from test.test_node_geometry import ask, depth_ramp, to_msg, z_axis

INFO = camera_info(320, 240, [300.0, 0, 159.5, 0, 300.0, 119.5, 0, 0, 1])  # the 320x240 sample scenes
COPY_A, COPY_B = (2, 2), (3, 10)  # patches of the visual grid holding the two "copies"


@pytest.fixture
def start(inprocess):
    def run(namespace, *overrides):
        ros, node, _ = inprocess(namespace, f"support_library:={LIBRARY}", "image_reliability:=reliable", *overrides)
        assert node.pointer is not None, node.configure_error
        return ros, node

    return run


def point_request(stamp=None, **fields) -> PointToPart.Request:
    request = PointToPart.Request(query="handle of the mug", support_set="mug_handle", **fields)
    request.image = colour_msg(stamp, "regions_frame")
    return request


def patch_of(u, v, grid) -> tuple[int, int]:
    return int((v + 0.5) * grid[0] / 240), int((u + 0.5) * grid[1] / 320)


def roi_around(patch, grid, margin=2) -> RegionOfInterest:
    width, height = 320 / grid[1], 240 / grid[0]
    return RegionOfInterest(
        x_offset=int(patch[1] * width) - margin,
        y_offset=int(patch[0] * height) - margin,
        width=int(width) + 2 * margin,
        height=int(height) + 2 * margin,
    )


def test_two_copies_two_instances_roi_and_the_single_answer(start, constructed_visual_map):
    ros, node = start("instances", "use_text:=false")
    grid = constructed_visual_map({COPY_A: 1.0, COPY_B: 0.8})
    service = "/instances/pop_node/point_to_part"
    stamp = ros.now_stamp()
    single = ros.call(PointToPart, service, point_request(stamp, max_instances=0))
    assert single.success, single.message
    many = ros.call(PointToPart, service, point_request(stamp, max_instances=4))
    assert many.success, many.message
    # Single-answer fields are the same whatever max_instances is, and repeated as instances[0].
    for response in (single, many):
        first = response.instances[0]
        assert (first.u, first.v, first.score, first.instance) == (single.u, single.v, single.score, 0)
        assert (response.u, response.v, response.score) == (single.u, single.v, single.score)
    assert len(single.instances) == 1
    assert [patch_of(i.u, i.v, grid["shape"]) for i in many.instances] == [COPY_A, COPY_B]
    assert [i.score for i in many.instances] == pytest.approx([1.0, 0.8])  # ordered by score
    assert [i.instance for i in many.instances] == [0, 1]
    # An ROI around either copy returns that copy.
    for patch, score in ((COPY_A, 1.0), (COPY_B, 0.8)):
        boxed = ros.call(PointToPart, service, point_request(stamp, roi=roi_around(patch, grid["shape"])))
        assert boxed.success and patch_of(boxed.u, boxed.v, grid["shape"]) == patch, boxed.message
        assert boxed.score == pytest.approx(score)
    # Bad ROIs are refused with the reason, on both services.
    for roi, reason in (
        (RegionOfInterest(x_offset=5, y_offset=5, width=0, height=10), "zero area"),
        (RegionOfInterest(x_offset=500, y_offset=5, width=10, height=10), "outside the 320x240 image"),
    ):
        refused = ros.call(PointToPart, service, point_request(stamp, roi=roi))
        assert not refused.success and reason in refused.message
        parts = PointToParts.Request(queries=["handle"], support_sets=["mug_handle"], roi=roi)
        parts.image = colour_msg(stamp, "regions_frame")
        answered = ros.call(PointToParts, "/instances/pop_node/point_to_parts", parts)
        assert not answered.results[0].success and reason in answered.results[0].message
    # ~/point_to_parts: flat instances with query_index / instance.
    parts = PointToParts.Request(queries=["handle", "cup"], support_sets=["mug_handle", "mug_handle"], max_instances=2)
    parts.image = colour_msg(stamp, "regions_frame")
    answered = ros.call(PointToParts, "/instances/pop_node/point_to_parts", parts)
    assert answered.success, answered.message
    assert [(i.query_index, i.instance) for i in answered.instances] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert [r.u for r in answered.results] == [answered.instances[0].u, answered.instances[2].u]


def test_depth_and_camera_info_in_the_request_give_the_streamed_point(start):
    ros, node = start("reqdepth")
    service = "/reqdepth/pop_node/point_to_part"
    depth = depth_ramp(240, 320)
    info = to_msg(INFO, "regions_frame")
    stamp = ros.now_stamp()
    request = point_request(stamp)
    request.depth = from_array(depth, "32FC1")
    request.camera_info = info
    assert node.camera.camera_info is None  # no streams at all
    carried = ros.call(PointToPart, service, request)
    assert carried.success and carried.has_3d and carried.has_pose, carried.message
    streamed, _ = ask(ros, node, "reqdepth", to_msg(INFO, "regions_frame"), depth, scene(0))
    assert streamed.success and streamed.has_3d, streamed.message
    assert (streamed.u, streamed.v) == (carried.u, carried.v)
    assert [streamed.point.point.x, streamed.point.point.y, streamed.point.point.z] == [
        carried.point.point.x,
        carried.point.point.y,
        carried.point.point.z,
    ]
    # A stamp-0 request image still gets its 3D point from the depth it carries (no pairing by time).
    request.image.header.stamp.sec, request.image.header.stamp.nanosec = 0, 0
    unstamped = ros.call(PointToPart, service, request)
    assert unstamped.has_3d and unstamped.point.point.z == carried.point.point.z
    # One without the other is refused with the reason.
    only_depth = point_request(stamp)
    only_depth.depth = from_array(depth, "32FC1")
    refused = ros.call(PointToPart, service, only_depth)
    assert not refused.success and "has depth but no camera_info" in refused.message
    only_info = point_request(stamp)
    only_info.camera_info = info
    refused = ros.call(PointToPart, service, only_info)
    assert not refused.success and "has camera_info but no depth" in refused.message


def angle_to_axis_degrees(vector, axis) -> float:
    """Angle between two lines (sign ignored)."""
    vector, axis = np.asarray(vector, float), np.asarray(axis, float)
    cosine = abs(vector @ axis) / (np.linalg.norm(vector) * np.linalg.norm(axis))
    return math.degrees(math.acos(min(1.0, cosine)))


def x_axis(q) -> np.ndarray:
    x, y, z, w = q.x, q.y, q.z, q.w
    return np.array([1 - 2 * (y * y + z * z), 2 * (x * y + z * w), 2 * (x * z - y * w)])


def test_mask_cloud_and_grasp_published_with_the_source_header_and_nothing_when_rejected(start, constructed_visual_map):
    ros, node = start("partout", "use_text:=false")
    # An elongated part: a horizontal bar of six patches (its narrow axis is the image's v, camera y).
    constructed_visual_map({(6, col): 1.0 for col in range(6, 12)})
    masks = ros.collect(Image, "/partout/pop_node/part_mask")
    clouds = ros.collect(PointCloud2, "/partout/pop_node/part_cloud")
    grasps = ros.collect(PoseStamped, "/partout/pop_node/grasp")
    results = ros.collect(PartPointResult, "/partout/pop_node/result")
    flat = np.full((240, 320), 1.0, np.float32)  # a plane facing the camera at 1 m
    response, stamp = ask(ros, node, "partout", to_msg(INFO, "part_frame"), flat, scene(0))
    assert response.success and response.has_pose and response.has_grasp, response.message
    assert angle_to_axis_degrees(x_axis(response.grasp.pose.orientation), [0, 1, 0]) < 5.0  # closing across
    assert angle_to_axis_degrees(z_axis(response.grasp.pose.orientation), [0, 0, 1]) < 1.0  # into the plane
    assert 0 < response.grasp_width_m < response.part_length_m
    assert wait_for(lambda: masks and clouds and grasps, 5)
    mask, cloud, grasp_pose = masks[-1], clouds[-1], grasps[-1]
    for message in (mask, cloud, grasp_pose):
        assert message.header.stamp == stamp and message.header.frame_id == "part_frame"
    mask_array = np.frombuffer(bytes(mask.data), np.uint8).reshape(mask.height, mask.step)[:, : mask.width]
    assert mask.encoding == "mono8" and mask_array.shape == (240, 320)
    assert mask_array[round(response.v), round(response.u)] == 255 and set(np.unique(mask_array)) == {0, 255}
    assert [f.name for f in cloud.fields] == ["x", "y", "z", "intensity"] and cloud.point_step == 16
    points = np.frombuffer(bytes(cloud.data), dtype=np.float32).reshape(-1, 4)
    assert len(points) == int((mask_array > 0).sum())  # every mask pixel has depth on the plane
    np.testing.assert_allclose(points[:, 2], 1.0, atol=1e-6)  # on the surface
    # Rejected: nothing on the three topics for its stamp (the next accepted answer's arrive after it).
    node.set_parameters([Parameter("min_score", value=2.0)])
    rejected, rejected_stamp = ask(ros, node, "partout", to_msg(INFO, "part_frame"), flat, scene(0))
    assert not rejected.success and not rejected.has_grasp
    asked = point_request(rejected_stamp, return_region=True)  # even when asked for: no region when rejected
    asked.image.header.frame_id = "part_frame"  # depth and camera_info are of the image's camera
    asked.depth, asked.camera_info = from_array(flat, "32FC1"), to_msg(INFO, "part_frame")
    rejected_with_region = ros.call(PointToPart, "/partout/pop_node/point_to_part", asked)
    assert not rejected_with_region.success and "part not visible" in rejected_with_region.message
    assert not rejected_with_region.part_mask.data and not rejected_with_region.part_cloud.data
    node.set_parameters([Parameter("min_score", value=0.0)])
    accepted, accepted_stamp = ask(ros, node, "partout", to_msg(INFO, "part_frame"), flat, scene(0))
    assert wait_for(lambda: any(m.header.stamp == accepted_stamp for m in grasps), 5)
    assert wait_for(lambda: any(m.header.stamp == accepted_stamp for m in clouds), 5)
    assert wait_for(lambda: any(m.header.stamp == accepted_stamp for m in masks), 5)
    for topic in (masks, clouds, grasps):
        assert not any(m.header.stamp == rejected_stamp for m in topic)
    assert any(r.header.stamp == rejected_stamp and not r.success for r in results)
    # return_region: the response carries the mask and cloud (off by default: empty above).
    assert not accepted.part_mask.data and not accepted.part_cloud.data
    request = point_request(stamp, return_region=True)
    request.image.header.frame_id = "part_frame"
    request.depth, request.camera_info = from_array(flat, "32FC1"), to_msg(INFO, "part_frame")
    with_region = ros.call(PointToPart, "/partout/pop_node/point_to_part", request)
    assert with_region.part_mask.height == 240 and with_region.part_cloud.width == len(points)
    assert with_region.instances[0].part_cloud.width == len(points)


def test_gripper_limit_and_tool_offset_are_honoured_and_checked_at_runtime(start, constructed_visual_map):
    """grasp_tool_offset_m moves ~/grasp's origin along its z (here -5 cm: back out towards the camera);
    gripper_max_width_m below the part's width gives no grasp frame, with the reason."""
    ros, node = start("gripper", "use_text:=false", "grasp_tool_offset_m:=-0.05")
    constructed_visual_map({(6, col): 1.0 for col in range(6, 12)})  # a horizontal bar, as above
    grasps = ros.collect(PoseStamped, "/gripper/pop_node/grasp")
    flat = np.full((240, 320), 1.0, np.float32)  # a plane facing the camera at 1 m
    response, stamp = ask(ros, node, "gripper", to_msg(INFO, "part_frame"), flat, scene(0))
    assert response.success and response.has_grasp, response.message
    point, position = response.point.point, response.grasp.pose.position
    np.testing.assert_allclose([position.x, position.y, position.z], [point.x, point.y, 0.95], atol=1e-9)
    assert wait_for(lambda: any(g.header.stamp == stamp for g in grasps), 5)
    published = next(g for g in grasps if g.header.stamp == stamp).pose.position
    assert (published.x, published.y, published.z) == (position.x, position.y, position.z)

    limit = round(float(response.grasp_width_m) / 2, 4)
    assert node.set_parameters([Parameter("gripper_max_width_m", value=limit)])[0].successful
    narrow, _ = ask(ros, node, "gripper", to_msg(INFO, "part_frame"), flat, scene(0))
    assert narrow.success and narrow.has_3d and not narrow.has_grasp
    assert f"more than the gripper opens (gripper_max_width_m {limit} m)" in narrow.message
    for name, value, reason in (
        ("gripper_max_width_m", -0.1, "gripper_max_width_m must be >= 0.0"),
        ("grasp_tool_offset_m", 5.0, "grasp_tool_offset_m must be <= 2.0"),
    ):
        result = node.set_parameters([Parameter(name, value=value)])[0]
        assert not result.successful and reason in result.reason


def test_min_score_is_checked_per_instance(start, constructed_visual_map):
    # Two copies of match 1.0 and 0.4 (the second holds 0.4 of the best: kept with
    # instance_min_relative 0.3); min_score 0.6 lies between them: the answer stands, the weak copy is
    # rejected on its own score.
    ros, node = start("per_instance", "use_text:=false", "min_score:=0.6", "instance_min_relative:=0.3")
    constructed_visual_map({COPY_A: 1.0, COPY_B: 0.4})
    request = point_request(ros.now_stamp(), max_instances=3)
    response = ros.call(PointToPart, "/per_instance/pop_node/point_to_part", request)
    assert response.success, response.message
    assert [round(i.score, 3) for i in response.instances] == [1.0, 0.4]
    best, weak = response.instances
    assert best.success and response.score == pytest.approx(1.0)
    assert not weak.success
    assert weak.message.startswith("part not visible: score 0.400 < min_score 0.6"), weak.message
