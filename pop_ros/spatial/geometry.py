"""From a pixel to a 3D point and an approach pose: robust depth at a pixel, a robust local plane
fit of the depth around it, the pose's orientation.

Pixels are ROS/OpenCV pixel coordinates (the centre of the top-left pixel is (0, 0)). Numpy only."""

from __future__ import annotations

import dataclasses
import math

import numpy as np


def depth_pixel(u: float, v: float, image_size: tuple[int, int], depth_shape: tuple[int, int]) -> tuple[int, int]:
    """(row, col) of the depth pixel at colour pixel (u, v) (ROS convention: pixel centres at integers)
    of an image of `image_size (H, W)`; the depth image `depth_shape (H_d, W_d)` is aligned to it, and a
    different resolution is a resize (u_d = u * W_d / W, the binning convention image_geometry uses)."""
    height, width = image_size
    depth_h, depth_w = depth_shape
    col = int(min(max(math.floor(u * depth_w / width + 0.5), 0), depth_w - 1))
    row = int(min(max(math.floor(v * depth_h / height + 0.5), 0), depth_h - 1))
    return row, col


def depth_window(depth_m: np.ndarray, row: int, col: int, window: int) -> tuple[np.ndarray, np.ndarray]:
    """The valid depths of the `window` x `window` box around depth pixel (row, col), clipped to the
    image: (`pixels (N, 2)` as (u, v) depth-image pixels, `depths (N,)` metres)."""
    half = max(0, window // 2)
    top, left = max(0, row - half), max(0, col - half)
    patch = depth_m[top : row + half + 1, left : col + half + 1]
    rows, cols = np.nonzero(np.isfinite(patch) & (patch > 0))
    pixels = np.stack([cols + left, rows + top], axis=1).astype(np.float64)
    return pixels, patch[rows, cols].astype(np.float64)


def robust_depth(depth_m: np.ndarray, u: float, v: float, image_size: tuple[int, int], window: int) -> float:
    """Median of the valid depths in a `window` x `window` box around colour pixel (u, v).

    `depth_m (H_d, W_d)` metres (NaN or 0 invalid), aligned to the colour image of `image_size (H, W)`;
    see `depth_pixel`. NaN when no valid depth is in the box."""
    row, col = depth_pixel(u, v, image_size, depth_m.shape)
    _, depths = depth_window(depth_m, row, col, window)
    return float(np.median(depths)) if depths.size else math.nan


_MAX_SCORED = 4096


@dataclasses.dataclass
class PlaneFit:
    """A robust plane fit of the depth points around a point."""

    normal: tuple[float, float, float] | None  # unit, optical frame, towards the camera; None = no pose
    rms_m: float  # RMS distance of the inliers to the plane, metres (NaN if no plane was fitted)
    inlier_ratio: float  # inliers / valid depth points in the window (0 if none)
    num_valid: int  # valid depth points in the window
    reason: str = ""  # why there is no pose ("" when there is one)


def fit_plane(
    points: np.ndarray,
    inlier_distance_m: float,
    min_inlier_ratio: float,
    min_points: int = 6,
    hypotheses: int = 200,
    seed: int = 0,
) -> PlaneFit:
    """Plane through `points (N, 3)` (metres, optical frame), robust to outliers.

    MSAC: `hypotheses` planes through random point triples (seeded: the same input gives the same
    answer), the one with the smallest truncated squared distance wins; then a least-squares refit
    (SVD) of its inliers, twice. Inliers lie within `inlier_distance_m` of the plane. No normal
    (with the reason) when fewer than `min_points` points are valid or fewer than
    `min_inlier_ratio` of them fit the plane. The normal points towards the camera (origin)."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    points = points[np.all(np.isfinite(points), axis=1)]
    count = len(points)
    if count < max(3, min_points):
        return PlaneFit(
            None, math.nan, 0.0, count, f"only {count} valid depth pixels around the point (need {max(3, min_points)})"
        )
    rng = np.random.default_rng(seed)
    triples = points[rng.integers(0, count, size=(hypotheses, 3))]  # (I, 3 points, 3)
    normals = np.cross(triples[:, 1] - triples[:, 0], triples[:, 2] - triples[:, 0])  # (I, 3)
    lengths = np.linalg.norm(normals, axis=1)
    usable = lengths > 1e-12
    if not np.any(usable):
        return PlaneFit(None, math.nan, 0.0, count, "the valid depth points around the point are collinear")
    normals = normals[usable] / lengths[usable, None]
    offsets = np.einsum("ij,ij->i", normals, triples[usable, 0])  # plane: n . x = offset
    # Hypotheses are scored on at most _MAX_SCORED points (memory: N x I distances); the refit uses all.
    scored = points if count <= _MAX_SCORED else points[rng.choice(count, _MAX_SCORED, replace=False)]
    cost = np.minimum(np.abs(scored @ normals.T - offsets), inlier_distance_m) ** 2  # (N', I)
    best = int(np.argmin(cost.sum(axis=0)))
    normal = normals[best]
    inliers = np.abs(points @ normal - offsets[best]) <= inlier_distance_m
    centroid = points[inliers].mean(axis=0) if inliers.any() else points.mean(axis=0)
    for _ in range(2):
        if inliers.sum() < 3:
            break
        centroid = points[inliers].mean(axis=0)
        # The plane's normal is the direction of least spread of the inliers.
        normal = np.linalg.svd(points[inliers] - centroid, full_matrices=False)[2][-1]
        inliers = np.abs((points - centroid) @ normal) <= inlier_distance_m
    residuals = (points[inliers] - centroid) @ normal
    rms = float(np.sqrt(np.mean(residuals**2))) if residuals.size else math.nan
    ratio = float(inliers.sum()) / count
    if normal @ centroid > 0:  # the camera is at the origin: face it
        normal = -normal
    if inliers.sum() < 3 or ratio < min_inlier_ratio:
        return PlaneFit(
            None,
            rms,
            ratio,
            count,
            f"poor surface fit: {ratio:.0%} of {count} depth points lie within {inlier_distance_m} m of one plane "
            f"(need {min_inlier_ratio:.0%})",
        )
    return PlaneFit((float(normal[0]), float(normal[1]), float(normal[2])), rms, ratio, count)


def approach_orientation(normal) -> tuple[float, float, float, float]:
    """Quaternion (x, y, z, w) of a frame whose z axis is `normal` (towards the camera) and whose x
    axis is the camera's x axis projected onto the surface (its y axis when x is along the normal)."""
    z_axis = np.asarray(normal, dtype=np.float64)
    z_axis = z_axis / np.linalg.norm(z_axis)
    x_axis = np.array([1.0, 0.0, 0.0]) - z_axis[0] * z_axis
    if np.linalg.norm(x_axis) < 1e-6:
        x_axis = np.array([0.0, 1.0, 0.0]) - z_axis[1] * z_axis
    x_axis /= np.linalg.norm(x_axis)
    y_axis = np.cross(z_axis, x_axis)
    return rotation_to_quaternion(np.stack([x_axis, y_axis, z_axis], axis=1))


def rotation_to_quaternion(rotation: np.ndarray) -> tuple[float, float, float, float]:
    """(x, y, z, w), w >= 0, of a proper 3x3 rotation matrix (largest-component branch, stable)."""
    m = np.asarray(rotation, dtype=np.float64)
    trace = m[0, 0] + m[1, 1] + m[2, 2]
    if trace > 0:
        s = 2.0 * math.sqrt(1.0 + trace)
        q = ((m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s, 0.25 * s)
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = (0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s, (m[2, 1] - m[1, 2]) / s)
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = ((m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s, (m[0, 2] - m[2, 0]) / s)
    else:
        s = 2.0 * math.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = ((m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s, (m[1, 0] - m[0, 1]) / s)
    q = np.array(q)
    q = q / np.linalg.norm(q)
    return tuple(float(c) for c in (q if q[3] >= 0 else -q))


def min_valid_points(window: int) -> int:
    """Valid depth pixels a pose needs: a quarter of the window, and never fewer than 6."""
    return max(6, math.ceil(window * window / 4))


def surface_fit(
    depth_m: np.ndarray,
    model,
    u: float,
    v: float,
    image_size: tuple[int, int],
    window: int,
    inlier_distance_m: float,
    min_inlier_ratio: float,
) -> PlaneFit:
    """The local surface around colour pixel (u, v): the valid depth of the `window` x `window` box
    around it (in the aligned `depth_m (H_d, W_d)`), deprojected with `model` (a CameraModel, which
    treats the depth image as an image of the same camera), robustly fitted by a plane."""
    row, col = depth_pixel(u, v, image_size, depth_m.shape)
    pixels, depths = depth_window(depth_m, row, col, window)
    minimum = min_valid_points(window)
    if len(depths) < minimum:
        return PlaneFit(
            None, math.nan, 0.0, len(depths), f"only {len(depths)} valid depth pixels around the point (need {minimum})"
        )
    points = model.pixels_to_points(pixels, depths, depth_m.shape)
    return fit_plane(points, inlier_distance_m, min_inlier_ratio, minimum)


@dataclasses.dataclass
class Location:
    """Where a pixel is in 3D, and the approach pose there (what the node publishes)."""

    has_3d: bool = False
    xyz: tuple[float, float, float] = (0.0, 0.0, 0.0)  # metres, optical frame
    why_not_3d: str = ""
    has_pose: bool = False
    normal: tuple[float, float, float] = (0.0, 0.0, 0.0)  # unit, towards the camera
    orientation: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 1.0)  # (x, y, z, w): z axis = normal
    fit_rms_m: float = 0.0  # filled whenever a plane was fitted, also when it was too poor for a pose
    fit_inlier_ratio: float = 0.0
    why_no_pose: str = ""


def locate(
    model,
    depth_m: np.ndarray,
    u: float,
    v: float,
    image_size: tuple[int, int],
    depth_window_px: int,
    pose_window_px: int,
    inlier_distance_m: float,
    min_inlier_ratio: float,
) -> Location:
    """Colour pixel (u, v) of an image of `image_size (H, W)` -> its 3D point (median depth of the
    `depth_window_px` box, deprojected by `model`, a CameraModel) and the approach pose (plane fit of
    the `pose_window_px` box; 0 = none). Every failure is a reason, never an exception."""
    from pop_ros.spatial.camera_model import CameraModelError

    try:
        model.image_scale(image_size)  # a size the camera_info cannot describe: no 3D point at all
    except CameraModelError as error:
        return Location(why_not_3d=f"camera_info: {error}")
    depth = robust_depth(depth_m, u, v, image_size, depth_window_px)
    if not math.isfinite(depth):
        return Location(why_not_3d="depth is missing (0 or NaN) around the point")
    try:
        xyz = model.pixel_to_point(u, v, depth, image_size)
    except CameraModelError as error:
        return Location(why_not_3d=f"camera_info: {error}")
    location = Location(has_3d=True, xyz=xyz)
    if pose_window_px <= 0:
        location.why_no_pose = "pose_window is 0"
        return location
    try:
        fit = surface_fit(depth_m, model, u, v, image_size, pose_window_px, inlier_distance_m, min_inlier_ratio)
    except CameraModelError as error:  # the depth image's own size does not fit camera_info
        location.why_no_pose = f"depth image: {error}"
        return location
    location.fit_rms_m = fit.rms_m if math.isfinite(fit.rms_m) else 0.0
    location.fit_inlier_ratio = fit.inlier_ratio
    if fit.normal is None:
        location.why_no_pose = fit.reason
        return location
    location.has_pose, location.normal = True, fit.normal
    location.orientation = approach_orientation(fit.normal)
    return location
