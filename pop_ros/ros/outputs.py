"""What the node publishes for an answer: ~/result, ~/point, ~/pose, ~/markers, ~/heatmap, ~/heatmap_raw."""

from __future__ import annotations

import numpy as np
from geometry_msgs.msg import Point, PointStamped, PoseStamped
from sensor_msgs.msg import Image
from visualization_msgs.msg import Marker, MarkerArray

from pop_ros.image_conversion import from_array
from pop_ros.visualize import overlay
from pop_ros_interfaces.msg import PartPointResult


class Outputs:
    def __init__(self, node):
        # Lifecycle publishers: they publish only while the node is active.
        self.point_pub = node.create_lifecycle_publisher(PointStamped, "~/point", 10)
        self.heatmap_pub = node.create_lifecycle_publisher(Image, "~/heatmap", 1)
        self.heatmap_raw_pub = node.create_lifecycle_publisher(Image, "~/heatmap_raw", 1)
        self.result_pub = node.create_lifecycle_publisher(PartPointResult, "~/result", 10)
        self.pose_pub = node.create_lifecycle_publisher(PoseStamped, "~/pose", 10)
        self.markers_pub = node.create_lifecycle_publisher(MarkerArray, "~/markers", 10)

    @staticmethod
    def result_message(answer) -> PartPointResult:
        result = PartPointResult()
        result.header, result.query, result.support_set = answer.header, answer.query, answer.support_set
        result.success, result.message = answer.success, answer.message
        result.u, result.v, result.score, result.has_3d = answer.u, answer.v, answer.score, answer.has_3d
        result.point.x, result.point.y, result.point.z = answer.xyz
        result.total_ms = answer.total_ms
        result.has_pose = answer.has_pose
        result.normal.x, result.normal.y, result.normal.z = answer.normal
        result.fit_rms_m, result.fit_inlier_ratio = answer.fit_rms_m, answer.fit_inlier_ratio
        return result

    @staticmethod
    def pose_message(answer) -> PoseStamped:
        """The approach pose: at the point, z axis along the surface normal (towards the camera);
        a gripper approaches along -z."""
        pose = PoseStamped()
        pose.header = answer.header
        pose.pose.position.x, pose.pose.position.y, pose.pose.position.z = answer.xyz
        orientation = pose.pose.orientation
        orientation.x, orientation.y, orientation.z, orientation.w = answer.orientation
        return pose

    @classmethod
    def fill_pose(cls, response, answer) -> None:
        """The pose fields of a PointToPart response."""
        response.has_pose = answer.has_pose
        response.pose = cls.pose_message(answer)
        response.normal.x, response.normal.y, response.normal.z = answer.normal
        response.fit_rms_m, response.fit_inlier_ratio = answer.fit_rms_m, answer.fit_inlier_ratio

    @staticmethod
    def markers_message(answers) -> MarkerArray:
        """RViz markers for the answers of one query or one ~/point_to_parts call: one DELETEALL first
        (they replace the last ones; answers that are rejected or have no 3D point leave nothing),
        then for each answer with a 3D point a sphere at it, an arrow along the approach (from 10 cm
        out along the normal to the point) and a label with query and score. Answer i's markers have
        ids 3i, 3i+1, 3i+2 in namespace "pop": each part's stay visible beside the others'."""
        answers = list(answers)
        clear = Marker(action=Marker.DELETEALL)
        if answers:
            clear.header = answers[0].header
        markers = MarkerArray(markers=[clear])
        for index, answer in enumerate(answers):
            if answer.success and answer.has_3d:
                markers.markers.extend(_answer_markers(answer, first_id=3 * index))
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
        `markers` False: the caller publishes the markers of several answers at once (publish_markers)."""
        self.result_pub.publish(self.result_message(answer))
        if answer.success and answer.has_3d:
            point = PointStamped()
            point.header = answer.header
            point.point.x, point.point.y, point.point.z = answer.xyz
            self.point_pub.publish(point)
        if answer.success and answer.has_pose:
            self.pose_pub.publish(self.pose_message(answer))
        if markers:
            self.publish_markers([answer])
        if publish_heatmap and (answer.success or publish_rejected_heatmap):
            self.heatmap_pub.publish(from_array(overlay(image, heatmap, (answer.u, answer.v)), "bgr8", answer.header))
            self.heatmap_raw_pub.publish(from_array(heatmap, "32FC1", answer.header))

    def publish_markers(self, answers) -> None:
        self.markers_pub.publish(self.markers_message(answers))


def _answer_markers(answer, first_id: int) -> list[Marker]:
    """Sphere, approach arrow (with a pose) and label of one answer, ids from `first_id`."""
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
    label.text = f"{answer.query} ({answer.score:.2f})"
    items.append(label)
    return items
