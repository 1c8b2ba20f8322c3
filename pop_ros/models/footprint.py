"""What each preset needs in memory, counted from the real model configs on the meta device.

Nothing is downloaded and no weight is allocated: each preset's MLLM and DINO model are built on
the meta device from their published config.json figures (`PRESET_SHAPES`), and their parameters
counted by name. Per preset and weight format:

- `mllm_whole_bytes`: the whole MLLM (vision tower, projector, every decoder layer, lm_head);
- `mllm_kept_bytes`: what a trimmed load holds (layers 0..deepest localization head, no lm_head),
  with the preset's head file if one is installed, else the fallback heads (middle third);
- `vision_tower_bytes`: the MLLM's vision side (everything outside its language model), in both;
- `dino_bytes`: the DINO patch-feature model (always in the float dtype);
- `activations_640x480_bytes`: an estimate for one 640x480 query (see `activation_bytes`);
- `total_bytes`: kept MLLM + DINO + activations (what the node holds with `mllm_trim` on).

`int8` is torchao's weight-only int8 (`mllm_quantization: int8`): every MLLM linear weight in one
byte plus one scale per output channel; embeddings, norms and lm_head stay bf16.
"""

from __future__ import annotations

import dataclasses
import re

import torch

GIB = 2**30
FLOAT_BYTES = 2  # bf16
DTYPES = ("bfloat16", "int8")


# ---- real configs ------------------------------------------------------------------------------
# Qwen2.5-VL text/vision and DINOv3 figures live in pop_ros.bench (the benchmark builds those shapes).
DINOV2_LARGE_REGISTERS = {
    "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "mlp_ratio": 4, "patch_size": 14,
    "image_size": 518, "num_register_tokens": 4,
}  # fmt: skip
# InternVL3-8B-hf: InternViT-300M-448px-V2.5 (transformers' InternVLVisionConfig defaults) + Qwen2.5-7B.
INTERNVL3_8B_TEXT = {
    "model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
    "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 151674, "tie_word_embeddings": False,
}  # fmt: skip
# Molmo2-8B: Qwen3-8B text and a 25-layer SigLIP so400m tower (transformers' Molmo2Config defaults);
# the adapter's MLP width follows the text model's.
MOLMO2_8B_ADAPTER = {"text_hidden_size": 4096, "intermediate_size": 12288}
# Qwen3.5 0.8B / 2B (4B and 9B live in pop_ros.models.shapes.SHAPES, which `pop-bench --shape` builds). 0.8B:
# Qwen/Qwen3.5-0.8B's config.json (text and vision). 2B: text widths as published; its vision tower is
# an estimate (Qwen3-VL-2B's 24 x 1024 tower), marked in docs/memory.md.
QWEN35_SMALL_TEXT = {
    "num_hidden_layers": 24, "num_attention_heads": 8, "num_key_value_heads": 2, "linear_num_value_heads": 16,
    "tie_word_embeddings": True,
}  # fmt: skip
QWEN35_0_8B = (
    {"hidden_size": 1024, "intermediate_size": 3584},
    {"depth": 12, "hidden_size": 768, "intermediate_size": 3072, "num_heads": 12, "out_hidden_size": 1024},
)
QWEN35_2B = (
    {"hidden_size": 2048, "intermediate_size": 6144},
    {"depth": 24, "hidden_size": 1024, "intermediate_size": 4096, "num_heads": 16, "out_hidden_size": 2048},
)
# Ovis2 -hf: the originals' LLM and AIMv2 tower (the Ovis2 model zoo: 2B = aimv2-large-patch14-448 +
# Qwen2.5-1.5B-Instruct, 8B = aimv2-huge-patch14-448 + Qwen2.5-7B-Instruct), with Qwen2.5's and
# AIMv2's published widths; 448 px tiles of 14 px patches, merged 2x2 (hidden_stride 2) into 256
# tokens. The visual vocabulary (65536, as Ovis1.6 and Ovis2.5) is an estimate.
OVIS2_VISION = {"image_size": 448, "patch_size": 14, "hidden_stride": 2, "vocab_size": 65536, "num_hidden_layers": 24}
OVIS2_2B = (
    {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12,
     "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True},
    {"hidden_size": 1024, "intermediate_size": 2816, "num_attention_heads": 8},
)  # fmt: skip
OVIS2_8B = (
    {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
     "num_key_value_heads": 4, "vocab_size": 152064, "tie_word_embeddings": False},
    {"hidden_size": 1536, "intermediate_size": 4096, "num_attention_heads": 12},
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class TokenCounts:
    """Sequence lengths of one 640x480 query (image tokens + a short prompt)."""

    vision_tokens: int  # tokens per vision-tower attention sequence
    vision_sequences: int  # crops/tiles run through the tower
    llm_tokens: int
    dino_tokens: int


# Qwen2.5-VL: 640x480 -> 644x476 px (multiples of 28) = 46x34 patches of 14 = 1564 tower tokens, 391 LLM
# image tokens (2x2 merge) + ~30 prompt. InternVL3: one 448 px tile = 1025 tower tokens, 256 LLM image tokens.
# Molmo2: low-res view + about 4 crops of 378 px (729 patches each); ~725 LLM image tokens.
# DINO at resolution 448 (longer side): 448x336 px = 588 patches of 16 (+5) or 768 of 14 (+5).
TOKENS = {
    "qwen2_5_vl": TokenCounts(vision_tokens=1564, vision_sequences=1, llm_tokens=421, dino_tokens=593),
    "internvl": TokenCounts(vision_tokens=1025, vision_sequences=1, llm_tokens=286, dino_tokens=593),
    "molmo2": TokenCounts(vision_tokens=729, vision_sequences=5, llm_tokens=755, dino_tokens=593),
    # Qwen3.5: 640x480 px = 40x30 patches of 16 (1200 tower tokens, one sequence), 300 LLM image tokens
    # (2x2 merge) + ~30 prompt. Ovis2: 2x2 tiles of 448 px + the thumbnail (the processor's choice for
    # 640x480), 1024 patches each; 5 x 256 LLM image tokens + indicators + ~40 prompt (system turn).
    "qwen3_5": TokenCounts(vision_tokens=1200, vision_sequences=1, llm_tokens=330, dino_tokens=593),
    "ovis2": TokenCounts(vision_tokens=1024, vision_sequences=5, llm_tokens=1330, dino_tokens=593),
}


def _qwen_config(size: str):
    from transformers import Qwen2_5_VLConfig

    from pop_ros.models.shapes import SHAPES

    text, vision = SHAPES[f"qwen2.5-vl-{size}"][:2]
    return Qwen2_5_VLConfig(text_config=dict(text), vision_config=dict(vision))


def _qwen3_5_config(size: str):
    from transformers import Qwen3_5Config

    from pop_ros.models.shapes import QWEN35_TEXT, QWEN35_VISION, SHAPES

    if size in ("4b", "9b"):
        text, vision = SHAPES[f"qwen3.5-{size}"][:2]
    else:
        text_widths, vision_widths = {"0.8b": QWEN35_0_8B, "2b": QWEN35_2B}[size]
        text = {**QWEN35_TEXT, **QWEN35_SMALL_TEXT, **text_widths}
        vision = {**QWEN35_VISION, **vision_widths}
    text = dict(text)
    text.setdefault("tie_word_embeddings", False)
    return Qwen3_5Config(text_config=text, vision_config=dict(vision), tie_word_embeddings=text["tie_word_embeddings"])


def _ovis2_config(text: dict, vision: dict):
    from transformers import Ovis2Config

    return Ovis2Config(
        text_config={"model_type": "qwen2", **text},
        vision_config={**OVIS2_VISION, **vision},
        hidden_size=text["hidden_size"],
        vocab_size=text["vocab_size"],
        tie_word_embeddings=text["tie_word_embeddings"],
    )


def _internvl_config():
    from transformers import InternVLConfig

    return InternVLConfig(text_config=dict(INTERNVL3_8B_TEXT), tie_word_embeddings=False)


def _molmo2_config():
    from transformers import Molmo2Config

    return Molmo2Config(adapter_config=dict(MOLMO2_8B_ADAPTER))


def _dinov3_config(name: str):
    from transformers import DINOv3ViTConfig

    from pop_ros.models.shapes import DINOV3_VITB16, DINOV3_VITL16

    figures = {"vitb16": DINOV3_VITB16, "vitl16": DINOV3_VITL16}[name]
    return DINOv3ViTConfig(**figures, patch_size=16, num_register_tokens=4)


def _dinov2_config():
    from transformers import Dinov2WithRegistersConfig

    return Dinov2WithRegistersConfig(**DINOV2_LARGE_REGISTERS)


def _visual_config(hub_id: str):
    if "dinov3-vitb16" in hub_id:
        return _dinov3_config("vitb16")
    if "dinov3-vitl16" in hub_id:
        return _dinov3_config("vitl16")
    if "dinov2-with-registers-large" in hub_id:
        return _dinov2_config()
    raise ValueError(f"no local config for visual model {hub_id!r}")


# preset MLLM hub id -> (family, config builder)
MLLM_CONFIGS = {
    "Qwen/Qwen2.5-VL-3B-Instruct": ("qwen2_5_vl", lambda: _qwen_config("3b")),
    "Qwen/Qwen2.5-VL-7B-Instruct": ("qwen2_5_vl", lambda: _qwen_config("7b")),
    "OpenGVLab/InternVL3-8B-hf": ("internvl", _internvl_config),
    "allenai/Molmo2-8B": ("molmo2", _molmo2_config),
    **{
        f"Qwen/Qwen3.5-{size.upper()}": ("qwen3_5", lambda size=size: _qwen3_5_config(size))
        for size in ("0.8b", "2b", "4b", "9b")
    },
    "thisisiron/Ovis2-2B-hf": ("ovis2", lambda: _ovis2_config(*OVIS2_2B)),
    "thisisiron/Ovis2-8B-hf": ("ovis2", lambda: _ovis2_config(*OVIS2_8B)),
}


# ---- counting ----------------------------------------------------------------------------------
_DECODER_LAYER = re.compile(r"language_model\.(?:model\.)?layers\.(\d+)\.")


def _meta_mllm(config):
    from transformers import AutoModelForImageTextToText

    with torch.device("meta"):
        return AutoModelForImageTextToText.from_config(config, dtype=torch.bfloat16)


def _meta_model(config):
    from transformers import AutoModel

    with torch.device("meta"):
        return AutoModel.from_config(config, dtype=torch.bfloat16)


def _weight_bytes(model, weight_format: str, keep=lambda name: True) -> int:
    """Bytes of `model`'s parameters for which `keep(name)` holds, in `weight_format`."""
    total = 0
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            name = f"{module_name}.{param_name}" if module_name else param_name
            if not keep(name):
                continue
            quantized = (
                weight_format == "int8"
                and isinstance(module, torch.nn.Linear)
                and param_name == "weight"
                and not module_name.endswith("lm_head")
            )
            # int8: one byte a weight plus one bf16 scale per output channel (row).
            total += param.numel() + param.shape[0] * FLOAT_BYTES if quantized else param.numel() * FLOAT_BYTES
    return total


def _seen_once(model):
    """A `keep` filter that counts tied parameters (lm_head = embeddings) once, as memory holds them."""
    seen: set[int] = set()
    ids = {name: id(param) for name, param in model.named_parameters(remove_duplicate=False)}

    def keep(name: str) -> bool:
        identity = ids.get(name)
        if identity in seen:
            return False
        seen.add(identity)
        return True

    return keep


def frame_cache_bytes(text_config, kept_layers: int, llm_tokens: int) -> int:
    """One frame's cached prefix over layers 0..kept_layers-1: keys and values of each attention
    layer; for a hybrid model's Gated DeltaNet layers, their conv state (model dtype) and recurrent
    state (float32, as transformers' reference kernel keeps it), independent of the token count."""
    head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // text_config.num_attention_heads
    kv_per_layer = 2 * llm_tokens * text_config.num_key_value_heads * head_dim * FLOAT_BYTES
    kinds = list(getattr(text_config, "layer_types", None) or ["full_attention"] * kept_layers)[:kept_layers]
    linear = sum(kind == "linear_attention" for kind in kinds)
    if not linear:
        return kept_layers * kv_per_layer
    key_width = text_config.linear_num_key_heads * text_config.linear_key_head_dim
    value_heads, value_dim = text_config.linear_num_value_heads, text_config.linear_value_head_dim
    conv = (2 * key_width + value_heads * value_dim) * text_config.linear_conv_kernel_dim * FLOAT_BYTES
    recurrent = value_heads * text_config.linear_key_head_dim * value_dim * 4
    return (kept_layers - linear) * kv_per_layer + linear * (conv + recurrent)


def activation_bytes(family: str, text_config, vision_config, dino_config, kept_layers: int) -> int:
    """Estimated peak activations of one 640x480 query, bf16, with sdpa's math path (which builds the
    S x S score matrix; flash/memory-efficient kernels need less), plus the frame cache's keys/values
    (2 frames, layers 0..deepest head).

    Per encoder or decoder layer at a time: the hidden state, q/k/v/out (4 x hidden), the MLP's
    intermediate twice, and one S x S x heads score matrix."""
    tokens = TOKENS[family]

    def layer_peak(seq: int, hidden: int, intermediate: int, heads: int) -> int:
        return (seq * (5 * hidden + 2 * intermediate) + seq * seq * heads) * FLOAT_BYTES

    vision_hidden = getattr(vision_config, "hidden_size", None) or vision_config.embed_dim
    vision = tokens.vision_sequences * layer_peak(
        tokens.vision_tokens,
        vision_hidden,
        vision_config.intermediate_size,
        getattr(vision_config, "num_heads", None) or vision_config.num_attention_heads,
    )
    llm = layer_peak(
        tokens.llm_tokens, text_config.hidden_size, text_config.intermediate_size, text_config.num_attention_heads
    )
    frame_cache = 2 * frame_cache_bytes(text_config, kept_layers, tokens.llm_tokens)
    dino_intermediate = getattr(dino_config, "intermediate_size", None) or int(
        dino_config.hidden_size * dino_config.mlp_ratio
    )
    dino = layer_peak(tokens.dino_tokens, dino_config.hidden_size, dino_intermediate, dino_config.num_attention_heads)
    # The vision tower's output (LLM width) waits beside the LLM's pass; DINO runs before or after it.
    return max(vision, llm + dino) + frame_cache


def preset_memory(preset: str) -> dict:
    """{weight format: {field: bytes}} for one preset (see the module docstring)."""
    from pop_ros.models.presets import get_preset
    from pop_ros.models.trimming import config_head_layers, kept_layer_count

    config = get_preset(preset)
    family, build = MLLM_CONFIGS[config.mllm]
    mllm_config = build()
    text_config = mllm_config.get_text_config()
    # Hybrid models: the fallback heads lie on full-attention layers only (as trimmed loading reads them).
    heads = config.text_prior_heads(
        int(text_config.num_hidden_layers), int(text_config.num_attention_heads), config_head_layers(mllm_config)
    )
    kept = kept_layer_count(heads)
    model = _meta_mllm(mllm_config)
    dino_config = _visual_config(config.visual)
    dino = _meta_model(dino_config)

    def kept_weights(name: str) -> bool:
        match = _DECODER_LAYER.search(name)
        return not name.startswith("lm_head.") and not (match and int(match.group(1)) >= kept)

    def vision_side(name: str) -> bool:
        return "language_model" not in name and not name.startswith("lm_head.")

    activations = activation_bytes(family, text_config, mllm_config.vision_config, dino_config, kept)
    report = {}
    for weight_format in DTYPES:
        whole = _weight_bytes(model, weight_format, _seen_once(model))
        kept_bytes = _weight_bytes(model, weight_format, kept_weights)
        dino_bytes = _weight_bytes(dino, "bfloat16")
        report[weight_format] = {
            "mllm_whole_bytes": whole,
            "mllm_kept_bytes": kept_bytes,
            "vision_tower_bytes": _weight_bytes(model, weight_format, vision_side),
            "dino_bytes": dino_bytes,
            "activations_640x480_bytes": activations,
            "total_bytes": kept_bytes + dino_bytes + activations,
            "kept_layers": kept,
            "layers": int(text_config.num_hidden_layers),
        }
    return report


def memory_report(presets=None) -> dict:
    """`{"presets": {PRESET: {DTYPE: {...}}}}` for every real preset (tiny ones are random plumbing)."""
    from pop_ros.models.presets import PRESETS

    names = presets or [name for name, config in PRESETS.items() if config.mllm in MLLM_CONFIGS]
    return {"presets": {name: preset_memory(name) for name in names}}


def memory_table(report: dict) -> str:
    columns = ("mllm_whole_bytes", "mllm_kept_bytes", "vision_tower_bytes", "dino_bytes", "activations_640x480_bytes")
    header = f"{'preset':22s} {'weights':8s} {'layers':>7s} " + " ".join(
        f"{c.replace('_bytes', ''):>14s}" for c in (*columns, "total_bytes")
    )
    lines = [header + "   (GiB)"]
    for preset, formats in report["presets"].items():
        for weight_format, row in formats.items():
            cells = " ".join(f"{row[c] / GIB:14.2f}" for c in (*columns, "total_bytes"))
            lines.append(f"{preset:22s} {weight_format:8s} {row['kept_layers']:>3d}/{row['layers']:<3d} {cells}")
    return "\n".join(lines)
