"""Where on the fused map: several instances (local maxima), a region of interest, the part's region.

Pure torch on the fused map `final_map (h, w)` (the grid `fuse` returns, which covers the whole
image). Cell (i, j) of an (h, w) map over an (H, W) image spans the pixel edges
[j * W / w, (j + 1) * W / w) x [i * H / h, (i + 1) * H / h) (edge-origin coordinates, as the rest of
the core).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F


def instance_cells(
    final_map: torch.Tensor,
    max_instances: int,
    radius_cells: float,
    min_relative: float,
) -> list[tuple[int, int]]:
    """(row, col) of up to `max_instances` peaks of `final_map (h, w)`, best first.

    The first is always the global argmax (the single answer, first in row-major order on ties).
    The others are local maxima (3 x 3 neighbourhood) holding at least `min_relative` of the global
    maximum, accepted greedily in decreasing value when farther than `radius_cells` (Euclidean, in
    cells of this map) from every accepted peak: non-maximum suppression.
    """
    if final_map.dim() != 2 or final_map.numel() == 0:
        raise ValueError(f"final_map must be a non-empty (h, w) tensor, got {tuple(final_map.shape)}")
    if max_instances < 1:
        raise ValueError(f"max_instances must be >= 1, got {max_instances}")
    if radius_cells < 0 or not math.isfinite(radius_cells):
        raise ValueError(f"radius_cells must be a finite number >= 0, got {radius_cells}")
    if not 0.0 <= min_relative <= 1.0:
        raise ValueError(f"min_relative must be in [0, 1], got {min_relative}")
    values = torch.nan_to_num(final_map.detach().float(), nan=-math.inf)
    width = values.shape[1]
    best = int(torch.argmax(values))
    accepted = [divmod(best, width)]
    peak_value = float(values.view(-1)[best])
    if max_instances == 1 or not math.isfinite(peak_value) or peak_value <= 0:
        return accepted
    pooled = F.max_pool2d(values[None, None], kernel_size=3, stride=1, padding=1)[0, 0]
    candidates = (values == pooled) & (values >= min_relative * peak_value) & (values > 0)
    flat = torch.nonzero(candidates.view(-1)).view(-1)
    # Decreasing value; equal values in row-major order (stable sort on the flat index order).
    order = torch.argsort(values.view(-1)[flat], descending=True, stable=True)
    for index in flat[order].tolist():
        row, col = divmod(index, width)
        if all(math.hypot(row - r, col - c) > radius_cells for r, c in accepted):
            accepted.append((row, col))
            if len(accepted) == max_instances:
                break
    return accepted


def cell_centre_pixel(cell: Sequence[int], map_size: Sequence[int], image_size: Sequence[int]) -> tuple[float, float]:
    """Edge-origin pixel (u, v) of the centre of `cell (row, col)` of a `map_size (h, w)` map over an
    image of `image_size (H, W)`."""
    row, col = int(cell[0]), int(cell[1])
    return (col + 0.5) * float(image_size[1]) / map_size[1], (row + 0.5) * float(image_size[0]) / map_size[0]


def validate_roi(roi: Sequence[int], image_size: Sequence[int]) -> tuple[int, int, int, int]:
    """(x, y, width, height) in pixels, checked against an image of `image_size (H, W)` and clipped
    to it. ValueError with the reason for a zero-area region or one wholly outside the image."""
    x, y, width, height = (int(value) for value in roi)
    image_h, image_w = int(image_size[0]), int(image_size[1])
    if width <= 0 or height <= 0:
        raise ValueError(f"the region of interest has zero area (width {width}, height {height})")
    if x < 0 or y < 0:
        raise ValueError(f"the region of interest starts outside the image (x {x}, y {y})")
    if x >= image_w or y >= image_h:
        raise ValueError(
            f"the region of interest (x {x}, y {y}, width {width}, height {height}) lies outside the "
            f"{image_w}x{image_h} image"
        )
    return x, y, min(width, image_w - x), min(height, image_h - y)


def roi_cells(map_size: Sequence[int], image_size: Sequence[int], roi: Sequence[int]) -> torch.Tensor:
    """Boolean `(h, w)`: the cells whose centres lie in `roi (x, y, width, height)` (pixels
    x .. x + width - 1 and y .. y + height - 1 of an image of `image_size (H, W)`). A region smaller
    than a cell keeps the one cell that contains its centre, so the answer never leaves the region's
    neighbourhood for lack of a cell (`pixel_in_roi` then puts the answer's pixel inside the region)."""
    map_h, map_w = int(map_size[0]), int(map_size[1])
    image_h, image_w = float(image_size[0]), float(image_size[1])
    x, y, width, height = (float(value) for value in roi)
    centres_u = (torch.arange(map_w, dtype=torch.float64) + 0.5) * image_w / map_w
    centres_v = (torch.arange(map_h, dtype=torch.float64) + 0.5) * image_h / map_h
    inside_u = (centres_u >= x) & (centres_u < x + width)
    inside_v = (centres_v >= y) & (centres_v < y + height)
    mask = inside_v[:, None] & inside_u[None, :]
    if not bool(mask.any()):
        col = min(int((x + width / 2) * map_w / image_w), map_w - 1)
        row = min(int((y + height / 2) * map_h / image_h), map_h - 1)
        mask[row, col] = True
    return mask


def pixel_in_roi(pixel: Sequence[float], roi: Sequence[int]) -> tuple[float, float]:
    """Edge-origin `pixel (u, v)` moved to the nearest pixel centre inside `roi (x, y, width, height)`
    (unchanged when it is inside). A cell's centre can lie outside a region smaller than the cell (the
    cell `roi_cells` keeps for it): the answer is then the region's pixel nearest to that centre."""
    x, y, width, height = (float(value) for value in roi)
    u = min(max(float(pixel[0]), x + 0.5), x + width - 0.5)
    v = min(max(float(pixel[1]), y + 0.5), y + height - 0.5)
    return u, v


def restrict_to_cells(final_map: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """`final_map` with every cell outside `cells` set to -inf: argmax and peaks stay inside."""
    return final_map.masked_fill(~cells.to(final_map.device), -math.inf)
