"""The part for grasp planners: its region in the image, its points in 3D, and a grasp frame.

From an accepted answer's fused map at image size (the heatmap) and the aligned depth: the part's
mask (the connected region around the answer pixel above a share of its value), its cloud (the
mask's valid depth pixels deprojected through the same camera model as the point, flying pixels and
depth outliers removed), and a grasp frame for a parallel gripper (z: the approach, into the
surface; x: the closing direction across the part's narrow axis; y = z x x along the part).

Pixels are ROS/OpenCV pixel coordinates (the centre of the top-left pixel is (0, 0)). Numpy, OpenCV.
"""

from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np

from pop_ros.spatial.geometry import rotation_to_quaternion

# A depth pixel whose depth differs from a valid 4-neighbour's by more than this share of its own
# depth (plus 5 mm) sits on a depth edge: stereo and ToF cameras interpolate such "flying pixels"
# between foreground and background, so they belong to neither.
FLYING_PIXEL_RELATIVE_JUMP = 0.03
FLYING_PIXEL_ABSOLUTE_JUMP_M = 0.005
# Depth outliers: farther than this many robust standard deviations (1.4826 x MAD) from the
# region's median depth, and never closer than the floor (a part's own depth relief, e.g. a handle).
OUTLIER_SIGMAS = 3.0
OUTLIER_FLOOR_M = 0.02
# A grasp frame needs this many cloud points, and an elongated region: the spread along the part's
# long axis must exceed the narrow axis' by this ratio, else the closing direction is undefined.
MIN_GRASP_POINTS = 20
MIN_AXIS_RATIO = 1.3
# Points spread less than this (standard deviation, metres) across the approach in either direction
# have no 2-D extent: a single point repeated or a line, whose closing direction and width are
# undefined. A tenth of a millimetre is below any depth camera's pixel footprint at grasping range.
MIN_SPREAD_M = 1e-4


@dataclasses.dataclass(frozen=True)
class GraspSettings:
    """The node parameters that make the part's region and grasp frame (same names; defaults and checks
    in ros/parameters.py): the node reads them live, pop-bag from its --params-file."""

    part_threshold: float = 0.5  # 0 = no mask, cloud or grasp frame
    gripper_max_width_m: float = 0.0  # a part wider than this gives no grasp frame; 0 = no limit
    grasp_tool_offset_m: float = 0.0  # the grasp frame's origin moved this far along its z (approach)

    @classmethod
    def from_parameters(cls, get) -> GraspSettings:
        """From a parameter getter such as the node's `self.param`."""
        return cls(
            part_threshold=float(get("part_threshold")),
            gripper_max_width_m=float(get("gripper_max_width_m")),
            grasp_tool_offset_m=float(get("grasp_tool_offset_m")),
        )


def part_mask(heatmap: np.ndarray, u: float, v: float, relative_threshold: float) -> np.ndarray:
    """Boolean `(H, W)`: the 8-connected region of `heatmap (H, W)` around pixel (u, v) where the map
    holds at least `relative_threshold` of its value at (u, v). Empty when that value is not positive."""
    if not 0.0 < relative_threshold <= 1.0:
        raise ValueError(f"relative_threshold must be in (0, 1], got {relative_threshold}")
    height, width = heatmap.shape
    row = min(max(int(round(v)), 0), height - 1)
    col = min(max(int(round(u)), 0), width - 1)
    peak = float(heatmap[row, col])
    if not (math.isfinite(peak) and peak > 0):
        return np.zeros((height, width), dtype=bool)
    above = np.nan_to_num(heatmap, nan=0.0) >= relative_threshold * peak
    _, labels = cv2.connectedComponents(above.astype(np.uint8), connectivity=8)
    return labels == labels[row, col]


def _flying_pixels(depth_m: np.ndarray) -> np.ndarray:
    """Boolean `(H_d, W_d)`: valid depth pixels with a jump to a valid 4-neighbour (a depth edge)."""
    valid = np.isfinite(depth_m) & (depth_m > 0)
    depth = np.where(valid, depth_m, np.nan)
    padded = np.pad(depth, 1, mode="constant", constant_values=np.nan)
    centre = padded[1:-1, 1:-1]
    limit = FLYING_PIXEL_RELATIVE_JUMP * centre + FLYING_PIXEL_ABSOLUTE_JUMP_M
    flying = np.zeros(depth.shape, dtype=bool)
    for shifted in (padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]):
        with np.errstate(invalid="ignore"):
            flying |= np.abs(shifted - centre) > limit  # NaN neighbours compare False
    return flying & valid


@dataclasses.dataclass
class PartCloud:
    """The part's points in the optical frame (metres) and the map's value at each."""

    points: np.ndarray  # (N, 3) float32
    intensity: np.ndarray  # (N,) float32, the fused map in [0, 1]
    removed_flying: int = 0
    removed_outliers: int = 0


def part_cloud(model, depth_m: np.ndarray, mask: np.ndarray, heatmap: np.ndarray) -> PartCloud:
    """The valid depth pixels of the region `mask (H, W)` (colour image size), deprojected by `model`
    (a CameraModel; the aligned `depth_m (H_d, W_d)` is an image of the same camera, resized as
    `geometry.depth_pixel` does), without flying pixels and depth outliers."""
    depth_h, depth_w = depth_m.shape
    if mask.shape != (depth_h, depth_w):
        mask = cv2.resize(mask.astype(np.uint8), (depth_w, depth_h), interpolation=cv2.INTER_NEAREST) > 0
        heatmap = cv2.resize(heatmap.astype(np.float32), (depth_w, depth_h), interpolation=cv2.INTER_LINEAR)
    # Only the mask's bounding box and a 1-pixel border (its pixels' 4-neighbours) is looked at: the
    # same cloud, at a fraction of the cost for a small part (continuous tracking does this every frame).
    mask_rows, mask_cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    if not len(mask_rows):
        return PartCloud(np.zeros((0, 3), np.float32), np.zeros(0, np.float32))
    top, left = max(mask_rows[0] - 1, 0), max(mask_cols[0] - 1, 0)
    box = (slice(top, mask_rows[-1] + 2), slice(left, mask_cols[-1] + 2))
    depth_box = depth_m[box]
    valid = mask[box] & np.isfinite(depth_box) & (depth_box > 0)
    flying = valid & _flying_pixels(depth_box)
    kept = valid & ~flying
    rows, cols = np.nonzero(kept)
    depths = depth_box[rows, cols].astype(np.float64)
    rows, cols = rows + top, cols + left
    removed_outliers = 0
    if depths.size:
        median = np.median(depths)
        spread = max(OUTLIER_SIGMAS * 1.4826 * np.median(np.abs(depths - median)), OUTLIER_FLOOR_M)
        inliers = np.abs(depths - median) <= spread
        removed_outliers = int((~inliers).sum())
        rows, cols, depths = rows[inliers], cols[inliers], depths[inliers]
    pixels = np.stack([cols, rows], axis=1).astype(np.float64)
    points = model.pixels_to_points(pixels, depths, (depth_h, depth_w)) if depths.size else np.zeros((0, 3))
    return PartCloud(
        points.astype(np.float32),
        heatmap[rows, cols].astype(np.float32),
        removed_flying=int(flying.sum()),
        removed_outliers=removed_outliers,
    )


@dataclasses.dataclass
class GraspFrame:
    """A parallel gripper's frame at the point, or the reason there is none."""

    ok: bool
    reason: str = ""
    orientation: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 1.0)  # (x, y, z, w)
    approach: tuple[float, float, float] = (0.0, 0.0, 0.0)  # z: unit, into the surface
    closing: tuple[float, float, float] = (0.0, 0.0, 0.0)  # x: unit, across the part's narrow axis
    width_m: float = 0.0  # the part's extent along x (what the gripper must open to)
    length_m: float = 0.0  # the part's extent along y

    def origin(self, point, tool_offset_m: float) -> tuple[float, float, float]:
        """The frame's origin: the answer's 3D `point` moved `tool_offset_m` along z (the approach,
        into the surface; negative = back out towards the camera)."""
        return tuple(float(p + tool_offset_m * a) for p, a in zip(point, self.approach, strict=True))


def _extent(values: np.ndarray) -> float:
    """Robust extent of 1-D samples: the 1st to 99th percentile range."""
    low, high = np.percentile(values, [1.0, 99.0])
    return float(high - low)


def grasp_frame(points: np.ndarray, normal, max_width_m: float = 0.0) -> GraspFrame:
    """The grasp frame of a part cloud `points (N, 3)` whose surface normal at the point is `normal`
    (unit, towards the camera: `~/pose`'s z axis). z = -normal (the gripper approaches into the
    surface); x = the narrow principal axis of the points projected on the plane normal to z (the
    closing direction of a parallel gripper, sign chosen towards the camera's +x); y = z x x.
    `max_width_m` > 0: a part wider than that along x (more than the gripper opens) has no frame."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    points = points[np.all(np.isfinite(points), axis=1)]
    if len(points) < MIN_GRASP_POINTS:
        return GraspFrame(False, f"only {len(points)} part points with depth (a grasp frame needs {MIN_GRASP_POINTS})")
    normal = np.asarray(normal, dtype=np.float64)
    if not (np.all(np.isfinite(normal)) and np.linalg.norm(normal) > 0):
        return GraspFrame(False, "no surface normal at the point")
    approach = -normal / np.linalg.norm(normal)
    # An orthonormal basis (e1, e2) of the plane normal to the approach, then 2-D principal axes.
    helper = np.array([1.0, 0.0, 0.0]) if abs(approach[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    e1 = helper - (helper @ approach) * approach
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(approach, e1)
    centred = points - points.mean(axis=0)
    planar = np.stack([centred @ e1, centred @ e2], axis=1)  # (N, 2)
    eigenvalues, eigenvectors = np.linalg.eigh(np.cov(planar.T))  # ascending
    narrow_2d, long_2d = eigenvectors[:, 0], eigenvectors[:, 1]
    narrow_std, long_std = (math.sqrt(max(float(value), 0.0)) for value in eigenvalues)
    if narrow_std < MIN_SPREAD_M:
        return GraspFrame(
            False,
            f"the part's points have no 2-D spread across the approach (standard deviations {narrow_std * 1000:.3f} "
            f"and {long_std * 1000:.3f} mm): no closing direction",
        )
    ratio = long_std / narrow_std  # standard deviations, not variances
    if ratio < MIN_AXIS_RATIO:
        return GraspFrame(
            False,
            f"the part's region is round (axes ratio {ratio:.2f} < {MIN_AXIS_RATIO}): no closing direction",
        )
    closing = narrow_2d[0] * e1 + narrow_2d[1] * e2
    if closing[0] < 0 or (closing[0] == 0 and closing[1] < 0):
        closing = -closing
    width_m, length_m = _extent(planar @ narrow_2d), _extent(planar @ long_2d)
    if max_width_m > 0 and width_m > max_width_m:
        return GraspFrame(
            False,
            f"the part is {width_m:.3f} m wide, more than the gripper opens (gripper_max_width_m {max_width_m} m)",
            width_m=width_m,
            length_m=length_m,
        )
    along = np.cross(approach, closing)
    rotation = np.stack([closing, along, approach], axis=1)
    return GraspFrame(
        True,
        orientation=rotation_to_quaternion(rotation),
        approach=tuple(float(c) for c in approach),
        closing=tuple(float(c) for c in closing),
        width_m=width_m,
        length_m=length_m,
    )
