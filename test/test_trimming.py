"""Trimmed MLLM loading (models/trimming.py): the same maps and points as the whole model, from a model
that holds only decoder layers 0..deepest localization head and no lm_head."""

import re

import numpy as np
import pytest
import torch
import yaml

from pop_ros.models.presets import get_preset
from pop_ros.models.tiny import FAMILIES
from test.conftest import random_image

QUERIES = ("handle of the mug", "lid of the cup", "neck of the bottle")


def _config(family: str, **changes):
    return get_preset("tiny").replace(mllm=f"tiny:{family}", **changes)


@pytest.fixture(scope="module")
def pointer_pairs(tiny_visual):
    """Per family: (whole, trimmed) pointers on the same tiny checkpoint and the same visual encoder."""
    from pop_ros.pipeline import PartPointer

    pairs = {}
    for family in FAMILIES:
        whole_config, trimmed_config = _config(family, trim=False), _config(family)
        whole = PartPointer(tiny_visual, whole_config.load_mllm(), whole_config)
        trimmed = PartPointer(tiny_visual, trimmed_config.load_mllm(), trimmed_config)
        pairs[family] = whole, trimmed
    return pairs


# Tiny checkpoints: 6 plain layers (fallback heads: every head of layers 2-3, the middle third), or
# Qwen3.5's 8 hybrid layers with full attention at 3 and 7 only (middle third 2-4 holds just layer 3).
TINY_LAYERS = {family: 8 if family == "qwen3_5" else 6 for family in FAMILIES}


@pytest.mark.parametrize("family", FAMILIES)
def test_trimmed_model_holds_only_the_layers_up_to_the_fallback_heads(pointer_pairs, family):
    from pop_ros.models.heads import fallback_heads

    whole, trimmed = pointer_pairs[family]
    layers = TINY_LAYERS[family]
    assert (whole.mllm.num_layers, whole.mllm.loaded_layers) == (layers, layers)
    # The deepest fallback head, from the whole model's own layer kinds (the adapter's head_layers).
    deepest = max(layer for layer, _ in fallback_heads(layers, whole.mllm.num_heads, whole.mllm.head_layers))
    assert deepest == 3  # every tiny family: layer 3 (for Qwen3.5, its first full-attention layer)
    kept = deepest + 1
    assert (trimmed.mllm.num_layers, trimmed.mllm.loaded_layers) == (layers, kept)
    assert trimmed.mllm.head_layers == whole.mllm.head_layers  # the whole model's, though trimmed
    assert len(trimmed.mllm.decoder_layers()) == kept
    assert not list(trimmed.mllm.model.lm_head.parameters())
    whole_params = dict(whole.mllm.model.named_parameters())
    dropped = sum(
        value.numel()
        for name, value in whole_params.items()
        if name.startswith("lm_head.")
        or any(f"layers.{i}." in name and "language_model" in name for i in range(kept, layers))
    )
    trimmed_params = list(trimmed.mllm.model.parameters())
    assert sum(p.numel() for p in trimmed_params) == sum(p.numel() for p in whole_params.values()) - dropped
    assert dropped > 0
    assert not any(p.is_meta for p in trimmed_params)  # every kept weight was read from the checkpoint


def test_trimmed_qwen3_5_keeps_the_deltanet_layers_before_its_deepest_head(pointer_pairs):
    """The prefix state of a full-attention layer depends on the Gated DeltaNet layers before it."""
    whole, trimmed = pointer_pairs["qwen3_5"]
    kinds = ["linear_attn" if hasattr(layer, "linear_attn") else "self_attn" for layer in trimmed.mllm.decoder_layers()]
    assert kinds == ["linear_attn", "linear_attn", "linear_attn", "self_attn"]
    whole_weights = dict(whole.mllm.model.named_parameters())
    for name, value in trimmed.mllm.model.named_parameters():
        if "linear_attn" in name:
            assert torch.equal(value, whole_weights[name]), name  # read from the checkpoint, not initialised


@pytest.mark.parametrize("family", FAMILIES)
def test_trimmed_maps_equal_whole_maps_exactly(pointer_pairs, family, rng):
    whole, trimmed = pointer_pairs[family]
    image = random_image(rng, 120, 160)
    heads, _ = trimmed.text_heads()
    assert heads == whole.text_heads()[0]  # both resolve the fallback against the whole layer count
    for query in QUERIES[:2]:
        expected = whole.mllm.head_maps(image, query, heads)
        assert torch.equal(trimmed.mllm.head_maps(image, query, heads), expected)
        assert torch.equal(
            trimmed.mllm.head_maps_eager(image, query, heads), whole.mllm.head_maps_eager(image, query, heads)
        )
    # Per-frame prefix reuse: one prefix, several queries, each equal to the whole model's.
    whole_prefix = whole.mllm.image_prefix(image, QUERIES[0], depth=3)
    trimmed_prefix = trimmed.mllm.image_prefix(image, QUERIES[0], depth=3)
    for query in QUERIES:
        expected = whole.mllm.head_maps_from_prefix(whole_prefix, query, heads)
        assert torch.equal(trimmed.mllm.head_maps_from_prefix(trimmed_prefix, query, heads), expected)


@pytest.mark.parametrize("family", FAMILIES)
def test_trimmed_points_equal_whole_points_exactly(pointer_pairs, family, rng):
    from pop_ros.pipeline import PointRequest

    whole, trimmed = pointer_pairs[family]
    image, support = random_image(rng, 120, 160), random_image(rng, 96, 128)
    supports = [(support, (40.0, 30.0))]
    for pointer in (whole, trimmed):
        pointer.clear_frame_cache()
    one = [p.point(image, QUERIES[0], supports=supports) for p in (whole, trimmed)]
    # point_many: the frame's MLLM prefix is computed once and reused by every query.
    many = [p.point_many(image, [PointRequest(q, supports=supports) for q in QUERIES]) for p in (whole, trimmed)]
    pairs = [tuple(one)] + list(zip(*many, strict=True))
    for expected, got in pairs:
        assert (got.u, got.v, got.score) == (expected.u, expected.v, expected.score)
        assert got.heatmap.dtype == expected.heatmap.dtype and np.array_equal(got.heatmap, expected.heatmap)


def test_deeper_heads_than_loaded_are_refused_with_the_reason(pointer_pairs, rng):
    from pop_ros.pipeline import PointerSettings

    _, trimmed = pointer_pairs["qwen2_5_vl"]
    image = random_image(rng, 64, 64)
    with pytest.raises(ValueError, match=r"needs decoder layer 5 but this MLLM was loaded trimmed to layers 0-3 of 6"):
        trimmed.mllm.head_maps(image, QUERIES[0], [(2, 0), (5, 1)])
    with pytest.raises(ValueError, match="mllm_trim false"):
        trimmed.mllm.image_prefix(image, QUERIES[0], depth=4)
    with pytest.raises(RuntimeError, match="native pointing needs the whole MLLM"):
        trimmed.mllm.generate_text(image, "Point to the lid.", max_new_tokens=2)
    # The every-head ablation needs layers 4-5: refused when set, as a PointerError (a node answers
    # the reason and keeps serving), not answered from a shorter model; the old settings stay.
    from pop_ros.pipeline import PointerError

    settings = trimmed.settings
    with pytest.raises(PointerError, match=r"head_set 'all' needs decoder layer 5 but this MLLM was loaded trimmed"):
        trimmed.settings = PointerSettings(head_set="all")
    assert trimmed.settings is settings
    with pytest.raises(PointerError, match="loaded trimmed"):
        type(trimmed)(trimmed.visual, trimmed.mllm, trimmed.model_config, PointerSettings(head_set="all"))


def test_head_file_sets_the_kept_depth(tmp_path, tiny_visual):
    from pop_ros.models.trimming import UNTRIMMED_LAYERS

    path = tmp_path / "heads.yaml"
    path.write_text(yaml.safe_dump({"heads": [[1, 0], [2, 3]]}))
    adapter = _config("internvl", heads_file=str(path)).load_mllm()
    assert (adapter.num_layers, adapter.loaded_layers) == (6, 3)
    assert getattr(adapter.model.config.get_text_config(), UNTRIMMED_LAYERS) == 6
    # A head file naming a layer the checkpoint does not have fails the load with the file's reason.
    path.write_text(yaml.safe_dump({"heads": [[7, 0]]}))
    from pop_ros.models.loading import ModelLoadError

    with pytest.raises(ModelLoadError, match="outside the model's 6 x 4 heads"):
        _config("internvl", heads_file=str(path)).load_mllm()


def test_cli_flags_map_to_the_configuration():
    import argparse

    from pop_ros.cli.common import add_model_arguments, model_overrides

    parser = argparse.ArgumentParser()
    add_model_arguments(parser)
    assert model_overrides(parser.parse_args([])) == {}
    overrides = model_overrides(parser.parse_args(["--no-trim", "--mllm-quantization", "int8"]))
    assert overrides == {"trim": False, "mllm_quantization": "int8"}


@pytest.mark.slow  # 17 s: loads and trims a checkpoint twice
def test_dropped_layers_never_become_resident_when_loading_a_saved_checkpoint(tmp_path):
    """Loading a saved 48-layer bf16 checkpoint as float32 in a fresh process, whole and trimmed to
    layer 2 (3 layers kept): which checkpoint tensors were read (a tensor never read was never
    materialised), and the peak RSS. RSS alone proved flaky as a bound on the trimmed load: with the
    file in the page cache the kernel maps neighbouring file pages in on each fault (seen: +155 MiB
    and +735 MiB in full-suite runs against +36 MiB alone), so the proof is the record of reads."""
    from transformers import Qwen2_5_VLConfig

    from pop_ros.models.load_rss import measure, save_random_checkpoint_in_child

    text = {
        "hidden_size": 256, "intermediate_size": 1536, "num_hidden_layers": 48, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 128,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [8, 12, 12]},
    }  # fmt: skip
    vision = {"depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 256}
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision)
    save_random_checkpoint_in_child(config, tmp_path, "bfloat16")
    file_bytes = sum(path.stat().st_size for path in tmp_path.glob("*.safetensors"))
    trimmed = measure(tmp_path, "float32", trim=True, deepest=2)
    whole = measure(tmp_path, "float32", trim=False)
    assert (whole["decoder_layers"], trimmed["decoder_layers"]) == (48, 3)
    dropped_bytes = whole["weight_bytes"] - trimmed["weight_bytes"]  # float32: twice their bytes on disk
    assert dropped_bytes > 1.8 * file_bytes * 0.9

    # Never materialised: no tensor of a dropped layer (3..47) nor lm_head was read from the file, while
    # the whole model read every one of them (the record sees reads: it is not empty by accident).
    def dropped(key: str) -> bool:
        match = re.search(r"language_model\.layers\.(\d+)\.", key)
        return (match is not None and int(match.group(1)) >= 3) or key.startswith("lm_head")

    assert not [key for key in trimmed["read_keys"] if dropped(key)], trimmed["read_keys"]
    assert sum(dropped(key) for key in whole["read_keys"]) >= 45 * 9
    assert any("layers.2." in key for key in trimmed["read_keys"])  # the kept layers were read
    # Peak RSS (informative here: file pages in the page cache may be mapped in as well): the whole
    # load holds at least its converted weights.
    whole_growth = whole["peak_rss_bytes"] - whole["rss_before_load_bytes"]
    assert whole_growth >= 0.9 * whole["weight_bytes"], whole


def test_evaluation_key_ignores_trimming_but_not_quantization():
    from pop_ros.evaluation.runner import model_configuration

    plain = model_configuration("tiny", {}, cuda_available=False)
    assert model_configuration("tiny", {"trim": False}, cuda_available=False) == plain  # equal predictions
    assert "trim" not in plain and "mllm_quantization" not in plain  # keys of earlier runs still match
    quantized = model_configuration("tiny", {"mllm_quantization": "int8"}, cuda_available=False)
    assert quantized["mllm_quantization"] == "int8" and quantized != plain
