"""pop-bench --memory (models/footprint.py): preset memory from real configs on the meta device."""

import json

import pytest

FIELDS = {
    "mllm_whole_bytes",
    "mllm_kept_bytes",
    "vision_tower_bytes",
    "dino_bytes",
    "activations_640x480_bytes",
    "total_bytes",
}


@pytest.fixture(scope="module")
def report():
    from pop_ros.models.footprint import memory_report

    return memory_report(["qwen2.5-vl-3b", "qwen2.5-vl-7b"])


def _qwen_layer_params(hidden, kv_width, intermediate):
    """One Qwen2 decoder layer: q/k/v with biases, o without, gated MLP, two RMS norms."""
    return (
        (hidden * hidden + hidden)
        + 2 * (hidden * kv_width + kv_width)
        + hidden * hidden
        + 3 * hidden * intermediate
        + 2 * hidden
    )


def test_whole_models_match_the_published_parameter_counts(report):
    # Model cards: Qwen2.5-VL-3B-Instruct 3.75 B parameters (lm_head tied), 7B-Instruct 8.29 B.
    for preset, params in (("qwen2.5-vl-3b", 3.754e9), ("qwen2.5-vl-7b", 8.292e9)):
        whole = report["presets"][preset]["bfloat16"]["mllm_whole_bytes"]
        assert whole == pytest.approx(2 * params, rel=0.002)


def test_kept_bytes_drop_the_layers_after_the_fallback_heads_and_lm_head(report):
    row = report["presets"]["qwen2.5-vl-7b"]["bfloat16"]
    # 28 layers: fallback heads in layers 9-17, so layers 18-27 (10) and lm_head (152064 x 3584) go.
    dropped = 10 * _qwen_layer_params(3584, 4 * 128, 18944) + 152064 * 3584
    assert (row["kept_layers"], row["layers"]) == (18, 28)
    assert row["mllm_whole_bytes"] - row["mllm_kept_bytes"] == 2 * dropped
    row3 = report["presets"]["qwen2.5-vl-3b"]["bfloat16"]
    # 36 layers, heads in 12-23: layers 24-35 (12) go; the tied lm_head costs nothing either way.
    assert row3["mllm_whole_bytes"] - row3["mllm_kept_bytes"] == 2 * 12 * _qwen_layer_params(2048, 2 * 128, 11008)
    assert row["total_bytes"] == row["mllm_kept_bytes"] + row["dino_bytes"] + row["activations_640x480_bytes"]


def test_int8_halves_the_linear_weights_not_dino(report):
    bf16, int8 = report["presets"]["qwen2.5-vl-7b"]["bfloat16"], report["presets"]["qwen2.5-vl-7b"]["int8"]
    assert 0.5 < int8["mllm_kept_bytes"] / bf16["mllm_kept_bytes"] < 0.6  # embeddings stay bf16
    assert int8["dino_bytes"] == bf16["dino_bytes"]
    # DINOv3 ViT-L/16: about 0.30 B parameters.
    assert bf16["dino_bytes"] == pytest.approx(2 * 0.303e9, rel=0.02)


def test_bench_memory_json_lists_every_real_preset(capsys):
    from pop_ros.bench.cli import main
    from pop_ros.models.presets import PRESETS

    assert main(["--memory", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    real = {name for name, config in PRESETS.items() if not config.random_weights}
    assert set(printed["presets"]) == real
    for formats in printed["presets"].values():
        assert set(formats) == {"bfloat16", "int8"}
        for row in formats.values():
            assert FIELDS <= set(row) and row["mllm_kept_bytes"] < row["mllm_whole_bytes"]


def test_hybrid_presets_keep_layers_up_to_their_deepest_full_attention_fallback_head():
    from pop_ros.models.footprint import memory_report

    printed = memory_report(["qwen3.5-0.8b", "qwen3.5-9b", "ovis2-2b"])["presets"]
    # 24 layers: the middle third 8-15 holds full-attention layers 11 and 15 -> 16 kept. 32 layers: the
    # middle third 10-20 holds 11, 15 and 19 -> 20 kept, where the plain (every-layer) rule keeps 21.
    assert (printed["qwen3.5-0.8b"]["bfloat16"]["kept_layers"], printed["qwen3.5-0.8b"]["bfloat16"]["layers"]) == (
        16,
        24,
    )
    assert (printed["qwen3.5-9b"]["bfloat16"]["kept_layers"], printed["qwen3.5-9b"]["bfloat16"]["layers"]) == (20, 32)
    assert printed["ovis2-2b"]["bfloat16"]["kept_layers"] == 18  # plain Qwen2 decoder: 28 layers, heads 9-17


def test_hybrid_frame_cache_counts_keys_values_of_attention_layers_and_deltanet_states():
    from transformers import Qwen3_5TextConfig

    from pop_ros.models.footprint import frame_cache_bytes
    from pop_ros.models.shapes import QWEN35_TEXT

    config = Qwen3_5TextConfig(**{**QWEN35_TEXT, "hidden_size": 4096, "intermediate_size": 12288})
    # 9B, layers 0-19: 5 full-attention layers (3, 7, 11, 15, 19) hold keys+values of 330 tokens x 4 kv
    # heads x 256 (bf16); 15 DeltaNet layers hold a conv state (2 x 16 x 128 + 32 x 128 channels x
    # kernel 4, bf16) and a recurrent state (32 x 128 x 128, float32), whatever the token count.
    kv = 2 * 330 * 4 * 256 * 2
    state = (2 * 16 * 128 + 32 * 128) * 4 * 2 + 32 * 128 * 128 * 4
    assert frame_cache_bytes(config, 20, 330) == 5 * kv + 15 * state == 39_198_720
