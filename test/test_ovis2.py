"""Ovis2 on a tiny random checkpoint with the real token layout and tiling (112 px tiles of 4 x 4
tokens, up to 4 tiles plus the thumbnail).

The grid reference is an independent walk over the token sequence the processor wrote (atoms,
<IMG_GRID>, <IMG_COL>, <IMG_ROW>) checked against the image processor's own `grids`; the maps are
checked against eager attention and against the whole prompt run at once. Random weights: code
paths and geometry only.
"""

import json

import pytest
import torch
from PIL import Image

from pop_ros.models.loading import load_mllm
from pop_ros.models.ovis2 import ovis2_tile_positions
from pop_ros.models.tiny import ensure_tiny_checkpoint
from test.conftest import random_image

HEADS = [(1, 0), (2, 3), (4, 1), (5, 2)]
QUERIES = ["handle of the mug", "neck of the bottle", "lid"]
SIZES = [(224, 224), (300, 500), (480, 200), (100, 120), (60, 400), (112, 112)]


@pytest.fixture(scope="module")
def ovis2():
    return load_mllm("tiny:ovis2", device="cpu", dtype="float32")


def _walk(input_ids, tokenizer, side):
    """{(row, col) of the tiled canvas's token grid: sequence position}, by reading the sequence:
    the thumbnail's atoms up to <IMG_GRID>, then tiles left to right (<IMG_COL>) and top to bottom
    (<IMG_ROW>), each `side` x `side` row-major. None when there are no tiles (one-tile image)."""
    ids = {
        name: tokenizer.convert_tokens_to_ids(name) for name in ("<IMG_ATOM>", "<IMG_GRID>", "<IMG_COL>", "<IMG_ROW>")
    }
    cells, tile_row, tile_col, index, after_grid = {}, 0, 0, 0, False
    for position, token in enumerate(input_ids.tolist()):
        if token == ids["<IMG_GRID>"]:
            after_grid = True
        elif after_grid and token == ids["<IMG_COL>"]:
            tile_col, index = tile_col + 1, 0
        elif after_grid and token == ids["<IMG_ROW>"]:
            tile_row, tile_col, index = tile_row + 1, 0, 0
        elif after_grid and token == ids["<IMG_ATOM>"]:
            cells[(tile_row * side + index // side, tile_col * side + index % side)] = position
            index += 1
    return cells or None


@pytest.mark.parametrize("size", SIZES)
def test_grid_matches_the_processor_tiling_token_by_token(ovis2, rng, size):
    image = random_image(rng, *size)
    prepared = ovis2.prepare(image, "handle of the mug")
    rows, cols = (int(v) for v in ovis2.processor.image_processor(images=[Image.fromarray(image)])["grids"][0])
    input_ids = prepared.model_inputs["input_ids"][0]
    cells = _walk(input_ids, ovis2.processor.tokenizer, side=4)
    if rows * cols == 1:
        assert cells is None and prepared.grid == (4, 4)
        atoms = torch.nonzero(input_ids == ovis2.model.config.image_token_id).flatten()
        assert prepared.image_positions.tolist() == atoms.tolist()  # the thumbnail, row-major
        return
    assert prepared.grid == (4 * rows, 4 * cols)
    expected = [cells[(r, c)] for r in range(4 * rows) for c in range(4 * cols)]
    assert prepared.image_positions.tolist() == expected


def test_tile_positions_by_hand():
    # 1 x 2 tiles of 2 x 2: thumbnail atoms 0-3, tile (0,0) atoms 4-7, tile (0,1) atoms 8-11.
    atoms = torch.arange(12) * 10
    positions, grid = ovis2_tile_positions(atoms, rows=1, cols=2, side=2)
    assert grid == (2, 4) and positions.tolist() == [40, 50, 80, 90, 60, 70, 100, 110]
    with pytest.raises(RuntimeError, match="unknown processor layout"):
        ovis2_tile_positions(atoms[:11], rows=1, cols=2, side=2)


def test_tiny_checkpoint_has_the_hub_layout(ovis2):
    folder = ensure_tiny_checkpoint("ovis2")
    assert json.loads((folder / "processor_config.json").read_text()) == {
        "image_seq_length": 16,
        "processor_class": "Ovis2Processor",
    }
    assert json.loads((folder / "config.json").read_text())["model_type"] == "ovis2"
    assert ovis2.prompt("lid") == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<image>\nPoint to the lid.<|im_end|>\n<|im_start|>assistant\n"
    )


@pytest.mark.parametrize("size", [(300, 500), (112, 112)])
def test_fast_path_equals_eager(ovis2, rng, size):
    image = random_image(rng, *size)
    prepared = ovis2.prepare(image, "neck of the bottle")
    fast = ovis2.head_maps(image, "neck of the bottle", HEADS, prepared=prepared)
    eager = ovis2.head_maps_eager(image, "neck of the bottle", HEADS, prepared=prepared)
    assert fast.shape == (len(HEADS), *prepared.grid)
    torch.testing.assert_close(fast, eager, atol=1e-6, rtol=0)


def test_prefix_reuse_equals_a_full_prefill(ovis2, rng):
    image = random_image(rng, 300, 500)
    prefix = ovis2.image_prefix(image, QUERIES[0], depth=2)
    assert prefix.reusable, prefix.reason and prefix.depth == 2
    for query in QUERIES:
        reused = ovis2.head_maps_from_prefix(prefix, query, [(1, 0), (2, 3)])
        torch.testing.assert_close(reused, ovis2.head_maps(image, query, [(1, 0), (2, 3)]), atol=1e-5, rtol=0)
    # Deeper: the prefix reruns from the kept vision output (atoms and indicator embeddings).
    assert prefix.image_features.visual_indicator_features.shape == (5, 64)
    deep = ovis2.head_maps_from_prefix(prefix, "lid", [(5, 2), (0, 1)])
    assert prefix.depth == 5
    torch.testing.assert_close(deep, ovis2.head_maps(image, "lid", [(5, 2), (0, 1)]), atol=1e-5, rtol=0)
