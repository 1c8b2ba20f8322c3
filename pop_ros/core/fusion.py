"""POP fusion math on tensors: text prior, bidirectional visual correspondence, fusion, read-out.

Pure torch, no ROS, no transformers, no file I/O. Every function works on CPU and CUDA and accepts
float32 or float16 inputs; similarities and maps are computed in float32 because argmax ties and
products of K small numbers are not safe in half precision, and the maps are small.

Shapes use the paper's names: support grid (H_s, W_s), target grid (H_t, W_t), LLM image-token
grid (H_l, W_l), feature width C, K supports.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from pop_ros.choices import AGGREGATIONS, SHOT_COMBINATIONS, SIMILARITY_MODES  # noqa: F401 (re-exported)

# Upper bound on the float32 elements of one (K, N_s, chunk) support x target similarity block:
# 2**24 elements = 64 MiB. A 64x64 target against K=10 64x64 supports would need 640 MiB at once.
DEFAULT_MAX_BLOCK_ELEMENTS = 2**24


# --------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------
def click_to_patch(click_uv: Sequence[float], image_size: Sequence[int], grid_size: Sequence[int]) -> tuple[int, int]:
    """Map a pixel click (u, v) to the (row, col) of the grid cell that contains it.

    `image_size = (H, W)` pixels, `grid_size = (H_g, W_g)` cells; the grid covers the whole image
    (never cropped or padded). row = floor(v * H_g / H), col = floor(u * W_g / W), clipped.
    A click outside [0, W) x [0, H) is an error: it means the exemplar is wrong, not a rounding issue.
    """
    u, v = float(click_uv[0]), float(click_uv[1])
    height, width = int(image_size[0]), int(image_size[1])
    grid_h, grid_w = int(grid_size[0]), int(grid_size[1])
    if height <= 0 or width <= 0 or grid_h <= 0 or grid_w <= 0:
        raise ValueError(f"image size {image_size} and grid size {grid_size} must be positive")
    if not (math.isfinite(u) and math.isfinite(v)) or not (0 <= u < width and 0 <= v < height):
        raise ValueError(f"click (u={u}, v={v}) is outside the {width}x{height} image")
    row = min(max(int(math.floor(v * grid_h / height)), 0), grid_h - 1)
    col = min(max(int(math.floor(u * grid_w / width)), 0), grid_w - 1)
    return row, col


def peak_to_pixel(final_map: torch.Tensor, image_size: Sequence[int]) -> tuple[float, float]:
    """Pixel (u, v) of the centre of the argmax cell of `final_map (h, w)` in an image (H, W).

    u = (j + 0.5) * W / w, v = (i + 0.5) * H / h. Ties go to the first cell in row-major order.
    """
    if final_map.dim() != 2 or final_map.numel() == 0:
        raise ValueError(f"final_map must be a non-empty (h, w) tensor, got {tuple(final_map.shape)}")
    height, width = float(image_size[0]), float(image_size[1])
    map_h, map_w = final_map.shape
    flat_index = int(torch.argmax(torch.nan_to_num(final_map.float(), nan=-math.inf)))
    row, col = divmod(flat_index, map_w)
    return (col + 0.5) * width / map_w, (row + 0.5) * height / map_h


def peak_cell(final_map: torch.Tensor) -> tuple[int, int]:
    """(row, col) of the argmax of a 2-D map (first in row-major order on ties)."""
    flat_index = int(torch.argmax(torch.nan_to_num(final_map.float(), nan=-math.inf)))
    return divmod(flat_index, final_map.shape[1])


# --------------------------------------------------------------------------------------------
# Text branch
# --------------------------------------------------------------------------------------------
def _gaussian_kernel1d(sigma: float, truncate: float, device: torch.device) -> torch.Tensor:
    # Same kernel as scipy.ndimage.gaussian_filter: radius = int(truncate * sigma + 0.5).
    radius = int(truncate * float(sigma) + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64, device=device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return (kernel / kernel.sum()).float()


def _reflect_indices(length: int, radius: int, device: torch.device) -> torch.Tensor:
    # scipy "reflect" = half-sample symmetric (d c b a | a b c d | d c b a), repeated for any radius.
    positions = torch.arange(-radius, length + radius, device=device) % (2 * length)
    return torch.where(positions >= length, 2 * length - 1 - positions, positions)


def gaussian_smooth(maps: torch.Tensor, sigma: float = 1.0, truncate: float = 4.0) -> torch.Tensor:
    """Smooth each `(N, H, W)` map over its last two axes like
    `scipy.ndimage.gaussian_filter(map, sigma, mode="reflect", truncate=truncate)`. sigma 0 = copy."""
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    maps = maps.float()
    if sigma == 0:
        return maps.clone()
    kernel = _gaussian_kernel1d(sigma, truncate, maps.device)
    radius = (kernel.numel() - 1) // 2
    num_maps, height, width = maps.shape
    rows = _reflect_indices(height, radius, maps.device)
    cols = _reflect_indices(width, radius, maps.device)
    # Separable: along W then along H, each a 1-D convolution over the reflected signal.
    padded = maps[:, :, cols].reshape(num_maps * height, 1, width + 2 * radius)
    smoothed = F.conv1d(padded, kernel.view(1, 1, -1)).reshape(num_maps, height, width)
    padded = smoothed[:, rows, :].transpose(1, 2).reshape(num_maps * width, 1, height + 2 * radius)
    smoothed = F.conv1d(padded, kernel.view(1, 1, -1)).reshape(num_maps, width, height)
    return smoothed.transpose(1, 2).contiguous()


def text_prior(head_maps: torch.Tensor, sigma: float = 1.0, aggregation: str = "sum") -> torch.Tensor:
    """S_text from localization-head attention maps.

    `head_maps (N, H_l, W_l)`: last-prompt-token attention over the image tokens, one map per head.
    Each map is Gaussian-smoothed (scipy semantics, mode "reflect", truncate 4.0) and the N maps
    are aggregated by `sum` (the paper's localization heads), `mean` or `max` (its ablations).
    Returns `(H_l, W_l)` float32.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    if head_maps.dim() != 3 or head_maps.shape[0] == 0 or head_maps.shape[1] == 0 or head_maps.shape[2] == 0:
        raise ValueError(f"head_maps must be a non-empty (N, H_l, W_l) tensor, got {tuple(head_maps.shape)}")
    smoothed = gaussian_smooth(head_maps, sigma=sigma)
    if aggregation == "sum":
        return smoothed.sum(dim=0)
    if aggregation == "mean":
        return smoothed.mean(dim=0)
    return smoothed.amax(dim=0)


# --------------------------------------------------------------------------------------------
# Visual branch
# --------------------------------------------------------------------------------------------
def _as_support_batch(
    support_feats: torch.Tensor | Sequence[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
    """Stack K support grids (each (H_s, W_s, C), sizes may differ) into unit vectors
    `(K, N_max, C)` plus a validity mask `(K, N_max)` and the list of grid sizes."""
    grids = (
        [support_feats] if isinstance(support_feats, torch.Tensor) and support_feats.dim() == 3 else list(support_feats)
    )
    if not grids:
        raise ValueError("at least one support feature grid is needed")
    channels = grids[0].shape[-1]
    sizes = []
    for grid in grids:
        if grid.dim() != 3 or grid.shape[0] == 0 or grid.shape[1] == 0 or grid.shape[2] != channels:
            raise ValueError(f"support grids must be (H_s, W_s, {channels}), got {tuple(grid.shape)}")
        sizes.append((int(grid.shape[0]), int(grid.shape[1])))
    max_patches = max(h * w for h, w in sizes)
    device = grids[0].device
    unit = torch.zeros(len(grids), max_patches, channels, device=device)
    valid = torch.zeros(len(grids), max_patches, dtype=torch.bool, device=device)
    for k, grid in enumerate(grids):
        flat = F.normalize(grid.reshape(-1, channels).float(), dim=-1)
        unit[k, : flat.shape[0]] = flat
        valid[k, : flat.shape[0]] = True
    return unit, valid, sizes


def visual_similarity_batch(
    support_feats: torch.Tensor | Sequence[torch.Tensor],
    target_feats: torch.Tensor,
    support_rcs: Sequence[Sequence[int]],
    mode: str = "bidirectional",
    max_block_elements: int = DEFAULT_MAX_BLOCK_ELEMENTS,
) -> torch.Tensor:
    """S_visual for K supports in one batched operation; returns `(K, H_t, W_t)` float32.

    `support_feats`: `(K, H_s, W_s, C)` or a list of K `(H_s, W_s, C)` grids of any sizes;
    `target_feats (H_t, W_t, C)`; `support_rcs`: K (row, col) support patches.
    forward  S_fwd[j] = cos(z_s^{i_s}, z_t^j)
    backward S_bwd[j] = cos(z_s^{i_s}, z_s^{m(j)}), m(j) = argmax_i cos(z_s^i, z_t^j)
    bidirectional = S_fwd * S_bwd. Every cosine is clamped at 0 first (two negatives must not
    multiply into a positive). The support x target block is processed in target chunks so that no
    more than `max_block_elements` similarities exist at once.
    """
    if mode not in SIMILARITY_MODES:
        raise ValueError(f"mode must be one of {SIMILARITY_MODES}, got {mode!r}")
    if target_feats.dim() != 3 or target_feats.shape[0] == 0 or target_feats.shape[1] == 0:
        raise ValueError(f"target_feats must be (H_t, W_t, C), got {tuple(target_feats.shape)}")
    support_unit, support_valid, sizes = _as_support_batch(support_feats)  # (K, N_s, C), (K, N_s)
    num_shots, max_patches, channels = support_unit.shape
    if target_feats.shape[-1] != channels:
        raise ValueError(f"target has {target_feats.shape[-1]} channels, supports have {channels}")
    if len(support_rcs) != num_shots:
        raise ValueError(f"{num_shots} support grids but {len(support_rcs)} support patches")
    flat_index = []
    for (row, col), (grid_h, grid_w) in zip(support_rcs, sizes, strict=True):
        if not (0 <= int(row) < grid_h and 0 <= int(col) < grid_w):
            raise ValueError(f"support patch ({row}, {col}) is outside its {grid_h}x{grid_w} grid")
        flat_index.append(int(row) * grid_w + int(col))
    height_t, width_t, _ = target_feats.shape
    target_unit = F.normalize(target_feats.reshape(-1, channels).float(), dim=-1)  # (N_t, C)
    index = torch.tensor(flat_index, device=support_unit.device)
    anchor = support_unit[torch.arange(num_shots, device=index.device), index]  # (K, C)

    if mode == "forward":
        forward = (target_unit @ anchor.T).clamp_min(0).T  # (K, N_t)
        return forward.reshape(num_shots, height_t, width_t)

    # Self-similarity of each support patch to its anchor: (K, N_s); padded rows never win argmax.
    anchor_self = torch.einsum("knc,kc->kn", support_unit, anchor).clamp_min(0)
    chunk = max(1, max_block_elements // max(1, num_shots * max_patches))
    backward = torch.empty(num_shots, target_unit.shape[0], device=target_unit.device)
    for start in range(0, target_unit.shape[0], chunk):
        block = torch.einsum("knc,tc->knt", support_unit, target_unit[start : start + chunk])
        block.masked_fill_(~support_valid[:, :, None], -math.inf)
        best_support = block.argmax(dim=1)  # (K, chunk): m(j)
        backward[:, start : start + chunk] = torch.gather(anchor_self, 1, best_support)
    if mode == "backward":
        return backward.reshape(num_shots, height_t, width_t)
    forward = (target_unit @ anchor.T).clamp_min(0).T
    return (forward * backward).reshape(num_shots, height_t, width_t)


def visual_similarity(
    support_feats: torch.Tensor,
    target_feats: torch.Tensor,
    support_rc: Sequence[int],
    mode: str = "bidirectional",
) -> torch.Tensor:
    """S_visual for one support: `support_feats (H_s, W_s, C)`, `target_feats (H_t, W_t, C)`,
    `support_rc = (row, col)`; returns `(H_t, W_t)`. See `visual_similarity_batch`."""
    return visual_similarity_batch([support_feats], target_feats, [support_rc], mode=mode)[0]


# --------------------------------------------------------------------------------------------
# Fusion and score
# --------------------------------------------------------------------------------------------
def _resize(grid: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if tuple(grid.shape[-2:]) == tuple(size):
        return grid
    return F.interpolate(grid[None, None], size=tuple(size), mode="bilinear", align_corners=False)[0, 0]


def combine_shots(visual_maps: torch.Tensor | Sequence[torch.Tensor], combination: str = "mean") -> torch.Tensor:
    """Combine K `(H_t, W_t)` visual maps into one by `mean` (ours, default) or `product` (paper)."""
    if combination not in SHOT_COMBINATIONS:
        raise ValueError(f"shot_combination must be one of {SHOT_COMBINATIONS}, got {combination!r}")
    stacked = (
        visual_maps.float() if isinstance(visual_maps, torch.Tensor) else torch.stack([m.float() for m in visual_maps])
    )
    if stacked.dim() != 3 or stacked.shape[0] == 0:
        raise ValueError(f"visual maps must be K >= 1 maps of (H_t, W_t), got {tuple(stacked.shape)}")
    return stacked.mean(dim=0) if combination == "mean" else stacked.prod(dim=0)


def fuse(
    text_prior: torch.Tensor | None,
    visual_maps: torch.Tensor | Sequence[torch.Tensor],
    shot_combination: str = "mean",
    upsample: int = 2,
) -> torch.Tensor:
    """S_final = Interp(S_text) * combine_k(S_visual_k), upsampled `upsample`x.

    `text_prior (H_l, W_l)` or None (visual only); `visual_maps`: K `(H_t, W_t)` maps (list or
    `(K, H_t, W_t)`). The text map is resized to `(H_t, W_t)` bilinearly (align_corners=False) and
    clamped at 0. With K = 0 the text prior alone (0-shot) is upsampled at its own resolution.
    Returns `(upsample * H, upsample * W)` float32.
    """
    if upsample < 1 or int(upsample) != upsample:
        raise ValueError(f"upsample must be a positive integer, got {upsample}")
    num_maps = visual_maps.shape[0] if isinstance(visual_maps, torch.Tensor) else len(visual_maps)
    if num_maps == 0:
        if text_prior is None:
            raise ValueError("fuse needs a text prior, visual maps, or both")
        fused = text_prior.float().clamp_min(0)
    else:
        visual = combine_shots(visual_maps, shot_combination)
        fused = visual if text_prior is None else _resize(text_prior.float().clamp_min(0), visual.shape) * visual
    if fused.dim() != 2:
        raise ValueError(f"maps must be 2-D, got {tuple(fused.shape)}")
    if upsample == 1:
        return fused
    height, width = fused.shape
    return _resize(fused, (int(upsample) * height, int(upsample) * width))


def peak_score(
    final_map: torch.Tensor,
    visual_maps: torch.Tensor | Sequence[torch.Tensor] | None = None,
    text_prior: torch.Tensor | None = None,
    cell: tuple[int, int] | None = None,
) -> float:
    """Confidence that the part is visible, in [0, 1], at the peak of `final_map` (or at `cell`, a
    (row, col) of `final_map`: another instance's peak).

    With supports: the mean over the K supports of S_visual at the target patch that contains the
    predicted pixel, i.e. how well the chosen
    point matches the exemplars' part (bidirectional cosines clamped at 0, so 0 = nothing alike and
    1 = identical features). The text prior only chooses *where*; its absolute attention mass depends
    on the model and prompt, so it is not part of the score. A caller rejects "part not visible"
    below a threshold tuned on its own data (`min_score` in the node).
    Without supports (0-shot): the share of the smoothed text prior held by its peak cell, a
    concentration measure that is not comparable with the K-shot score.
    """
    row, col = peak_cell(final_map) if cell is None else (int(cell[0]), int(cell[1]))

    def value_at_peak(grid: torch.Tensor) -> float:
        # The cell of `grid` that contains the centre of the final map's peak cell.
        grid_row = min(int((row + 0.5) * grid.shape[0] / final_map.shape[0]), grid.shape[0] - 1)
        grid_col = min(int((col + 0.5) * grid.shape[1] / final_map.shape[1]), grid.shape[1] - 1)
        return float(grid[grid_row, grid_col])

    num_maps = (
        0
        if visual_maps is None
        else (visual_maps.shape[0] if isinstance(visual_maps, torch.Tensor) else len(visual_maps))
    )
    if num_maps > 0:
        return min(max(value_at_peak(combine_shots(visual_maps, "mean")), 0.0), 1.0)
    if text_prior is None:
        raise ValueError("peak_score needs the visual maps or, for 0-shot, the text prior")
    prior = text_prior.float().clamp_min(0)
    total = float(prior.sum())
    return value_at_peak(prior) / total if total > 0 else 0.0
