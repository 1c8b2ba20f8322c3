"""The part's mask, cloud and grasp frame on rendered depth of known shapes (pop_ros.spatial.grasp).

Scenes are rendered by ray casting with the camera of the tests (640 x 480, f = 600 px): a table
plane 0.6 m away and, in front of it, a horizontal cylinder (a mug handle: 3 cm diameter, 10 cm
long, its axis 30 degrees from the image's x axis), a box edge, or nothing.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from pop_ros.spatial import grasp
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
TABLE_Z = 0.6


def camera():
    return pinhole_camera()


def rays() -> np.ndarray:
    return pinhole_rays()


def finite_cylinder_depth(centre, axis, radius, length) -> np.ndarray:
    """z of each ray's near hit on a cylinder of `length` around `centre` (NaN: missed)."""
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    centre = np.asarray(centre, float)
    r = rays()
    r_perp = r - (r @ axis)[..., None] * axis
    c_perp = centre - (centre @ axis) * axis
    a = np.einsum("hwc,hwc->hw", r_perp, r_perp)
    b = -2 * r_perp @ c_perp
    c = c_perp @ c_perp - radius**2
    disc = b * b - 4 * a * c
    with np.errstate(invalid="ignore"):
        t = np.where(disc >= 0, (-b - np.sqrt(disc)) / (2 * a), np.nan)
        along = (r * t[..., None] - centre) @ axis
    return np.where(np.abs(along) <= length / 2, t, np.nan)


def scene(front: np.ndarray, noise_m: float = 0.0, seed: int = 0) -> np.ndarray:
    """The table at TABLE_Z with `front` (H, W) depths (NaN: none) in front of it, plus noise."""
    depth = np.where(np.isfinite(front), front, TABLE_Z).astype(np.float64)
    if noise_m:
        depth = depth + np.random.default_rng(seed).normal(0.0, noise_m, depth.shape)
    return depth.astype(np.float32)


def heatmap_around(mask: np.ndarray, spread_px: int = 6) -> np.ndarray:
    """A fused map that covers `mask` and a little of its surroundings (as a real map does), peak 1."""
    import cv2

    blurred = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), spread_px)
    return blurred / blurred.max()


HANDLE_CENTRE = (0.02, -0.01, 0.5)
HANDLE_AXIS = (math.cos(math.radians(30)), math.sin(math.radians(30)), 0.0)
HANDLE_RADIUS, HANDLE_LENGTH = 0.015, 0.10


def handle_scene(noise_m: float):
    front = finite_cylinder_depth(HANDLE_CENTRE, HANDLE_AXIS, HANDLE_RADIUS, HANDLE_LENGTH)
    return scene(front, noise_m), np.isfinite(front)


def answer_pixel(xyz) -> tuple[float, float]:
    x, y, z = xyz
    return FOCAL * x / z + CX, FOCAL * y / z + CY


def test_part_mask_contains_the_answer_and_is_connected_to_it():
    heatmap = np.zeros((HEIGHT, WIDTH), np.float32)
    heatmap[100:140, 200:260] = 0.9
    heatmap[300:320, 400:420] = 1.0  # a stronger region elsewhere, not connected
    mask = grasp.part_mask(heatmap, u=230, v=120, relative_threshold=0.5)
    assert mask[120, 230]
    assert mask.sum() == 40 * 60  # exactly the connected region, not the other one
    assert not mask[310, 410]


def test_part_mask_threshold_is_relative_to_the_answer_value():
    heatmap = np.tile(np.linspace(0.0, 1.0, WIDTH, dtype=np.float32), (HEIGHT, 1))
    mask = grasp.part_mask(heatmap, u=WIDTH - 1, v=0, relative_threshold=0.75)
    assert mask[:, int(0.75 * (WIDTH - 1)) + 1 :].all() and not mask[:, : int(0.75 * (WIDTH - 1)) - 1].any()


def test_part_mask_is_empty_where_the_map_is_zero():
    assert not grasp.part_mask(np.zeros((20, 30), np.float32), 5, 5, 0.5).any()
    with pytest.raises(ValueError, match="relative_threshold"):
        grasp.part_mask(np.ones((4, 4), np.float32), 1, 1, 0.0)


def test_handle_cloud_lies_on_the_cylinder_and_background_is_removed():
    noise = 0.001
    depth, handle = handle_scene(noise)
    region = heatmap_around(handle) > 0.05  # the handle and a ring of table around it
    assert (region & ~handle).sum() > 1000
    cloud = grasp.part_cloud(camera(), depth, region, heatmap_around(handle))
    axis = np.asarray(HANDLE_AXIS) / np.linalg.norm(HANDLE_AXIS)
    offsets = cloud.points.astype(np.float64) - np.asarray(HANDLE_CENTRE)
    radial = np.linalg.norm(offsets - (offsets @ axis)[:, None] * axis, axis=1)
    residual = radial - HANDLE_RADIUS
    # Depth noise of 1 mm along the ray moves a point at most ~1 mm off the surface.
    assert np.sqrt(np.mean(residual**2)) < 2 * noise
    assert np.max(np.abs(residual)) < 6 * noise
    assert len(cloud.points) > 0.6 * handle.sum()
    assert cloud.removed_outliers + cloud.removed_flying > 1000  # the table ring went
    assert cloud.intensity.shape == (len(cloud.points),) and 0 < cloud.intensity.max() <= 1


def test_handle_grasp_closes_across_the_axis_with_the_diameter_as_width():
    depth, handle = handle_scene(0.001)
    region = heatmap_around(handle) > 0.05
    cloud = grasp.part_cloud(camera(), depth, region, heatmap_around(handle))
    # The normal at the handle's top, facing the camera: from the axis towards the camera.
    centre = np.asarray(HANDLE_CENTRE)
    axis = np.asarray(HANDLE_AXIS) / np.linalg.norm(HANDLE_AXIS)
    towards_camera = -(centre - (centre @ axis) * axis)
    normal = towards_camera / np.linalg.norm(towards_camera)
    frame = grasp.grasp_frame(cloud.points, normal)
    assert frame.ok, frame.reason
    angle_to_axis = math.degrees(math.acos(abs(float(np.dot(frame.closing, axis)))))
    assert abs(angle_to_axis - 90.0) < 5.0
    assert frame.width_m == pytest.approx(2 * HANDLE_RADIUS, rel=0.10)
    assert frame.length_m == pytest.approx(HANDLE_LENGTH, rel=0.15)
    assert np.dot(frame.approach, normal) == pytest.approx(-1.0)  # into the surface
    rotation = quaternion_to_matrix(*frame.orientation)
    np.testing.assert_allclose(rotation[:, 0], frame.closing, atol=1e-9)
    np.testing.assert_allclose(rotation[:, 2], frame.approach, atol=1e-9)
    np.testing.assert_allclose(rotation.T @ rotation, np.eye(3), atol=1e-9)
    assert np.linalg.det(rotation) == pytest.approx(1.0)


def test_box_edge_grasp_closes_across_the_edge():
    # A box whose top edge runs along the image's y axis: two faces meeting at a ridge 0.45 m away.
    r = rays()
    ridge_x, ridge_z, slope = 0.0, 0.45, 1.0  # each face recedes 1 m per metre sideways
    # Face: z = ridge_z + slope * |x - ridge_x| with x = t * r_x, z = t.
    with np.errstate(divide="ignore", invalid="ignore"):
        t_left = (ridge_z - slope * ridge_x) / (1 + slope * r[..., 0])
        t_right = (ridge_z + slope * ridge_x) / (1 - slope * r[..., 0])
    depth_face = np.where(r[..., 0] < 0, t_left, t_right)
    near_ridge = np.abs(r[..., 0] * depth_face) < 0.012  # the edge region: 2.4 cm across
    near_ridge &= np.abs(r[..., 1] * depth_face) < 0.06  # 12 cm along
    depth = scene(np.where(near_ridge, depth_face, np.nan), 0.0005)
    cloud = grasp.part_cloud(camera(), depth, near_ridge, near_ridge.astype(np.float32))
    frame = grasp.grasp_frame(cloud.points, (0.0, 0.0, -1.0))
    assert frame.ok, frame.reason
    assert abs(frame.closing[0]) > math.cos(math.radians(5))  # across the edge: the camera's x
    assert frame.width_m == pytest.approx(0.024, rel=0.10)


def test_round_region_on_a_plane_gives_no_grasp_frame_with_the_reason():
    r = rays()
    depth = scene(np.full((HEIGHT, WIDTH), np.nan))
    disc = ((r[..., 0] * TABLE_Z) ** 2 + (r[..., 1] * TABLE_Z) ** 2) < 0.03**2
    cloud = grasp.part_cloud(camera(), depth, disc, disc.astype(np.float32))
    np.testing.assert_allclose(cloud.points[:, 2], TABLE_Z, atol=1e-6)  # on the plane
    frame = grasp.grasp_frame(cloud.points, (0.0, 0.0, -1.0))
    assert not frame.ok and "round" in frame.reason


def test_strip_on_a_plane_closes_across_the_strip():
    r = rays()
    depth = scene(np.full((HEIGHT, WIDTH), np.nan), 0.0005)
    x, y = r[..., 0] * TABLE_Z, r[..., 1] * TABLE_Z
    strip = (np.abs(y) < 0.01) & (np.abs(x) < 0.05)  # 2 cm across (y), 10 cm along (x)
    cloud = grasp.part_cloud(camera(), depth, strip, strip.astype(np.float32))
    frame = grasp.grasp_frame(cloud.points, (0.0, 0.0, -1.0))
    assert frame.ok
    assert abs(frame.closing[1]) > math.cos(math.radians(5))
    assert frame.width_m == pytest.approx(0.02, rel=0.10)
    assert frame.length_m == pytest.approx(0.10, rel=0.10)


def test_a_strip_wider_than_the_gripper_opens_gets_no_frame_and_the_origin_moves_along_the_approach():
    r = rays()
    depth = scene(np.full((HEIGHT, WIDTH), np.nan), 0.0005)
    x, y = r[..., 0] * TABLE_Z, r[..., 1] * TABLE_Z
    strip = (np.abs(y) < 0.01) & (np.abs(x) < 0.05)  # 2 cm across, 10 cm along
    points = grasp.part_cloud(camera(), depth, strip, strip.astype(np.float32)).points
    assert grasp.grasp_frame(points, (0.0, 0.0, -1.0), max_width_m=0.03).ok  # a 3 cm gripper takes it
    refused = grasp.grasp_frame(points, (0.0, 0.0, -1.0), max_width_m=0.015)
    assert not refused.ok and refused.width_m == pytest.approx(0.02, rel=0.10)
    assert refused.reason == (
        f"the part is {refused.width_m:.3f} m wide, more than the gripper opens (gripper_max_width_m 0.015 m)"
    )
    # Tilted surface: the origin moves along the approach (-normal), not along the camera's z.
    normal = np.array([0.0, -0.6, -0.8])
    frame = grasp.grasp_frame(points, normal)
    assert frame.origin((0.1, 0.2, 0.6), 0.05) == pytest.approx((0.1, 0.2 + 0.03, 0.6 + 0.04))
    assert frame.origin((0.1, 0.2, 0.6), -0.05) == pytest.approx((0.1, 0.2 - 0.03, 0.6 - 0.04))


def test_too_few_points_give_no_grasp_frame():
    frame = grasp.grasp_frame(np.zeros((5, 3)), (0.0, 0.0, -1.0))
    assert not frame.ok and "only 5" in frame.reason


def test_cloud_of_a_half_resolution_depth_image_keeps_the_mask_geometry():
    depth, handle = handle_scene(0.0)
    half = depth[::2, ::2]  # an aligned depth image at half resolution
    full = grasp.part_cloud(camera(), depth, handle, handle.astype(np.float32))
    reduced = grasp.part_cloud(camera(), half, handle, handle.astype(np.float32))
    assert 0.15 < len(reduced.points) / len(full.points) < 0.35  # about a quarter of the pixels
    np.testing.assert_allclose(reduced.points.mean(axis=0), full.points.mean(axis=0), atol=0.002)


def quaternion_to_matrix(x, y, z, w) -> np.ndarray:
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def test_flying_pixels_on_a_steep_surface_are_removed():
    # A plane receding steeply (z from ~0.4 to ~0.8 m across the region): its depth spread is too wide for
    # the outlier test, so isolated pixels 5 cm off the surface (a depth camera's speckle between two
    # surfaces) must go as flying pixels.
    normal = np.array([-0.6, 0.0, 0.8])
    plane = (normal @ np.array([0.0, 0.0, 0.55])) / (rays() @ normal)
    depth = plane.copy()
    speckle = np.zeros((HEIGHT, WIDTH), bool)
    speckle[100:380:20, 100:540:20] = True
    depth[speckle] += 0.05
    region = np.zeros((HEIGHT, WIDTH), bool)
    region[80:400, 80:560] = True
    cloud = grasp.part_cloud(camera(), depth.astype(np.float32), region, region.astype(np.float32))
    distances = cloud.points.astype(np.float64) @ normal - normal @ np.array([0.0, 0.0, 0.55])
    assert np.max(np.abs(distances)) < 1e-4  # every kept point lies on the plane
    assert cloud.removed_flying >= speckle.sum()


def isolated_depths(values) -> tuple[np.ndarray, np.ndarray]:
    """(depth image, mask): each value at its own pixel, two pixels apart, no depth in between (so no
    pixel has a valid neighbour to be a flying pixel against)."""
    depth = np.zeros((HEIGHT, WIDTH), np.float32)
    mask = np.zeros((HEIGHT, WIDTH), bool)
    for index, value in enumerate(values):
        row, col = 100 + 2 * (index // 10), 100 + 2 * (index % 10)
        depth[row, col], mask[row, col] = value, True
    return depth, mask


def test_depth_outliers_are_beyond_three_robust_standard_deviations_not_three_mads():
    # Median 1.00 m, median absolute deviation 1 cm: 3 robust standard deviations (1.4826 x MAD) are
    # 4.45 cm (3 MAD would be 3 cm). Points 4 cm off stay, points 6 cm off go.
    depths = [1.0] + [0.99] * 20 + [1.01] * 20 + [0.96, 1.04, 0.94, 1.06]
    depth, mask = isolated_depths(depths)
    cloud = grasp.part_cloud(camera(), depth, mask, mask.astype(np.float32))
    assert cloud.removed_flying == 0
    assert cloud.removed_outliers == 2
    kept = sorted(round(float(z), 3) for z in cloud.points[:, 2])
    assert kept == sorted(round(z, 3) for z in depths if z not in (0.94, 1.06))


def planar_grid(half_x: float, half_y: float, z: float = 0.5, count: int = 25) -> np.ndarray:
    """Points on a regular `count` x `count` grid over [-half_x, half_x] x [-half_y, half_y] at depth z:
    their standard deviations along x and y are in the ratio half_x / half_y."""
    xs, ys = np.meshgrid(np.linspace(-half_x, half_x, count), np.linspace(-half_y, half_y, count))
    return np.stack([xs.ravel(), ys.ravel(), np.full(xs.size, z)], axis=1)


def test_the_round_region_test_compares_standard_deviations_not_variances():
    # Spreads 1.2 : 1 (variances 1.44 : 1) are round against MIN_AXIS_RATIO 1.3; 1.4 : 1 is not.
    assert grasp.MIN_AXIS_RATIO == 1.3
    round_frame = grasp.grasp_frame(planar_grid(0.012, 0.010), (0.0, 0.0, -1.0))
    assert not round_frame.ok
    assert "axes ratio 1.20 < 1.3" in round_frame.reason
    elongated = grasp.grasp_frame(planar_grid(0.014, 0.010), (0.0, 0.0, -1.0))
    assert elongated.ok, elongated.reason
    assert abs(elongated.closing[1]) == pytest.approx(1.0)  # closes across the narrow (y) side
    assert elongated.width_m == pytest.approx(0.02)  # the grid's 2 cm side (each row holds 4 % of the points)


def test_flying_pixels_are_flagged_on_both_sides_of_a_depth_jump():
    # A step from 1.0 m (columns 0-9) to 1.5 m (columns 10-19), and a speck 10 cm nearer than a flat
    # 1.0 m patch: the pixels on either side of each jump belong to neither surface.
    depth = np.ones((12, 20), np.float32)
    depth[:, 10:] = 1.5
    expected = np.zeros((12, 20), bool)
    expected[:, 9:11] = True
    depth[5, 4] = 0.9
    expected[5, 4] = expected[4, 4] = expected[6, 4] = expected[5, 3] = expected[5, 5] = True
    np.testing.assert_array_equal(grasp._flying_pixels(depth), expected)


@pytest.mark.parametrize(
    "points",
    [
        np.tile([0.01, -0.02, 0.5], (30, 1)),  # one point, 30 times
        np.stack([np.linspace(-0.03, 0.03, 30), np.zeros(30), np.full(30, 0.5)], axis=1),  # a line
    ],
    ids=["identical", "collinear"],
)
def test_a_cloud_without_a_2d_spread_gives_no_grasp_frame_with_the_reason(points):
    frame = grasp.grasp_frame(points, (0.0, 0.0, -1.0))
    assert not frame.ok
    assert "no 2-D spread" in frame.reason
