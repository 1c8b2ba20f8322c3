"""pop_node's geometry with real rclpy: the camera model, the approach pose, markers and the one
image transport. In-process nodes on the tiny preset (random weights: the point itself is arbitrary;
what is checked is the geometry the node gives for the (u, v) it returns)."""

from __future__ import annotations

import math
import time

import cv2
import numpy as np
import pytest
from geometry_msgs.msg import PoseStamped
from rclpy.parameter import Parameter
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from visualization_msgs.msg import Marker, MarkerArray

from pop_ros.clients.ros_client import LIBRARY
from pop_ros.messages.image_conversion import from_array
from pop_ros.paths import SAMPLE_DIR
from pop_ros_interfaces.msg import PartPointResult
from pop_ros_interfaces.srv import PointToPart
from test.conftest import wait_for
from test.test_camera_model import WIDE_D, camera_info, reference_point
from test.test_surface_fit import angle_degrees

SCENE = cv2.cvtColor(cv2.imread(str(SAMPLE_DIR / "scene_0.png")), cv2.COLOR_BGR2RGB)


@pytest.fixture
def start_node(inprocess):
    """Start PopNode in-process under /<namespace> with the shipped library, a reliable camera,
    overrides and extra ROS arguments (remaps); configured and active."""

    def start(namespace, *overrides, ros_args=()):
        ros, node, _ = inprocess(
            namespace, f"support_library:={LIBRARY}", "image_reliability:=reliable", *overrides, ros_args=ros_args
        )
        assert node.pointer is not None, node.configure_error
        return ros, node

    return start


def to_msg(info_ns, frame_id="geo_optical_frame") -> CameraInfo:
    """The reference's CameraInfo-shaped namespace as a real sensor_msgs/CameraInfo."""
    msg = CameraInfo(width=info_ns.width, height=info_ns.height, distortion_model=info_ns.distortion_model)
    msg.k, msg.p, msg.r, msg.d = list(info_ns.k), list(info_ns.p), list(info_ns.r), [float(c) for c in info_ns.d]
    msg.binning_x, msg.binning_y = info_ns.binning_x, info_ns.binning_y
    msg.roi.x_offset, msg.roi.y_offset = info_ns.roi.x_offset, info_ns.roi.y_offset
    msg.roi.width, msg.roi.height = info_ns.roi.width, info_ns.roi.height
    msg.header.frame_id = frame_id
    return msg


def ask(ros, node, namespace, info_msg, depth, image_rgb, query="handle of the mug", support_set="mug_handle"):
    """camera_info and depth on the node's topics, then a query with `image_rgb` stamped like the
    depth; waits until the node holds exactly these before asking. Returns (response, stamp)."""
    stamp = ros.now_stamp()
    info_msg.header.stamp = stamp
    depth_msg = from_array(depth, "32FC1")
    depth_msg.header.stamp, depth_msg.header.frame_id = stamp, info_msg.header.frame_id
    for _ in range(3):  # a message right after discovery can be lost: publish again until held
        ros.publisher(CameraInfo, f"/{namespace}/camera_info").publish(info_msg)
        ros.publisher(Image, f"/{namespace}/depth").publish(depth_msg)
        if wait_for(
            lambda: (
                node.camera.camera_info is not None
                and node.camera.camera_info.header.stamp == stamp
                and node.camera.depth_near(stamp, 0.0)[0] is not None
            ),
            timeout=5,
        ):
            break
    image = from_array(cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), "bgr8")
    image.header.stamp, image.header.frame_id = stamp, info_msg.header.frame_id
    request = PointToPart.Request(query=query, support_set=support_set, image=image)
    return ros.call(PointToPart, f"/{namespace}/pop_node/point_to_part", request), stamp


def depth_ramp(height, width) -> np.ndarray:
    """A depth image whose every pixel differs (so 'the same pixel' is checkable): 0.8 .. ~1.6 m."""
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    return (0.8 + 0.002 * rows + 0.0007 * cols).astype(np.float32)


def resized(height, width) -> np.ndarray:
    return cv2.resize(SCENE, (width, height), interpolation=cv2.INTER_AREA)


# Cameras for 320x240 target images (scaled from the reference's calibrations).
CASES = {
    "distinct_k_and_p": (
        camera_info(
            320,
            240,
            [305.0, 0, 160.6, 0, 304.5, 121.2, 0, 0, 1],
            p=[[301.4, 0, 159.5, 0], [0, 301.4, 120.2, 0], [0, 0, 1, 0]],
            d=[-0.05, 0.06, 0.0003, -0.0004, -0.02],
        ),
        True,
    ),
    "raw_wide_lens": (
        camera_info(
            320,
            240,
            [215.0, 0, 160.2, 0, 215.6, 119.55, 0, 0, 1],
            p=[[147.75, 0, 159.1, 0], [0, 147.75, 121.05, 0], [0, 0, 1, 0]],
            d=WIDE_D,
        ),
        False,
    ),
    "roi": (
        camera_info(
            1280,
            720,
            [910.0, 0, 645.0, 0, 908.0, 355.0, 0, 0, 1],
            p=[[905.0, 0, 640.0, 0], [0, 905.0, 360.0, 0], [0, 0, 1, 0]],
            roi=(400, 200, 320, 240),
        ),
        True,
    ),
    "binned": (
        camera_info(
            640,
            480,
            [610.0, 0, 322.0, 0, 609.0, 238.0, 0, 0, 1],
            p=[[600.0, 0, 320.0, 0], [0, 600.0, 240.0, 0], [0, 0, 1, 0]],
            binning=(2, 2),
        ),
        True,
    ),
}


def test_point_is_image_geometry_s_for_the_returned_pixel_and_depth(start_node):
    ros, node = start_node("geo", "depth_window:=1")
    depth = depth_ramp(240, 320)
    for name, (info, rectified) in CASES.items():
        node.set_parameters([Parameter("image_is_rectified", value=rectified)])
        response, stamp = ask(ros, node, "geo", to_msg(info), depth, resized(240, 320))
        assert response.success and response.has_3d, f"{name}: {response.message}"
        assert response.header.stamp == stamp
        u, v = float(response.u), float(response.v)
        # Depth at the same pixel: ROS pixel coordinates, the pixel whose centre is nearest.
        z = float(depth[math.floor(v + 0.5), math.floor(u + 0.5)])
        expected = reference_point(info, u, v, z, rectified)
        point = response.point.point
        np.testing.assert_allclose([point.x, point.y, point.z], expected, atol=1e-6, err_msg=name)


def test_an_image_size_camera_info_cannot_describe_gets_no_3d_point(start_node):
    ros, node = start_node("geosize")
    info, _ = CASES["distinct_k_and_p"]
    response, _ = ask(ros, node, "geosize", to_msg(info), depth_ramp(240, 320), resized(200, 320))
    assert response.success and not response.has_3d and not response.has_pose
    assert "no 3D point: camera_info: image is 320x200 but camera_info describes 320x240" in response.message


def tilted_plane(info, normal, distance, height, width) -> np.ndarray:
    k = np.reshape(info.k, (3, 3))
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    rays = np.stack([(cols - k[0, 2]) / k[0, 0], (rows - k[1, 2]) / k[1, 1], np.ones_like(cols)], axis=-1)
    return (distance * normal[2] / (rays @ normal)).astype(np.float32)  # plane n . x = n . (0, 0, distance)


def z_axis(orientation) -> np.ndarray:
    x, y, z, w = orientation.x, orientation.y, orientation.z, orientation.w
    return np.array([2 * (x * z + y * w), 2 * (y * z - x * w), 1 - 2 * (x * x + y * y)])


@pytest.mark.parametrize("tilt_x, tilt_y", [(0.0, 0.0), (30.0, -20.0), (-45.0, 35.0)])
def test_pose_on_tilted_planes_within_one_degree(start_node, tilt_x, tilt_y):
    namespace = f"geopose{abs(int(tilt_x))}"
    ros, node = start_node(namespace)
    poses = ros.collect(PoseStamped, f"/{namespace}/pop_node/pose")
    markers = ros.collect(MarkerArray, f"/{namespace}/pop_node/markers")
    results = ros.collect(PartPointResult, f"/{namespace}/pop_node/result")
    info = camera_info(320, 240, [300.0, 0, 159.5, 0, 300.0, 119.5, 0, 0, 1])
    ax, ay = math.radians(tilt_x), math.radians(tilt_y)
    normal = np.array([math.sin(ay) * math.cos(ax), -math.sin(ax), -math.cos(ay) * math.cos(ax)])  # towards camera
    depth = tilted_plane(info, normal, 1.0, 240, 320)
    response, stamp = ask(ros, node, namespace, to_msg(info), depth, resized(240, 320))
    assert response.success and response.has_3d and response.has_pose, response.message
    assert angle_degrees([response.normal.x, response.normal.y, response.normal.z], normal) < 1.0
    assert angle_degrees(z_axis(response.pose.pose.orientation), normal) < 1.0
    position = response.pose.pose.position
    assert (position.x, position.y, position.z) == (
        response.point.point.x,
        response.point.point.y,
        response.point.point.z,
    )
    assert response.fit_rms_m < 1e-4 and response.fit_inlier_ratio == pytest.approx(1.0)
    assert wait_for(lambda: any(p.header.stamp == stamp for p in poses) and any(m.markers for m in markers), 5)
    pose = next(p for p in poses if p.header.stamp == stamp)
    assert pose.header.frame_id == "geo_optical_frame"
    assert angle_degrees(z_axis(pose.pose.orientation), normal) < 1.0
    array = markers[-1].markers
    assert array[0].action == Marker.DELETEALL
    kinds = {m.type: m for m in array[1:]}
    # The part's points (and its grasp axes when the region is elongated) come beside the answer's own.
    assert {Marker.SPHERE, Marker.ARROW, Marker.TEXT_VIEW_FACING, Marker.POINTS} <= set(kinds)
    assert set(kinds) <= {Marker.SPHERE, Marker.ARROW, Marker.TEXT_VIEW_FACING, Marker.POINTS, Marker.LINE_LIST}
    assert kinds[Marker.TEXT_VIEW_FACING].text.startswith("handle of the mug (")
    start, end = kinds[Marker.ARROW].points  # the approach: from out along the normal to the point
    assert angle_degrees([end.x - start.x, end.y - start.y, end.z - start.z], -normal) < 1.0
    result = next(r for r in results if r.header.stamp == stamp)
    assert result.has_pose and angle_degrees([result.normal.x, result.normal.y, result.normal.z], normal) < 1.0


def test_no_pose_on_clutter_and_rejected_answers_clear_the_markers(start_node):
    ros, node = start_node("geoclutter")
    poses = ros.collect(PoseStamped, "/geoclutter/pop_node/pose")
    markers = ros.collect(MarkerArray, "/geoclutter/pop_node/markers")
    info = camera_info(320, 240, [300.0, 0, 159.5, 0, 300.0, 119.5, 0, 0, 1])
    clutter = np.random.default_rng(0).uniform(0.5, 2.0, (240, 320)).astype(np.float32)
    response, clutter_stamp = ask(ros, node, "geoclutter", to_msg(info), clutter, resized(240, 320))
    assert response.success and response.has_3d and not response.has_pose
    assert "no pose: poor surface fit" in response.message
    node.set_parameters([Parameter("min_score", value=2.0)])  # every answer is now rejected
    response, stamp = ask(ros, node, "geoclutter", to_msg(info), depth_ramp(240, 320), resized(240, 320))
    assert not response.success and "part not visible" in response.message
    assert wait_for(lambda: len(markers) >= 2, 5)
    assert [m.action for m in markers[-1].markers] == [Marker.DELETEALL]
    # Poses arrive in publishing order: once a later accepted answer's pose is here, none came for these.
    node.set_parameters([Parameter("min_score", value=0.0)])
    accepted, accepted_stamp = ask(ros, node, "geoclutter", to_msg(info), depth_ramp(240, 320), resized(240, 320))
    assert accepted.success and accepted.has_pose, accepted.message
    assert wait_for(lambda: any(p.header.stamp == accepted_stamp for p in poses), 10)
    assert not any(p.header.stamp in (stamp, clutter_stamp) for p in poses)


def test_compressed_transport_subscribes_the_topic_derived_from_the_remapped_image(start_node, capfd):
    ros, node = start_node("geocomp", "image_transport:=compressed", ros_args=["-r", "image:=/cam9/image_raw"])
    assert [s.topic_name for s in node.camera.subscriptions] == [
        "/cam9/image_raw/compressed",
        "/geocomp/depth",
        "/geocomp/camera_info",
    ]
    assert (
        "active: listening on /cam9/image_raw/compressed, /geocomp/depth, /geocomp/camera_info"
        in capfd.readouterr().err
    )
    assert node.count_subscribers("/cam9/image_raw") == 0  # one transport: no raw subscription
    first = ros.call(PointToPart, "/geocomp/pop_node/point_to_part", PointToPart.Request(support_set="mug_handle"))
    assert not first.success and "no camera frame received yet on /cam9/image_raw/compressed" in first.message
    ok, png = cv2.imencode(".png", cv2.cvtColor(SCENE, cv2.COLOR_RGB2BGR))
    msg = CompressedImage(format="png", data=png.tobytes())
    msg.header.frame_id = "compressed_frame"
    publisher = ros.publisher(CompressedImage, "/cam9/image_raw/compressed")
    for _ in range(40):
        msg.header.stamp = ros.now_stamp()
        publisher.publish(msg)
        response = ros.call(
            PointToPart, "/geocomp/pop_node/point_to_part", PointToPart.Request(support_set="mug_handle")
        )
        if response.success and response.header.stamp == msg.header.stamp:
            break
        time.sleep(0.1)
    assert response.success and response.header.frame_id == "compressed_frame", response.message


def test_compressed_depth_transport_subscribes_the_remapped_depth_s_compressed_depth_topic(start_node, capfd):
    """depth_transport compressedDepth: depth as image_transport's compressedDepth plugin publishes it
    (32FC1, quantized inverse depth in a PNG) is paired and decoded like raw depth; a malformed one
    gives the answer without a 3D point, saying why."""
    from test.conftest import colour_msg, scene
    from test.test_image_conversion import encode_compressed_depth

    ros, node = start_node(
        "geocdepth", "depth_transport:=compressedDepth", ros_args=["-r", "depth:=/cam8/depth/image_raw"]
    )
    depth_topic = "/cam8/depth/image_raw/compressedDepth"
    assert [s.topic_name for s in node.camera.subscriptions] == [
        "/geocdepth/image",
        depth_topic,
        "/geocdepth/camera_info",
    ]
    assert node.count_subscribers("/cam8/depth/image_raw") == 0  # one depth transport
    info = to_msg(camera_info(320, 240, [300.0, 0, 159.5, 0, 300.0, 119.5, 0, 0, 1]), "cdepth_frame")
    info_publisher, depth_publisher = (
        ros.publisher(CameraInfo, "/geocdepth/camera_info"),
        ros.publisher(CompressedImage, depth_topic),
    )

    def ask_with(depth_msg):
        stamp = ros.now_stamp()
        info.header.stamp = depth_msg.header.stamp = stamp
        depth_msg.header.frame_id = "cdepth_frame"
        for _ in range(3):  # a message right after discovery can be lost: publish again until held
            info_publisher.publish(info)
            depth_publisher.publish(depth_msg)
            if wait_for(lambda: node.camera.depth_near(stamp, 0.0)[0] is not None, timeout=5):
                break
        request = PointToPart.Request(query="handle of the mug", support_set="mug_handle")
        request.image = colour_msg(stamp, "cdepth_frame", scene(0))
        return ros.call(PointToPart, "/geocdepth/pop_node/point_to_part", request)

    response = ask_with(encode_compressed_depth(np.full((240, 320), 1.3, np.float32), "32FC1"))
    assert response.success and response.has_3d and response.has_pose, response.message
    # q = trunc(10100 / 1.3 - 1009) = 6760, decoded 10100 / (6760 + 1009): the plugin's quantization.
    assert response.point.point.z == pytest.approx(10100 / 7769, rel=1e-6)
    assert response.point.point.x == pytest.approx((response.u - 159.5) / 300.0 * 10100 / 7769, rel=1e-5)
    broken = encode_compressed_depth(np.full((240, 320), 1.3, np.float32), "32FC1")
    broken.data = bytes(broken.data)[:100]  # cut short
    response = ask_with(broken)
    assert response.success and not response.has_3d
    assert "no 3D point: depth image: compressedDepth image" in response.message
    assert "is not a readable PNG" in response.message


def test_geometry_parameters_are_validated(start_node):
    ros, node = start_node("geoparams")
    for name, value, reason in [
        ("pose_window", 4, "odd number >= 3"),
        ("pose_window", 1, "odd number >= 3"),
        ("pose_inlier_distance", 0.0, "> 0"),
        ("pose_min_inlier_ratio", 1.5, "<= 1"),
    ]:
        result = node.set_parameters([Parameter(name, value=value)])[0]
        assert not result.successful and reason in result.reason, (name, value, result.reason)
    assert node.set_parameters([Parameter("pose_window", value=0)])[0].successful
    result = node.set_parameters([Parameter("image_transport", value="compressed")])[0]
    assert not result.successful and "read at configure" in result.reason
