"""Which models and localization heads a pointer uses: the configuration of a preset, loading it,
the head file, and the heads the text prior reads under given settings."""

from __future__ import annotations

import logging
import pathlib
import time

from pop_ros.models.heads import fallback_heads, load_head_file
from pop_ros.models.mllm import MLLMAdapter
from pop_ros.models.presets import ModelConfig, default_head_file, get_preset, head_file_candidates
from pop_ros.models.visual import VisualEncoder
from pop_ros.pipeline.settings import PointerSettings

LOG = logging.getLogger(__name__)

RANDOM_WEIGHTS_BANNER = (
    "RANDOM WEIGHTS: the '{name}' models are tiny and randomly initialised; every point they give is "
    "meaningless. Use a real preset (see README) for real pointing."
)

Heads = list[tuple[int, int]]  # (layer, head) pairs


def resolve_model_config(preset: str, **overrides) -> ModelConfig:
    """The configuration `PartPointer.from_preset(preset, **overrides)` loads (None overrides are
    ignored), without loading it: the evaluation records it before any model is read."""
    return get_preset(preset).replace(**{k: v for k, v in overrides.items() if v is not None})


def load_models(model_config: ModelConfig, name: str) -> tuple[VisualEncoder, MLLMAdapter, dict[str, float]]:
    """(visual encoder, MLLM adapter, load seconds of each) for `model_config`."""
    if model_config.random_weights:
        LOG.warning(RANDOM_WEIGHTS_BANNER.format(name=name))
    started = time.perf_counter()
    visual = model_config.load_visual()
    visual_s = time.perf_counter() - started
    started = time.perf_counter()
    mllm = model_config.load_mllm()
    return visual, mllm, {"visual": visual_s, "mllm": time.perf_counter() - started}


def heads_file_for(model_config: ModelConfig) -> pathlib.Path | None:
    """The head file a pointer on `model_config` reads, or None when it falls back to all heads."""
    if model_config.heads_file:
        return pathlib.Path(model_config.heads_file)
    path = default_head_file(model_config.mllm)
    return path if path.is_file() else None


def calibrated_heads(mllm: MLLMAdapter, model_config: ModelConfig) -> tuple[Heads | None, str]:
    """(the calibrated heads, their file) or (None, "fallback") when no head file exists."""
    path = heads_file_for(model_config)
    if path is not None:
        selected = load_head_file(path, mllm.num_layers, mllm.num_heads, layer_problem=mllm.head_layer_problem)
        LOG.info("localization heads of %s from %s: %s", model_config.mllm, path, selected)
        return selected, str(path)
    fallback_layers = sorted({layer for layer, _ in fallback_heads(mllm.num_layers, mllm.num_heads, mllm.head_layers)})
    LOG.warning(
        "no calibrated localization heads for %s (looked for %s): using the mean over all heads of layers "
        "%s as the text prior until `pop-find-heads` has been run for this model%s",
        model_config.mllm,
        " and ".join(str(candidate) for candidate in head_file_candidates(model_config.mllm)),
        fallback_layers,
        f" ({mllm.head_layer_note})" if mllm.head_layer_note else "",
    )
    return None, "fallback"


def text_heads(mllm: MLLMAdapter, calibrated: Heads | None, settings: PointerSettings) -> tuple[Heads, str]:
    """(heads, aggregation) the text prior reads under `settings`."""
    if settings.head_set == "all":
        heads = [(layer, head) for layer in mllm.head_layers for head in range(mllm.num_heads)]
        return heads, settings.aggregation
    if calibrated is None:
        return fallback_heads(mllm.num_layers, mllm.num_heads, mllm.head_layers), "mean"
    return calibrated, settings.aggregation
