"""Model backbones on tiny random checkpoints: token layout, fast == eager, loading, head discovery.

Random weights prove plumbing, shapes and equivalence of code paths, never where a model points.
"""

import math

import numpy as np
import pytest
import torch

from pop_ros.models.heads import (
    elbow_threshold,
    fallback_heads,
    load_head_file,
    sample_votes,
    save_head_file,
    select_heads,
    spatial_entropy,
)
from pop_ros.models.loading import ModelLoadError, load_mllm, load_visual
from pop_ros.models.tiny import FAMILIES, ensure_tiny_checkpoint
from pop_ros.models.visual import resized_shape
from test.conftest import heads_on, random_image

HEADS = [(1, 0), (2, 3), (4, 1), (4, 2), (5, 0)]


def expected_grid(family, adapter, image):
    """The grid each family's processor implies, computed from its own outputs."""
    prepared = adapter.prepare(image, "handle of the mug")
    inputs = prepared.model_inputs
    if family in ("qwen2_5_vl", "qwen3_5"):
        _, grid_h, grid_w = inputs["image_grid_thw"][0].tolist()
        return (grid_h // 2, grid_w // 2), prepared
    if family == "molmo2":
        # The canvas's patch grid (each patch reads the token that pooled it): the crop geometry
        # by hand, tiling * window + margins patches a side (tiny: window 7, margins 1 + 1).
        from transformers.models.molmo2.image_processing_molmo2 import select_tiling

        tiling_h, tiling_w = select_tiling(image.shape[0] - 28, image.shape[1] - 28, 7 * 14, 4)
        return (tiling_h * 7 + 2, tiling_w * 7 + 2), prepared
    if family == "ovis2":
        # The image processor's own tiling (rows, cols); 4 x 4 tokens a tile (112 px, 14 px patches,
        # 2 x 2 merge): the tiles side by side, or the thumbnail alone for one tile.
        from PIL import Image

        rows, cols = adapter.processor.image_processor(images=[Image.fromarray(image)])["grids"][0]
        return (4 * int(rows), 4 * int(cols)), prepared
    return (8, 8), prepared  # tiny InternVL: 224 px tile, 14 px patches, pixel shuffle 0.5, one tile


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("size", [(224, 224), (300, 500), (480, 200)])
def test_image_tokens_and_grid(tiny_adapters, rng, family, size):
    adapter = tiny_adapters[family]
    image = random_image(rng, *size)
    grid, prepared = expected_grid(family, adapter, image)
    assert prepared.grid == grid
    input_ids = prepared.model_inputs["input_ids"][0]
    image_token = adapter.model.config.image_token_id
    positions = prepared.image_positions
    assert positions.numel() == grid[0] * grid[1]
    assert bool((input_ids[positions] == image_token).all())
    if family == "molmo2":
        assert bool((positions.reshape(grid)[:, 1:] >= positions.reshape(grid)[:, :-1]).all())  # a token per 2x2
    elif family == "ovis2":  # tiles side by side: increasing along each row, each token once
        assert bool((positions.reshape(grid)[:, 1:] > positions.reshape(grid)[:, :-1]).all())
        assert positions.unique().numel() == positions.numel()
    else:
        assert bool((positions[1:] > positions[:-1]).all())
    assert int(positions.max()) < input_ids.numel() - 1  # the last prompt token is text, after the image
    if family in ("qwen2_5_vl", "qwen3_5"):
        # Strictly between vision_start and vision_end, contiguous.
        start = int(torch.nonzero(input_ids == adapter.model.config.vision_start_token_id)[0])
        end = int(torch.nonzero(input_ids == adapter.model.config.vision_end_token_id)[0])
        assert positions.tolist() == list(range(start + 1, end))
        height, width = size
        aspect = (grid[1] / grid[0]) / (width / height)
        assert 0.8 < aspect < 1.25  # Qwen keeps the aspect, so the grid covers the image undistorted
    if family == "molmo2":
        # The high-res view follows the low-res one: the tokens we read are the last grid of patches.
        all_patches = torch.nonzero(input_ids == image_token).flatten()
        low_h, low_w, high_h, high_w = prepared.model_inputs["image_grids"][0].tolist()
        assert sorted(set(positions.tolist())) == all_patches[low_h * low_w :].tolist()


@pytest.mark.parametrize("family", FAMILIES)
def test_fast_path_equals_eager(tiny_adapters, rng, family):
    adapter = tiny_adapters[family]
    image = random_image(rng, 300, 500)
    prepared = adapter.prepare(image, "neck of the bottle")
    heads = heads_on(adapter, HEADS)  # Qwen3.5: on its full-attention layers
    fast = adapter.head_maps(image, "neck of the bottle", heads, prepared=prepared)
    eager = adapter.head_maps_eager(image, "neck of the bottle", heads, prepared=prepared)
    assert fast.shape == (len(heads), *prepared.grid)
    torch.testing.assert_close(fast, eager, atol=1e-6, rtol=0)
    naive = adapter.head_maps_naive(image, "neck of the bottle", heads, prepared=prepared)  # eager everywhere
    torch.testing.assert_close(fast, naive, atol=1e-5, rtol=0)
    torch.testing.assert_close(adapter.head_maps(image, "neck of the bottle", heads, prepared=prepared), fast)
    # Attention over image tokens is a part of a softmax row: positive, at most 1 in total (Molmo2's
    # patch cells repeat their token's value: count each token once).
    _, counts = torch.unique(prepared.image_positions, return_inverse=False, return_counts=True)
    weight = (1.0 / counts[torch.unique(prepared.image_positions, return_inverse=True)[1]]).reshape(prepared.grid)
    assert float(fast.min()) >= 0 and bool(((fast * weight).sum(dim=(1, 2)) <= 1 + 1e-6).all())


@pytest.mark.parametrize("family", FAMILIES)
def test_stopping_early_does_not_change_maps(tiny_adapters, rng, family):
    adapter = tiny_adapters[family]
    image = random_image(rng, 240, 320)
    (shallow_layer, _), (deep_layer, _) = heads_on(adapter, [(1, 2), (5, 3)])  # Qwen3.5: layers 3 and 7
    assert shallow_layer < deep_layer
    shallow = adapter.head_maps(image, "lid of the cup", [(shallow_layer, 2)])  # stops after that layer
    deep = adapter.head_maps(image, "lid of the cup", [(shallow_layer, 2), (deep_layer, 3)])  # runs deeper
    torch.testing.assert_close(shallow[0], deep[0], atol=0, rtol=0)
    everything = adapter.all_head_maps(image, "lid of the cup")  # every layer that can hold heads
    assert everything.shape[:2] == (len(adapter.head_layers), adapter.num_heads)
    torch.testing.assert_close(everything[adapter.head_layers.index(deep_layer), 3], deep[1], atol=1e-7, rtol=0)


def test_bad_heads_and_queries_are_clear_errors(tiny_adapters, rng):
    adapter = tiny_adapters["qwen2_5_vl"]
    image = random_image(rng, 64, 64)
    with pytest.raises(ValueError, match="outside this model"):
        adapter.head_maps(image, "handle", [(6, 0)])
    with pytest.raises(ValueError, match="non-empty"):
        adapter.head_maps(image, "  ", [(1, 0)])
    with pytest.raises(ValueError, match="at least one"):
        adapter.head_maps(image, "handle", [])


def test_from_pretrained_folder_equals_tiny_spec(tmp_path, rng):
    # The real loader on a folder written by save_pretrained gives the same model as the tiny spec.
    folder = ensure_tiny_checkpoint("qwen2_5_vl", root=tmp_path)
    from_folder = load_mllm(str(folder), device="cpu", dtype="float32")
    from_spec = load_mllm("tiny:qwen2_5_vl", device="cpu", dtype="float32")
    image = random_image(rng, 200, 260)
    torch.testing.assert_close(
        from_folder.head_maps(image, "handle", HEADS), from_spec.head_maps(image, "handle", HEADS), atol=0, rtol=0
    )


def test_loading_errors_name_model_cause_and_way_out(tmp_path, tiny_adapters):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_mllm(str(tmp_path / "nowhere"), device="cpu")
    with pytest.raises(ModelLoadError) as error:
        load_visual("facebook/dinov3-vits16-pretrain-lvd1689m", device="cpu")
    message = str(error.value)
    assert "facebook/dinov3-vits16-pretrain-lvd1689m" in message and "HF_HUB_OFFLINE" in message
    assert "dinov2" in message.lower() and "local folder" in message
    with pytest.raises(ModelLoadError, match="needs one of"):
        load_visual(str(ensure_tiny_checkpoint("internvl")), device="cpu")  # an MLLM is not a visual encoder
    with pytest.raises(ModelLoadError, match="dtype"):
        load_visual("tiny:dinov3", device="cpu", dtype="float8")


def test_trust_remote_code_is_off_by_default():
    import inspect

    from pop_ros.models.presets import PRESETS

    assert inspect.signature(load_mllm).parameters["trust_remote_code"].default is False
    assert not any(preset.trust_remote_code for preset in PRESETS.values())


# ---- visual encoder ----------------------------------------------------------------------------
@pytest.mark.parametrize("size,resolution", [((240, 320), 224), ((320, 240), 224), ((100, 100), 64), ((50, 400), 128)])
def test_visual_grid_shape_per_resolution_and_aspect(tiny_visual, rng, size, resolution):
    tiny_visual.resolution = resolution
    try:
        features = tiny_visual.encode_one(random_image(rng, *size))
    finally:
        tiny_visual.resolution = 224
    height, width = resized_shape(*size, resolution, 16)
    assert max(height, width) == resolution and height % 16 == 0 and width % 16 == 0
    assert features.grid.shape == (height // 16, width // 16, 32)
    assert features.cls.shape == (32,)
    assert features.image_size == size


def test_visual_cls_is_separate_from_patches_and_batch_equals_single(tiny_visual, rng):
    images = [random_image(rng, 240, 320), random_image(rng, 240, 320), random_image(rng, 300, 200)]
    batched = tiny_visual.encode(images)
    for image, features in zip(images, batched, strict=True):
        single = tiny_visual.encode_one(image)
        torch.testing.assert_close(features.grid, single.grid, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(features.cls, single.cls, atol=1e-5, rtol=1e-5)
    pixels = tiny_visual.preprocess(images[0])[None]
    hidden = tiny_visual.model(pixel_values=pixels).last_hidden_state[0]
    assert hidden.shape[0] == 1 + 4 + batched[0].grid.shape[0] * batched[0].grid.shape[1]  # CLS + 4 registers
    torch.testing.assert_close(batched[0].cls, hidden[0].detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batched[0].grid.reshape(-1, 32), hidden[5:].detach(), atol=1e-5, rtol=1e-5)


def test_visual_rejects_non_rgb(tiny_visual):
    with pytest.raises(ValueError, match="uint8 RGB"):
        tiny_visual.encode_one(np.zeros((10, 10), dtype=np.uint8))


# ---- head discovery -----------------------------------------------------------------------------
def test_elbow_and_entropy_on_known_inputs():
    values = [0.01] * 20 + [0.02, 0.5, 0.55, 0.6]
    assert elbow_threshold(values) == pytest.approx(0.02)
    one_blob = np.zeros((8, 8))
    one_blob[2:4, 2:4] = 1.0
    assert spatial_entropy(one_blob) == pytest.approx(0.0)
    two_blobs = one_blob.copy()
    two_blobs[6:8, 6:8] = 1.0
    assert spatial_entropy(two_blobs) == pytest.approx(math.log(2))
    assert spatial_entropy(np.full((8, 8), 0.3)) == math.inf


def _synthetic_sample(rng, good, sink, layers=6, heads=4, size=8):
    """Attention where `good` heads put most mass on one blob, `sink` on the bottom row, and the
    rest spread thin (low attention sum, many tiny components)."""
    maps = rng.uniform(0.0, 0.002, (layers, heads, size, size))
    for layer, head in good:
        row, col = rng.integers(1, size - 3, 2)
        maps[layer, head, row : row + 2, col : col + 2] = 0.12 + rng.uniform(0, 0.02)
    for layer, head in sink:
        maps[layer, head, -1, :] = 0.1
    # An early-layer head with a perfect blob: excluded by the layer rule.
    maps[1, 0, 2:4, 2:4] = 0.2
    return torch.tensor(maps, dtype=torch.float32)


def test_head_discovery_finds_the_planted_heads(rng):
    good = [(3, 1), (4, 2), (5, 0)]
    sink = [(4, 3), (5, 2)]
    votes = [sample_votes(_synthetic_sample(rng, good, sink), votes_per_sample=3) for _ in range(20)]
    selection = select_heads(votes, k=3)
    assert sorted(selection.heads) == sorted(good)
    assert selection.num_samples == 20
    assert "1,0" not in selection.votes and "4,3" not in selection.votes


def test_head_file_round_trip_and_validation(tmp_path):
    selection = select_heads([[(3, 1), (4, 2)], [(3, 1)]], k=2)
    path = tmp_path / "heads.yaml"
    save_head_file(path, "org/model", selection, source="unit test")
    assert load_head_file(path, num_layers=6, num_heads=4) == [(3, 1), (4, 2)]
    with pytest.raises(ValueError, match="outside"):
        load_head_file(path, num_layers=4, num_heads=2)
    path.write_text("heads: [[1, 'a']]")
    with pytest.raises(ValueError, match="not \\[layer, head\\]"):
        load_head_file(path, 6, 4)
    path.write_text("heads: [oops")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_head_file(path, 6, 4)
    with pytest.raises(FileNotFoundError):
        load_head_file(tmp_path / "missing.yaml", 6, 4)


def test_fallback_heads_are_the_middle_third():
    heads = fallback_heads(num_layers=28, num_heads=2)
    assert {layer for layer, _ in heads} == set(range(9, 18))
    assert fallback_heads(num_layers=2, num_heads=1) == [(0, 0)]


def test_a_broken_dependency_is_named_instead_of_blaming_the_hub(monkeypatch):
    """A torchvision built for another torch breaks transformers' lazy import of vision models;
    offline, that used to read as 'not in the local cache and the hub is unreachable'."""
    from pop_ros.models.loading import _explain

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    try:
        try:
            raise RuntimeError("operator torchvision::nms does not exist")
        except RuntimeError as cause:
            raise ModuleNotFoundError(
                "Could not import module 'DINOv3ViTModel'. Are this object's requirements defined correctly?"
            ) from cause
    except ModuleNotFoundError as error:
        message = str(_explain("facebook/dinov3-vitb16-pretrain-lvd1689m", error, "visual"))
    assert "RuntimeError: operator torchvision::nms does not exist" in message
    assert "import torch, torchvision" in message
    assert "hub is unreachable" not in message
