"""What the node publishes for an answer: ~/result, ~/point, ~/pose, ~/markers, ~/heatmap, ~/heatmap_raw,
and the part's ~/part_mask, ~/part_cloud and ~/grasp.

In frame order: an answer about a frame older (by stamp) than one already published is not published
(it is still the service's response), so a consumer taking the latest ~/point never acts on an older
frame after a newer one; such drops are counted on /diagnostics. Answers about one frame (the parts of
a ~/point_to_parts call) and unstamped images are always published."""

from __future__ import annotations

import threading

import numpy as np
from geometry_msgs.msg import Point, PointStamped, PoseStamped
from sensor_msgs.msg import Image, PointCloud2, PointField
from std_msgs.msg import ColorRGBA
from visualization_msgs.msg import Marker, MarkerArray

from pop_ros.messages.image_conversion import from_array
from pop_ros.visualize import heatmap_label, overlay
from pop_ros_interfaces.msg import PartPointResult

# Marker ids per instance: sphere, approach arrow, label, grasp axes, part points.
MARKERS_PER_INSTANCE = 5
GRASP_AXIS_M = 0.05  # length of each drawn grasp-frame axis
MAX_MARKER_POINTS = 2000  # the part's points marker is subsampled to about this many


class Outputs:
    def __init__(self, node):
        self.node = node
        # Held while an answer is published, so the order check and the publishing are one step.
        self._publishing = threading.Lock()
        self._newest_stamp: tuple[int, int] | None = None  # of the newest frame published about
        # Lifecycle publishers: they publish only while the node is active.
        self.point_pub = node.create_lifecycle_publisher(PointStamped, "~/point", 10)
        self.heatmap_pub = node.create_lifecycle_publisher(Image, "~/heatmap", 1)
        self.heatmap_raw_pub = node.create_lifecycle_publisher(Image, "~/heatmap_raw", 1)
        self.result_pub = node.create_lifecycle_publisher(PartPointResult, "~/result", 10)
        self.pose_pub = node.create_lifecycle_publisher(PoseStamped, "~/pose", 10)
        self.markers_pub = node.create_lifecycle_publisher(MarkerArray, "~/markers", 10)
        self.part_mask_pub = node.create_lifecycle_publisher(Image, "~/part_mask", 1)
        self.part_cloud_pub = node.create_lifecycle_publisher(PointCloud2, "~/part_cloud", 1)
        self.grasp_pub = node.create_lifecycle_publisher(PoseStamped, "~/grasp", 10)

    @staticmethod
    def result_message(answer, with_region: bool = False) -> PartPointResult:
        """One answer (or instance) as a PartPointResult; `with_region`: with its mask and cloud."""
        result = PartPointResult()
        result.header, result.query, result.support_set = answer.header, answer.query, answer.support_set
        result.success, result.message = answer.success, answer.message
        result.u, result.v, result.score, result.has_3d = answer.u, answer.v, answer.score, answer.has_3d
        result.point.x, result.point.y, result.point.z = answer.xyz
        result.total_ms = answer.total_ms
        result.has_pose = answer.has_pose
        result.normal.x, result.normal.y, result.normal.z = answer.normal
        result.fit_rms_m, result.fit_inlier_ratio = answer.fit_rms_m, answer.fit_inlier_ratio
        result.query_index, result.instance = answer.query_index, answer.instance
        result.has_grasp, result.grasp = answer.has_grasp, Outputs.grasp_message(answer).pose
        result.grasp_width_m, result.part_length_m = answer.grasp_width_m, answer.part_length_m
        result.tracked, result.track_age_s = answer.tracked, answer.track_age_s
        if with_region:
            Outputs.fill_region(result, answer)
        return result

    @staticmethod
    def grasp_message(answer) -> PoseStamped:
        """The grasp frame (z: approach into the surface, x: closing) at the point moved by
        grasp_tool_offset_m along z; identity at the point when there is none."""
        return _pose_at(answer, answer.grasp_orientation, answer.grasp_xyz if answer.has_grasp else None)

    @staticmethod
    def region_messages(answer) -> dict[str, object]:
        """~/part_mask, ~/part_cloud and ~/grasp of an accepted answer, for what it has (topic name
        without `~/` -> message): the node publishes them, pop-bag writes them to its bag."""
        messages: dict[str, object] = {}
        if answer.mask is not None:
            messages["part_mask"] = Outputs.mask_message(answer)
        if answer.cloud is not None:
            messages["part_cloud"] = cloud_message(answer.cloud.points, answer.cloud.intensity, answer.header)
        if answer.has_grasp:
            messages["grasp"] = Outputs.grasp_message(answer)
        return messages

    @staticmethod
    def mask_message(answer) -> Image:
        """The part's mask: mono8, image size, 255 inside, the source header."""
        return from_array(np.asarray(answer.mask, dtype=np.uint8) * 255, "mono8", answer.header)

    @staticmethod
    def fill_region(message, answer) -> None:
        """`part_mask` and `part_cloud` of a response or PartPointResult, when the answer has them."""
        if answer.mask is not None:
            message.part_mask = Outputs.mask_message(answer)
        if answer.cloud is not None:
            message.part_cloud = cloud_message(answer.cloud.points, answer.cloud.intensity, answer.header)

    @staticmethod
    def pose_message(answer) -> PoseStamped:
        """The approach pose: at the point, z axis along the surface normal (towards the camera);
        a gripper approaches along -z."""
        return _pose_at(answer, answer.orientation)

    @classmethod
    def fill_pose(cls, response, answer) -> None:
        """The pose fields of a PointToPart response."""
        response.has_pose = answer.has_pose
        response.pose = cls.pose_message(answer)
        response.normal.x, response.normal.y, response.normal.z = answer.normal
        response.fit_rms_m, response.fit_inlier_ratio = answer.fit_rms_m, answer.fit_inlier_ratio

    @staticmethod
    def markers_message(answers, part_points: bool = True) -> MarkerArray:
        """RViz markers for the answers of one query or one ~/point_to_parts call: one DELETEALL first
        (they replace the last ones; answers that are rejected or have no 3D point leave nothing),
        then for every instance of each answer with a 3D point a sphere at it, an arrow along the
        approach (from 10 cm out along the normal to the point), a label with query and score, the
        grasp frame's axes (x red: closing, y green, z blue: approach) and the part cloud's points.
        Instance n (counted over all answers) has ids MARKERS_PER_INSTANCE * n + 0..4 in namespace
        "pop": each part's stay visible beside the others'. `part_points` False: without the part
        cloud's points (a tracked answer's, every frame: building them cost 35 ms of a 640x480 frame)."""
        answers = list(answers)
        clear = Marker(action=Marker.DELETEALL)
        if answers:
            clear.header = answers[0].header
        markers = MarkerArray(markers=[clear])
        instances = [item for answer in answers for item in (answer.instances or [answer])]
        for index, answer in enumerate(instances):
            if answer.success and answer.has_3d:
                markers.markers.extend(_answer_markers(answer, MARKERS_PER_INSTANCE * index, part_points))
        return markers

    def publish(
        self,
        answer,
        image: np.ndarray,
        heatmap: np.ndarray,
        publish_heatmap: bool,
        publish_rejected_heatmap=False,
        markers: bool = True,
    ) -> None:
        """~/result always (with its success flag); ~/point only for an accepted answer, so no
        consumer acts on a point the node rejected; the heatmap of a rejected answer on request.
        `markers` False: the caller publishes the markers of several answers at once (publish_markers).
        Nothing when an answer about a newer frame was published already (counted)."""
        with self._publishing:
            if self.in_order(answer.header):
                self._publish(answer, image, heatmap, publish_heatmap, publish_rejected_heatmap, markers)

    def in_order(self, header, count: bool = True) -> bool:
        """Whether an answer about the frame of `header` may be published now: its stamp is not older
        than the newest published (an unstamped one always is); it then becomes the newest. False is
        counted on /diagnostics when `count`."""
        stamp = (int(header.stamp.sec), int(header.stamp.nanosec))
        if stamp == (0, 0):
            return True
        if self._newest_stamp is not None and stamp < self._newest_stamp:
            if count:
                self.node.health.dropped_out_of_order()
            return False
        self._newest_stamp = stamp
        return True

    def forget_order(self) -> None:
        """Start the order afresh (cleanup: the next camera's clock may be behind this one's)."""
        with self._publishing:
            self._newest_stamp = None

    def _publish(self, answer, image, heatmap, publish_heatmap, publish_rejected_heatmap, markers) -> None:
        self.result_pub.publish(self.result_message(answer))
        if answer.success and answer.has_3d:
            point = PointStamped()
            point.header = answer.header
            point.point.x, point.point.y, point.point.z = answer.xyz
            self.point_pub.publish(point)
        if answer.success and answer.has_pose:
            self.pose_pub.publish(self.pose_message(answer))
        if answer.success:
            self.publish_region(answer)
        if markers:
            self.publish_markers([answer], part_points=not answer.tracked)
        if publish_heatmap and (answer.success or publish_rejected_heatmap):
            # One topic for every query: the picture names its query (~/point_to_parts publishes one per part).
            label = heatmap_label(answer.query, answer.support_set)
            picture = overlay(image, heatmap, (answer.u, answer.v), label=label)
            self.heatmap_pub.publish(from_array(picture, "bgr8", answer.header))
            self.heatmap_raw_pub.publish(from_array(heatmap, "32FC1", answer.header))

    def publish_region(self, answer) -> None:
        """~/part_mask, ~/part_cloud and ~/grasp of an accepted answer, for what it has."""
        publishers = {"part_mask": self.part_mask_pub, "part_cloud": self.part_cloud_pub, "grasp": self.grasp_pub}
        for name, message in self.region_messages(answer).items():
            publishers[name].publish(message)

    def publish_markers(self, answers, part_points: bool = True) -> None:
        self.markers_pub.publish(self.markers_message(answers, part_points))

    def publish_markers_in_order(self, answers, header) -> None:
        """The markers of one ~/point_to_parts call, unless an answer about a newer frame was published."""
        with self._publishing:
            if self.in_order(header, count=False):
                self.publish_markers(answers)


def _pose_at(answer, orientation_xyzw, position=None) -> PoseStamped:
    """A pose at `position` (default: the answer's 3D point) with the given orientation (x, y, z, w),
    the answer's header."""
    pose = PoseStamped()
    pose.header = answer.header
    pose.pose.position.x, pose.pose.position.y, pose.pose.position.z = answer.xyz if position is None else position
    orientation = pose.pose.orientation
    orientation.x, orientation.y, orientation.z, orientation.w = orientation_xyzw
    return pose


def _answer_markers(answer, first_id: int, part_points: bool = True) -> list[Marker]:
    """Sphere, approach arrow (with a pose), label, grasp axes (with a grasp frame) and part cloud
    points (with a cloud and `part_points`) of one answer or instance, ids `first_id` + 0..4."""
    x, y, z = answer.xyz

    def marker(marker_id: int, marker_type: int, rgba) -> Marker:
        item = Marker(ns="pop", id=first_id + marker_id, type=marker_type, action=Marker.ADD)
        item.header = answer.header
        item.pose.orientation.w = 1.0
        item.color.r, item.color.g, item.color.b, item.color.a = rgba
        return item

    sphere = marker(0, Marker.SPHERE, (0.1, 0.9, 0.1, 0.9))
    sphere.pose.position.x, sphere.pose.position.y, sphere.pose.position.z = x, y, z
    sphere.scale.x = sphere.scale.y = sphere.scale.z = 0.02
    items = [sphere]
    if answer.has_pose:
        arrow = marker(1, Marker.ARROW, (1.0, 0.5, 0.0, 0.9))
        nx, ny, nz = answer.normal
        arrow.points = [Point(x=x + 0.1 * nx, y=y + 0.1 * ny, z=z + 0.1 * nz), Point(x=x, y=y, z=z)]
        arrow.scale.x, arrow.scale.y, arrow.scale.z = 0.006, 0.014, 0.025  # shaft, head diameters, head length
        items.append(arrow)
    label = marker(2, Marker.TEXT_VIEW_FACING, (1.0, 1.0, 1.0, 1.0))
    label.pose.position.x, label.pose.position.y, label.pose.position.z = x, y - 0.04, z  # above (y is down)
    label.scale.z = 0.025
    label.text = (
        f"{answer.query} ({answer.score:.2f})"
        if not answer.instance
        else (f"{answer.query} #{answer.instance + 1} ({answer.score:.2f})")
    )
    items.append(label)
    if answer.has_grasp:
        axes = marker(3, Marker.LINE_LIST, (1.0, 1.0, 1.0, 1.0))
        axes.scale.x = 0.004  # line width
        gx, gy, gz = answer.grasp_xyz  # the grasp frame's origin (the point moved by grasp_tool_offset_m)
        for axis, rgb in zip(answer.grasp_axes, ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)), strict=True):
            end = Point(x=gx + GRASP_AXIS_M * axis[0], y=gy + GRASP_AXIS_M * axis[1], z=gz + GRASP_AXIS_M * axis[2])
            axes.points += [Point(x=gx, y=gy, z=gz), end]
            axes.colors += [ColorRGBA(r=rgb[0], g=rgb[1], b=rgb[2], a=1.0)] * 2
        items.append(axes)
    if part_points and answer.cloud is not None and len(answer.cloud.points):
        points = marker(4, Marker.POINTS, (0.2, 0.6, 1.0, 0.8))
        points.scale.x = points.scale.y = 0.003
        step = max(1, len(answer.cloud.points) // MAX_MARKER_POINTS)
        points.points = [Point(x=float(p[0]), y=float(p[1]), z=float(p[2])) for p in answer.cloud.points[::step]]
        items.append(points)
    return items


def cloud_message(points: np.ndarray, intensity: np.ndarray, header) -> PointCloud2:
    """sensor_msgs/PointCloud2 of `points (N, 3)` (metres, optical frame) with `intensity (N,)`: fields
    x, y, z, intensity float32, unorganised (height 1). is_dense: true only when every point is finite."""
    data = np.empty(len(points), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("intensity", "<f4")])
    if len(points):
        data["x"], data["y"], data["z"] = (np.asarray(points, dtype=np.float32)[:, i] for i in range(3))
        data["intensity"] = np.asarray(intensity, dtype=np.float32)
    fields = [PointField(name=name, offset=4 * i, datatype=PointField.FLOAT32, count=1) for i, name in enumerate("xyz")]
    fields.append(PointField(name="intensity", offset=12, datatype=PointField.FLOAT32, count=1))
    cloud = PointCloud2(header=header, height=1, width=len(points), fields=fields, is_bigendian=False)
    cloud.point_step, cloud.row_step = 16, 16 * len(points)
    cloud.is_dense = bool(np.all(np.isfinite(np.asarray(points, dtype=np.float32))))
    cloud.data = data.tobytes()
    return cloud
