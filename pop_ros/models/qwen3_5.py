"""Qwen3.5 (and the Qwen3.6 / 3.8 generations on the same backbone): hybrid attention.

Three of every four decoder layers are Gated DeltaNet (linear attention: a causal convolution and a
recurrent state, no attention matrix); every fourth is gated full attention (`Qwen3_5Attention`:
softmax attention through transformers' AttentionInterface, then `output * sigmoid(gate)`). So:

- localization heads live on the full-attention layers only (`head_layers`); a head on a linear
  layer is refused with that reason. The capture function sees the query and key of the gated
  layer after its q/k norms and RoPE, i.e. the softmax weights *before* the output gate: exactly
  what `output_attentions` returns for that layer.
- `output_attentions` has one entry per full-attention layer (transformers records
  `Qwen3_5Attention` modules only): the eager reference maps layer indices onto that list.
- the per-frame prefix is the cache of every layer up to the deepest chosen head: keys/values of
  the full-attention layers and the conv + recurrent states of every Gated DeltaNet layer. The
  linear layers update their states in place, so each query gets a fresh cache holding copies.
- the chat template is rendered with `enable_thinking=False`: the prompt ends after an empty
  think block, as the model card's non-thinking mode does.
- `mtp.*` (multi-token prediction) weights are never loaded: the model class ignores them.

Image tokens and mRoPE positions are Qwen3-VL's (the QwenVLAdapter logic): `<|image_pad|>` tokens
between `<|vision_start|>` and `<|vision_end|>`, a 2x2 merge of 16 px patches (32 px per token).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pop_ros.models import transformers_internals as internals
from pop_ros.models.mllm import ImagePrefix, PromptInputs, QwenVLAdapter

FULL_ATTENTION = "full_attention"
LINEAR_ATTENTION = "linear_attention"


class Qwen3_5Adapter(QwenVLAdapter):
    """Qwen3.5: heads on full-attention layers only; the prefix holds KV and DeltaNet states."""

    family = "qwen3_5"
    chat_template_kwargs = {"enable_thinking": False}

    def __init__(self, model, processor, **kwargs):
        from pop_ros.models.trimming import whole_layer_types

        # The whole checkpoint's kinds, also when trimmed: which layers hold heads is the whole model's.
        self.layer_types = tuple(whole_layer_types(model.config))
        super().__init__(model, processor, **kwargs)
        if not self.head_layers:
            raise ValueError(f"{self.family}: the config's layer_types name no {FULL_ATTENTION} layer")

    @property
    def head_layers(self) -> tuple[int, ...]:
        return tuple(i for i, kind in enumerate(self.layer_types) if kind == FULL_ATTENTION)

    @property
    def head_layer_note(self) -> str:
        return (
            f"only the {len(self.head_layers)} full-attention layers {list(self.head_layers)} of "
            f"{self.num_layers} can hold heads (the others are Gated DeltaNet: no attention matrix)"
        )

    def head_layer_problem(self, layer: int) -> str | None:
        """None if `layer` can hold a localization head, else why not."""
        if 0 <= layer < self.num_layers and self.layer_types[layer] != FULL_ATTENTION:
            return (
                f"layer {layer} is a linear-attention (Gated DeltaNet) layer of {self.family}: it has no attention "
                f"matrix, so no localization head; {self.head_layer_note}"
            )
        return None

    def _heads_tensor(self, heads: Sequence[Sequence[int]]) -> dict[int, list[int]]:
        by_layer = super()._heads_tensor(heads)
        for layer in by_layer:
            problem = self.head_layer_problem(layer)
            if problem:
                raise ValueError(f"head ({layer}, {by_layer[layer][0]}): {problem}")
        return by_layer

    def _maps_from_attentions(self, attentions, heads, prepared: PromptInputs) -> torch.Tensor:
        # One `(B, H, S, S)` entry per loaded full-attention layer, in layer order.
        loaded = [layer for layer in self.head_layers if layer < self.loaded_layers]
        index = {layer: i for i, layer in enumerate(loaded)}
        if len(attentions) != len(index):
            raise RuntimeError(f"{self.family}: {len(attentions)} attention maps, {len(index)} full-attention layers")
        maps = [attentions[index[int(layer)]][0, int(head), -1][prepared.image_positions] for layer, head in heads]
        return torch.stack(maps).reshape(len(maps), *prepared.grid).float()

    # ---- per-frame reuse -------------------------------------------------------------------
    def _full_layer_from(self, depth: int) -> int:
        """The first full-attention layer at or after `depth` (the prefix run stops in one)."""
        deeper = [layer for layer in self.head_layers if layer >= depth]
        return deeper[0] if deeper else self.head_layers[-1]

    def image_prefix(self, image_rgb, query: str, depth: int) -> ImagePrefix:
        if not 0 <= int(depth) < self.num_layers:
            raise ValueError(f"depth {depth} is outside this model's {self.num_layers} layers")
        return super().image_prefix(image_rgb, query, self._full_layer_from(int(depth)))

    def _keep_prefix_state(self, cache, depth: int, length: int) -> list:
        """Per layer 0..depth: ("kv", keys, values) of a full-attention layer, ("state", conv,
        recurrent) of a Gated DeltaNet layer (conv `(1, C, kernel)`, recurrent `(1, H_v, D_k, D_v)`)."""
        kept = []
        for index, entry in enumerate(internals.cache_layers(cache)[: depth + 1]):
            if self.layer_types[index] == FULL_ATTENTION:
                keys_values = internals.attention_entry(entry)
                if keys_values is None or keys_values[0].shape[-2] != length:
                    raise RuntimeError(f"{self.family}: the prefix run left no keys/values for layer {index}")
                kept.append(("kv", *keys_values))
            else:
                state = internals.linear_entry(entry)
                if state is None:
                    raise RuntimeError(f"{self.family}: the prefix run left no DeltaNet state for layer {index}")
                # The prefix's cache is dropped after this: nothing else writes these tensors.
                kept.append(("state", *state))
        return kept

    def _query_cache(self, prefix: ImagePrefix, batch: int = 1):
        """A fresh cache holding copies of the prefix state, once per batch row: DeltaNet layers
        update their conv and recurrent states in place, so the frame's own tensors must never enter
        a query's forward. Right-padded rows are safe here: a row's padding comes after its last
        real token, which the recurrence and the causal conv never see."""
        cache = internals.new_cache(self.model)
        entries = internals.cache_layers(cache)
        for index, (kind, first, second) in enumerate(prefix.keys_values):
            first_rows = first.expand((batch,) + (-1,) * (first.dim() - 1))
            second_rows = second.expand((batch,) + (-1,) * (second.dim() - 1))
            if kind == "kv":
                # Concatenation: new tensors, the prefix's stay as they are.
                internals.set_attention_entry(entries[index], first_rows, second_rows)
            else:
                # Copied into new static buffers, likewise.
                internals.set_linear_entry(entries[index], first_rows, second_rows)
        return cache


# ---- tiny hub-layout checkpoint (tests, offline demos) --------------------------------------
# The chat template's structure as Qwen3.5's repositories ship it: no default system turn, the
# image as <|vision_start|><|image_pad|><|vision_end|> inside the user turn, and a generation
# prompt that opens a think block, or, with enable_thinking=False, closes an empty one.
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n"
    "{% else %}<think>\n{% endif %}{% endif %}"
)
# The real 3:1 pattern (full attention every 4th layer) over 8 layers: full at 3 and 7.
TINY_NUM_LAYERS = 8


def build_tiny_tokenizer():
    """A byte-level BPE tokenizer of the class transformers loads for every `qwen3_5` checkpoint
    (`Qwen3_5Tokenizer` rebuilds the BPE from tokenizer.json's vocab and merges, whatever class the
    files name): the 256 byte symbols, one merge ("\n\n" is one token, as in the real vocabulary),
    the chat's special tokens, and <think> / </think> as plain added tokens."""
    from tokenizers import AddedToken, pre_tokenizers
    from transformers.models.qwen3_5.tokenization_qwen3_5 import Qwen3_5Tokenizer

    vocab = {"<|endoftext|>": 0}
    for symbol in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab.setdefault(symbol, len(vocab))
    vocab["ĊĊ"] = len(vocab)  # byte-level "\n\n"
    tokenizer = Qwen3_5Tokenizer(
        vocab=vocab,
        merges=[("Ċ", "Ċ")],
        unk_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    special = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    tokenizer.add_tokens([AddedToken(token, special=True, normalized=False) for token in special], special_tokens=True)
    tokenizer.add_tokens([AddedToken(token, special=False, normalized=False) for token in ("<think>", "</think>")])
    tokenizer.eos_token = "<|im_end|>"
    return tokenizer


def build_tiny(num_layers: int = TINY_NUM_LAYERS):
    """(model, processor) of a tiny random Qwen3.5 with the real layer pattern and token layout."""
    from transformers import Qwen2VLImageProcessorPil, Qwen3_5Config, Qwen3_5ForConditionalGeneration, Qwen3VLProcessor

    from pop_ros.models.processors import build_processor, qwen_vision_token_ids

    tokenizer = build_tiny_tokenizer()
    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": num_layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 32,  # rotary on a quarter of it (partial_rotary_factor 0.25): 4 frequencies
        "linear_num_key_heads": 2,
        "linear_num_value_heads": 4,
        "linear_key_head_dim": 16,
        "linear_value_head_dim": 16,
        "linear_conv_kernel_dim": 4,
        "max_position_embeddings": 4096,
        "layer_types": ["full_attention" if (i + 1) % 4 == 0 else "linear_attention" for i in range(num_layers)],
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 10000.0,
            "partial_rotary_factor": 0.25,
            "mrope_section": [2, 1, 1],
            "mrope_interleaved": True,
        },
    }
    vision = {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "out_hidden_size": 64,
        "patch_size": 16,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "num_position_embeddings": 64,
    }
    config = Qwen3_5Config(
        text_config=text,
        vision_config=vision,
        **qwen_vision_token_ids(tokenizer),
    )
    model = Qwen3_5ForConditionalGeneration(config)
    # At the 0.02 init scale the DeltaNet branch barely moves the residual stream (zeroing its
    # recurrent state changes the maps by ~1e-5, the tests' tolerance); scaled up, a prefix that lost
    # that state is off by 1e-4 to 1e-2 (measured), so the reuse tests can tell.
    with torch.no_grad():
        for layer in model.model.language_model.layers:
            if hasattr(layer, "linear_attn"):
                layer.linear_attn.out_proj.weight.mul_(30.0)
    # 16 px patches, 2x2 merge: one LLM token per 32 x 32 px; at most 448 x 448 px (196 tokens).
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=16, merge_size=2, temporal_patch_size=2, min_pixels=64 * 64, max_pixels=448 * 448
    )
    return model, build_processor(Qwen3VLProcessor, image_processor, tokenizer, TINY_CHAT_TEMPLATE)


def build_shape_mllm(text_config: dict, vision_config: dict, device, dtype: torch.dtype, seed: int = 0):
    """(model, processor) with seeded random weights in a real checkpoint's shape (pop-bench
    --shape), built on the meta device and filled on `device` (models/random_weights.py: about a
    minute for billions of parameters, where transformers' own initialisation takes many). Token ids
    map onto the tiny tokenizer, which changes no FLOP but the embedding lookups."""
    from transformers import Qwen2VLImageProcessorPil, Qwen3_5Config, Qwen3_5ForConditionalGeneration, Qwen3VLProcessor

    from pop_ros.models.processors import build_processor, qwen_vision_token_ids

    tokenizer = build_tiny_tokenizer()
    config = Qwen3_5Config(
        text_config=dict(text_config),
        vision_config=dict(vision_config),
        **qwen_vision_token_ids(tokenizer),
        # The top-level flag decides whether lm_head shares the embeddings (the 4B's do, the 9B's not).
        tie_word_embeddings=bool(text_config.get("tie_word_embeddings", False)),
    )
    from pop_ros.models.random_weights import build_random

    model = build_random(Qwen3_5ForConditionalGeneration, config, device, dtype, seed, attn_implementation="sdpa")
    image_processor = Qwen2VLImageProcessorPil(patch_size=16, merge_size=2, temporal_patch_size=2)
    return model, build_processor(Qwen3VLProcessor, image_processor, tokenizer, TINY_CHAT_TEMPLATE)
