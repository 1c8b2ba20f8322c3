"""Optional weight quantization of the MLLM, through torchao (see docs/memory.md for the choice).

`int8`: every linear layer's weights stored as int8 with one float scale per output channel
(torchao's `Int8WeightOnlyConfig`), whatever the layer kind: attention projections and, in hybrid
models (Qwen3.5), the Gated DeltaNet layers' `in_proj_*` / `out_proj` too (their causal conv, a
Conv1d, and their per-head decay parameters stay float); activations and the attention POP reads stay in the model's
dtype. Applied after the checkpoint loads into CPU memory and before the model moves to the GPU,
so the GPU holds only the int8 weights (the CPU, and a Jetson's shared memory, briefly holds the
float ones). Runs on CUDA and on the CPU (pure PyTorch). transformers' own `TorchAoConfig` path
(quantize while loading) left Molmo2's converted (fused-in-checkpoint) weights unloaded here
(transformers 5.24, torchao 0.18), so it is not used.
"""

from __future__ import annotations

import torch

from pop_ros.choices import QUANTIZATIONS


class QuantizationError(ValueError):
    """A quantization was asked for that this install cannot do; the message says why."""


def check_quantization(name: str) -> str:
    if name not in QUANTIZATIONS:
        raise QuantizationError(f"mllm_quantization must be one of {QUANTIZATIONS}, got {name!r}")
    return name


def quantize_model(model, name: str):
    """Quantize `model`'s linear weights in place (before it moves to the GPU: the GPU never holds
    the float copy); `none` leaves it as it is. lm_head (absent when trimmed) stays in float."""
    if check_quantization(name) == "none":
        return model
    try:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_
    except ImportError as error:
        raise QuantizationError(
            f"mllm_quantization {name} needs torchao (pip install the version in requirements.txt): {error}"
        ) from error

    def is_quantized_linear(module, fqn: str) -> bool:
        return isinstance(module, torch.nn.Linear) and not fqn.endswith("lm_head")

    quantize_(model, Int8WeightOnlyConfig(), filter_fn=is_quantized_linear)
    return model
