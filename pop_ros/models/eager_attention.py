"""Reference attention paths (a mixin of `MLLMAdapter`): maps from transformers' own
`output_attentions` under eager attention. The fast capture path is tested equal to these, and
pop-bench times them against it; the node never runs them."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from pop_ros.models.inputs import PromptInputs


class EagerAttentionMixin:
    """`head_maps_eager` (eager attention in the text layers only) and `head_maps_naive` (eager
    everywhere, the whole prompt): the slow, obviously-correct ways to the same maps."""

    @torch.inference_mode()
    def head_maps_eager(
        self, image_rgb: np.ndarray, query: str, heads: Sequence[Sequence[int]], prepared: PromptInputs | None = None
    ) -> torch.Tensor:
        """Reference path: eager attention with `output_attentions=True`, full forward."""
        prepared = prepared or self.prepare(image_rgb, query)
        self._heads_tensor(heads)
        with self._lock:
            self._set_text_attention("eager")
            try:
                outputs = self._forward(prepared.model_inputs, output_attentions=True)
            finally:
                self._set_capture_attention()
        return self._maps_from_attentions(outputs.attentions, heads, prepared)

    @torch.inference_mode()
    def head_maps_naive(self, image_rgb: np.ndarray, query: str, heads: Sequence[Sequence[int]], prepared=None):
        """How attention maps are usually read: the whole model (vision tower included) switched to
        eager attention, `output_attentions=True`, a full forward with all logits. The benchmark's
        baseline; equal maps to the other paths."""
        prepared = prepared or self.prepare(image_rgb, query)
        self._heads_tensor(heads)
        with self._lock:
            self.model.set_attn_implementation("eager")
            try:
                outputs = self.model(**prepared.model_inputs, use_cache=False, output_attentions=True)
            finally:
                self.model.set_attn_implementation("sdpa")
                self._set_capture_attention()
        return self._maps_from_attentions(outputs.attentions, heads, prepared)

    @staticmethod
    def _maps_from_attentions(attentions, heads, prepared: PromptInputs) -> torch.Tensor:
        """`(N, H_l, W_l)` from `output_attentions` (per layer `(B, H, S, S)`): last row, image tokens."""
        maps = [attentions[int(layer)][0, int(head), -1][prepared.image_positions] for layer, head in heads]
        return torch.stack(maps).reshape(len(maps), *prepared.grid).float()
