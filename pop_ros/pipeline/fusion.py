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
from pop_ros.pipeline.api import Support, from_core_pixel, to_core_pixel
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


def fuse_to_point(
    prior: torch.Tensor | None, maps: torch.Tensor | None, settings: PointerSettings, image_size: tuple[int, int]
) -> tuple[float, float, float, torch.Tensor]:
    """(u, v, score, the fused map (H', W')) from the text prior and the (K, H_t, W_t) visual maps."""
    final = core.fuse(
        prior,
        maps if maps is not None else [],
        shot_combination=settings.shot_combination,
        upsample=int(settings.upsample),
    )
    u, v = from_core_pixel(core.peak_to_pixel(final, image_size))
    return u, v, core.peak_score(final, maps, prior), final


def heatmap_at(final: torch.Tensor, image_size: tuple[int, int]) -> np.ndarray:
    """The fused map resized to `image_size (H, W)`, clamped at 0 and scaled to peak 1: float32."""
    heatmap = F.interpolate(final[None, None], size=tuple(image_size), mode="bilinear", align_corners=False)[0, 0]
    peak = float(heatmap.max())
    heatmap = heatmap.clamp_min(0) / peak if peak > 0 else heatmap.clamp_min(0)
    return heatmap.cpu().numpy().astype(np.float32)
