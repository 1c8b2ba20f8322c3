"""Text prior of an int8-quantized MLLM vs the float one: map correlation and point distance.

    python tools/compare_quantization.py                       # the tiny families
    python tools/compare_quantization.py --shape-folder DIR    # + a Qwen2.5-VL random checkpoint of a
                                                               #   real shape (pop_ros.models.load_rss)

Random weights: this measures how far quantization moves the maps, never pointing accuracy.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np
import torch

QUERY = "handle of the mug"


def text_prior_point(maps: torch.Tensor, image_shape) -> np.ndarray:
    """(u, v) pixel of the mean map's peak cell centre. `maps (N, H_l, W_l)`."""
    mean = maps.mean(0)
    row, col = divmod(int(mean.argmax()), mean.shape[1])
    height, width = image_shape[:2]
    return np.array([(col + 0.5) * width / mean.shape[1], (row + 0.5) * height / mean.shape[0]])


def compare(float_adapter, int8_adapter, heads, image) -> dict:
    expected = float_adapter.head_maps(image, QUERY, heads)
    got = int8_adapter.head_maps(image, QUERY, heads)
    correlation = float(np.corrcoef(got.mean(0).flatten().numpy(), expected.mean(0).flatten().numpy())[0, 1])
    distance = float(np.linalg.norm(text_prior_point(got, image.shape) - text_prior_point(expected, image.shape)))
    return {"map_correlation": correlation, "point_distance_px": distance, "grid": list(expected.shape[1:])}


def shape_adapters(folder: pathlib.Path, dtype: torch.dtype):
    """(float, int8) adapters on a saved Qwen2.5-VL random checkpoint, trimmed to the fallback heads,
    with the tiny tokenizer's special-token ids (the weights are random either way)."""
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessorPil

    from pop_ros.models.heads import fallback_heads
    from pop_ros.models.loading import _mllm_from_pretrained
    from pop_ros.models.mllm import adapter_for
    from pop_ros.models.processors import build_processor
    from pop_ros.models.quantization import quantize_model
    from pop_ros.models.tiny import CHAT_TEMPLATES, build_tokenizer

    tokenizer = build_tokenizer("qwen2_5_vl")
    processor = build_processor(
        Qwen2_5_VLProcessor, Qwen2VLImageProcessorPil(), tokenizer, CHAT_TEMPLATES["qwen2_5_vl"]
    )
    adapters = []
    for quantization in ("none", "int8"):
        model = quantize_model(_mllm_from_pretrained(str(folder), dtype, False, fallback_heads), quantization)
        for name, token in (
            ("image_token_id", "<|image_pad|>"),
            ("video_token_id", "<|video_pad|>"),
            ("vision_start_token_id", "<|vision_start|>"),
            ("vision_end_token_id", "<|vision_end|>"),
        ):
            setattr(model.config, name, tokenizer.convert_tokens_to_ids(token))
        adapters.append(adapter_for(model, processor))
    return adapters


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape-folder", type=pathlib.Path, help="a load_rss checkpoint folder (bf16)")
    parser.add_argument("--skip-tiny", action="store_true")
    args = parser.parse_args(argv)
    from pop_ros.models.presets import get_preset
    from pop_ros.models.tiny import FAMILIES

    image = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    report = {}
    if not args.skip_tiny:
        for family in FAMILIES:
            config = get_preset("tiny").replace(mllm=f"tiny:{family}")
            float_adapter = config.load_mllm()
            int8_adapter = config.replace(mllm_quantization="int8").load_mllm()
            heads = config.text_prior_heads(
                float_adapter.num_layers, float_adapter.num_heads, float_adapter.head_layers
            )
            report[f"tiny:{family} (float32)"] = compare(float_adapter, int8_adapter, heads, image)
    if args.shape_folder:
        from pop_ros.models.heads import fallback_heads

        float_adapter, int8_adapter = shape_adapters(args.shape_folder, torch.bfloat16)
        heads = fallback_heads(float_adapter.num_layers, float_adapter.num_heads, float_adapter.head_layers)
        report[f"{args.shape_folder.name} (bfloat16)"] = compare(float_adapter, int8_adapter, heads, image)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
