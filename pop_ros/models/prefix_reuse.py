"""Per-frame reuse of the MLLM's work (a mixin of `MLLMAdapter`): the image prefix (vision tower and
every token before the query text) is run once per frame and kept as its cache state; each query then
runs only its own tokens, several queries of one frame as right-padded batches, each row attending to
its own copy of the prefix state. Those copies are real: the first layer that appends a batch's own
keys concatenates them to the prefix's, once per row, so a batch holds B copies of the prefix's
keys/values; batches are sized so that they fit in PREFIX_COPY_BUDGET_BYTES (split when needed).
Equal to a full prefill of each query's prompt (tests)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence

import numpy as np
import torch

from pop_ros.models import transformers_internals as internals
from pop_ros.models.inputs import ImagePrefix

LOG = logging.getLogger("pop_ros.models.mllm")
# The most memory a batch's copies of the prefix's keys/values may take (one copy per row; the rest of
# the batch's activations are small beside them). 1 GiB: 8 rows of a 7B model's 1024-token prefix in
# bfloat16 (28 layers x 4 KV heads x 128 x 2 x 2 bytes x 1024 ~ 57 MB a row, far fewer rows for long prefixes).
PREFIX_COPY_BUDGET_BYTES = 1 << 30


def prefix_bytes(prefix: ImagePrefix) -> int:
    """Bytes of the prefix's kept state (keys and values per layer; a hybrid model's entries also hold
    its recurrent layers' states): what each batch row copies."""
    return sum(
        part.numel() * part.element_size()
        for entry in prefix.keys_values
        for part in entry
        if isinstance(part, torch.Tensor)
    )


def rows_per_batch(prefix: ImagePrefix, budget_bytes: int | None = None) -> int:
    """How many queries one batch may hold so that their prefix copies fit in `budget_bytes`
    (default PREFIX_COPY_BUDGET_BYTES; at least 1)."""
    budget = PREFIX_COPY_BUDGET_BYTES if budget_bytes is None else budget_bytes
    return max(1, budget // max(1, prefix_bytes(prefix)))


class PrefixReuseMixin:
    """`image_prefix` once per frame, then `head_maps_from_prefix(_batch)` per query. Family
    adapters override `_prefix_positions`, `_query_positions`, `_keep_prefix_state` and
    `_query_cache` where their positions or cache layout differ."""

    def _prefix_positions(self, prefix_inputs: dict) -> tuple[torch.Tensor | None, int]:
        """(position ids for the prefix run or None = the model's own, offset of the query tokens).

        Default: 1-D positions 0..P-1, the query's tokens continue at P (Molmo2, InternVL)."""
        return None, 0

    def _query_positions(self, prefix: ImagePrefix, count: int) -> torch.Tensor:
        """Rope positions of `count` query tokens after the prefix, in the layout the model takes."""
        start = prefix.length + prefix.position_offset
        return torch.arange(start, start + count, device=self.device)[None]  # (1, count)

    def _split_prompt(self, query: str) -> tuple[str, str] | str:
        """(text up to and including the image placeholder, the rest), or why that split is unusable."""
        text = self.prompt(query)
        image_token = getattr(self.processor, "image_token", None)
        if not image_token or text.count(image_token) != 1:
            return f"the prompt holds {text.count(image_token) if image_token else 0} image placeholders, not one"
        cut = text.index(image_token) + len(image_token)
        head, tail = text[:cut], text[cut:]
        if self.prompt_template.format(query=query) not in tail:
            return "the chat template puts the query text before the image"
        return head, tail

    def _tail_ids(self, tail: str) -> torch.Tensor:
        ids = self.processor.tokenizer(tail, add_special_tokens=False)["input_ids"]
        return torch.tensor(ids, dtype=torch.long, device=self.device)

    def _fallback(self, image_rgb: np.ndarray, reason: str) -> ImagePrefix:
        if not getattr(self, "_fallback_logged", False):
            LOG.warning(
                "%s: no per-frame reuse (%s); every query on a frame runs the full prefill", self.family, reason
            )
            self._fallback_logged = True
        return ImagePrefix(image_rgb=image_rgb, reusable=False, reason=reason)

    @torch.inference_mode()
    def image_prefix(self, image_rgb: np.ndarray, query: str, depth: int) -> ImagePrefix:
        """Vision tower + keys/values of layers 0..`depth` for every token before the query text.

        `query` is any query of this frame: its processed prompt checks that the image-only part
        tokenizes the same alone (the tokens after the image are tokenized on their own later)."""
        if not 0 <= int(depth) < self.num_layers:
            raise ValueError(f"depth {depth} is outside this model's {self.num_layers} layers")
        if int(depth) >= self.loaded_layers:
            raise ValueError(self.trimmed_reason(f"a frame prefix to depth {int(depth)}", int(depth)))
        split = self._split_prompt(query)
        if isinstance(split, str):
            return self._fallback(image_rgb, split)
        head, tail = split
        prepared = self.prepare(image_rgb, query)
        full_ids = prepared.model_inputs["input_ids"][0]
        tail_ids = self._tail_ids(tail)
        length = full_ids.numel() - tail_ids.numel()
        if (
            tail_ids.numel() == 0
            or length <= int(prepared.image_positions.max())
            or not torch.equal(full_ids[length:], tail_ids)
        ):
            return self._fallback(image_rgb, "the text after the image tokenizes differently on its own")
        total = full_ids.numel()
        prefix_inputs = {
            name: value[:, :length] if isinstance(value, torch.Tensor) and tuple(value.shape) == (1, total) else value
            for name, value in prepared.model_inputs.items()
        }
        prefix = ImagePrefix(
            image_rgb=image_rgb,
            reusable=True,
            head_text=head,
            model_inputs=prefix_inputs,
            image_positions=prepared.image_positions,
            grid=prepared.grid,
            length=length,
        )
        with self._lock:
            self._run_prefix(prefix, int(depth))
        return prefix

    def _run_prefix(self, prefix: ImagePrefix, depth: int) -> None:
        """Fill `prefix.keys_values` for layers 0..depth (the vision tower runs once per prefix: its
        output is recorded on the first run and handed back to a deeper one)."""
        inputs = dict(prefix.model_inputs)
        position_ids, offset = self._prefix_positions(inputs)
        if position_ids is not None:
            inputs["position_ids"] = position_ids
        if prefix.image_features is not None:
            inputs = internals.reuse_image_features(inputs, prefix.image_features)
        cache = internals.new_cache(self.model)
        recording = internals.recording_image_features if prefix.image_features is None else _nothing_recorded
        with recording(self.model.model) as recorded, self._armed({depth: []}, stop_early=True, capture=False):
            internals.forward_until_stopped(self.model.model, **inputs, cache=cache, use_cache=True)
        if "image" in recorded:
            prefix.image_features = self._kept_image_features(recorded["image"])
            prefix.model_inputs.pop("pixel_values", None)  # the features replace them: memory stays flat
        kept = self._keep_prefix_state(cache, depth, prefix.length)
        prefix.keys_values, prefix.depth, prefix.position_offset = kept, depth, offset

    def _kept_image_features(self, output):
        """What of the vision tower's output a deeper prefix run needs (not its hidden states)."""
        return internals.pooled_image_features(output)

    def _keep_prefix_state(self, cache, depth: int, length: int) -> list:
        """What a query needs of the prefix run's cache, per layer 0..depth: its keys and values."""
        kept = []
        for entry in internals.cache_layers(cache)[: depth + 1]:
            keys_values = internals.attention_entry(entry)
            if keys_values is None or keys_values[0].shape[-2] != length:
                raise RuntimeError(f"{self.family}: the prefix run left no keys/values for a layer <= {depth}")
            kept.append(keys_values)
        return kept

    def _query_cache(self, prefix: ImagePrefix, batch: int = 1):
        """A fresh cache holding the prefix's keys/values once per batch row: `expand` makes no copy
        here, but each layer's first append of the queries' own keys concatenates, and so copies the
        prefix once per row (hence `rows_per_batch`); the queries append to it, never to the prefix."""
        expanded = [
            (keys.expand(batch, -1, -1, -1), values.expand(batch, -1, -1, -1)) for keys, values in prefix.keys_values
        ]
        return internals.new_cache(self.model, expanded)

    @torch.inference_mode()
    def head_maps_from_prefix(self, prefix: ImagePrefix, query: str, heads: Sequence[Sequence[int]]) -> torch.Tensor:
        """`(N, H_l, W_l)` maps of `heads` for `query` on the prefix's frame: only the query's own
        tokens run (layers 0..deepest head); equal to `head_maps` on the whole prompt."""
        return self.head_maps_from_prefix_batch(prefix, [query], heads)[0]

    @torch.inference_mode()
    def head_maps_from_prefix_batch(
        self, prefix: ImagePrefix, queries: Sequence[str], heads: Sequence[Sequence[int]]
    ) -> list[torch.Tensor]:
        """One `(N, H_l, W_l)` map stack per query, in order: the queries' own tokens go through the
        layers as batches of at most `rows_per_batch(prefix)` (right-padded, padding masked out),
        each row attending to its copy of the prefix's keys/values, with the positions its own
        prompt would give it. Equal to `head_maps_from_prefix` per query; a query whose prompt cannot
        reuse the prefix runs alone."""
        for query in queries:
            if not isinstance(query, str) or not query.strip():
                raise ValueError("query must be a non-empty string")
        by_layer = self._heads_tensor(heads)
        if not prefix.reusable:
            return [self.head_maps(prefix.image_rgb, query, heads) for query in queries]
        maps: list[torch.Tensor | None] = [None] * len(queries)
        batched: dict[int, torch.Tensor] = {}  # query index -> its own token ids (S_i,)
        for index, query in enumerate(queries):
            split = self._split_prompt(query)
            if isinstance(split, str) or split[0] != prefix.head_text:
                reason = split if isinstance(split, str) else "the text before the image depends on the query"
                self._fallback(prefix.image_rgb, reason)
                maps[index] = self.head_maps(prefix.image_rgb, query, heads)
            else:
                batched[index] = self._tail_ids(split[1])
        indices, size = list(batched), rows_per_batch(prefix)
        for start in range(0, len(indices), size):
            chunk = indices[start : start + size]
            rows = self._run_query_batch(prefix, [batched[i] for i in chunk], by_layer)  # layer -> (B, n, S)
            for row_index, index in enumerate(chunk):
                own = {layer: None if found is None else found[row_index] for layer, found in rows.items()}
                maps[index] = self._maps_from_rows(own, by_layer, heads, prefix.image_positions, prefix.grid)
        return maps  # type: ignore[return-value]

    def _run_query_batch(self, prefix: ImagePrefix, token_ids: list[torch.Tensor], by_layer) -> dict:
        """Run B queries' tokens (right-padded to T) after the prefix; `{layer: (B, n, S) rows}`."""
        batch, lengths = len(token_ids), torch.tensor([ids.numel() for ids in token_ids])
        width = int(lengths.max())
        pad_id = getattr(self.processor.tokenizer, "pad_token_id", None) or 0  # masked out: any id will do
        input_ids = torch.full((batch, width), int(pad_id), dtype=torch.long, device=self.device)  # (B, T)
        attention_mask = torch.zeros((batch, prefix.length + width), dtype=torch.long, device=self.device)
        attention_mask[:, : prefix.length] = 1  # every row sees the whole prefix ...
        for row, ids in enumerate(token_ids):
            input_ids[row, : ids.numel()] = ids
            attention_mask[row, prefix.length : prefix.length + ids.numel()] = 1  # ... and its own tokens only
        # Right padding: row b's token i sits at the position it has alone, whatever the others' lengths.
        positions = self._query_positions(prefix, width)  # (..., 1, T)
        positions = positions.expand(*positions.shape[:-2], batch, width)  # (..., B, T)
        with self._lock:
            if max(by_layer) > prefix.depth:
                self._run_prefix(prefix, max(by_layer))
            cache = self._query_cache(prefix, batch)
            with self._armed(by_layer, stop_early=True, last_index=lengths - 1) as states:
                internals.forward_until_stopped(
                    self.model.model,
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    position_ids=positions,
                    cache=cache,
                    use_cache=True,
                )
                return {layer: state.result for layer, state in states.items()}


@contextlib.contextmanager
def _nothing_recorded(_inner_model):
    """A prefix run that already has the vision tower's output records nothing."""
    yield {}
