"""Several instances, regions of interest and per-instance scores on the fused map (pop_ros.core.regions)."""

import math

import pytest
import torch

from pop_ros import core


def blobs(size, centres, heights, sigma=1.5):
    """A (h, w) map holding Gaussian blobs of the given heights at (row, col) centres."""
    rows = torch.arange(size[0], dtype=torch.float32)[:, None]
    cols = torch.arange(size[1], dtype=torch.float32)[None, :]
    total = torch.zeros(size)
    for (row, col), height in zip(centres, heights, strict=True):
        total += height * torch.exp(-((rows - row) ** 2 + (cols - col) ** 2) / (2 * sigma**2))
    return total


def test_two_copies_give_two_instances_best_first_and_apart():
    final = blobs((32, 40), [(10, 8), (20, 30)], [0.7, 1.0])
    cells = core.instance_cells(final, max_instances=5, radius_cells=4.0, min_relative=0.3)
    assert cells == [(20, 30), (10, 8)]  # the higher blob first, then the other: nothing else is a peak
    assert math.dist(*cells) > 4.0


def test_first_instance_is_the_single_answer():
    final = torch.rand(24, 24, generator=torch.Generator().manual_seed(3))
    cells = core.instance_cells(final, max_instances=4, radius_cells=2.0, min_relative=0.0)
    assert cells[0] == core.peak_cell(final)
    assert core.instance_cells(final, max_instances=1, radius_cells=2.0, min_relative=0.0) == [cells[0]]


def test_suppression_radius_and_relative_threshold():
    final = blobs((30, 30), [(10, 10), (10, 14), (25, 25)], [1.0, 0.9, 0.2], sigma=0.7)
    # (10, 14) is 4 cells from the best peak: suppressed with radius 4, kept with radius 3.
    assert core.instance_cells(final, 5, radius_cells=4.0, min_relative=0.1) == [(10, 10), (25, 25)]
    assert core.instance_cells(final, 5, radius_cells=3.0, min_relative=0.1) == [(10, 10), (10, 14), (25, 25)]
    # The 0.2 blob is below a 0.5 share of the maximum.
    assert core.instance_cells(final, 5, radius_cells=3.0, min_relative=0.5) == [(10, 10), (10, 14)]


def test_all_zero_map_gives_one_instance():
    assert core.instance_cells(torch.zeros(8, 8), 3, 1.0, 0.5) == [(0, 0)]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_instances": 0, "radius_cells": 1.0, "min_relative": 0.5}, "max_instances"),
        ({"max_instances": 2, "radius_cells": -1.0, "min_relative": 0.5}, "radius_cells"),
        ({"max_instances": 2, "radius_cells": 1.0, "min_relative": 1.5}, "min_relative"),
    ],
)
def test_instance_arguments_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        core.instance_cells(torch.ones(4, 4), **kwargs)


def test_roi_keeps_the_answer_inside_it():
    final = blobs((32, 40), [(10, 8), (20, 30)], [0.7, 1.0])
    image_size = (320, 400)  # 10 px per cell
    # A box around the weaker copy: cells 4..13 wide, 5..15 high -> pixels x 40..139, y 50..159.
    cells = core.roi_cells(final.shape, image_size, (40, 50, 100, 110))
    restricted = core.restrict_to_cells(final, cells)
    assert core.peak_cell(restricted) == (10, 8)
    u, v = core.cell_centre_pixel((10, 8), final.shape, image_size)
    assert (u, v) == (85.0, 105.0)
    assert 40 <= u < 140 and 50 <= v < 160
    # Without the region the stronger copy wins.
    assert core.peak_cell(final) == (20, 30)


def test_roi_cells_are_exactly_the_cells_with_centres_inside():
    cells = core.roi_cells((4, 4), (40, 40), (10, 0, 20, 15))
    # Cell centres at 5, 15, 25, 35: x in [10, 30) keeps columns 1 and 2; y in [0, 15) keeps row 0 only.
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[0, 1:3] = True
    assert torch.equal(cells, expected)


def test_roi_smaller_than_a_cell_keeps_the_cell_of_its_centre():
    cells = core.roi_cells((4, 4), (40, 40), (21, 31, 2, 2))  # centre (22, 32): column 2, row 3
    assert cells.sum() == 1 and bool(cells[3, 2])


@pytest.mark.parametrize(
    "roi, message",
    [
        ((0, 0, 0, 10), "zero area"),
        ((5, 5, 10, 0), "zero area"),
        ((400, 10, 10, 10), "outside"),
        ((10, 300, 10, 10), "outside"),
        ((-5, 10, 10, 10), "outside"),
    ],
)
def test_bad_roi_is_refused_with_the_reason(roi, message):
    with pytest.raises(ValueError, match=message):
        core.validate_roi(roi, (300, 400))


def test_roi_past_the_border_is_clipped():
    assert core.validate_roi((390, 290, 50, 50), (300, 400)) == (390, 290, 10, 10)


def test_peak_score_at_another_instance_reads_that_cell():
    final = blobs((16, 16), [(4, 4), (12, 12)], [1.0, 0.5])
    visual = torch.zeros(1, 8, 8)
    visual[0, 2, 2] = 0.9  # the cell under the best peak
    visual[0, 6, 6] = 0.4  # under the second
    assert core.peak_score(final, visual) == pytest.approx(0.9)
    assert core.peak_score(final, visual, cell=(12, 12)) == pytest.approx(0.4)


def test_instances_after_the_first_come_in_decreasing_value_not_in_row_major_order():
    # The weakest peak comes first in row-major order, the middle one after it: a read-out that takes
    # candidates in row-major order (rather than by value) lists (2, 2) before (10, 20).
    final = blobs((32, 40), [(2, 2), (10, 20), (20, 30)], [0.6, 0.8, 1.0])
    assert core.instance_cells(final, max_instances=2, radius_cells=4.0, min_relative=0.3) == [(20, 30), (10, 20)]
    assert core.instance_cells(final, max_instances=3, radius_cells=4.0, min_relative=0.3) == [
        (20, 30),
        (10, 20),
        (2, 2),
    ]


def test_roi_right_and_bottom_edges_are_exclusive_left_and_top_inclusive():
    # Cell centres at 5, 15, 25, 35 px. x in [5, 25): columns 0 and 1 (25 is the right edge, excluded);
    # y in [15, 35): rows 1 and 2 (35 excluded).
    cells = core.roi_cells((4, 4), (40, 40), (5, 15, 20, 20))
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[1:3, 0:2] = True
    assert torch.equal(cells, expected)


def test_pixel_in_roi_moves_a_centre_outside_a_small_region_to_its_nearest_pixel():
    # Edge-origin pixels: the box (5, 5, 2, 2) holds pixel centres 5.5 and 6.5 either way.
    assert core.pixel_in_roi((7.5, 7.5), (5, 5, 2, 2)) == (6.5, 6.5)
    assert core.pixel_in_roi((2.0, 6.0), (5, 5, 2, 2)) == (5.5, 6.0)
    assert core.pixel_in_roi((85.0, 105.0), (40, 50, 100, 110)) == (85.0, 105.0)  # inside: unchanged
