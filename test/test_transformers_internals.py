"""What pop_ros relies on below transformers' public API (pop_ros/models/transformers_internals.py),
checked on tiny random models: a transformers upgrade that moves any of it fails here, with a message
naming the installed version and the one the module was written against, before the prefix-reuse or
fast-path equality tests fail in ways that are hard to read."""

import inspect

import numpy as np
import pytest
import torch

from pop_ros.models import transformers_internals as internals
from pop_ros.models.loading import load_mllm
from pop_ros.models.mllm import CAPTURE_IMPLEMENTATION

HYBRID = "qwen3_5"  # linear-attention (Gated DeltaNet) cache entries


@pytest.fixture(scope="module")
def adapter():
    return load_mllm("tiny:qwen2_5_vl", device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def prefix_inputs(adapter):
    """The inner model's inputs for the image prefix of a prompt (everything before the query text)."""
    image = np.random.default_rng(0).integers(0, 255, (112, 112, 3), dtype=np.uint8)
    prefix = adapter.image_prefix(image, "the handle", depth=1)
    assert prefix.reusable, prefix.reason
    return dict(adapter.prepare(image, "the handle").model_inputs), prefix


def check(condition: bool, what: str) -> None:
    assert condition, internals.changed(what)


def test_the_message_names_both_versions():
    import transformers

    message = internals.changed("something moved")
    assert f"transformers {transformers.__version__} " in message
    assert f"written against {internals.WRITTEN_AGAINST}" in message


def test_the_functions_it_calls_take_the_arguments_it_passes(adapter):
    from transformers import DynamicCache
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    sdpa = inspect.signature(sdpa_attention_forward).parameters
    check(
        list(sdpa)[:5] == ["module", "query", "key", "value", "attention_mask"] and {"dropout", "scaling"} <= set(sdpa),
        f"sdpa_attention_forward{inspect.signature(sdpa_attention_forward)}",
    )
    cache = inspect.signature(DynamicCache.__init__).parameters
    check({"ddp_cache_data", "config"} <= set(cache), f"DynamicCache{inspect.signature(DynamicCache.__init__)}")
    forward = inspect.signature(type(adapter.model.model).forward).parameters
    check("mm_encoder_outputs" in forward, "the inner model's forward takes no mm_encoder_outputs")
    check(
        callable(getattr(adapter.model.model, "get_image_features", None)), "the inner model has no get_image_features"
    )
    layer = adapter.decoder_layers()[0]
    check(hasattr(layer, "self_attn"), "a decoder layer has no self_attn")


def test_the_registered_attention_sees_each_layer_in_order_and_a_raise_stops_the_forward(adapter, prefix_inputs):
    from transformers import AttentionInterface

    inputs, _ = prefix_inputs
    check(CAPTURE_IMPLEMENTATION in AttentionInterface(), "AttentionInterface.register keeps nothing")
    seen = []
    layers = adapter.decoder_layers()

    def stop_in_layer_1(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        seen.append((module, (query.dim(), key.dim())))
        if module is internals.attention_module(layers[1]):
            raise internals.StopForward
        return internals.sdpa_attention(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )

    internals.register_attention("pop_internals_test", stop_in_layer_1)
    try:
        adapter._set_text_attention("pop_internals_test")
        output = internals.forward_until_stopped(adapter.model.model, **inputs, use_cache=False)
    finally:
        adapter._set_capture_attention()
    check(output is None, "an exception raised in the attention function did not leave the forward")
    modules = [module for module, _ in seen]
    check(
        modules == [internals.attention_module(layers[0]), internals.attention_module(layers[1])],
        f"the attention function was called for {len(seen)} layers before the stop, not layers 0 and 1 in order",
    )
    check(all(dims == (4, 4) for _, dims in seen), "query and key do not reach the attention function as (B, H, S, D)")


def test_the_vision_towers_output_is_recorded_and_taken_back_in_place_of_the_pixels(adapter, prefix_inputs):
    full, prefix = prefix_inputs
    total = full["input_ids"].shape[1]
    # The prefix's own inputs, pixels included (the prefix drops them once it has the features).
    inputs = {
        name: value[:, : prefix.length]
        if isinstance(value, torch.Tensor) and tuple(value.shape) == (1, total)
        else value
        for name, value in full.items()
    }
    inner = adapter.model.model
    check(prefix.image_features is not None, "a prefix run recorded no get_image_features output")
    with torch.inference_mode():
        reused = internals.reuse_image_features(inputs, prefix.image_features)
        check("pixel_values" not in reused, "reuse_image_features kept the pixels")
        with internals.recording_image_features(inner) as recorded:
            from_features = inner(**reused, use_cache=False).last_hidden_state
        check("image" not in recorded, "the forward ran the vision tower although mm_encoder_outputs was given")
        with internals.recording_image_features(inner) as recorded:
            from_pixels = inner(**inputs, use_cache=False).last_hidden_state
        check("image" in recorded, "the forward did not call the instance's get_image_features")
    check("get_image_features" not in inner.__dict__, "recording_image_features left its shadow on the model")
    check(
        torch.allclose(from_features, from_pixels, atol=1e-5),
        "the forward with mm_encoder_outputs differs from the forward with the pixels",
    )


def test_cache_entries_hold_keys_and_values_and_start_from_given_ones(adapter, prefix_inputs):
    _, prefix = prefix_inputs
    check(len(prefix.keys_values) == 2, f"the prefix kept {len(prefix.keys_values)} layers, not 2")
    keys, values = prefix.keys_values[0]
    check(keys.dim() == 4 and keys.shape[-2] == prefix.length, f"cached keys are {tuple(keys.shape)}")
    cache = internals.new_cache(adapter.model, [(keys.expand(2, -1, -1, -1), values.expand(2, -1, -1, -1))])
    entry = internals.cache_layers(cache)[0]
    started = internals.attention_entry(entry)
    check(started is not None and started[0].shape[0] == 2, "DynamicCache(ddp_cache_data=...) did not fill layer 0")
    empty = internals.cache_layers(internals.new_cache(adapter.model))
    check(
        len(empty) == adapter.loaded_layers, f"a new cache has {len(empty)} entries for {adapter.loaded_layers} layers"
    )
    check(internals.attention_entry(empty[0]) is None, "an unwritten cache entry reads as written")
    internals.set_attention_entry(empty[0], keys, values)
    check(torch.equal(internals.attention_entry(empty[0])[0], keys), "set_attention_entry did not write the keys")


def test_a_hybrid_models_linear_attention_entries_hold_conv_and_recurrent_states():
    adapter = load_mllm(f"tiny:{HYBRID}", device="cpu", dtype="float32")
    image = np.random.default_rng(1).integers(0, 255, (112, 112, 3), dtype=np.uint8)
    prefix = adapter.image_prefix(image, "the handle", depth=3)
    kinds = [kind for kind, *_ in prefix.keys_values]
    check("state" in kinds and "kv" in kinds, f"the hybrid prefix kept {kinds}")
    conv, recurrent = next((first, second) for kind, first, second in prefix.keys_values if kind == "state")
    cache = internals.new_cache(adapter.model)
    entry = internals.cache_layers(cache)[kinds.index("state")]
    check(internals.linear_entry(entry) is None, "an unwritten linear-attention entry reads as written")
    internals.set_linear_entry(entry, conv, recurrent)
    written = internals.linear_entry(entry)
    check(written is not None, "set_linear_entry left the entry unwritten")
    check(
        torch.equal(written[0], conv) and torch.equal(written[1], recurrent),
        "a linear-attention entry does not read back the states written",
    )
    check(written[0].data_ptr() != conv.data_ptr(), "set_linear_entry did not copy the conv state")
