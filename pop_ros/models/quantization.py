"""Optional weight quantization of the MLLM, through torchao (see docs/memory.md for the choice).

`int8`: every linear layer's weights stored as int8 with one float scale per output channel
(torchao's `Int8WeightOnlyConfig`); activations and the attention POP reads stay in the model's
dtype. Applied by transformers while the checkpoint loads (`TorchAoConfig`), so the float weights
of a layer live only while that layer is converted. Runs on CUDA and on the CPU (pure PyTorch).
"""

from __future__ import annotations

QUANTIZATIONS = ("none", "int8")


class QuantizationError(ValueError):
    """A quantization was asked for that this install cannot do; the message says why."""


def check_quantization(name: str) -> str:
    if name not in QUANTIZATIONS:
        raise QuantizationError(f"mllm_quantization must be one of {QUANTIZATIONS}, got {name!r}")
    return name


def quantization_config(name: str):
    """The `quantization_config` for `from_pretrained`, or None for `none`."""
    if check_quantization(name) == "none":
        return None
    try:
        from torchao.quantization import Int8WeightOnlyConfig
    except ImportError as error:
        raise QuantizationError(
            f"mllm_quantization {name} needs torchao (pip install the version in requirements.txt): {error}"
        ) from error
    from transformers import TorchAoConfig

    # lm_head (absent when trimmed) and the embeddings stay in the model's dtype.
    return TorchAoConfig(quant_type=Int8WeightOnlyConfig(), modules_to_not_convert=["lm_head"])


def bytes_per_weight(name: str, float_bytes: int) -> float:
    """Storage of one linear-layer weight under `name` (int8: 1 byte; per-channel scales not counted)."""
    return 1.0 if check_quantization(name) == "int8" else float(float_bytes)
