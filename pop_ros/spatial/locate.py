"""From an answer's pixel to its 3D point and approach pose, without ROS: the node (ros/queries.py)
and pop-bag (bag_answers.py) both locate through here, so they compute the same thing.

Input is the query's `capture.Capture`: its colour frame with the depth paired to it by stamp and
the camera_info (anything shaped like sensor_msgs/Image and CameraInfo, REP-118 depth encodings),
fixed when the query got the models. Depth that does not fit the colour image (size or aspect
against camera_info, frame_ids) is found once, by `depth_misfit`, before any use. Every failure is
a note, never an exception, worded exactly as the node words it."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np

from pop_ros.messages.capture import Capture
from pop_ros.messages.image_conversion import ImageConversionError, to_depth_m
from pop_ros.spatial import geometry, grasp
from pop_ros.spatial.camera_model import CameraModel, CameraModelError


@dataclasses.dataclass(frozen=True)
class LocateSettings:
    """The node parameters `locate_capture` reads (same names; defaults and checks in ros/parameters.py)."""

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
    misfit: str = ""  # why the depth does not fit the colour image (depth_misfit); "" when it does

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


def locate_capture(
    capture: Capture,
    u: float,
    v: float,
    image_size: tuple[int, int],
    settings: LocateSettings,
    camera_info_topic: str = "camera_info",
) -> Placement:
    """The 3D point and approach pose of colour pixel (u, v) of the capture's image (`image_size (H,
    W)`), from the depth and camera_info the capture holds."""
    if capture.camera_info is None:
        return Placement(None, [f"no 3D point: no camera_info received on {camera_info_topic}"])
    if capture.depth is None:
        return Placement(None, [capture.depth_note or "no 3D point: no depth"], False)
    return locate_in_depth(capture.camera_info, capture.depth, u, v, image_size, settings, capture.header.frame_id)


def depth_misfit(
    image_size: tuple[int, int], colour_frame_id: str, depth_msg, camera_info, depth_size: tuple[int, int]
) -> str:
    """Why this depth image (of `depth_size (H, W)`, decoded) and camera_info cannot be used with a
    colour image of `image_size (H, W)` in frame `colour_frame_id`, or "": their frame_ids differ (an
    empty one is not compared), or the colour or the depth image is neither camera_info's size nor an
    exact resize of it (an unaligned depth topic beside the colour one). Checked once, before the depth
    is used, so a misfit is a 2D answer with this reason, never an error further on (the part's cloud)."""
    named = {  # tf2 ignores a leading slash
        "colour": colour_frame_id,
        "depth": getattr(getattr(depth_msg, "header", None), "frame_id", ""),
        "camera_info": getattr(getattr(camera_info, "header", None), "frame_id", ""),
    }
    given = {what: frame_id.lstrip("/") for what, frame_id in named.items() if frame_id.lstrip("/")}
    if len(set(given.values())) > 1:
        listed = ", ".join(f"{what} {frame_id!r}" for what, frame_id in given.items())
        return (
            f"depth does not fit the colour image: frame_ids differ ({listed}); depth and camera_info "
            "must be aligned to colour, in the colour camera's frame"
        )
    try:
        model = CameraModel.from_camera_info(camera_info, rectified=True)
    except ValueError:
        return ""  # a malformed camera_info: locate_in_depth names it
    try:
        model.image_scale(image_size)
    except CameraModelError as error:
        return f"camera_info: {error}"
    try:
        model.image_scale((int(depth_size[0]), int(depth_size[1])))
    except CameraModelError as error:
        return (
            f"depth does not fit the colour image: depth {error}; depth must be aligned to colour "
            "(RealSense: aligned_depth_to_color)"
        )
    return ""


def locate_in_depth(
    camera_info, depth_msg, u: float, v: float, image_size: tuple[int, int], settings, colour_frame_id: str = ""
) -> Placement:
    """The 3D point and approach pose of colour pixel (u, v) in this depth image (anything shaped like
    sensor_msgs/Image, aligned to the colour image) and camera_info: the checks (`depth_misfit`
    first) and camera model once its depth is paired (a request that carries its own depth starts here)."""
    try:
        depth_m = to_depth_m(depth_msg)  # decoded first: a compressedDepth message has no size fields
    except ImageConversionError as error:
        return Placement(None, [f"no 3D point: depth image: {error}"], True)
    misfit = depth_misfit(image_size, colour_frame_id, depth_msg, camera_info, depth_m.shape[:2])
    if misfit:
        return Placement(None, [f"no 3D point: {misfit}"], True, misfit=misfit)
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
    return add_grasp(answer, answer.mask, heatmap, placement, settings)


def add_grasp(answer, mask, heatmap, placement: Placement | None, settings, max_points: int = 0) -> list[str]:
    """The part's cloud and grasp frame of `answer` from its region `mask (H, W)` and the placement its
    point came from; `heatmap` weighs the cloud's points (None: all 1, a tracked region). `max_points`
    > 0: the mask is thinned to every n-th row and column first, to about that many pixels (a tracked
    answer's, every frame). Returns the notes on what is missing."""
    if placement is None or placement.depth_m is None or not answer.has_3d:
        return []
    area = int(np.count_nonzero(mask))
    weights = heatmap if heatmap is not None else mask.astype(np.float32)
    if max_points > 0 and area > max_points:
        stride = math.ceil(math.sqrt(area / max_points))
        thinned = np.zeros_like(mask, dtype=bool)
        thinned[::stride, ::stride] = mask[::stride, ::stride]
        mask = thinned
    answer.cloud = grasp.part_cloud(placement.model, placement.depth_m, mask, weights)
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
