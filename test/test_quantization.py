"""MLLM weight quantization (models/quantization.py): int8 weights through torchao, same code paths."""

import numpy as np
import pytest
import torch

from pop_ros.models.presets import get_preset
from pop_ros.models.tiny import FAMILIES
from test.conftest import random_image


def _linear_weights(layer: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: module.weight for name, module in layer.named_modules() if isinstance(module, torch.nn.Linear)}


@pytest.mark.parametrize("family", FAMILIES)
def test_int8_weights_give_nearly_the_float_text_prior(family, rng):
    from pop_ros.models.heads import fallback_heads

    config = get_preset("tiny").replace(mllm=f"tiny:{family}")
    float_adapter = config.load_mllm()
    int8_adapter = config.replace(mllm_quantization="int8").load_mllm()
    # Every linear projection of every kept decoder layer is stored as int8, not float: attention
    # layers' q/k/v/o and, in Qwen3.5, the Gated DeltaNet layers' in/out projections too.
    for layer in int8_adapter.decoder_layers():
        weights = _linear_weights(layer)
        assert weights and all(weight.qdata.dtype == torch.int8 for weight in weights.values()), weights.keys()
    first = _linear_weights(int8_adapter.decoder_layers()[0])
    if family == "qwen3_5":  # layer 0 is linear attention: its projections are quantized too
        assert {"linear_attn.in_proj_qkv", "linear_attn.out_proj"} <= set(first), sorted(first)
    else:
        assert "self_attn.q_proj" in first, sorted(first)
    heads = fallback_heads(float_adapter.num_layers, float_adapter.num_heads, float_adapter.head_layers)
    kept = max(layer for layer, _ in heads) + 1
    assert int8_adapter.loaded_layers == float_adapter.loaded_layers == kept == 4  # trimming and int8 together
    image = random_image(rng, 120, 160)
    expected = float_adapter.head_maps(image, "lid of the cup", heads)  # (N, H_l, W_l)
    got = int8_adapter.head_maps(image, "lid of the cup", heads)
    assert got.shape == expected.shape and not torch.equal(got, expected)  # quantization changed something
    # Random weights: a closeness check, not accuracy. Per-channel int8 keeps the maps nearly equal.
    correlation = np.corrcoef(got.mean(0).flatten().numpy(), expected.mean(0).flatten().numpy())[0, 1]
    assert correlation > 0.99


def test_unknown_quantization_is_refused_before_loading():
    from pop_ros.models.quantization import QuantizationError

    with pytest.raises(QuantizationError, match=r"mllm_quantization must be one of \('none', 'int8'\), got 'int4'"):
        get_preset("tiny").replace(mllm_quantization="int4").load_mllm()


@pytest.mark.parametrize("family", FAMILIES)
def test_an_untrimmed_int8_model_keeps_lm_head_in_float(family):
    # Untrimmed, the model has its lm_head (trimming replaces it with an identity); int8 leaves it a
    # plain float weight while the decoder's linear layers hold int8.
    adapter = get_preset("tiny").replace(mllm=f"tiny:{family}", trim=False, mllm_quantization="int8").load_mllm()
    heads = [(name, module) for name, module in adapter.model.named_modules() if name.endswith("lm_head")]
    assert len(heads) == 1, [name for name, _ in heads]
    name, lm_head = heads[0]
    assert isinstance(lm_head, torch.nn.Linear), (name, type(lm_head))
    assert type(lm_head.weight) is torch.nn.Parameter and lm_head.weight.dtype == torch.float32, (
        name,
        type(lm_head.weight),
    )
    layer_weights = _linear_weights(adapter.decoder_layers()[-1])
    assert layer_weights and all(weight.qdata.dtype == torch.int8 for weight in layer_weights.values())
