"""The camera model against an independent implementation of image_geometry's formulas.

The reference below is written from image_geometry's PinholeCameraModel (fromCameraInfo's ROI and
binning adjustment, rectifyPoint, projectPixelTo3dRay) and OpenCV's documented distortion models,
without OpenCV: the raw pixel is undistorted by solving the forward distortion model numerically
(scipy least squares), so the two sides share no code.
"""

from __future__ import annotations

import math
import types

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import least_squares

from pop_ros.spatial import geometry
from pop_ros.spatial.camera_model import CameraModel, CameraModelError


# ---- the reference ---------------------------------------------------------------------------------
def camera_info(width, height, k, p=None, d=(), model="plumb_bob", r=None, binning=(0, 0), roi=(0, 0, 0, 0)):
    """A CameraInfo-shaped object (the model takes any object with CameraInfo's fields)."""
    k = np.asarray(k, dtype=np.float64).reshape(3, 3)
    if p is None:
        p = np.hstack([k, np.zeros((3, 1))])
    return types.SimpleNamespace(
        width=width,
        height=height,
        k=list(k.ravel()),
        p=list(np.asarray(p, dtype=np.float64).ravel()),
        d=list(d),
        r=list(np.eye(3).ravel() if r is None else np.asarray(r).ravel()),
        distortion_model=model,
        binning_x=binning[0],
        binning_y=binning[1],
        roi=types.SimpleNamespace(x_offset=roi[0], y_offset=roi[1], width=roi[2], height=roi[3]),
    )


def reference_adjusted(matrix, info):
    """image_geometry fromCameraInfo: principal point minus the ROI offset, then / binning."""
    m = np.array(matrix, dtype=np.float64)
    bx, by = max(1, info.binning_x), max(1, info.binning_y)
    m[0, 0] /= bx
    m[1, 1] /= by
    m[0, 2] = (m[0, 2] - info.roi.x_offset) / bx
    m[1, 2] = (m[1, 2] - info.roi.y_offset) / by
    return m


def reference_distort(x, y, model, d):
    """OpenCV's forward distortion of normalized coordinates (x, y)."""
    d = list(d)
    if model == "equidistant":
        k1, k2, k3, k4 = d
        r = math.hypot(x, y)
        if r < 1e-15:
            return x, y
        theta = math.atan(r)
        theta_d = theta * (1 + k1 * theta**2 + k2 * theta**4 + k3 * theta**6 + k4 * theta**8)
        return x * theta_d / r, y * theta_d / r
    d = d + [0.0] * (8 - len(d))
    k1, k2, p1, p2, k3, k4, k5, k6 = d[:8]
    r2 = x * x + y * y
    radial = (1 + k1 * r2 + k2 * r2**2 + k3 * r2**3) / (1 + k4 * r2 + k5 * r2**2 + k6 * r2**3)
    return (
        x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x),
        y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y,
    )


def reference_point(info, u, v, depth, rectified):
    """image_geometry: K_, P_ adjusted; raw pixels through rectifyPoint (K_, D, R, P_); then the ray
    through P_ scaled to z = depth."""
    k = reference_adjusted(np.reshape(info.k, (3, 3)), info)
    p_full = np.reshape(info.p, (3, 4))
    p = reference_adjusted(p_full[:, :3], info) if np.any(p_full) else k
    if not rectified and np.any(info.d):
        distorted = ((u - k[0, 2]) / k[0, 0], (v - k[1, 2]) / k[1, 1])

        def residual(xy):
            return np.subtract(reference_distort(xy[0], xy[1], info.distortion_model, info.d), distorted)

        x, y = least_squares(residual, distorted, xtol=1e-15, ftol=1e-15, gtol=1e-15).x
        rotated = np.reshape(info.r, (3, 3)) @ np.array([x, y, 1.0])
        u = p[0, 0] * rotated[0] / rotated[2] + p[0, 2]
        v = p[1, 1] * rotated[1] / rotated[2] + p[1, 2]
    elif not rectified:  # no distortion: K -> R -> P
        rotated = np.reshape(info.r, (3, 3)) @ np.array([(u - k[0, 2]) / k[0, 0], (v - k[1, 2]) / k[1, 1], 1.0])
        u = p[0, 0] * rotated[0] / rotated[2] + p[0, 2]
        v = p[1, 1] * rotated[1] / rotated[2] + p[1, 2]
    return np.array([(u - p[0, 2]) / p[0, 0] * depth, (v - p[1, 2]) / p[1, 1] * depth, depth])


# ---- cameras --------------------------------------------------------------------------------------
REALSENSE = camera_info(640, 480, [615.0, 0, 322.3, 0, 615.4, 241.7, 0, 0, 1])
MILD = camera_info(
    1280,
    720,
    [610.0, 0, 641.2, 0, 609.1, 362.5, 0, 0, 1],
    p=[[602.8, 0, 639.0, 0], [0, 602.8, 360.4, 0], [0, 0, 1, 0]],
    d=[-0.05, 0.06, 0.0003, -0.0004, -0.02],
)
WIDE_D = [-0.28, 0.07, 0.0005, -0.0003, -0.008]
WIDE = camera_info(
    640,
    480,
    [430.0, 0, 320.4, 0, 431.2, 239.1, 0, 0, 1],
    p=[[295.5, 0, 318.2, 0], [0, 295.5, 242.1, 0], [0, 0, 1, 0]],
    d=WIDE_D,
)
RATIONAL = camera_info(
    640,
    480,
    [430.0, 0, 320.4, 0, 431.2, 239.1, 0, 0, 1],
    p=[[300.0, 0, 320.0, 0], [0, 300.0, 240.0, 0], [0, 0, 1, 0]],
    d=[-0.25, 0.05, 0.0004, -0.0002, 0.0, 0.05, 0.01, 0.001],
    model="rational_polynomial",
)
FISHEYE = camera_info(
    640,
    480,
    [285.0, 0, 318.9, 0, 285.4, 243.3, 0, 0, 1],
    p=[[200.0, 0, 320.0, 0], [0, 200.0, 240.0, 0], [0, 0, 1, 0]],
    d=[-0.012, 0.045, -0.041, 0.008],
    model="equidistant",
)
_ANGLE = 0.05  # a stereo rectification rotation about an oblique axis
_AXIS = np.array([0.3, -0.8, 0.5]) / np.linalg.norm([0.3, -0.8, 0.5])
_SKEW = np.array([[0, -_AXIS[2], _AXIS[1]], [_AXIS[2], 0, -_AXIS[0]], [-_AXIS[1], _AXIS[0], 0]])
ROTATION = np.eye(3) + math.sin(_ANGLE) * _SKEW + (1 - math.cos(_ANGLE)) * _SKEW @ _SKEW
STEREO = camera_info(
    640,
    480,
    [430.0, 0, 320.4, 0, 431.2, 239.1, 0, 0, 1],
    p=[[350.0, 0, 310.0, 0], [0, 350.0, 250.0, 0], [0, 0, 1, 0]],
    d=WIDE_D,
    r=ROTATION,
)
# A 320x240 ROI at (400, 200) of a 1280x720 sensor.
ROI = camera_info(
    1280,
    720,
    [910.0, 0, 645.0, 0, 908.0, 355.0, 0, 0, 1],
    p=[[905.0, 0, 640.0, 0], [0, 905.0, 360.0, 0], [0, 0, 1, 0]],
    d=[0.1, -0.2, 0.001, 0.0005, 0.05],
    roi=(400, 200, 320, 240),
)
BINNED = camera_info(
    1280,
    720,
    [910.0, 0, 645.0, 0, 908.0, 355.0, 0, 0, 1],
    p=[[905.0, 0, 640.0, 0], [0, 905.0, 360.0, 0], [0, 0, 1, 0]],
    d=[0.1, -0.2, 0.001, 0.0005, 0.05],
    binning=(2, 2),
)
BINNED_ROI = camera_info(
    1280,
    720,
    [910.0, 0, 645.0, 0, 908.0, 355.0, 0, 0, 1],
    p=[[905.0, 0, 640.0, 0], [0, 905.0, 360.0, 0], [0, 0, 1, 0]],
    d=[0.1, -0.2, 0.001, 0.0005, 0.05],
    binning=(2, 4),
    roi=(400, 200, 320, 240),
)
CAMERAS = {
    "realsense": (REALSENSE, (480, 640)),
    "mild": (MILD, (720, 1280)),
    "wide": (WIDE, (480, 640)),
    "rational_polynomial": (RATIONAL, (480, 640)),
    "equidistant": (FISHEYE, (480, 640)),
    "stereo_rotation": (STEREO, (480, 640)),
    "roi": (ROI, (240, 320)),
    "binned": (BINNED, (360, 640)),
    "binned_roi": (BINNED_ROI, (60, 160)),
}


def assert_close(actual, expected):
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-6)


# ---- tests ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(CAMERAS))
@pytest.mark.parametrize("rectified", [True, False], ids=["rectified", "raw"])
@settings(max_examples=25, deadline=None)
@given(fraction_u=st.floats(0, 1), fraction_v=st.floats(0, 1), depth=st.floats(0.1, 5.0))
def test_point_matches_image_geometry_reference(name, rectified, fraction_u, fraction_v, depth):
    info, (height, width) = CAMERAS[name]
    u, v = fraction_u * (width - 1), fraction_v * (height - 1)  # anywhere in the image, corners too
    model = CameraModel.from_camera_info(info, rectified=rectified)
    assert model.reduced_size == (height, width)
    assert_close(model.pixel_to_point(u, v, depth, (height, width)), reference_point(info, u, v, depth, rectified))


@pytest.mark.parametrize("name", ["wide", "rational_polynomial", "equidistant", "stereo_rotation", "roi"])
def test_raw_pixel_of_a_known_3d_point_deprojects_back_to_it(name):
    """Forward: a 3D point through R^T, the distortion and K to its raw pixel; back: the model."""
    info, (height, width) = CAMERAS[name]
    model = CameraModel.from_camera_info(info, rectified=False)
    k = reference_adjusted(np.reshape(info.k, (3, 3)), info)
    p = reference_adjusted(np.reshape(info.p, (3, 4))[:, :3], info)
    rng = np.random.default_rng(3)
    for _ in range(50):
        # A point in the rectified frame, seen somewhere in the raw image.
        u_rect, v_rect, depth = rng.uniform(0, width - 1), rng.uniform(0, height - 1), rng.uniform(0.3, 3)
        rectified_point = np.array([(u_rect - p[0, 2]) / p[0, 0], (v_rect - p[1, 2]) / p[1, 1], 1.0]) * depth
        camera_point = np.reshape(info.r, (3, 3)).T @ rectified_point
        x, y = reference_distort(
            camera_point[0] / camera_point[2], camera_point[1] / camera_point[2], info.distortion_model, info.d
        )
        u_raw, v_raw = k[0, 0] * x + k[0, 2], k[1, 1] * y + k[1, 2]
        if not (0 <= u_raw <= width - 1 and 0 <= v_raw <= height - 1):
            continue
        assert_close(model.pixel_to_point(u_raw, v_raw, depth, (height, width)), rectified_point)


def test_rectified_uses_p_and_falls_back_to_k_when_p_is_zero():
    model = CameraModel.from_camera_info(MILD, rectified=True)
    # Hand computation with P: fx 602.8, cx 639.0, cy 360.4.
    assert_close(model.pixel_to_point(0.0, 0.0, 1.0, (720, 1280)), [-639.0 / 602.8, -360.4 / 602.8, 1.0])
    no_p = camera_info(1280, 720, np.reshape(MILD.k, (3, 3)), p=np.zeros((3, 4)))
    model = CameraModel.from_camera_info(no_p, rectified=True)
    assert_close(model.pixel_to_point(0.0, 0.0, 2.0, (720, 1280)), [-641.2 / 610.0 * 2, -362.5 / 609.1 * 2, 2.0])


def test_roi_shifts_the_principal_point_by_its_offset():
    model = CameraModel.from_camera_info(ROI, rectified=True)
    # The ROI pixel (0, 0) is sensor pixel (400, 200): x = (400 - 640) / 905.
    assert_close(model.pixel_to_point(0.0, 0.0, 1.0, (240, 320)), [(400 - 640) / 905.0, (200 - 360) / 905.0, 1.0])


def test_binning_divides_focal_length_and_principal_point():
    model = CameraModel.from_camera_info(BINNED, rectified=True)
    # Binned pixel (100, 50) is sensor pixel (200, 100) in image_geometry's convention.
    assert_close(model.pixel_to_point(100.0, 50.0, 1.0, (360, 640)), [(200 - 640) / 905.0, (100 - 360) / 905.0, 1.0])


def test_an_exact_resize_is_accepted_like_binning_and_any_other_size_refused():
    model = CameraModel.from_camera_info(MILD, rectified=True)
    full = model.pixel_to_point(400.0, 300.0, 1.5, (720, 1280))
    assert_close(model.pixel_to_point(200.0, 150.0, 1.5, (360, 640)), full)  # half size
    assert_close(model.pixel_to_point(800.0, 600.0, 1.5, (1440, 2560)), full)  # double size
    assert model.image_scale((240, 427)) == (427 / 1280, 1 / 3)  # 1280x720 / 3, rounded
    for size in [(1, 1), (480, 640), (720, 1279), (700, 1280), (0, 0), (4000, 1)]:
        with pytest.raises(CameraModelError, match="not an exact resize"):
            model.pixel_to_point(0.0, 0.0, 1.0, size)


def test_unusable_camera_info_is_refused_with_the_reason():
    with pytest.raises(CameraModelError, match="focal"):
        CameraModel.from_camera_info(camera_info(640, 480, np.zeros((3, 3))), True).pixel_to_point(1, 1, 1, (480, 640))
    with pytest.raises(CameraModelError, match="describes no image"):
        CameraModel.from_camera_info(camera_info(0, 0, np.eye(3)), True).pixel_to_point(1, 1, 1, (480, 640))
    unknown = camera_info(640, 480, np.reshape(WIDE.k, (3, 3)), d=[0.1, 0.2, 0, 0, 0], model="kannala_brandt")
    with pytest.raises(CameraModelError, match="not supported"):
        CameraModel.from_camera_info(unknown, rectified=False).pixel_to_point(10, 10, 1, (480, 640))
    # ... but a rectified image never needs the distortion model, and neither does D = 0.
    CameraModel.from_camera_info(unknown, rectified=True).pixel_to_point(10, 10, 1, (480, 640))
    no_distortion = camera_info(640, 480, np.reshape(WIDE.k, (3, 3)), d=[0, 0, 0, 0, 0], model="kannala_brandt")
    CameraModel.from_camera_info(no_distortion, rectified=False).pixel_to_point(10, 10, 1, (480, 640))
    nan_d = camera_info(640, 480, np.reshape(WIDE.k, (3, 3)), d=[0.1, math.nan, 0, 0, 0])
    with pytest.raises(CameraModelError, match="non-finite"):
        CameraModel.from_camera_info(nan_d, rectified=False).pixel_to_point(10, 10, 1, (480, 640))
    bad_fisheye = camera_info(640, 480, np.reshape(WIDE.k, (3, 3)), d=[0.1, 0.2, 0.0, 0.0, 0.1], model="equidistant")
    with pytest.raises(CameraModelError, match="4 coefficients"):
        CameraModel.from_camera_info(bad_fisheye, rectified=False).pixel_to_point(10, 10, 1, (480, 640))


def test_all_zero_rectification_is_the_identity():
    no_r = camera_info(640, 480, np.reshape(WIDE.k, (3, 3)), p=np.reshape(WIDE.p, (3, 4)), d=WIDE_D, r=np.zeros((3, 3)))
    with_r = camera_info(640, 480, np.reshape(WIDE.k, (3, 3)), p=np.reshape(WIDE.p, (3, 4)), d=WIDE_D)
    a = CameraModel.from_camera_info(no_r, rectified=False).pixel_to_point(30, 40, 1, (480, 640))
    b = CameraModel.from_camera_info(with_r, rectified=False).pixel_to_point(30, 40, 1, (480, 640))
    assert_close(a, b)


@settings(max_examples=50, deadline=None)
@given(
    u=st.floats(-0.5, 39.49),
    v=st.floats(-0.5, 29.49),
    scale=st.sampled_from([1, 2, 3]),
)
def test_depth_is_looked_up_at_the_same_pixel(u, v, scale):
    """Pixel (u, v) (centres at integers) reads depth pixel (round(v), round(u)); a depth image at a
    different resolution is read at the pixel the same resize maps (u, v) to."""
    depth = (np.arange(30 * scale * 40 * scale, dtype=np.float32) + 1).reshape(30 * scale, 40 * scale)
    # The depth pixels whose centres (at integers) are nearest to the mapped point (two on a tie).
    row_distance = np.abs(np.arange(30 * scale) - v * scale)
    col_distance = np.abs(np.arange(40 * scale) - u * scale)
    rows = np.flatnonzero(row_distance == row_distance.min())
    cols = np.flatnonzero(col_distance == col_distance.min())
    assert geometry.robust_depth(depth, u, v, (30, 40), window=1) in depth[np.ix_(rows, cols)]


@pytest.mark.parametrize("fx, fy", [(2.2250738585072014e-309, 1e-30), (1e-320, 600.0)])
def test_a_focal_length_so_small_its_reciprocal_overflows_is_refused(fx, fy):
    """hypothesis found it (test_fuzz_inputs): fx subnormal, positive and finite, passed the focal-length
    check, and (u - cx) / fx came out infinite."""
    info = camera_info(1, 1, [fx, 0, -1, 0, fy, 0, 0, 0, 1])
    model = CameraModel.from_camera_info(info, rectified=True)
    with pytest.raises(CameraModelError, match=r"give non-finite points"):
        model.pixel_to_point(0.0, 0.0, 1.0, (1, 1))
