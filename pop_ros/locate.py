"""From an answer's pixel to its 3D point and approach pose, with depth paired by stamp, without ROS:
the node (ros/queries.py) and pop-bag (bag_answers.py) both locate through here, so they compute the
same thing.

Inputs are what the node holds at answer time: the latest camera_info (anything shaped like
sensor_msgs/CameraInfo), a `stamps.StampBuffer` of recent depth images (anything shaped like a
sensor_msgs/Image, REP-118 encodings) and the colour image's stamp. Every failure is a note, never
an exception, worded exactly as the node words it."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np

from pop_ros import geometry, grasp
from pop_ros.camera_model import CameraModel
from pop_ros.image_conversion import ImageConversionError, to_depth_m
from pop_ros.stamps import StampBuffer

# A colour/depth stamp gap larger than this is not a late frame but two different clocks.
IMPOSSIBLE_STAMP_GAP_S = 60.0


def stamp_seconds(stamp) -> float:
    """builtin_interfaces/Time (anything with sec, nanosec) -> seconds."""
    return stamp.sec + stamp.nanosec * 1e-9


@dataclasses.dataclass(frozen=True)
class LocateSettings:
    """The node parameters `locate_pixel` reads (same names; defaults and checks in ros/parameters.py)."""

    depth_max_dt: float
    depth_window: int
    pose_window: int
    pose_inlier_distance: float
    pose_min_inlier_ratio: float
    image_is_rectified: bool

    @classmethod
    def from_parameters(cls, get: Callable[[str], object]) -> LocateSettings:
        """From a parameter getter such as the node's `self.param`."""
        return cls(
            depth_max_dt=float(get("depth_max_dt")),
            depth_window=int(get("depth_window")),
            pose_window=int(get("pose_window")),
            pose_inlier_distance=float(get("pose_inlier_distance")),
            pose_min_inlier_ratio=float(get("pose_min_inlier_ratio")),
            image_is_rectified=bool(get("image_is_rectified")),
        )


@dataclasses.dataclass
class Placement:
    """Where an answer's pixel is: `location` (None when depth or camera_info is missing), the notes
    on what is missing, and whether a depth lookup was made and found a depth (None: no lookup)."""

    location: geometry.Location | None
    notes: list[str]
    depth_paired: bool | None = None
    # The depth (metres) and camera model the point came from, for the part's cloud; None without them.
    depth_m: object = None
    model: CameraModel | None = None

    def apply(self, answer) -> list[str]:
        """Copy the 3D point and pose into `answer` (the node's Answer, or anything with its fields);
        returns the notes."""
        location = self.location
        if location is not None and location.has_3d:
            answer.has_3d, answer.xyz = True, location.xyz
            answer.has_pose, answer.normal = location.has_pose, location.normal
            answer.orientation = location.orientation
            answer.fit_rms_m, answer.fit_inlier_ratio = location.fit_rms_m, location.fit_inlier_ratio
        return list(self.notes)


def locate_pixel(
    camera_info,
    depth_buffer: StampBuffer,
    stamp,
    u: float,
    v: float,
    image_size: tuple[int, int],
    settings: LocateSettings,
    camera_info_topic: str = "camera_info",
) -> Placement:
    """The 3D point and approach pose of colour pixel (u, v) of an image of `image_size (H, W)` taken
    at `stamp`: the depth nearest in stamp within `depth_max_dt`, deprojected with `camera_info`."""
    if camera_info is None:
        return Placement(None, [f"no 3D point: no camera_info received on {camera_info_topic}"])
    if stamp_seconds(stamp) == 0:
        return Placement(
            None, ["no 3D point: the image has stamp 0, so no depth can be paired by time (set header.stamp)"], False
        )
    depth_msg, gap = depth_buffer.nearest(stamp_seconds(stamp), settings.depth_max_dt)
    if depth_msg is None:
        if math.isinf(gap):
            detail = "no depth received"
        elif gap > IMPOSSIBLE_STAMP_GAP_S:
            detail = (
                f"impossible stamp difference: the nearest depth is {gap:.0f} s away, so colour and depth "
                "stamps come from different clocks (check the drivers and use_sim_time)"
            )
        else:
            detail = f"nearest depth is {gap:.3f} s away"
        return Placement(None, [f"no 3D point: {detail} (depth_max_dt {settings.depth_max_dt} s)"], False)
    return locate_in_depth(camera_info, depth_msg, u, v, image_size, settings)


def locate_in_depth(camera_info, depth_msg, u: float, v: float, image_size: tuple[int, int], settings) -> Placement:
    """The 3D point and approach pose of colour pixel (u, v) in this depth image (anything shaped like
    sensor_msgs/Image, aligned to the colour image) and camera_info: the checks and camera model of
    `locate_pixel` once its depth is paired (a request that carries its own depth starts here)."""
    try:
        depth_m = to_depth_m(depth_msg)
    except ImageConversionError as error:
        return Placement(None, [f"no 3D point: depth image: {error}"], True)
    try:
        model = CameraModel.from_camera_info(camera_info, rectified=settings.image_is_rectified)
    except ValueError as error:  # CameraModelError is a ValueError; so is a malformed matrix
        return Placement(None, [f"no 3D point: camera_info: {error}"], True)
    return locate_with(model, depth_m, u, v, image_size, settings)


def locate_with(model: CameraModel, depth_m, u: float, v: float, image_size: tuple[int, int], settings) -> Placement:
    """`locate_in_depth` on a converted depth image `depth_m (H_d, W_d)` and a camera model (several
    instances of one answer share them)."""
    location = geometry.locate(
        model,
        depth_m,
        u,
        v,
        image_size,
        settings.depth_window,
        settings.pose_window,
        settings.pose_inlier_distance,
        settings.pose_min_inlier_ratio,
    )
    if not location.has_3d:
        return Placement(location, [f"no 3D point: {location.why_not_3d}"], True, depth_m, model)
    notes = [] if location.has_pose else [f"no pose: {location.why_no_pose}"]
    return Placement(location, notes, True, depth_m, model)


def score_note(score: float, min_score: float) -> str:
    """The node's rejection of a weak answer ("" when the score is enough)."""
    return f"part not visible: score {score:.3f} < min_score {min_score}" if score < min_score else ""


def add_region(answer, heatmap, placement: Placement | None, settings: grasp.GraspSettings) -> list[str]:
    """The part's mask, cloud and grasp frame of an accepted `answer` (the node's Answer, or anything
    with its fields) from its fused map at image size and the placement its point came from; returns
    the notes on what is missing. The node and pop-bag both build the region here."""
    if settings.part_threshold <= 0 or not answer.success:
        return []
    answer.mask = grasp.part_mask(heatmap, answer.u, answer.v, settings.part_threshold)
    if placement is None or placement.depth_m is None or not answer.has_3d:
        return []
    answer.cloud = grasp.part_cloud(placement.model, placement.depth_m, answer.mask, heatmap)
    if not answer.has_pose:
        return ["no grasp frame: no approach pose"]
    frame = grasp.grasp_frame(answer.cloud.points, answer.normal, settings.gripper_max_width_m)
    if not frame.ok:
        return [f"no grasp frame: {frame.reason}"]
    answer.has_grasp, answer.grasp_orientation = True, frame.orientation
    answer.grasp_xyz = frame.origin(answer.xyz, settings.grasp_tool_offset_m)
    along = tuple(float(c) for c in np.cross(frame.approach, frame.closing))
    answer.grasp_axes = (frame.closing, along, frame.approach)
    answer.grasp_width_m, answer.part_length_m = frame.width_m, frame.length_m
    return []
