"""Re-measure issue 12's error table: the 3D point at 1 m of the old node code and of the camera
model (pop_ros.spatial.camera_model) against image_geometry.PinholeCameraModel's formulas.

    .venv/bin/python tools/camera_model_errors.py

image_geometry (C++ PinholeCameraModel, reproduced here with OpenCV as it calls it): K and P with
the ROI offset subtracted and divided by the binning; a raw pixel through cv::undistortPoints(K, D,
R, P) with OpenCV's default stopping rule; the ray through P, scaled to z = depth. "exact" is the
same with the undistortion solved to convergence (the forward distortion model inverted by least
squares). The old code: K of camera_info rescaled to the image size, no D, P or ROI. Errors are at
the same ROS pixel (the old code's extra half-pixel bias is reported on its own).
"""

from __future__ import annotations

import sys
import types

import cv2
import numpy as np
from scipy.optimize import least_squares

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))

from pop_ros.spatial.camera_model import CameraModel  # noqa: E402


def info(width, height, k, p=None, d=(), model="plumb_bob", binning=(0, 0), roi=(0, 0, 0, 0)):
    k = np.asarray(k, dtype=np.float64).reshape(3, 3)
    p = np.hstack([k, np.zeros((3, 1))]) if p is None else np.asarray(p, dtype=np.float64).reshape(3, 4)
    return types.SimpleNamespace(
        width=width, height=height, k=k.ravel(), p=p.ravel(), d=np.asarray(d, dtype=np.float64), r=np.eye(3).ravel(),
        distortion_model=model, binning_x=binning[0], binning_y=binning[1],
        roi=types.SimpleNamespace(x_offset=roi[0], y_offset=roi[1], width=roi[2], height=roi[3]),
    )  # fmt: skip


def adjusted(matrix, camera):
    m = np.array(matrix, dtype=np.float64)
    bx, by = max(1, camera.binning_x), max(1, camera.binning_y)
    m[0, 2], m[1, 2] = (m[0, 2] - camera.roi.x_offset) / bx, (m[1, 2] - camera.roi.y_offset) / by
    m[0, 0], m[1, 1] = m[0, 0] / bx, m[1, 1] / by
    return m


def image_geometry_point(camera, u, v, depth, rectified, exact=False):
    k = adjusted(camera.k.reshape(3, 3), camera)
    p = adjusted(camera.p.reshape(3, 4)[:, :3], camera)
    if not rectified and np.any(camera.d):
        if exact:
            distorted = ((u - k[0, 2]) / k[0, 0], (v - k[1, 2]) / k[1, 1])

            def residual(xy):
                projected = cv2.projectPoints(
                    np.array([[xy[0], xy[1], 1.0]]), np.zeros(3), np.zeros(3), np.eye(3), camera.d
                )
                return projected[0].ravel() - distorted

            x, y = least_squares(residual, distorted, xtol=1e-15, ftol=1e-15, gtol=1e-15).x
            u, v = p[0, 0] * x + p[0, 2], p[1, 1] * y + p[1, 2]
        else:  # what PinholeCameraModel::rectifyPoint calls: float32 points, default criteria
            points = np.array([[[u, v]]], np.float32)
            u, v = cv2.undistortPoints(points, k, camera.d, R=np.eye(3), P=p)[0, 0]
    return np.array([(u - p[0, 2]) / p[0, 0] * depth, (v - p[1, 2]) / p[1, 1] * depth, depth])


def old_node_point(camera, u, v, depth, image_size):
    k = camera.k.reshape(3, 3).copy()
    if camera.height and camera.width and (camera.height, camera.width) != tuple(image_size):
        sy, sx = image_size[0] / camera.height, image_size[1] / camera.width
        k[0, 0] *= sx
        k[0, 2] *= sx
        k[1, 1] *= sy
        k[1, 2] *= sy
    return np.array([(u - k[0, 2]) * depth / k[0, 0], (v - k[1, 2]) * depth / k[1, 1], depth])


WIDE_D = [-0.28, 0.07, 0.0005, -0.0003, -0.008]
REALSENSE_K = [615.0, 0, 322.3, 0, 615.4, 241.7, 0, 0, 1]
MILD_K = [610.0, 0, 641.2, 0, 609.1, 362.5, 0, 0, 1]
MILD_P = [[602.8, 0, 639.0, 0], [0, 602.8, 360.4, 0], [0, 0, 1, 0]]
MILD_D = [-0.05, 0.06, 0.0003, -0.0004, -0.02]
WIDE_K = [430.0, 0, 320.4, 0, 431.2, 239.1, 0, 0, 1]
WIDE_P = [[295.5, 0, 318.2, 0], [0, 295.5, 242.1, 0], [0, 0, 1, 0]]
SENSOR_K = [910.0, 0, 645.0, 0, 908.0, 355.0, 0, 0, 1]
SENSOR_P = [[905.0, 0, 640.0, 0], [0, 905.0, 360.0, 0], [0, 0, 1, 0]]
CASES = [
    ("RealSense-style colour, K == P, D = 0", info(640, 480, REALSENSE_K), (480, 640), True),
    ("rectified image, mild lens (K fx 610, P fx 602.8)", info(1280, 720, MILD_K, MILD_P, MILD_D), (720, 1280), True),
    ("rectified image, wide lens (K fx 430, P fx 295.5)", info(640, 480, WIDE_K, WIDE_P, WIDE_D), (480, 640), True),
    ("raw image, wide-lens plumb_bob", info(640, 480, WIDE_K, WIDE_P, WIDE_D), (480, 640), False),
    (
        "camera_info with a ROI (400, 200; 320x240 of 1280x720)",
        info(1280, 720, SENSOR_K, SENSOR_P, roi=(400, 200, 320, 240)),
        (240, 320),
        True,
    ),
    ("binned 2x2 (640x360 of 1280x720)", info(1280, 720, SENSOR_K, SENSOR_P, binning=(2, 2)), (360, 640), True),
]


def pixels(image_size):
    """centre, mid (halfway to each corner) and corner pixels, ROS convention."""
    height, width = image_size
    cx, cy = (width - 1) / 2, (height - 1) / 2
    corners = [(0.0, 0.0), (width - 1.0, 0.0), (0.0, height - 1.0), (width - 1.0, height - 1.0)]
    return {
        "centre": [(cx, cy)],
        "mid": [((cx + x) / 2, (cy + y) / 2) for x, y in corners],
        "corner": corners,
    }


def main() -> None:
    print(
        "| camera | old vs image_geometry (mm at 1 m: centre / mid / corners) | new vs image_geometry | new vs exact |"
    )
    print("|---|---|---|---|")
    for name, camera, image_size, rectified in CASES:
        model = CameraModel.from_camera_info(camera, rectified=rectified)
        columns = {"old": [], "new": [], "exact": []}
        for group in pixels(image_size).values():
            errors = {"old": 0.0, "new": 0.0, "exact": 0.0}
            for u, v in group:
                reference = image_geometry_point(camera, u, v, 1.0, rectified)
                exact = image_geometry_point(camera, u, v, 1.0, rectified, exact=True)
                new = np.array(model.pixel_to_point(u, v, 1.0, image_size))
                old = old_node_point(camera, u, v, 1.0, image_size)
                errors["old"] = max(errors["old"], np.linalg.norm(old - reference) * 1000)
                errors["new"] = max(errors["new"], np.linalg.norm(new - reference) * 1000)
                errors["exact"] = max(errors["exact"], np.linalg.norm(new - exact) * 1000)
            for key in columns:
                columns[key].append(errors[key])
        cells = [" / ".join(f"{e:.3g}" for e in columns[key]) for key in ("old", "new", "exact")]
        print(f"| {name} | {cells[0]} | {cells[1]} | {cells[2]} |")
    fx = 615.0
    print(
        f"\nold half-pixel bias (edge-origin u deprojected with K) at 1 m, fx {fx}: {0.5 / fx * 1000:.3f} mm per axis"
    )


if __name__ == "__main__":
    main()
