"""Every place pop_ros reaches below transformers' public API, in one module (written against
transformers WRITTEN_AGAINST). The fast capture path (mllm.py) and per-frame prefix reuse
(prefix_reuse.py, qwen3_5.py) go through these functions only; test/test_transformers_internals.py
checks each on a tiny model and, when a transformers upgrade moves one, fails naming both versions.

What is relied on:
- **attention registry**: a function registered under a name (`register_attention`) is what the
  text layers call once `set_attn_implementation(name)` is set, as `fn(module, query, key, value,
  attention_mask, scaling=..., dropout=..., **kwargs)`, query `(B, H, S, D)` and key `(B, H_kv, S, D)`
  after the model's own RoPE and q/k norms; the module is the layer's `self_attn`. `sdpa_attention`
  is transformers' own sdpa function, which the capture hands each layer to.
- **stopping a forward**: an exception raised inside the attention function leaves the model's
  forward uncaught (`forward_until_stopped`): layers after it never run.
- **the vision tower's output**: the inner model's forward calls `self.get_image_features(...)`, so an
  instance attribute of that name sees (and can record) its output (`recording_image_features`); the
  forward takes that output back, in place of `pixel_values`, as `mm_encoder_outputs={"image": ...}`
  (`reuse_image_features`); its `pooler_output` is what the embeddings are built from.
- **the cache**: `DynamicCache(config=...)` has one entry per text layer in `cache.layers`; an
  attention layer's entry holds `keys`/`values` `(B, H_kv, S, D)` once `is_initialized`;
  `DynamicCache(ddp_cache_data=[(keys, values), ...])` starts from given keys/values; a hybrid
  model's linear-attention entry holds `conv_states[0]` / `recurrent_states[0]`, set by
  `update_conv_state` / `update_recurrent_state`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

WRITTEN_AGAINST = "5.24.0"


class StopForward(Exception):
    """Raised in the attention function after the deepest chosen layer: nothing after it is needed."""


def installed_version() -> str:
    import transformers

    return str(transformers.__version__)


def changed(what: str) -> str:
    """The message for an internal that is not what this module expects: both versions, and where to look."""
    return (
        f"transformers {installed_version()} (pop_ros was written against {WRITTEN_AGAINST}): {what}; "
        "see pop_ros/models/transformers_internals.py"
    )


# ---- attention ------------------------------------------------------------------------------------
def register_attention(name: str, attention: Callable) -> None:
    """Make `attention` the text layers' attention under `name` (with sdpa's mask format)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(name, attention)
    AttentionMaskInterface.register(name, sdpa_mask)


def sdpa_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """transformers' own sdpa attention (what the layer would have run)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)


def attention_module(decoder_layer):
    """The module a decoder layer passes to the attention function as `module`."""
    return decoder_layer.self_attn


def forward_until_stopped(forward: Callable, **inputs):
    """`forward(**inputs)`; None when the attention function stopped it (StopForward)."""
    try:
        return forward(**inputs)
    except StopForward:
        return None


# ---- the vision tower's output --------------------------------------------------------------------
@contextlib.contextmanager
def recording_image_features(inner_model) -> Iterator[dict]:
    """While inside, the inner model's forward records its vision tower's output under "image" of
    the yielded dict (an instance attribute shadows the class's `get_image_features`; one that was
    already there is put back after)."""
    recorded: dict = {}
    shadowed = inner_model.__dict__.get("get_image_features")
    original = inner_model.get_image_features

    def recording(*args, **kwargs):
        recorded["image"] = original(*args, **kwargs)
        return recorded["image"]

    inner_model.get_image_features = recording
    try:
        yield recorded
    finally:
        if shadowed is not None:
            inner_model.get_image_features = shadowed
        else:
            inner_model.__dict__.pop("get_image_features", None)


def reuse_image_features(inputs: dict, features) -> dict:
    """`inputs` of the inner model's forward with the vision tower's kept output in place of the pixels."""
    reused = {name: value for name, value in inputs.items() if name != "pixel_values"}
    reused["mm_encoder_outputs"] = {"image": features}
    return reused


def pooled_image_features(output):
    """What of the vision tower's output (`get_image_features`) a later forward needs: its pooler_output."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    return BaseModelOutputWithPooling(pooler_output=output.pooler_output)


# ---- the cache --------------------------------------------------------------------------------------
def new_cache(model, keys_values: list | None = None):
    """An empty cache for `model`'s text layers, or one starting from `keys_values`: per layer
    `(keys, values)` `(B, H_kv, S, D)`."""
    from transformers import DynamicCache

    config = model.config.get_text_config()
    if keys_values is None:
        return DynamicCache(config=config)
    return DynamicCache(ddp_cache_data=keys_values, config=config)


def cache_layers(cache) -> list:
    """The cache's per-layer entries, layer 0 first."""
    return list(cache.layers)


def attention_entry(layer_entry) -> tuple | None:
    """(keys, values) `(B, H_kv, S, D)` of an attention layer's cache entry, None before it was written."""
    if not layer_entry.is_initialized:
        return None
    return layer_entry.keys, layer_entry.values


def set_attention_entry(layer_entry, keys, values) -> None:
    """Write `keys`/`values` into an empty attention layer's cache entry (a new tensor: a concatenation)."""
    layer_entry.update(keys, values)


def linear_entry(layer_entry) -> tuple | None:
    """(conv, recurrent) state of a linear-attention (Gated DeltaNet) layer's cache entry, None before
    both were written."""
    if not (layer_entry.is_conv_states_initialized[0] and layer_entry.is_recurrent_states_initialized[0]):
        return None
    return layer_entry.conv_states[0], layer_entry.recurrent_states[0]


def set_linear_entry(layer_entry, conv, recurrent) -> None:
    """Copy a conv and a recurrent state into an empty linear-attention layer's cache entry."""
    layer_entry.update_conv_state(conv)
    layer_entry.update_recurrent_state(recurrent)
