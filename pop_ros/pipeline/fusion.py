"""From one frame's features and one request's supports to the point: K-shot retrieval, the visual
maps, the text prior, their fusion and the heatmap. Tensor work only; the pointer times the stages."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pop_ros import core
from pop_ros.models.mllm import MLLMAdapter
from pop_ros.models.visual import VisualFeatures
from pop_ros.pipeline.api import Instance, Support, from_core_pixel, to_core_pixel
from pop_ros.pipeline.settings import PointerSettings


def retrieve(features: Sequence[VisualFeatures], target: VisualFeatures, max_shots: int, retrieval: str) -> list[int]:
    """Indices of the K (<= max_shots) supports to use: in order, or (retrieval "cls") the ones whose
    DINO [CLS] is closest to the target's, most similar first (ties keep the given order)."""
    order = list(range(len(features)))
    if retrieval == "cls" and len(features) > max_shots:
        support_cls = torch.stack([f.cls for f in features])  # (N, C)
        similarity = F.cosine_similarity(support_cls, target.cls[None], dim=-1)  # (N,)
        order = torch.argsort(similarity, descending=True, stable=True).tolist()
    return order[:max_shots]


def visual_maps(
    supports: Sequence[Support],
    features: Sequence[VisualFeatures],
    chosen: list[int],
    target: VisualFeatures,
    mode: str,
) -> torch.Tensor:
    """(K, H_t, W_t) similarity of the target's patches to each chosen support's clicked patch."""
    grids = [features[i].grid for i in chosen]  # K x (H_s, W_s, C)
    clicked = [
        core.click_to_patch(to_core_pixel(supports[i][1]), supports[i][0].shape[:2], grids[n].shape[:2])
        for n, i in enumerate(chosen)
    ]
    return core.visual_similarity_batch(grids, target.grid, clicked, mode=mode)


def text_prior(
    mllm: MLLMAdapter, head_maps: torch.Tensor, aggregation: str, sigma_tokens: float, device: torch.device
) -> torch.Tensor:
    """(H_l, W_l) text prior from the heads' `(N, H_l, W_l)` attention maps of the query to the
    image: smoothed, aggregated."""
    # sigma is in LLM tokens; Molmo2's map is on its patch grid (2 cells per token).
    sigma = sigma_tokens * mllm.cells_per_token
    return core.text_prior(head_maps.to(device), sigma=sigma, aggregation=aggregation)


def fuse_to_instances(
    prior: torch.Tensor | None,
    maps: torch.Tensor | None,
    settings: PointerSettings,
    image_size: tuple[int, int],
    visual_grid_w: int,
    max_instances: int = 1,
    roi: tuple[int, int, int, int] | None = None,
) -> tuple[list[Instance], torch.Tensor]:
    """(the instances: the answer, then by decreasing score; the fused map (H', W')) from the text prior
    and the (K, H_t, W_t) visual maps. Instance 0 is the map's global argmax (inside `roi (x, y, w, h)`
    when given); the others are its local maxima, `settings.instance_radius` patches of the
    `visual_grid_w`-wide visual grid apart."""
    final = core.fuse(
        prior,
        maps if maps is not None else [],
        shot_combination=settings.shot_combination,
        upsample=int(settings.upsample),
    )
    return read_instances(final, maps, prior, settings, image_size, visual_grid_w, max_instances, roi), final


def read_instances(
    final: torch.Tensor,
    maps: torch.Tensor | None,
    prior: torch.Tensor | None,
    settings: PointerSettings,
    image_size: tuple[int, int],
    visual_grid_w: int,
    max_instances: int = 1,
    roi: tuple[int, int, int, int] | None = None,
) -> list[Instance]:
    """The instances of a fused map `final (H', W')`: pixel and score of each peak. instances[0] is the
    map's highest peak (the single answer); the others, chosen as the map's next peaks, are listed in
    decreasing reported score (`core.peak_score`, what `min_score` is checked against; equal scores
    keep the map's order). The score is the visual match, while the map also holds the text prior, so
    instances[0]'s score can be below another instance's."""
    search = final
    if roi is not None:
        search = core.restrict_to_cells(final, core.roi_cells(final.shape, image_size, roi))
    # One patch of the visual grid spans final.shape[1] / visual_grid_w cells of the fused map.
    radius_cells = float(settings.instance_radius) * final.shape[1] / max(int(visual_grid_w), 1)
    cells = core.instance_cells(search, max(int(max_instances), 1), radius_cells, float(settings.instance_min_relative))
    instances = []
    for cell in cells:
        pixel = core.cell_centre_pixel(cell, final.shape, image_size)
        if roi is not None:  # a region smaller than a cell: its centre may lie outside the region
            pixel = core.pixel_in_roi(pixel, roi)
        u, v = from_core_pixel(pixel)
        instances.append(Instance(u, v, core.peak_score(final, maps, prior, cell=cell)))
    return instances[:1] + sorted(instances[1:], key=lambda instance: -instance.score)  # sorted() is stable


def heatmap_at(
    final: torch.Tensor, image_size: tuple[int, int], roi: tuple[int, int, int, int] | None = None
) -> np.ndarray:
    """The fused map resized to `image_size (H, W)`, clamped at 0 and scaled to peak 1: float32.
    With `roi (x, y, w, h)`: zero outside it and scaled to its peak inside (what was searched)."""
    heatmap = F.interpolate(final[None, None], size=tuple(image_size), mode="bilinear", align_corners=False)[0, 0]
    heatmap = heatmap.clamp_min(0)
    if roi is not None:
        x, y, width, height = roi
        inside = torch.zeros_like(heatmap, dtype=torch.bool)
        inside[y : y + height, x : x + width] = True
        heatmap = heatmap.masked_fill(~inside, 0.0)
    peak = float(heatmap.max())
    heatmap = heatmap / peak if peak > 0 else heatmap
    return heatmap.cpu().numpy().astype(np.float32)
