"""From a pixel to a 3D point: robust depth at a pixel, deprojection, depth/colour stamp pairing."""

from __future__ import annotations

import collections
import math
import threading

import numpy as np


def robust_depth(depth_m: np.ndarray, u: float, v: float, image_size: tuple[int, int], window: int) -> float:
    """Median of the valid depths in a `window` x `window` box around colour pixel (u, v).

    `depth_m (H_d, W_d)` metres (NaN invalid), aligned to the colour image of `image_size (H, W)`;
    if the resolutions differ the pixel is scaled. NaN when no valid depth is in the box."""
    height, width = image_size
    depth_h, depth_w = depth_m.shape
    col = int(min(max(u * depth_w / width, 0), depth_w - 1))
    row = int(min(max(v * depth_h / height, 0), depth_h - 1))
    half = max(0, window // 2)
    patch = depth_m[max(0, row - half) : row + half + 1, max(0, col - half) : col + half + 1]
    valid = patch[np.isfinite(patch)]
    return float(np.median(valid)) if valid.size else math.nan


def deproject(u: float, v: float, depth: float, k: np.ndarray) -> tuple[float, float, float]:
    """Pixel (u, v) at `depth` metres -> (x, y, z) in the optical frame (REP-103: x right, y down,
    z forward), with the 3x3 intrinsics `k` (CameraInfo.k, row-major)."""
    k = np.asarray(k, dtype=np.float64).reshape(3, 3)
    fx, fy, cx, cy = k[0, 0], k[1, 1], k[0, 2], k[1, 2]
    if not (fx > 0 and fy > 0):  # also catches NaN
        raise ValueError(f"camera intrinsics have non-positive focal lengths (fx={fx}, fy={fy})")
    if not np.isfinite([fx, fy, cx, cy]).all():
        raise ValueError(f"camera intrinsics are not finite (fx={fx}, fy={fy}, cx={cx}, cy={cy})")
    xyz = ((u - cx) * depth / fx, (v - cy) * depth / fy, depth)
    if not all(math.isfinite(c) for c in xyz):
        raise ValueError(f"camera intrinsics give no finite point (fx={fx}, fy={fy}, cx={cx}, cy={cy})")
    return xyz


def scale_intrinsics(k: np.ndarray, from_size: tuple[int, int], to_size: tuple[int, int]) -> np.ndarray:
    """Intrinsics of a camera_info for `from_size (H, W)` rescaled to an image of `to_size (H, W)`."""
    if min(from_size) <= 0 or min(to_size) <= 0:
        raise ValueError(f"image sizes must be positive to scale intrinsics, got {from_size} -> {to_size}")
    k = np.asarray(k, dtype=np.float64).reshape(3, 3).copy()
    sy, sx = to_size[0] / from_size[0], to_size[1] / from_size[1]
    k[0, 0] *= sx
    k[0, 2] *= sx
    k[1, 1] *= sy
    k[1, 2] *= sy
    return k


class StampBuffer:
    """The last few messages of a stream, looked up by nearest stamp (approximate time pairing)."""

    def __init__(self, capacity: int = 15):
        self._items: collections.deque = collections.deque(maxlen=capacity)
        self._lock = threading.Lock()

    def add(self, stamp_s: float, item) -> None:
        with self._lock:
            self._items.append((stamp_s, item))

    def nearest(self, stamp_s: float, tolerance_s: float):
        """(item, |dt|) of the message closest to `stamp_s`, or (None, best |dt| or inf)."""
        with self._lock:
            items = list(self._items)
        if not items:
            return None, math.inf
        best_stamp, best_item = min(items, key=lambda entry: abs(entry[0] - stamp_s))
        gap = abs(best_stamp - stamp_s)
        return (best_item, gap) if gap <= tolerance_s else (None, gap)
