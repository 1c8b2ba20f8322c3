"""The real checkpoints' structure: hub file layouts, chat templates, Molmo2's real token geometry,
the MLLM pixel cap and the system-turn option. Random weights: plumbing and geometry only."""

import dataclasses
import json
import math
import shutil

import numpy as np
import pytest
import torch

from pop_ros.models.loading import load_mllm
from pop_ros.models.mllm import INTERNVL_ORIGINAL_SYSTEM_PROMPT, cap_pixels, molmo2_patch_positions
from pop_ros.models.processors import assemble_processor, molmo2_image_processor
from pop_ros.models.tiny import FAMILIES, HUB_LAYOUTS, ensure_tiny_checkpoint
from test.conftest import random_image

# The files each preset's hub repository has (processor part; weights and config.json aside).
HUB_FILES = {
    "qwen2_5_vl": {"preprocessor_config.json", "chat_template.json", "tokenizer.json", "tokenizer_config.json"},
    "internvl": {
        "preprocessor_config.json",
        "processor_config.json",
        "chat_template.json",
        "tokenizer.json",
        "tokenizer_config.json",
    },
    "molmo2": {
        "preprocessor_config.json",
        "processor_config.json",
        "chat_template.jinja",
        "tokenizer.json",
        "tokenizer_config.json",
    },
    "qwen3_5": {"preprocessor_config.json", "chat_template.jinja", "tokenizer.json", "tokenizer_config.json"},
    "ovis2": {
        "preprocessor_config.json",
        "processor_config.json",
        "chat_template.jinja",
        "tokenizer.json",
        "tokenizer_config.json",
    },
}


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_checkpoints_have_the_hub_layout_and_load(family):
    folder = ensure_tiny_checkpoint(family)
    names = {p.name for p in folder.iterdir()}
    assert HUB_FILES[family] <= names
    if family == "qwen2_5_vl":
        # Qwen2.5-VL's repos have no processor_config.json: the class is in preprocessor_config.json.
        assert "processor_config.json" not in names and "chat_template.jinja" not in names
        assert json.loads((folder / "preprocessor_config.json").read_text())["processor_class"] == "Qwen2_5_VLProcessor"
        assert (
            "You are a helpful assistant." in json.loads((folder / "chat_template.json").read_text())["chat_template"]
        )
    class_file = HUB_LAYOUTS[family]["processor_class_file"]
    assert json.loads((folder / class_file).read_text())["processor_class"].endswith("Processor")
    processor = assemble_processor(str(folder))
    assert type(processor).__name__ == json.loads((folder / class_file).read_text())["processor_class"]


def test_chat_template_from_json_or_jinja_and_class_from_any_file(tmp_path):
    source = ensure_tiny_checkpoint("qwen2_5_vl")
    template = json.loads((source / "chat_template.json").read_text())["chat_template"]
    jinja = tmp_path / "jinja"
    shutil.copytree(source, jinja)
    (jinja / "chat_template.json").unlink()
    (jinja / "chat_template.jinja").write_text(template)
    assert assemble_processor(str(jinja)).chat_template == assemble_processor(str(source)).chat_template == template
    nameless = tmp_path / "nameless"
    shutil.copytree(source, nameless)
    settings = json.loads((nameless / "preprocessor_config.json").read_text())
    del settings["processor_class"]
    (nameless / "preprocessor_config.json").write_text(json.dumps(settings))
    with pytest.raises(OSError, match="processor_config.json, preprocessor_config.json, tokenizer_config.json"):
        assemble_processor(str(nameless))


@pytest.mark.parametrize("family", FAMILIES)
def test_prompt_ends_on_the_newline_and_keeps_the_system_turn_behaviour(tiny_adapters, family):
    adapter = tiny_adapters[family]
    prompt = adapter.prompt("handle of the mug")
    tokens = adapter.processor.tokenizer.tokenize(prompt)
    # As on the real models: the last prompt token is "\n"; Qwen3.5's (thinking off) is "\n\n" after an empty
    # think block, spelt in byte-level BPE symbols (Ċ = "\n") by the tokenizer class transformers loads for it.
    tail = ["Ċ", "<think>", "ĊĊ", "</think>", "ĊĊ"] if family == "qwen3_5" else ["assistant", "\n"]
    assert tokens[-len(tail) :] == tail
    # Qwen2.5-VL's template adds it without a system turn, Ovis2's -hf template always.
    assert ("You are a helpful assistant." in prompt) == (family in ("qwen2_5_vl", "ovis2"))


def test_system_prompt_option(rng):
    qwen = load_mllm("tiny:qwen2_5_vl", device="cpu", dtype="float32", system_prompt="Answer briefly.")
    prompt = qwen.prompt("handle")
    assert prompt.startswith("<|im_start|>system\nAnswer briefly.<|im_end|>\n")
    assert "helpful assistant" not in prompt  # the template's default only when no system turn is given
    internvl = load_mllm("tiny:internvl", device="cpu", dtype="float32", system_prompt="internvl-original")
    assert internvl.prompt("handle").startswith(f"<|im_start|>system\n{INTERNVL_ORIGINAL_SYSTEM_PROMPT}<|im_end|>\n")
    prepared = internvl.prepare(random_image(rng, 100, 120), "handle")
    assert prepared.grid == (8, 8)


def test_cap_pixels_by_hand():
    image = np.zeros((3000, 4000, 3), np.uint8)
    capped = cap_pixels(image, 1_200_000)  # scale sqrt(0.1): 1264 x 948
    assert capped.shape == (948, 1264, 3) and 948 * 1264 <= 1_200_000
    assert cap_pixels(image, 0) is image and cap_pixels(image, 12_000_000) is image
    assert cap_pixels(image, 4).shape[:2] == (1, 2)


def test_mllm_max_pixels_bounds_the_image_tokens(rng):
    image = random_image(rng, 448, 448)
    uncapped = load_mllm("tiny:qwen2_5_vl", device="cpu", dtype="float32")
    capped = load_mllm("tiny:qwen2_5_vl", device="cpu", dtype="float32", max_pixels=112 * 112)
    assert uncapped.prepare(image, "handle").grid == (16, 16)  # 448 px / 28 px per token
    assert capped.prepare(image, "handle").grid == (4, 4)  # 112 px / 28
    with pytest.raises(ValueError, match="mllm_max_pixels"):
        load_mllm("tiny:qwen2_5_vl", device="cpu", dtype="float32", max_pixels=-1)


def test_preset_field_and_cli_option():
    from pop_ros.cli.point import main as point_main
    from pop_ros.models.presets import ROBOT_MLLM_MAX_PIXELS, get_preset

    assert get_preset("qwen2.5-vl-7b").mllm_max_pixels == ROBOT_MLLM_MAX_PIXELS == 1280 * 28 * 28
    assert get_preset("tiny").replace(mllm_max_pixels=5000).mllm_max_pixels == 5000
    with pytest.raises(SystemExit) as error:
        point_main(["--mllm-max-pixels", "-5", "--help"])
    assert error.value.code == 2


# Molmo2's real image processor settings (allenai/Molmo2-8B preprocessor_config.json, transformers'
# Molmo2ImageProcessor defaults): crop 378, patch 14, max_crops 8, margins 4 + 4, 2x2 pooling.
REAL_MOLMO2 = {"size": {"height": 378, "width": 378}, "max_crops": 8, "overlap_margins": [4, 4]}


def _canvas_patch_of_crop_patch(index, tiling_w, crop_patches=27, window=19):
    """Canvas (row, col) of patch `index` of the crops (crop-major, row-major inside a crop; crop 0
    is the low-res view, the tiles follow): tile (ty, tx) starts at canvas patch (ty * window, tx * window)."""
    crop, local = divmod(int(index), crop_patches * crop_patches)
    crop -= 1  # the low-res view comes first
    ty, tx = divmod(crop, tiling_w)
    i, j = divmod(local, crop_patches)
    return ty * window + i, tx * window + j


@pytest.mark.parametrize("height,width", [(768, 1024), (1200, 1600), (360, 640), (1024, 768), (500, 500)])
def test_molmo2_patch_grid_with_the_real_processor_and_odd_crop_counts(height, width):
    processor = molmo2_image_processor(**REAL_MOLMO2)
    from PIL import Image

    image = Image.fromarray(np.zeros((height, width, 3), np.uint8))
    out = processor(images=[image], return_tensors="pt")
    low_h, low_w, high_h, high_w = (int(x) for x in out["image_grids"][0])
    pooling = out["image_token_pooling"].reshape(-1, 4)[low_h * low_w :]
    tokens = torch.arange(high_h * high_w) * 10 + 7  # stand-in sequence positions
    positions, (patch_h, patch_w) = molmo2_patch_positions(tokens, pooling, (high_h, high_w), (2, 2))
    # The canvas is tiling * 19 + 8 patches a side; odd tilings give odd counts and padded tokens.
    tiling_h, tiling_w = (patch_h - 8) // 19, (patch_w - 8) // 19
    assert (patch_h, patch_w) == (tiling_h * 19 + 8, tiling_w * 19 + 8)
    assert (high_h, high_w) == (math.ceil(patch_h / 2), math.ceil(patch_w / 2))
    # Independent of the pooling layout: each canvas patch reads the one token whose pooled crop
    # patches include it (crop geometry by hand).
    owner = {}
    for token, row in enumerate(pooling.tolist()):
        for index in row:
            if index >= 0:
                owner[_canvas_patch_of_crop_patch(index, tiling_w)] = tokens[token].item()
    assert len(owner) == patch_h * patch_w
    expected = torch.tensor([[owner[(r, c)] for c in range(patch_w)] for r in range(patch_h)])
    assert torch.equal(positions.reshape(patch_h, patch_w), expected)
    if patch_h % 2:  # the last token row pools one patch row: it covers the last 1/patch_h of the image
        last_row_token = tokens.reshape(high_h, high_w)[-1, 0].item()
        assert (positions.reshape(patch_h, patch_w)[:, 0] == last_row_token).sum() == 1


def test_molmo2_odd_counts_occur_on_common_frames():
    """The sizes the issue measured do give odd patch counts (so the old even-tiling assumption
    shifted the prior), and what the shift was: token-grid centre vs the patches it really pools."""
    processor = molmo2_image_processor(**REAL_MOLMO2)
    from PIL import Image

    shifts = {}
    for height, width in [(768, 1024), (1200, 1600), (360, 640)]:
        out = processor(images=[Image.fromarray(np.zeros((height, width, 3), np.uint8))], return_tensors="pt")
        low_h, low_w, high_h, high_w = (int(x) for x in out["image_grids"][0])
        pooling = out["image_token_pooling"].reshape(-1, 4)[low_h * low_w :]
        _, (patch_h, patch_w) = molmo2_patch_positions(torch.arange(high_h * high_w), pooling, (high_h, high_w), (2, 2))
        # Old assumption: last column's centre at (high_w - 0.5) / high_w of the width; really it
        # pools patch columns [2 * (high_w - 1), patch_w), centre at their middle.
        old_u = (high_w - 0.5) / high_w * width
        real_u = (2 * (high_w - 1) + patch_w) / 2 / patch_w * width
        old_v = (high_h - 0.5) / high_h * height
        real_v = (2 * (high_h - 1) + patch_h) / 2 / patch_h * height
        shifts[(height, width)] = (round(real_u - old_u, 1), round(real_v - old_v, 1))
    assert any(v != (0.0, 0.0) for v in shifts.values()), shifts
    print("molmo2 far-edge shift of the old mapping (du, dv) px:", shifts)


def test_sigma_stays_in_token_units_on_molmo2s_patch_grid(monkeypatch, rng):
    import pop_ros.core as core
    from pop_ros.pipeline import PartPointer

    seen = []
    original = core.text_prior

    def recording(head_maps, sigma=1.0, aggregation="sum"):
        seen.append((tuple(head_maps.shape[-2:]), sigma))
        return original(head_maps, sigma=sigma, aggregation=aggregation)

    monkeypatch.setattr(core, "text_prior", recording)
    image = random_image(rng, 300, 500)
    for preset, cells in (("tiny", 1), ("tiny-molmo2", 2)):
        pointer = PartPointer.from_preset(preset)
        pointer.settings = dataclasses.replace(pointer.settings, sigma=1.5)
        pointer.point(image, "handle of the mug")
        grid, sigma = seen[-1]
        assert sigma == 1.5 * cells
        assert grid == pointer.mllm.prepare(image, "handle of the mug").grid
