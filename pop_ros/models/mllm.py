"""Localization-head attention from frozen multimodal LLMs: one adapter per family.

Each adapter turns (RGB image, query) into the model's own inputs through its processor and chat
template, then returns the attention of the **last prompt token** over the **image tokens**, for a
list of (layer, head), as maps on the model's image-token grid `(N, H_l, W_l)`.

Two paths, tested equal:
- fast (default): a registered attention function (`pop_capture`) sees each chosen layer's query and
  key *after* the model's own RoPE and q/k norms, computes softmax(q_last k^T * scaling) for the
  chosen heads only, hands the layer to sdpa as usual, and stops the forward right after the deepest
  chosen layer: no later layers, no vocabulary logits, no S x S attention matrices. Works for every
  family whose attention goes through transformers' AttentionInterface.
- eager: `output_attentions=True` with eager attention, the reference (and the baseline the
  benchmark compares against).

Per-frame reuse (`image_prefix` + `head_maps_from_prefix`): every family's prompt puts the image
before the query text, so the vision tower and the keys/values of every token up to the end of the
image (layers 0..deepest chosen layer) depend on the frame only. They are computed once per frame;
each query then runs only its own text tokens through those layers, with the positions the full
prompt would give them (Qwen: 1-D text positions shifted by the prefix's mRoPE delta; Molmo2 and
InternVL: 1-D positions after the prefix). Several queries on one frame run as one batch
(`head_maps_from_prefix_batch`: right-padded, padding masked, the prefix's keys/values expanded per
row). A layout that puts query text before the image (a custom chat template) is detected and
answered by the full prefill, with one warning in the log.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
from collections.abc import Callable, Sequence

import numpy as np
import torch

from pop_ros.models import transformers_internals as internals
from pop_ros.models.eager_attention import EagerAttentionMixin
from pop_ros.models.inputs import ImageLimits, ImagePrefix, PromptInputs, _StopForward, cap_pixels  # noqa: F401 (re-exported)
from pop_ros.models.prefix_reuse import PrefixReuseMixin
from pop_ros.models.prompts import DEFAULT_PROMPT

LOG = logging.getLogger(__name__)

CAPTURE_IMPLEMENTATION = "pop_capture"
# InternVL3's own `chat()` (its "internvl2_5" conversation template) always opens with this system
# turn; the `-hf` chat template sends none. `system_prompt: internvl-original` restores it.
INTERNVL_ORIGINAL_SYSTEM_PROMPT = (
    "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"
)
SYSTEM_PROMPT_ALIASES = {"internvl-original": INTERNVL_ORIGINAL_SYSTEM_PROMPT}


@dataclasses.dataclass
class _CaptureState:
    heads: torch.Tensor | None  # (n,) query-head indices to keep; None: capture nothing (prefix runs)
    stop: bool  # stop the forward after this layer
    # (B,) position of each batch row's last real token (right padding); None: the last position
    last_index: torch.Tensor | None = None
    result: torch.Tensor | None = None  # (B, n, S) each row's last-token attention over all tokens


def _capture_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """sdpa attention that also records the last query token's attention for chosen heads.

    query `(B, H, S, D)` and key `(B, H_kv, S, D)` arrive after RoPE, as the model computed them
    (transformers_internals.py: what that relies on).
    """
    state: _CaptureState | None = getattr(module, "_pop_capture", None)
    if state is not None and state.heads is None and state.stop:
        # A prefix run: this layer's keys/values are already in the cache; nothing later is needed.
        raise _StopForward
    if state is not None and state.heads is not None:
        batch, num_heads, length = query.shape[:3]
        num_kv_heads = key.shape[1]
        heads = state.heads.to(query.device)
        kv_heads = heads // (num_heads // num_kv_heads)  # GQA: query head h reads kv head h // group
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        rows = torch.arange(batch, device=query.device)
        last = torch.full((batch,), length - 1, device=query.device)
        if state.last_index is not None:
            last = state.last_index.to(query.device)
        q_last = query[rows[:, None], heads[None, :], last[:, None]].float()  # (B, n, D)
        keys = key[:, kv_heads].float()  # (B, n, S, D)
        logits = (q_last[:, :, None, :] @ keys.transpose(-1, -2))[:, :, 0, :] * scale  # (B, n, S)
        if attention_mask is not None:
            mask = attention_mask if attention_mask.dim() == 4 else attention_mask[:, None]  # (B|1, 1, T, S)
            mask = mask.expand(batch, -1, -1, -1)[rows, 0, last, : logits.shape[-1]][:, None, :]  # (B, 1, S)
            if mask.dtype == torch.bool:
                logits = logits.masked_fill(~mask, float("-inf"))
            else:
                logits = logits + mask.float()
        state.result = torch.softmax(logits, dim=-1)
        if state.stop:
            raise _StopForward
    return internals.sdpa_attention(
        module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
    )


_REGISTERED = False


def _register_capture() -> None:
    global _REGISTERED
    if _REGISTERED:
        return
    internals.register_attention(CAPTURE_IMPLEMENTATION, _capture_attention)
    _REGISTERED = True


class MLLMAdapter(PrefixReuseMixin, EagerAttentionMixin):
    """Base class: everything but the family's image-token layout."""

    family = "base"
    # Grid cells per image token along each axis: sigma and other token-unit sizes scale by it.
    cells_per_token = 1
    # Molmo2 and InternVL (one tile) resize any image to their crop size: any shape is accepted.
    image_limits = ImageLimits()
    # Extra variables for the chat template (Qwen3.5: enable_thinking=False).
    chat_template_kwargs: dict = {}

    def __init__(
        self,
        model,
        processor,
        prompt_template: str = DEFAULT_PROMPT,
        system_prompt: str = "",
        max_pixels: int = 0,
    ):
        if "{query}" not in prompt_template:
            raise ValueError(f"prompt_template must contain '{{query}}', got {prompt_template!r}")
        if int(max_pixels) < 0:
            raise ValueError(f"mllm_max_pixels must be >= 0 (0 = the checkpoint's own cap), got {max_pixels}")
        # "" = whatever the checkpoint's chat template does (Qwen's adds its default system turn,
        # InternVL's -hf template none); any other text is sent as the system turn.
        self.system_prompt = SYSTEM_PROMPT_ALIASES.get(system_prompt, system_prompt)
        self.max_pixels = int(max_pixels)  # cap on the MLLM's input image, independent of DINO's
        _register_capture()
        self.model = model.eval()
        self.processor = processor
        self.prompt_template = prompt_template
        text_config = model.config.get_text_config()
        # A trimmed model (see trimming.py) holds layers 0..loaded_layers-1 of the checkpoint's num_layers.
        self.loaded_layers = int(text_config.num_hidden_layers)
        self.num_layers = int(getattr(text_config, "pop_untrimmed_num_hidden_layers", self.loaded_layers))
        self.num_heads = int(text_config.num_attention_heads)
        self._lock = threading.Lock()  # the capture state lives on the modules: one forward at a time
        self._set_capture_attention()

    # ---- family-specific -------------------------------------------------------------------
    def _processor_kwargs(self) -> dict:
        return {}

    def _locate_image_tokens(self, inputs: dict) -> tuple[torch.Tensor, tuple[int, int]]:
        raise NotImplementedError

    @property
    def head_layers(self) -> tuple[int, ...]:
        """Decoder layers whose attention can hold localization heads: every layer of a plain
        transformer; hybrid families (Qwen3.5) narrow it to their full-attention layers."""
        return tuple(range(self.num_layers))

    @property
    def head_layer_note(self) -> str:
        """One line on which layers can hold heads ("" when all can)."""
        return ""

    def head_layer_problem(self, layer: int) -> str | None:
        """None if `layer` can hold a localization head, else why not (range is checked elsewhere)."""
        return None

    # ---- shared ----------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def decoder_layers(self) -> Sequence[torch.nn.Module]:
        language_model = self.model.model.language_model
        return language_model.layers

    def _set_capture_attention(self) -> None:
        """The text layers' attention back to the capture path (after a reference path switched it)."""
        self._set_text_attention(CAPTURE_IMPLEMENTATION)

    def _set_text_attention(self, implementation: str) -> None:
        sub_configs = getattr(self.model.config, "sub_configs", {}) or {}
        if "text_config" in sub_configs:
            self.model.set_attn_implementation({"text_config": implementation})
        else:
            self.model.set_attn_implementation(implementation)

    def prompt(self, query: str) -> str:
        return self._chat_text(self.prompt_template.format(query=query))

    def _chat_text(self, text: str) -> str:
        """The chat template applied to one user turn (image, text), after the system turn if set."""
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
        if self.system_prompt:
            messages.insert(0, {"role": "system", "content": [{"type": "text", "text": self.system_prompt}]})
        return self.processor.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False, **self.chat_template_kwargs
        )

    def prepare(self, image_rgb: np.ndarray, query: str) -> PromptInputs:
        """Run the processor on one RGB uint8 image `(H, W, 3)` and a query."""
        from PIL import Image

        if not isinstance(query, str) or not query.strip():
            raise ValueError("query must be a non-empty string")
        image = Image.fromarray(np.ascontiguousarray(cap_pixels(image_rgb, self.max_pixels)))
        inputs = self.processor(
            images=[image], text=[self.prompt(query)], return_tensors="pt", **self._processor_kwargs()
        )
        dtype = next(self.model.parameters()).dtype
        moved = {}
        for name, value in inputs.items():
            if isinstance(value, torch.Tensor):
                value = value.to(self.device)
                if value.is_floating_point():
                    value = value.to(dtype)
            moved[name] = value
        positions, grid = self._locate_image_tokens(moved)
        if positions.numel() != grid[0] * grid[1]:
            raise RuntimeError(
                f"{self.family}: found {positions.numel()} image tokens for a {grid[0]}x{grid[1]} grid; "
                "the processor's token layout is not the one this adapter knows"
            )
        return PromptInputs(moved, positions, grid)

    def _heads_tensor(self, heads: Sequence[Sequence[int]]) -> dict[int, list[int]]:
        by_layer: dict[int, list[int]] = {}
        for layer, head in heads:
            if not (0 <= int(layer) < self.num_layers and 0 <= int(head) < self.num_heads):
                raise ValueError(
                    f"head ({layer}, {head}) is outside this model's {self.num_layers} layers x {self.num_heads} heads"
                )
            by_layer.setdefault(int(layer), []).append(int(head))
        if by_layer and max(by_layer) >= self.loaded_layers:
            deepest = max(by_layer)
            raise ValueError(self.trimmed_reason(f"head ({deepest}, {by_layer[deepest][0]})", deepest))
        if not by_layer:
            raise ValueError("at least one (layer, head) is needed")
        return by_layer

    def trimmed_reason(self, what: str, layer: int) -> str:
        """Why `what`, which reads decoder layer `layer`, cannot run on this trimmed model."""
        return (
            f"{what} needs decoder layer {layer} but this MLLM was loaded trimmed to "
            f"layers 0-{self.loaded_layers - 1} of {self.num_layers} (the deepest localization head at load); "
            "reload with mllm_trim false (tools: --no-trim) to use deeper heads"
        )

    @contextlib.contextmanager
    def checked_between_layers(self, check: Callable[[], None] | None):
        """Run `check()` before each decoder layer of every forward in this context (a query's
        cancel flag: an exception it raises ends the forward there, as the early stop does).
        None: no check."""
        if check is None:
            yield
            return
        hooks = [layer.register_forward_pre_hook(lambda _module, _args: check()) for layer in self.decoder_layers()]
        try:
            yield
        finally:
            for hook in hooks:
                hook.remove()

    @contextlib.contextmanager
    def _armed(
        self,
        by_layer: dict[int, list[int]],
        stop_early: bool,
        capture: bool = True,
        last_index: torch.Tensor | None = None,
    ):
        """Capture state on the chosen layers for one forward; `last_index (B,)`: each batch row's
        last real token (right-padded batches), None: the last position of every row."""
        layers = self.decoder_layers()
        deepest = max(by_layer)
        states = {}
        try:
            for layer_index, heads in by_layer.items():
                chosen = torch.tensor(heads) if capture else None
                state = _CaptureState(heads=chosen, stop=stop_early and layer_index == deepest, last_index=last_index)
                internals.attention_module(layers[layer_index])._pop_capture = state
                states[layer_index] = state
            yield states
        finally:
            for layer_index in by_layer:
                internals.attention_module(layers[layer_index]).__dict__.pop("_pop_capture", None)

    @torch.inference_mode()
    def head_maps(
        self,
        image_rgb: np.ndarray,
        query: str,
        heads: Sequence[Sequence[int]],
        prepared: PromptInputs | None = None,
    ) -> torch.Tensor:
        """Fast path: `(N, H_l, W_l)` float32 attention maps of the given heads, in the given order."""
        prepared = prepared or self.prepare(image_rgb, query)
        by_layer = self._heads_tensor(heads)
        with self._lock, self._armed(by_layer, stop_early=True) as states:
            internals.forward_until_stopped(self._forward, model_inputs=prepared.model_inputs)
            rows = {layer: None if state.result is None else state.result[0] for layer, state in states.items()}
        return self._maps_from_rows(rows, by_layer, heads, prepared.image_positions, prepared.grid)

    def _maps_from_rows(self, rows, by_layer, heads, image_positions, grid) -> torch.Tensor:
        """`(N, H_l, W_l)` from each layer's captured `(n, S)` last-token rows."""
        if any(row is None for row in rows.values()):
            raise RuntimeError(
                f"{self.family}: the capture attention was not called; is the text attention sdpa-based?"
            )
        maps = []
        for layer, head in heads:
            row = rows[int(layer)][by_layer[int(layer)].index(int(head))]
            maps.append(row[image_positions])
        return torch.stack(maps).reshape(len(maps), *grid).float()

    @torch.inference_mode()
    def all_head_maps(self, image_rgb: np.ndarray, query: str, layers: Sequence[int] | None = None) -> torch.Tensor:
        """`(L, H, H_l, W_l)` maps of every head of `layers` (default: every layer that can hold heads)."""
        layers = list(self.head_layers) if layers is None else [int(x) for x in layers]
        heads = [(layer, head) for layer in layers for head in range(self.num_heads)]
        maps = self.head_maps(image_rgb, query, heads)
        return maps.reshape(len(layers), self.num_heads, *maps.shape[-2:])

    def _forward(self, model_inputs: dict, **kwargs):
        # logits_to_keep=1: never the full-vocabulary logits of every position.
        return self.model(**model_inputs, use_cache=False, logits_to_keep=1, **kwargs)

    @torch.inference_mode()
    def generate_text(
        self, image_rgb: np.ndarray, prompt_text: str, max_new_tokens: int = 32, fixed_length: bool = True
    ) -> str:
        """The model's own answer to a free prompt (native pointing baseline).

        `fixed_length` generates exactly `max_new_tokens` (comparable timings); otherwise generation
        stops at the model's end of turn, as the evaluation needs."""
        from PIL import Image

        if self.loaded_layers < self.num_layers:
            raise RuntimeError(
                f"native pointing needs the whole MLLM, but it was loaded trimmed to layers 0-{self.loaded_layers - 1} "
                "without lm_head; load it with mllm_trim false (tools: --no-trim)"
            )
        text = self._chat_text(prompt_text)
        inputs = self.processor(
            images=[Image.fromarray(np.ascontiguousarray(cap_pixels(image_rgb, self.max_pixels)))],
            text=[text],
            return_tensors="pt",
            **self._processor_kwargs(),
        )
        inputs = {k: (v.to(self.device) if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}
        with self._lock:
            output = self.model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                min_new_tokens=max_new_tokens if fixed_length else None,
                do_sample=False,
            )
        return self.processor.tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


class QwenVLAdapter(MLLMAdapter):
    """Qwen2-VL / Qwen2.5-VL / Qwen3-VL: image tokens between vision_start and vision_end; one token
    per 2x2 merged patch: grid = (grid_h / merge, grid_w / merge) of `image_grid_thw`."""

    family = "qwen_vl"
    # transformers' Qwen2-VL `smart_resize` raises for an aspect ratio above 200 (every Qwen-VL
    # generation uses it); below `min_pixels` it upsamples, so small images are accepted.
    image_limits = ImageLimits(max_aspect=200.0, source="Qwen-VL image processor")

    def _locate_image_tokens(self, inputs):
        input_ids = inputs["input_ids"][0]
        positions = torch.nonzero(input_ids == self.model.config.image_token_id).flatten()
        _, grid_h, grid_w = (int(x) for x in inputs["image_grid_thw"][0])
        merge = int(getattr(self.model.config.vision_config, "spatial_merge_size", 2))
        return positions, (grid_h // merge, grid_w // merge)

    def _prefix_positions(self, prefix_inputs):
        # 3-D mRoPE over the prefix (image tokens get (t, h, w) positions); text after it continues
        # 1-D from the prefix's largest position + 1, i.e. at index + delta on all three axes.
        input_ids = prefix_inputs["input_ids"]
        token_types = prefix_inputs.get("mm_token_type_ids")
        if token_types is None:
            token_types = (input_ids == self.model.config.image_token_id).int()
        position_ids, deltas = self.model.model.get_rope_index(
            input_ids,
            mm_token_type_ids=token_types,
            image_grid_thw=prefix_inputs["image_grid_thw"],
            attention_mask=prefix_inputs.get("attention_mask"),
        )
        return position_ids, int(deltas.reshape(-1)[0])

    def _query_positions(self, prefix, count):
        return super()._query_positions(prefix, count)[None].expand(3, 1, count)  # (3, 1, count)


class InternVLAdapter(MLLMAdapter):
    """InternVL (HF format): `<img>` + image_seq_length `<IMG_CONTEXT>` + `</img>` per tile. We run
    one tile, the whole image resized to the vision size ([ours]: no dynamic tiling), so the tokens
    form one square grid over the whole image (pixel-shuffle keeps row-major order)."""

    family = "internvl"

    def _processor_kwargs(self):
        return {"crop_to_patches": False}

    def _locate_image_tokens(self, inputs):
        input_ids = inputs["input_ids"][0]
        positions = torch.nonzero(input_ids == self.model.config.image_token_id).flatten()
        side = int(round(positions.numel() ** 0.5))
        return positions, (side, side)


class Molmo2Adapter(MLLMAdapter):
    """Molmo2: a low-res view (whole image squashed to the crop size) then a high-res view (the
    tiled canvas over the whole image), each as rows of `<im_patch>` tokens, 2x2 pooled. We read the
    high-res view ([ours]: the finer grid), `image_grids = [low_h, low_w, high_h, high_w]`.

    The canvas (the whole image resized to it) is `tiling * window + margins` patches a side; with
    the real settings (crop 378, patch 14, margins 4+4) an odd tiling gives an odd patch count, the
    processor pads the pooling grid (`arange_for_pooling`: the extra half cell on the bottom/right),
    and the last token row/column pools one patch row/column, not two. So the map is laid on the
    canvas's patch grid, which tiles the image evenly: each patch cell reads the token that pooled
    it, found from the processor's own `image_token_pooling` (padding entries are -1)."""

    family = "molmo2"
    cells_per_token = 2  # the patch grid under 2x2 pooling

    def _locate_image_tokens(self, inputs):
        input_ids = inputs["input_ids"][0]
        tokens = torch.nonzero(input_ids == self.model.config.image_patch_id).flatten()
        low_h, low_w, high_h, high_w = (int(x) for x in inputs["image_grids"][0])
        high_res_tokens = tokens[low_h * low_w :]  # (high_h * high_w,) row-major
        pooling = inputs["image_token_pooling"]
        pooling = pooling.reshape(-1, pooling.shape[-1])[low_h * low_w : low_h * low_w + high_h * high_w]
        pool_h, pool_w = (int(x) for x in getattr(self.processor.image_processor, "pooling_size", (2, 2)))
        return molmo2_patch_positions(high_res_tokens, pooling, (high_h, high_w), (pool_h, pool_w))


def molmo2_patch_positions(
    token_positions: torch.Tensor, pooling: torch.Tensor, token_grid: tuple[int, int], pool: tuple[int, int]
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Sequence position of the token that pooled each canvas patch, and the patch grid.

    `token_positions (T_h * T_w,)`: the high-res tokens, row-major; `pooling (T_h * T_w, p_h * p_w)`:
    the canvas patches each token pools, -1 for padding. Returns `(P_h * P_w,)` positions (a token
    repeats over the patches it pooled) and `(P_h, P_w)`, the patch rows and columns that hold real
    patches (padding rows/columns dropped)."""
    token_h, token_w = token_grid
    pool_h, pool_w = pool
    if pooling.shape != (token_h * token_w, pool_h * pool_w):
        raise RuntimeError(
            f"molmo2: image_token_pooling {tuple(pooling.shape)} does not match a {token_h}x{token_w} token grid "
            f"pooled {pool_h}x{pool_w}"
        )
    # (T_h, p_h, T_w, p_w) -> the padded patch grid (T_h * p_h, T_w * p_w): real patch or padding.
    real = (pooling >= 0).reshape(token_h, token_w, pool_h, pool_w).permute(0, 2, 1, 3)
    real = real.reshape(token_h * pool_h, token_w * pool_w)
    rows = torch.nonzero(real.any(dim=1)).flatten()
    cols = torch.nonzero(real.any(dim=0)).flatten()
    if not bool(real[rows][:, cols].all()):
        raise RuntimeError("molmo2: the pooled patches do not form one rectangle; unknown processor layout")
    token_index = (rows[:, None] // pool_h) * token_w + (cols[None, :] // pool_w)  # (P_h, P_w)
    positions = token_positions.to(token_index.device)[token_index.flatten()]
    return positions, (int(rows.numel()), int(cols.numel()))


ADAPTERS = {
    "qwen2_vl": QwenVLAdapter,
    "qwen2_5_vl": QwenVLAdapter,
    "qwen3_vl": QwenVLAdapter,
    "internvl": InternVLAdapter,
    "molmo2": Molmo2Adapter,
}


# Families in modules of their own (they build on this one, so they are imported on use).
FAMILY_MODULES = {"qwen3_5": "pop_ros.models.qwen3_5:Qwen3_5Adapter", "ovis2": "pop_ros.models.ovis2:Ovis2Adapter"}


def adapter_class(model_type: str) -> type[MLLMAdapter]:
    if model_type in FAMILY_MODULES:
        import importlib

        module, name = FAMILY_MODULES[model_type].split(":")
        return getattr(importlib.import_module(module), name)
    if model_type not in ADAPTERS:
        supported = sorted([*ADAPTERS, *FAMILY_MODULES])
        raise ValueError(f"no pop_ros adapter for model type {model_type!r}; supported: {supported}")
    return ADAPTERS[model_type]


def adapter_for(
    model, processor, prompt_template: str = DEFAULT_PROMPT, system_prompt: str = "", max_pixels: int = 0
) -> MLLMAdapter:
    return adapter_class(model.config.model_type)(
        model, processor, prompt_template=prompt_template, system_prompt=system_prompt, max_pixels=max_pixels
    )
