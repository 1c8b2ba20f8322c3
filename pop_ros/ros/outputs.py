"""What the node publishes for an answer: ~/result, ~/point, ~/heatmap, ~/heatmap_raw."""

from __future__ import annotations

import numpy as np
from geometry_msgs.msg import PointStamped
from sensor_msgs.msg import Image

from pop_ros.image_conversion import from_array
from pop_ros.visualize import overlay
from pop_ros_interfaces.msg import PartPointResult


class Outputs:
    def __init__(self, node):
        self.point_pub = node.create_publisher(PointStamped, "~/point", 10)
        self.heatmap_pub = node.create_publisher(Image, "~/heatmap", 1)
        self.heatmap_raw_pub = node.create_publisher(Image, "~/heatmap_raw", 1)
        self.result_pub = node.create_publisher(PartPointResult, "~/result", 10)

    @staticmethod
    def result_message(answer) -> PartPointResult:
        result = PartPointResult()
        result.header, result.query, result.support_set = answer.header, answer.query, answer.support_set
        result.success, result.message = answer.success, answer.message
        result.u, result.v, result.score, result.has_3d = answer.u, answer.v, answer.score, answer.has_3d
        result.point.x, result.point.y, result.point.z = answer.xyz
        result.total_ms = answer.total_ms
        return result

    def publish(self, answer, image: np.ndarray, heatmap: np.ndarray, publish_heatmap: bool) -> None:
        self.result_pub.publish(self.result_message(answer))
        if answer.has_3d:
            point = PointStamped()
            point.header = answer.header
            point.point.x, point.point.y, point.point.z = answer.xyz
            self.point_pub.publish(point)
        if publish_heatmap:
            self.heatmap_pub.publish(from_array(overlay(image, heatmap, (answer.u, answer.v)), "bgr8", answer.header))
            self.heatmap_raw_pub.publish(from_array(heatmap, "32FC1", answer.header))
