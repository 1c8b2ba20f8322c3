"""Approach pose: the robust local plane fit on synthetic depth images of known surfaces.

Depth images are rendered by intersecting each pixel's ray with a plane, a sphere or a cylinder
(closed forms below); the fitted normal is compared with the surface's analytic normal at the point.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pop_ros.spatial import geometry
from test.conftest import (
    PINHOLE_CX,
    PINHOLE_CY,
    PINHOLE_FOCAL,
    PINHOLE_HEIGHT,
    PINHOLE_WIDTH,
    pinhole_camera,
    pinhole_rays,
)

WIDTH, HEIGHT, FOCAL, CX, CY = PINHOLE_WIDTH, PINHOLE_HEIGHT, PINHOLE_FOCAL, PINHOLE_CX, PINHOLE_CY


def camera():
    return pinhole_camera()


def rays() -> np.ndarray:
    return pinhole_rays()


def plane_depth(normal, point) -> np.ndarray:
    normal = np.asarray(normal, dtype=float)
    return (normal @ np.asarray(point, dtype=float)) / (rays() @ normal)


def sphere_depth(centre, radius) -> np.ndarray:
    """z of the near intersection of each ray with the sphere (NaN where the ray misses it)."""
    r = rays()
    a = np.einsum("hwc,hwc->hw", r, r)
    b = -2 * r @ np.asarray(centre, dtype=float)
    c = np.dot(centre, centre) - radius**2
    disc = b * b - 4 * a * c
    with np.errstate(invalid="ignore"):
        return np.where(disc >= 0, (-b - np.sqrt(disc)) / (2 * a), np.nan)


def cylinder_depth(point_on_axis, axis, radius) -> np.ndarray:
    """z of the near intersection of each ray with an infinite cylinder."""
    axis = np.asarray(axis, dtype=float) / np.linalg.norm(axis)
    r = rays()
    r_perp = r - (r @ axis)[..., None] * axis
    c = np.asarray(point_on_axis, dtype=float)
    c_perp = c - (c @ axis) * axis
    a = np.einsum("hwc,hwc->hw", r_perp, r_perp)
    b = -2 * r_perp @ c_perp
    cc = c_perp @ c_perp - radius**2
    disc = b * b - 4 * a * cc
    with np.errstate(invalid="ignore"):
        return np.where(disc >= 0, (-b - np.sqrt(disc)) / (2 * a), np.nan)


def angle_degrees(a, b) -> float:
    return math.degrees(math.acos(np.clip(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b), -1, 1)))


def fit(depth, u, v, window=15, inlier_distance=0.005, min_ratio=0.6):
    return geometry.surface_fit(depth, camera(), u, v, (HEIGHT, WIDTH), window, inlier_distance, min_ratio)


def point_at(depth, u, v):
    return camera().pixel_to_point(u, v, depth[v, u], (HEIGHT, WIDTH))


@settings(max_examples=30, deadline=None)
@given(
    tilt_x=st.floats(-60, 60),
    tilt_y=st.floats(-60, 60),
    distance=st.floats(0.4, 2.5),
    u=st.integers(60, WIDTH - 60),
    v=st.integers(60, HEIGHT - 60),
)
def test_tilted_plane_normal_within_one_degree(tilt_x, tilt_y, distance, u, v):
    ax, ay = math.radians(tilt_x), math.radians(tilt_y)
    # A plane facing the camera (normal -z) tilted about x then y.
    normal = np.array([math.sin(ay) * math.cos(ax), -math.sin(ax), -math.cos(ay) * math.cos(ax)])
    depth = plane_depth(normal, [0, 0, distance])
    if not (np.isfinite(depth[v, u]) and depth[v, u] > 0):
        return
    result = fit(depth, u, v)
    assert result.normal is not None, result.reason
    assert angle_degrees(result.normal, normal) < 1.0
    assert result.inlier_ratio == pytest.approx(1.0) and result.rms_m < 1e-6


def test_normal_faces_the_camera_whatever_the_plane_equation_sign():
    depth = plane_depth([0.2, 0.1, 1.0], [0, 0, 1.0])  # the same plane, normal written away from the camera
    result = fit(depth, 320, 240)
    expected = -np.array([0.2, 0.1, 1.0])
    assert angle_degrees(result.normal, expected) < 1.0
    assert np.dot(result.normal, point_at(depth, 320, 240)) < 0


@pytest.mark.parametrize("u, v", [(320, 240), (300, 200), (350, 270), (280, 250)])
def test_sphere_normal_matches_the_analytic_normal(u, v):
    centre, radius = np.array([0.0, 0.0, 1.0]), 0.15
    depth = sphere_depth(centre, radius)
    result = fit(depth, u, v)
    expected = (np.array(point_at(depth, u, v)) - centre) / radius
    assert result.normal is not None, result.reason
    assert angle_degrees(result.normal, expected) < 1.0


@pytest.mark.parametrize("u, v", [(320, 240), (290, 180), (345, 300)])
def test_cylinder_normal_matches_the_analytic_normal(u, v):
    point_on_axis, axis, radius = np.array([0.0, 0.0, 0.9]), np.array([0.2, 1.0, 0.3]), 0.12
    depth = cylinder_depth(point_on_axis, axis, radius)
    result = fit(depth, u, v)
    p = np.array(point_at(depth, u, v))
    axis = axis / np.linalg.norm(axis)
    radial = (p - point_on_axis) - ((p - point_on_axis) @ axis) * axis
    assert result.normal is not None, result.reason
    assert angle_degrees(result.normal, radial / radius) < 1.0


def test_noise_holes_and_flying_pixels_are_rejected():
    rng = np.random.default_rng(7)
    normal = np.array([0.3, -0.2, -0.93])
    clean = plane_depth(normal, [0, 0, 1.2])
    depth = clean + rng.normal(0, 0.001, clean.shape)  # 1 mm noise
    depth[rng.random(depth.shape) < 0.3] = np.nan  # 30 % holes
    flying = rng.random(depth.shape) < 0.15  # 15 % outliers, up to 30 cm off
    depth[flying] += rng.uniform(-0.3, 0.3, flying.sum())
    result = fit(depth, 320, 240, window=31)
    assert result.normal is not None, result.reason
    assert angle_degrees(result.normal, normal) < 1.0
    assert 0.7 < result.inlier_ratio < 0.95  # the flying pixels are outliers
    assert 0.0005 < result.rms_m < 0.002  # the inliers' spread is the noise


def test_too_few_valid_pixels_give_no_pose_with_the_reason():
    depth = plane_depth([0, 0, -1], [0, 0, 1.0])
    depth[200:280, 280:360] = np.nan
    depth[240, 320] = 1.0  # one valid pixel near the point
    result = fit(depth, 320, 240)
    assert result.normal is None and result.num_valid == 1
    assert "only 1 valid depth pixels" in result.reason


def test_a_depth_edge_or_clutter_gives_no_pose_with_the_reason():
    rng = np.random.default_rng(1)
    clutter = rng.uniform(0.5, 2.0, (HEIGHT, WIDTH))
    result = fit(clutter, 320, 240)
    assert result.normal is None and "poor surface fit" in result.reason
    assert 0 <= result.inlier_ratio < 0.6


def test_fit_is_deterministic():
    depth = sphere_depth([0.0, 0.0, 1.0], 0.15)
    depth = depth + np.random.default_rng(0).normal(0, 0.002, depth.shape)
    assert fit(depth, 320, 240) == fit(depth, 320, 240)


def quaternion_to_matrix(x, y, z, w) -> np.ndarray:
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


@settings(max_examples=100, deadline=None)
@given(st.tuples(*[st.floats(-1, 1, allow_subnormal=False)] * 3).filter(lambda n: np.linalg.norm(n) > 0.1))
def test_approach_orientation_z_is_the_normal_and_x_follows_the_camera_x(normal):
    normal = np.array(normal) / np.linalg.norm(normal)
    quaternion = geometry.approach_orientation(normal)
    assert np.linalg.norm(quaternion) == pytest.approx(1.0)
    rotation = quaternion_to_matrix(*quaternion)
    np.testing.assert_allclose(rotation[:, 2], normal, atol=1e-9)
    np.testing.assert_allclose(rotation.T @ rotation, np.eye(3), atol=1e-9)
    assert np.linalg.det(rotation) == pytest.approx(1.0)
    if abs(normal[0]) < 0.999:  # x axis: the camera's x projected onto the surface, never backwards
        assert np.linalg.det(np.stack([rotation[:, 0], [1, 0, 0], normal])) == pytest.approx(0.0, abs=1e-9)
        assert np.dot(rotation[:, 0], [1, 0, 0]) > 0


def test_a_large_window_is_scored_on_a_subset_and_still_exact():
    normal = np.array([0.1, 0.25, -0.96])
    depth = plane_depth(normal, [0, 0, 1.0])
    result = fit(depth, 320, 240, window=201)  # 40,401 points: hypotheses scored on 4,096 of them
    assert result.num_valid == 201 * 201 and angle_degrees(result.normal, normal) < 1.0
    assert result.inlier_ratio == pytest.approx(1.0)


@pytest.mark.parametrize("window", [1, 3, 5])
def test_depth_window_at_the_image_border_reads_the_valid_depths_there(window):
    # A half-resolution depth image (240 x 320 for a 480 x 640 colour image), valid only at its four
    # corners and at the middle of its last row and last column.
    depth = np.full((240, 320), np.nan, dtype=np.float32)
    depth[0, 0], depth[0, 319], depth[239, 0], depth[239, 319] = 1.0, 2.0, 3.0, 4.0
    depth[120, 319], depth[239, 160] = 5.0, 6.0
    cases = {  # colour pixel (u, v) -> the depth it must read
        (0.0, 0.0): 1.0,
        (639.0, 0.0): 2.0,
        (0.0, 479.0): 3.0,
        (639.0, 479.0): 4.0,
        (639.0, 240.0): 5.0,
        (320.0, 479.0): 6.0,
    }
    for (u, v), expected in cases.items():
        assert geometry.robust_depth(depth, u, v, (480, 640), window) == pytest.approx(expected), (u, v)
    pixels, depths = geometry.depth_window(depth, 0, 0, window)
    np.testing.assert_array_equal(pixels, [[0.0, 0.0]])
    np.testing.assert_array_equal(depths, [1.0])
    pixels, depths = geometry.depth_window(depth, 239, 319, window)
    np.testing.assert_array_equal(pixels, [[319.0, 239.0]])  # (u, v) of the depth pixel
    np.testing.assert_array_equal(depths, [4.0])
