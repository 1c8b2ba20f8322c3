"""Several instances and a region of interest through the pipeline (`PartPointer.point` / `point_many`).

Random tiny models cannot put two equal copies of an object in a map, so the two-copies tests keep the
real pipeline path (tiny DINO + tiny MLLM loaded, visual-only fusion, upsampling, read-out, peak_score)
and replace only the visual similarity map with a constructed one: two one-patch "copies" of known
similarity 1.0 and 0.8. Expected pixels and scores are those literal patches and values."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest
import torch

from pop_ros.pipeline import PartPointer, PointerError, PointerSettings, PointRequest
from test.conftest import scene

# Two copies on the target's visual grid: (row, col) -> similarity. Far apart (> any radius used here).
COPY_A, COPY_B = (2, 2), (3, 10)
VALUE_A, VALUE_B = 1.0, 0.8


def pointer_with(tiny_pointer, **settings) -> PartPointer:
    """A pointer on the session's tiny models with its own settings (the shared one stays untouched)."""
    return PartPointer(tiny_pointer.visual, tiny_pointer.mllm, tiny_pointer.model_config, PointerSettings(**settings))


@pytest.fixture
def two_copies(constructed_visual_map):
    """The visual map of every support: zero but for COPY_A (1.0) and COPY_B (0.8). Returns the grid (H_t, W_t)."""
    return constructed_visual_map({COPY_A: VALUE_A, COPY_B: VALUE_B})


def patch_of(u, v, image_size, grid) -> tuple[int, int]:
    """(row, col) of the visual patch that holds ROS pixel (u, v)."""
    height, width = image_size
    return int((v + 0.5) * grid[0] / height), int((u + 0.5) * grid[1] / width)


def patch_box(patch, image_size, grid, margin=2) -> tuple[int, int, int, int]:
    """(x, y, w, h) around one patch, `margin` pixels wider on each side."""
    height, width = image_size
    x0, y0 = patch[1] * width / grid[1], patch[0] * height / grid[0]
    return (int(x0) - margin, int(y0) - margin, int(width / grid[1]) + 2 * margin, int(height / grid[0]) + 2 * margin)


SUPPORTS = [(scene(1), (100.0, 120.0))]


def test_two_copies_give_two_instances_ordered_by_score_and_apart(tiny_pointer, two_copies):
    pointer = pointer_with(tiny_pointer, use_text=False, instance_radius=3.0)
    image = scene(0)
    result = pointer.point(image, "", supports=SUPPORTS, max_instances=5)
    grid = two_copies["shape"]
    assert len(result.instances) == 2  # nothing else holds half of the best value
    first, second = result.instances
    assert patch_of(first.u, first.v, image.shape[:2], grid) == COPY_A
    assert patch_of(second.u, second.v, image.shape[:2], grid) == COPY_B
    assert (first.score, second.score) == pytest.approx((VALUE_A, VALUE_B))
    assert (result.u, result.v, result.score) == (first.u, first.v, first.score)
    patch_px = image.shape[1] / grid[1]
    assert np.hypot(first.u - second.u, first.v - second.v) > 3.0 * patch_px


def test_the_radius_suppresses_a_copy_within_it(tiny_pointer, two_copies):
    # COPY_B is 8.06 patches from COPY_A: a 9-patch radius makes it the same instance.
    pointer = pointer_with(tiny_pointer, use_text=False, instance_radius=9.0)
    assert len(pointer.point(scene(0), "", supports=SUPPORTS, max_instances=5).instances) == 1


def test_min_relative_drops_a_weaker_copy(tiny_pointer, two_copies):
    pointer = pointer_with(tiny_pointer, use_text=False, instance_min_relative=0.9)  # 0.8 < 0.9 of the best
    assert len(pointer.point(scene(0), "", supports=SUPPORTS, max_instances=5).instances) == 1


@pytest.mark.parametrize("copy, value", [(COPY_A, VALUE_A), (COPY_B, VALUE_B)])
def test_a_roi_around_either_copy_returns_that_copy(tiny_pointer, two_copies, copy, value):
    pointer = pointer_with(tiny_pointer, use_text=False)
    image = scene(0)
    pointer.point(image, "", supports=SUPPORTS)  # learn the grid
    grid = two_copies["shape"]
    roi = patch_box(copy, image.shape[:2], grid)
    result = pointer.point(image, "", supports=SUPPORTS, roi=roi)
    assert patch_of(result.u, result.v, image.shape[:2], grid) == copy
    assert result.score == pytest.approx(value)
    x, y, w, h = roi
    assert x <= result.u < x + w and y <= result.v < y + h
    # The heatmap shows what was searched: zero outside the region, peak 1 inside.
    outside = np.ones(image.shape[:2], dtype=bool)
    outside[y : y + h, x : x + w] = False
    assert float(result.heatmap[outside].max()) == 0.0
    assert float(result.heatmap[y : y + h, x : x + w].max()) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "roi, reason",
    [
        ((10, 10, 0, 20), "zero area"),
        ((10, 10, 20, 0), "zero area"),
        ((400, 10, 20, 20), "outside the 320x240 image"),
        ((10, 300, 20, 20), "outside the 320x240 image"),
        ((-5, 10, 20, 20), "starts outside the image"),
    ],
)
def test_bad_roi_is_refused_with_the_reason(tiny_pointer, roi, reason):
    with pytest.raises(PointerError, match=reason):
        tiny_pointer.point(scene(0), "handle", supports=SUPPORTS, roi=roi)
    results = tiny_pointer.point_many(scene(0), [PointRequest("handle", supports=SUPPORTS, roi=roi)])
    assert isinstance(results[0], PointerError) and reason in str(results[0])


def test_max_instances_out_of_range_is_refused(tiny_pointer):
    with pytest.raises(PointerError, match="max_instances must be in"):
        tiny_pointer.point(scene(0), "handle", supports=SUPPORTS, max_instances=1000)


def test_the_single_answer_is_unchanged_by_max_instances(tiny_pointer):
    # Real tiny models (text + visual): instances[0] is exactly the answer a plain call gives.
    image = scene(2)
    plain = tiny_pointer.point(image, "handle of the mug", supports=SUPPORTS)
    for max_instances in (0, 1, 4):
        many = tiny_pointer.point(image, "handle of the mug", supports=SUPPORTS, max_instances=max_instances)
        assert (many.u, many.v, many.score) == (plain.u, plain.v, plain.score)
        assert (many.instances[0].u, many.instances[0].v, many.instances[0].score) == (plain.u, plain.v, plain.score)
        np.testing.assert_array_equal(many.heatmap, plain.heatmap)
    assert len(plain.instances) == 1


def test_point_many_carries_instances_and_roi_per_request(tiny_pointer, two_copies):
    pointer = pointer_with(tiny_pointer, use_text=False)
    image = scene(0)
    pointer.point(image, "", supports=SUPPORTS)
    roi = patch_box(COPY_B, image.shape[:2], two_copies["shape"])
    whole, boxed = pointer.point_many(
        image, [PointRequest("", supports=SUPPORTS, max_instances=3), PointRequest("", supports=SUPPORTS, roi=roi)]
    )
    assert [i.score for i in whole.instances] == pytest.approx([VALUE_A, VALUE_B])
    assert boxed.score == pytest.approx(VALUE_B) and boxed.roi == roi


@pytest.mark.parametrize(
    "field, value", [("instance_radius", -1.0), ("instance_min_relative", 1.5), ("part_threshold", -0.1)]
)
def test_region_settings_are_validated(field, value):
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(PointerSettings(), **{field: value}).validate()


@pytest.mark.parametrize("roi", [(5, 5, 2, 2), (300, 200, 3, 1), (633, 473, 7, 7)])
def test_a_roi_smaller_than_a_map_cell_answers_inside_it_with_a_mask(tiny_pointer, constructed_visual_map, roi):
    # A 640x480 image: one cell of the fused map spans several pixels, more than these boxes. The
    # answer still lies in the box, and the part's mask (the node's region around the answer) is not
    # empty where the map is positive there.
    from pop_ros.spatial import grasp

    image = cv2.resize(scene(0), (640, 480))
    visual_grid = constructed_visual_map({})
    pointer = pointer_with(tiny_pointer, use_text=False)
    pointer.point(image, "", supports=SUPPORTS)  # learn the grid
    rows, cols = visual_grid["shape"]
    x, y, width, height = roi
    # The one visual patch under the box's centre is the only positive one.
    patch = (int((y + height / 2) * rows / 480), int((x + width / 2) * cols / 640))
    constructed_visual_map({patch: 0.9})
    result = pointer.point(image, "", supports=SUPPORTS, roi=roi)
    assert x <= result.u <= x + width - 1 and y <= result.v <= y + height - 1, (result.u, result.v)
    mask = grasp.part_mask(result.heatmap, result.u, result.v, 0.5)
    assert mask.any()
    inside = np.zeros_like(mask)
    inside[y : y + height, x : x + width] = True
    assert not (mask & ~inside).any()  # the heatmap is zero outside the box: so is the mask


def test_instances_after_the_answer_are_listed_by_the_score_they_report():
    # The fused map ranks three peaks A > B > C; their visual match (the reported score) ranks C above B
    # (the text prior lifted B). instances[0] stays the map's peak, the single answer; the others come in
    # decreasing score: A, C, B.
    from pop_ros.pipeline import fusion

    def bump(size, centre, height):
        rows = torch.arange(size[0], dtype=torch.float32)[:, None]
        cols = torch.arange(size[1], dtype=torch.float32)[None, :]
        return height * torch.exp(-((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2) / 2.0)

    peaks = {"A": ((4, 4), 1.0, 0.9), "B": ((20, 30), 0.8, 0.3), "C": ((26, 8), 0.6, 0.7)}  # cell, value, match
    final = sum(bump((32, 40), cell, value) for cell, value, _ in peaks.values())
    visual = torch.zeros(1, 16, 20)  # the visual grid: 2 x 2 cells of the fused map per patch
    for (row, col), _, match in peaks.values():
        visual[0, row // 2, col // 2] = match
    instances = fusion.read_instances(final, visual, None, PointerSettings(), (320, 400), 20, max_instances=3)
    assert [round(i.score, 6) for i in instances] == [0.9, 0.7, 0.3]
    # Cell centres of A, C, B (10 px per cell; ROS pixel = edge-origin - 0.5).
    assert [(i.u, i.v) for i in instances] == [(44.5, 44.5), (84.5, 264.5), (304.5, 204.5)]
