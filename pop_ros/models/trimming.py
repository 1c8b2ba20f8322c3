"""Build the MLLM with only what POP reads: decoder layers 0..deepest localization head, no `lm_head`.

POP reads the attention of its localization heads and stops the forward after the deepest one; the
later decoder layers and the vocabulary projection never run. A trimmed model is built from the
checkpoint's own config with `num_hidden_layers` cut to the kept count (and `layer_types` with it),
by a subclass of the checkpoint's class whose `lm_head` holds no weights. `from_pretrained` builds
it on the meta device and reads only the weights it has: the checkpoint's later layers and
`lm_head` are unexpected keys, never materialised. The whole layer count travels with the config
(`UNTRIMMED_LAYERS`), so head files and the fallback heads are still read against the whole model.

The native-pointing baseline (`generate_text`) and head discovery need the whole model: they load
with trimming off.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence

import torch

LOG = logging.getLogger(__name__)

# Attributes set on a trimmed model's text config: the checkpoint's own decoder layer count and, for
# hybrid models, its whole per-layer attention kinds (which layers can hold heads stays a property of
# the whole model).
UNTRIMMED_LAYERS = "pop_untrimmed_num_hidden_layers"
UNTRIMMED_LAYER_TYPES = "pop_untrimmed_layer_types"
# Layer kinds without an attention matrix (Qwen3.5's Gated DeltaNet): no localization head there.
NO_HEAD_LAYER_TYPES = ("linear_attention",)


def kept_layer_count(heads: Sequence[Sequence[int]]) -> int:
    """Decoder layers a model needs to read `heads` [(layer, head)]: 0..deepest layer."""
    if not heads:
        raise ValueError("at least one (layer, head) is needed to know which layers to keep")
    return max(int(layer) for layer, _ in heads) + 1


def whole_layer_count(config) -> int:
    """The checkpoint's decoder layer count, trimmed or not."""
    text_config = config.get_text_config()
    return int(getattr(text_config, UNTRIMMED_LAYERS, text_config.num_hidden_layers))


def whole_layer_types(config) -> list[str] | None:
    """The checkpoint's per-layer attention kinds (`layer_types`), trimmed or not; None if it has none."""
    text_config = config.get_text_config()
    value = getattr(text_config, UNTRIMMED_LAYER_TYPES, None) or getattr(text_config, "layer_types", None)
    return list(value) if isinstance(value, (list, tuple)) else None


def config_head_layers(config) -> tuple[int, ...] | None:
    """Decoder layers of `config` that can hold localization heads (those with an attention matrix),
    or None when every layer can: what the adapter's `head_layers` will say, known before loading."""
    kinds = whole_layer_types(config)
    if kinds is None or not any(kind in NO_HEAD_LAYER_TYPES for kind in kinds):
        return None
    return tuple(i for i, kind in enumerate(kinds) if kind not in NO_HEAD_LAYER_TYPES)


def trim_config(config, kept: int) -> bool:
    """Cut `config`'s text decoder to its first `kept` layers, in place; False when nothing is cut."""
    text_config = config.get_text_config()
    whole = whole_layer_count(config)
    if not 0 < int(kept) <= whole:
        raise ValueError(f"cannot keep {kept} decoder layers of a model with {whole}")
    if int(kept) == int(text_config.num_hidden_layers):
        return False
    setattr(text_config, UNTRIMMED_LAYERS, whole)
    kinds = whole_layer_types(config)
    if kinds is not None and len(kinds) == whole:
        setattr(text_config, UNTRIMMED_LAYER_TYPES, kinds)
    text_config.num_hidden_layers = int(kept)
    # Per-layer lists (attention kinds of hybrid models, sliding windows) follow the layer count.
    for name in ("layer_types", "sliding_window_pattern_list"):
        value = getattr(text_config, name, None)
        if isinstance(value, (list, tuple)) and len(value) == whole:
            setattr(text_config, name, list(value)[: int(kept)])
    return True


@functools.cache
def trimmed_class(model_class: type) -> type:
    """`model_class` whose `lm_head` is an identity (no weights; the capture stops before it).

    The subclass keeps the original's name and module: transformers looks up a checkpoint's key
    renamings by class name and skips them for classes defined outside transformers."""

    def __init__(self, config, *args, **kwargs):
        model_class.__init__(self, config, *args, **kwargs)
        self.lm_head = torch.nn.Identity()  # logits are never read; the eager path gets hidden states

    # Extend the family's own patterns (Qwen3.5: its multi-token-prediction `mtp.*` weights), never
    # replace them: transformers reads this class attribute when it reports unexpected keys.
    family_ignored = [
        pattern
        for klass in reversed(model_class.__mro__)
        for pattern in (getattr(klass, "_keys_to_ignore_on_load_unexpected", None) or [])
    ]
    namespace = {
        "__init__": __init__,
        "__module__": model_class.__module__,
        "__qualname__": model_class.__qualname__,
        "_tied_weights_keys": {},  # no lm_head weight to tie to the embeddings
        # The checkpoint's later layers and lm_head are expected to go unread: no load report for them.
        # Kept weights stay checked: a missing one fails the load (`loading._from_pretrained_trimmed`).
        "_keys_to_ignore_on_load_unexpected": list(
            dict.fromkeys([*family_ignored, r"(^|\.)lm_head\.", r"(^|\.)layers\.\d+\."])
        ),
        "_pop_trimmed": True,
    }
    return type(model_class.__name__, (model_class,), namespace)


def native_model_class(config, trust_remote_code: bool) -> type | None:
    """The transformers class `AutoModelForImageTextToText` would build for `config`, or None when the
    model's code comes from the hub (then it is loaded whole: its layout is unknown here)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING

    if trust_remote_code and getattr(config, "auto_map", None):
        return None
    try:
        return MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING[type(config)]
    except KeyError:
        return None
