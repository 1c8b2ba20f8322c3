"""MLLM weight quantization (models/quantization.py): int8 weights through torchao, same code paths."""

import numpy as np
import pytest
import torch

from pop_ros.models.presets import get_preset
from pop_ros.models.tiny import FAMILIES
from test.conftest import random_image


@pytest.mark.parametrize("family", FAMILIES)
def test_int8_weights_give_nearly_the_float_text_prior(family, rng):
    config = get_preset("tiny").replace(mllm=f"tiny:{family}")
    float_adapter = config.load_mllm()
    int8_adapter = config.replace(mllm_quantization="int8").load_mllm()
    weight = int8_adapter.decoder_layers()[0].self_attn.q_proj.weight
    assert weight.qdata.dtype == torch.int8  # stored as int8, not float
    assert int8_adapter.loaded_layers == float_adapter.loaded_layers == 4  # trimming and int8 together
    heads = config.text_prior_heads(6, 4)
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
