"""Ovis2 (`Ovis2ForConditionalGeneration`, checkpoints `thisisiron/Ovis2-*-hf`): native in transformers.

The processor expands the prompt's `<image>` into
`<IMG_START>` + thumbnail atoms + `<IMG_GRID>` + tile atoms (tiles row-major, `<IMG_COL>` between the
tiles of a row, `<IMG_ROW>` between rows) + `<IMG_END>`; with one tile there is only the thumbnail.
Each tile (and the thumbnail) is `image_seq_length` `<IMG_ATOM>` tokens, a square `s x s` grid in
row-major order (the vision tower merges `hidden_stride x hidden_stride` patches into one token).

The tiles come from the whole image resized to `rows x cols` tiles, so laid side by side they cover
the whole image: we read that finer `(rows * s, cols * s)` grid ([ours], as Molmo2's high-res view);
a one-tile image reads the thumbnail, the whole image squashed to one tile. The text decoder is
Qwen2 (plain attention, 1-D positions): the fast path and the per-frame prefix are the shared ones;
the prefix keeps the visual indicator embeddings beside the atoms' features.

Ovis2 has no documented pointing answer format: no native-pointing baseline for it.
"""

from __future__ import annotations

import torch

from pop_ros.models.mllm import MLLMAdapter

ATOM, START, GRID, COL, ROW, END = "<IMG_ATOM>", "<IMG_START>", "<IMG_GRID>", "<IMG_COL>", "<IMG_ROW>", "<IMG_END>"


class Ovis2Adapter(MLLMAdapter):
    family = "ovis2"

    def _token_id(self, token: str) -> int:
        return int(self.processor.tokenizer.convert_tokens_to_ids(token))

    def _locate_image_tokens(self, inputs):
        input_ids = inputs["input_ids"][0]
        atoms = torch.nonzero(input_ids == self.model.config.image_token_id).flatten()
        side = int(round(int(self.processor.image_seq_length) ** 0.5))
        if side * side != int(self.processor.image_seq_length):
            raise RuntimeError(f"ovis2: image_seq_length {self.processor.image_seq_length} is not a square grid")
        rows = int((input_ids == self._token_id(ROW)).sum()) + 1
        separators = int((input_ids == self._token_id(COL)).sum())  # rows * (cols - 1)
        cols = separators // rows + 1
        return ovis2_tile_positions(atoms, rows, cols, side)

    def _kept_image_features(self, output):
        # The indicator embeddings (<IMG_START> ...) come from the vision side too: keep them.
        from transformers.models.ovis2.modeling_ovis2 import BaseModelOutputWithVisualIndicatorFeatures

        return BaseModelOutputWithVisualIndicatorFeatures(
            pooler_output=output.pooler_output, visual_indicator_features=output.visual_indicator_features
        )


def ovis2_tile_positions(atoms: torch.Tensor, rows: int, cols: int, side: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Sequence positions of the grid we read, row-major, and its `(H_l, W_l)`.

    `atoms`: positions of every `<IMG_ATOM>` in order (thumbnail first, then the tiles row-major,
    each `side x side` row-major). One tile: the thumbnail grid. Several: the tiles side by side,
    `(rows * side, cols * side)`; the thumbnail is skipped."""
    per_view = side * side
    tiles = rows * cols
    expected = per_view if tiles == 1 else per_view * (1 + tiles)
    if rows < 1 or cols < 1 or atoms.numel() != expected:
        raise RuntimeError(
            f"ovis2: {atoms.numel()} image tokens for {rows}x{cols} tiles of {side}x{side} "
            f"(expected {expected}); unknown processor layout"
        )
    if tiles == 1:
        return atoms, (side, side)
    # (rows, cols, side, side) -> (rows, side, cols, side): tile rows interleave with token rows.
    grid = atoms[per_view:].reshape(rows, cols, side, side).permute(0, 2, 1, 3)
    return grid.reshape(-1), (rows * side, cols * side)


# ---- tiny hub-layout checkpoint (tests, offline demos) --------------------------------------
# The structure of the -hf repositories' template: a system turn always sent, then the user turn
# with the image placeholder and a newline before the text.
TINY_CHAT_TEMPLATE = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>\n"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TINY_SPECIAL_TOKENS = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<image>", ATOM, START, GRID, COL, ROW, END]
TINY_TILE = 112  # px: 8 x 8 patches of 14, merged 2 x 2 -> 16 tokens a tile (real: 448 px, 256 tokens)
TINY_IMAGE_SEQ_LENGTH = 16


def build_tiny(tokenizer, text_dims: dict):
    """(model, processor) of a tiny random Ovis2 with the real token layout and tiling; `text_dims`: the
    tiny families' shared text sizes (models/tiny.py builds every tiny family and passes them)."""
    from transformers import Ovis2Config, Ovis2ForConditionalGeneration, Ovis2ImageProcessorPil, Ovis2Processor

    from pop_ros.models.processors import build_processor

    ids = {token: int(tokenizer.convert_tokens_to_ids(token)) for token in TINY_SPECIAL_TOKENS}
    text = {"model_type": "qwen2", "vocab_size": 128, **text_dims}
    vision = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": TINY_TILE,
        "patch_size": 14,
        "vocab_size": 64,
        "hidden_stride": 2,
        "num_visual_indicator_tokens": 5,
    }
    config = Ovis2Config(
        text_config=text,
        vision_config=vision,
        image_token_id=ids[ATOM],
        visual_indicator_token_ids=[ids[START], ids[GRID], ids[COL], ids[ROW], ids[END]],
        vocab_size=128,
        hidden_size=64,
    )
    model = Ovis2ForConditionalGeneration(config)
    image_processor = Ovis2ImageProcessorPil(
        size={"height": TINY_TILE, "width": TINY_TILE}, crop_to_patches=True, max_patches=4
    )
    return model, build_processor(
        Ovis2Processor, image_processor, tokenizer, TINY_CHAT_TEMPLATE, image_seq_length=TINY_IMAGE_SEQ_LENGTH
    )
