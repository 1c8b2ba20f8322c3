"""Values checked against independent computations, under non-default settings and non-uniform
scales: each test here is built so that one small realistic mistake makes it fail (named in its
docstring), where the default-settings tests elsewhere would still pass."""

import numpy as np
import pytest
import scipy.ndimage
import torch
import torch.nn.functional as F

from pop_ros import core
from pop_ros.pipeline import PartPointer, PointerSettings
from test.conftest import random_image


def unit(*values):
    vector = torch.tensor(values, dtype=torch.float64)
    return vector / vector.norm()


def cos(a, b) -> float:
    return float(torch.dot(a.double(), b.double()) / (a.double().norm() * b.double().norm()))


# ---- visual correspondence ------------------------------------------------------------------------
def test_bidirectional_clamps_a_negative_forward_cosine_before_the_product():
    """Catches: the forward cosine not clamped at 0 in bidirectional mode.

    Target patch t points away from the anchor a (cos(t, a) < 0) but its best support match p is
    positively similar to a, so backward > 0 and an unclamped product would be negative."""
    anchor, other = unit(1.0, 0.0, 0.0), unit(0.1, 1.0, 0.0)
    target_patch = unit(-0.2, 1.0, 0.1)
    assert cos(target_patch, anchor) < 0 < cos(other, anchor) and cos(target_patch, other) > 0.9
    support = torch.stack([anchor, other]).reshape(1, 2, 3).float()
    target = torch.stack([target_patch, anchor]).reshape(1, 2, 3).float()
    for mode in ("bidirectional", "forward"):
        got = core.visual_similarity(support, target, (0, 0), mode=mode)
        # Patch 0: max(cos(t, a), 0) = 0 (times backward cos(p, a) > 0); patch 1 is the anchor itself.
        assert float(got[0, 0]) == 0.0, mode
        assert float(got[0, 1]) == pytest.approx(1.0, abs=1e-6), mode
    backward = core.visual_similarity(support, target, (0, 0), mode="backward")
    assert float(backward[0, 0]) == pytest.approx(cos(other, anchor), abs=1e-6)


@pytest.mark.parametrize("mode", ["backward", "bidirectional"])
def test_mixed_size_batch_never_matches_a_padding_row(mode):
    """Catches: the padding mask of mixed-size support batches removed in backward mode.

    A 1x2 support batched with a 3x3 one gets 7 zero padding rows. A target patch whose cosines
    with every real patch of the small support are negative must still match its best real patch
    (cosine -0.6, not the padding's 0), whose similarity to the anchor is 0.6."""
    anchor, other = unit(1.0, 0.0), unit(0.6, -0.8)
    target_patch = unit(-1.0, 0.0)  # cos with anchor -1, with other -0.6: best real match = other
    small = torch.stack([anchor, other]).reshape(1, 2, 2).float()
    large = torch.randn(3, 3, 2, generator=torch.Generator().manual_seed(0))
    target = torch.stack([target_patch, anchor, other]).reshape(1, 3, 2).float()
    batched = core.visual_similarity_batch([large, small], target, [(1, 1), (0, 0)], mode=mode)
    alone = core.visual_similarity(small, target, (0, 0), mode="backward")
    # Hand values for the small support (anchor (0, 0)): backward = max(cos(m(j), anchor), 0).
    expected_backward = [cos(other, anchor), 1.0, cos(other, anchor)]  # 0.6, 1, 0.6
    np.testing.assert_allclose(alone[0].numpy(), expected_backward, atol=1e-6)
    forward = [max(cos(t, anchor), 0.0) for t in (target_patch, anchor, other)]  # 0, 1, 0.6
    product = [f * b for f, b in zip(forward, expected_backward, strict=True)]
    expected = expected_backward if mode == "backward" else product
    np.testing.assert_allclose(batched[1, 0].numpy(), expected, atol=1e-6)


# ---- text prior ----------------------------------------------------------------------------------
@pytest.mark.parametrize("sigma", [0.0, 0.6, 2.5])
@pytest.mark.parametrize("aggregation", ["sum", "max"])
def test_text_prior_uses_the_given_sigma(sigma, aggregation):
    """Catches: text_prior smoothing with the default sigma whatever it is given (scipy reference)."""
    maps = torch.rand(3, 7, 9, generator=torch.Generator().manual_seed(11))
    smoothed = np.stack([scipy.ndimage.gaussian_filter(m.double().numpy(), sigma, mode="reflect") for m in maps])
    expected = smoothed.sum(0) if aggregation == "sum" else smoothed.max(0)
    got = core.text_prior(maps, sigma=sigma, aggregation=aggregation)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-6)


def test_pipeline_passes_its_sigma_to_the_text_prior(rng):
    """Catches: the pipeline smoothing with a sigma other than its settings' (0-shot heatmap =
    the upsampled prior, computed here with scipy from the same head maps)."""
    pointer = PartPointer.from_preset("tiny", settings=PointerSettings(sigma=2.5, upsample=3))
    image = random_image(rng, 150, 260)
    result = pointer.point(image, "spout of the kettle")
    heads, aggregation = pointer.text_heads()
    head_maps = pointer.mllm.head_maps(image, "spout of the kettle", heads).double().numpy()  # (N, H_l, W_l)
    smoothed = np.stack([scipy.ndimage.gaussian_filter(m, 2.5, mode="reflect") for m in head_maps])
    prior = torch.from_numpy({"mean": smoothed.mean(0), "sum": smoothed.sum(0)}[aggregation]).float().clamp_min(0)
    height_l, width_l = prior.shape
    final = F.interpolate(prior[None, None], size=(3 * height_l, 3 * width_l), mode="bilinear", align_corners=False)
    heatmap = F.interpolate(final, size=(150, 260), mode="bilinear", align_corners=False)[0, 0]
    np.testing.assert_allclose(result.heatmap, (heatmap / heatmap.max()).numpy(), atol=1e-5)


# ---- score ---------------------------------------------------------------------------------------
def test_score_is_read_at_the_fused_peak_not_at_the_visual_maximum():
    """Catches: peak_score reading the visual maps at their own maximum.

    Visual maps (3 x 5, K = 2) are highest at (0, 0) where the text prior is ~0; the fused map
    (upsampled 3x) peaks at (2, 3), where the mean of the two maps is (0.5 + 0.3) / 2 = 0.4."""
    first, second = torch.full((3, 5), 0.1), torch.full((3, 5), 0.1)
    first[0, 0], second[0, 0] = 0.9, 0.9
    first[2, 3], second[2, 3] = 0.5, 0.3
    prior = torch.full((3, 5), 0.01)
    prior[2, 3] = 1.0
    final = core.fuse(prior, [first, second], shot_combination="product", upsample=3)
    assert final.shape == (9, 15) and core.peak_cell(final) == (7, 10)  # centre sub-cell of (2, 3)
    assert core.peak_score(final, [first, second], prior) == pytest.approx(0.4)


def test_pipeline_score_is_the_mean_visual_similarity_at_the_answered_point(rng):
    """Catches: the pipeline scoring at the visual maximum instead of at the point it answers.
    The maps are recomputed here from the encoder's features: a 240x320 target on the tiny
    encoder's 16-px patches at a 224-px longer side is a 10x14 grid (24 px per row, 22.9 per column)."""
    # shots "product": the fused peak follows the product of the K maps, the score their mean.
    settings = PointerSettings(shot_combination="product", upsample=3, max_shots=2, retrieval="first")
    pointer = PartPointer.from_preset("tiny", settings=settings)
    for seed in range(10):
        local = np.random.default_rng(seed)
        target = random_image(local, 240, 320)
        supports = [(random_image(local, 200, 300), (150.0, 60.0)), (random_image(local, 160, 120), (30.0, 140.0))]
        result = pointer.point(target, "handle of the mug", supports=supports)
        grid = pointer.visual.encode_one(target).grid  # (H_t, W_t, C)
        support_grids = [pointer.visual.encode_one(image).grid for image, _ in supports]
        rcs = [
            # Clicks and answers are ROS pixel coordinates: + 0.5 to the edge-origin cell formula.
            (int((v + 0.5) * g.shape[0] / image.shape[0]), int((u + 0.5) * g.shape[1] / image.shape[1]))
            for (image, (u, v)), g in zip(supports, support_grids, strict=True)
        ]
        maps = core.visual_similarity_batch(support_grids, grid, rcs).mean(0)  # (H_t, W_t)
        row, col = int((result.v + 0.5) * grid.shape[0] / 240), int((result.u + 0.5) * grid.shape[1] / 320)
        if core.peak_cell(maps) != (row, col):  # only then does the test tell the two readings apart
            assert result.score == pytest.approx(float(maps[row, col]), abs=1e-5)
            assert result.score < float(maps.max())
            return
    pytest.fail("no seed gave a fused peak away from the visual maximum")


# ---- visual preprocessing ------------------------------------------------------------------------
def test_visual_preprocessing_normalises_with_imagenet_mean_and_std(tiny_visual):
    """Catches: ImageNet mean and std swapped, or missing, in the visual preprocessing.

    The constants are taken from transformers (the upstream reference), and a constant-colour
    image stays constant through any resize, so every output pixel of channel c is
    (value_c / 255 - mean_c) / std_c exactly, on a non-square image that is resized unevenly."""
    from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    colour = np.array([30, 140, 250], np.uint8)
    image = np.broadcast_to(colour, (90, 170, 3)).copy()
    pixels = tiny_visual.preprocess(image)  # (3, H', W')
    assert pixels.shape[0] == 3 and max(pixels.shape[1:]) == tiny_visual.resolution
    expected = (colour / 255.0 - np.array(IMAGENET_DEFAULT_MEAN)) / np.array(IMAGENET_DEFAULT_STD)
    for channel in range(3):
        np.testing.assert_allclose(pixels[channel].cpu().numpy(), expected[channel], atol=1e-5)


def test_visual_preprocessing_of_an_unresized_image_is_per_pixel_normalisation(tiny_visual, rng):
    """The same, pixel by pixel, on an image already at the encoder's size (no resize involved)."""
    from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    image = random_image(rng, tiny_visual.resolution - 4 * tiny_visual.patch, tiny_visual.resolution)
    pixels = tiny_visual.preprocess(image).cpu().numpy().transpose(1, 2, 0)  # (H, W, 3)
    expected = (image / 255.0 - np.array(IMAGENET_DEFAULT_MEAN)) / np.array(IMAGENET_DEFAULT_STD)
    np.testing.assert_allclose(pixels, expected, atol=1e-5)
