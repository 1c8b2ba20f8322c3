"""The real models' shapes: their checkpoints' config.json figures, for models built on the meta
device or with random weights at the real widths and depths (`pop-bench --shape`, the memory
footprint, `load_rss`). No torch here: pop-bench's --help lists the shapes without importing it."""

from __future__ import annotations

# Real checkpoints' config.json figures (text and vision tower of the MLLM, the DINOv3 ViT); the
# token ids are mapped to the small tokenizer, which changes no FLOP but the embedding lookups.
QWEN25_VL_3B_TEXT = {
    "hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36, "num_attention_heads": 16,
    "num_key_value_heads": 2, "vocab_size": 151936, "max_position_embeddings": 128000, "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
    "tie_word_embeddings": True,
}  # fmt: skip
QWEN25_VL_7B_TEXT = {
    "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
    "num_key_value_heads": 4, "vocab_size": 152064, "max_position_embeddings": 128000, "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
    "tie_word_embeddings": False,
}  # fmt: skip
QWEN25_VL_VISION = {  # the same tower in 3B and 7B; only its output width differs
    "depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16, "patch_size": 14,
    "spatial_merge_size": 2, "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31],
}  # fmt: skip
DINOV3_VITB16 = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12}
DINOV3_VITL16 = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16}

# Qwen3.5 (hybrid: a full-attention layer every 4th, the rest Gated DeltaNet). 4B and 9B: checked
# against their published config.json figures (text widths, heads, DeltaNet heads, vocabulary, tied
# embeddings; the vision towers: 24 x 1024 / 4096 for the 4B, 27 x 1152 / 4304 for the 9B).
QWEN35_TEXT = {
    "num_hidden_layers": 32, "num_attention_heads": 16, "num_key_value_heads": 4, "head_dim": 256,
    "linear_num_key_heads": 16, "linear_num_value_heads": 32, "linear_key_head_dim": 128, "linear_value_head_dim": 128,
    "vocab_size": 248320, "max_position_embeddings": 262144,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000000.0, "partial_rotary_factor": 0.25,
                        "mrope_section": [11, 11, 10], "mrope_interleaved": True},
}  # fmt: skip
QWEN35_VISION = {"patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2, "num_position_embeddings": 2304}

# name -> (MLLM text config, MLLM vision config, DINOv3 config, visual model named in the report)
SHAPES = {
    "qwen3.5-4b": ({**QWEN35_TEXT, "hidden_size": 2560, "intermediate_size": 9216, "tie_word_embeddings": True},
                   {**QWEN35_VISION, "depth": 24, "hidden_size": 1024, "intermediate_size": 4096, "num_heads": 16,
                    "out_hidden_size": 2560}, DINOV3_VITB16, "dinov3-vitb16"),
    "qwen3.5-9b": ({**QWEN35_TEXT, "hidden_size": 4096, "intermediate_size": 12288},
                   {**QWEN35_VISION, "depth": 27, "hidden_size": 1152, "intermediate_size": 4304, "num_heads": 16,
                    "out_hidden_size": 4096}, DINOV3_VITL16, "dinov3-vitl16"),
    "qwen2.5-vl-3b": (QWEN25_VL_3B_TEXT, {**QWEN25_VL_VISION, "out_hidden_size": 2048}, DINOV3_VITB16,
                      "dinov3-vitb16"),
    "qwen2.5-vl-7b": (QWEN25_VL_7B_TEXT, {**QWEN25_VL_VISION, "out_hidden_size": 3584}, DINOV3_VITL16,
                      "dinov3-vitl16"),
    # The same code on models small enough for a CPU test of the benchmark itself (tools/device_check.py --dry-run).
    "tiny": (
        {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 6, "num_attention_heads": 4,
         "num_key_value_heads": 2, "vocab_size": 128,
         "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}},
        {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 64,
         "fullatt_block_indexes": [1], "window_size": 112},
        {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2},
        "dinov3-tiny",
    ),
}  # fmt: skip
