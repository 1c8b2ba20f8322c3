"""POP core math: formulas against plain loops, the paper's two-objects story, invariances."""

import numpy as np
import pytest
import scipy.ndimage
import torch

from pop_ros.core import (
    click_to_patch,
    fuse,
    gaussian_smooth,
    peak_score,
    peak_to_pixel,
    text_prior,
    visual_similarity,
    visual_similarity_batch,
)
from pop_ros.core.fusion import DEFAULT_MAX_BLOCK_ELEMENTS


def loop_visual_similarity(support, target, rc, mode):
    """The paper's formulas written as plain Python loops over patches."""
    h_s, w_s, _ = support.shape
    h_t, w_t, _ = target.shape
    zs = support.reshape(-1, support.shape[-1]).double()
    zt = target.reshape(-1, target.shape[-1]).double()

    def cos(a, b):
        return float(torch.dot(a, b) / (a.norm() * b.norm()))

    anchor = rc[0] * w_s + rc[1]
    out = np.zeros((h_t, w_t))
    for j in range(h_t * w_t):
        fwd = max(cos(zs[anchor], zt[j]), 0.0)
        sims = [cos(zs[i], zt[j]) for i in range(h_s * w_s)]
        best = int(np.argmax(sims))
        bwd = max(cos(zs[anchor], zs[best]), 0.0)
        out[j // w_t, j % w_t] = {"forward": fwd, "backward": bwd, "bidirectional": fwd * bwd}[mode]
    return out


@pytest.mark.parametrize("mode", ["forward", "backward", "bidirectional"])
def test_visual_similarity_matches_loop(mode):
    gen = torch.Generator().manual_seed(0)
    support = torch.randn(4, 5, 8, generator=gen)
    target = torch.randn(3, 6, 8, generator=gen)
    got = visual_similarity(support, target, (2, 3), mode=mode)
    assert got.shape == (3, 6)
    np.testing.assert_allclose(got.numpy(), loop_visual_similarity(support, target, (2, 3), mode), atol=1e-5)


def test_batch_of_mixed_grid_sizes_equals_one_by_one():
    gen = torch.Generator().manual_seed(1)
    supports = [
        torch.randn(4, 5, 8, generator=gen),
        torch.randn(6, 3, 8, generator=gen),
        torch.randn(2, 2, 8, generator=gen),
    ]
    rcs = [(1, 4), (5, 0), (1, 1)]
    target = torch.randn(5, 7, 8, generator=gen)
    batched = visual_similarity_batch(supports, target, rcs)
    for k in range(3):
        torch.testing.assert_close(batched[k], visual_similarity(supports[k], target, rcs[k]))


def test_chunked_similarity_equals_unchunked():
    gen = torch.Generator().manual_seed(2)
    supports = torch.randn(3, 6, 6, 16, generator=gen)
    target = torch.randn(9, 11, 16, generator=gen)
    rcs = [(0, 0), (3, 2), (5, 5)]
    whole = visual_similarity_batch(supports, target, rcs, max_block_elements=10**9)
    # 3 * 36 * 1 elements per block: one target patch at a time.
    chunked = visual_similarity_batch(supports, target, rcs, max_block_elements=3 * 36)
    torch.testing.assert_close(whole, chunked)


def test_clamp_keeps_negative_cosines_from_multiplying_into_positive():
    support = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # (1, 2, 2): anchor (0, 0) = e0
    target = torch.tensor([[[-1.0, 0.0]]])  # opposite of the anchor
    assert float(visual_similarity(support, target, (0, 0), "forward")) == 0.0
    assert float(visual_similarity(support, target, (0, 0), "bidirectional")) == 0.0


def test_gaussian_smooth_matches_scipy_reflect():
    gen = torch.Generator().manual_seed(3)
    maps = torch.rand(3, 5, 9, generator=gen)
    for sigma in (0.5, 1.0, 2.0, 3.0):  # sigma 3 -> radius 12: wider than both sides
        ours = gaussian_smooth(maps, sigma=sigma)
        for n in range(3):
            ref = scipy.ndimage.gaussian_filter(maps[n].double().numpy(), sigma, mode="reflect", truncate=4.0)
            np.testing.assert_allclose(ours[n].numpy(), ref, atol=1e-6)


@pytest.mark.parametrize("aggregation", ["sum", "mean", "max"])
def test_text_prior_aggregations(aggregation):
    gen = torch.Generator().manual_seed(4)
    maps = torch.rand(4, 6, 7, generator=gen)
    smoothed = np.stack([scipy.ndimage.gaussian_filter(m.double().numpy(), 1.0, mode="reflect") for m in maps])
    expected = {"sum": smoothed.sum(0), "mean": smoothed.mean(0), "max": smoothed.max(0)}[aggregation]
    np.testing.assert_allclose(text_prior(maps, aggregation=aggregation).numpy(), expected, atol=1e-6)


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="aggregation"):
        text_prior(torch.rand(2, 3, 3), aggregation="median")
    with pytest.raises(ValueError, match="mode"):
        visual_similarity(torch.rand(2, 2, 4), torch.rand(2, 2, 4), (0, 0), mode="sideways")
    with pytest.raises(ValueError, match="outside"):
        visual_similarity(torch.rand(2, 2, 4), torch.rand(2, 2, 4), (2, 0))
    with pytest.raises(ValueError, match="channels"):
        visual_similarity(torch.rand(2, 2, 4), torch.rand(2, 2, 5), (0, 0))
    with pytest.raises(ValueError, match="shot_combination"):
        fuse(None, [torch.rand(2, 2)], shot_combination="median")
    with pytest.raises(ValueError, match="text prior, visual maps"):
        fuse(None, [])
    with pytest.raises(ValueError, match="outside"):
        click_to_patch((640, 10), (480, 640), (30, 40))
    with pytest.raises(ValueError, match="outside"):
        click_to_patch((float("nan"), 10), (480, 640), (30, 40))


def test_fuse_shapes_and_formula():
    gen = torch.Generator().manual_seed(5)
    prior = torch.rand(4, 5, generator=gen)
    maps = [torch.rand(8, 10, generator=gen) for _ in range(3)]
    fused = fuse(prior, maps, shot_combination="mean", upsample=2)
    assert fused.shape == (16, 20)
    resized = torch.nn.functional.interpolate(prior[None, None], size=(8, 10), mode="bilinear", align_corners=False)[
        0, 0
    ]
    expected = torch.nn.functional.interpolate(
        (resized * torch.stack(maps).mean(0))[None, None], size=(16, 20), mode="bilinear", align_corners=False
    )[0, 0]
    torch.testing.assert_close(fused, expected)
    product = fuse(prior, maps, shot_combination="product", upsample=1)
    torch.testing.assert_close(product, resized * maps[0] * maps[1] * maps[2])
    assert fuse(prior, [], upsample=3).shape == (12, 15)  # 0-shot: text prior alone
    torch.testing.assert_close(fuse(None, maps, upsample=1), torch.stack(maps).mean(0))  # visual only


def test_peak_to_pixel_centre_of_cell():
    final = torch.zeros(4, 8)
    final[3, 2] = 1.0
    assert peak_to_pixel(final, (40, 160)) == (50.0, 35.0)  # u = 2.5 * 160 / 8, v = 3.5 * 40 / 4


def _two_objects_scene():
    """Target 8 x 16: two identical objects side by side (cols 0-7 and 8-15). Each object has a
    'body' (rows 2-5) and a 'neck' (rows 0-1, cols 3-4 of the object). Support 8 x 8: one object,
    clicked on its neck."""
    gen = torch.Generator().manual_seed(6)
    channels = 32
    background, body, neck = torch.randn(3, channels, generator=gen)
    noise = 0.05

    def object_grid():
        grid = background.expand(8, 8, channels).clone()
        grid[2:6, 1:7] = body
        grid[0:2, 3:5] = neck
        return grid

    target = torch.cat([object_grid(), object_grid()], dim=1) + noise * torch.randn(8, 16, channels, generator=gen)
    support = object_grid() + noise * torch.randn(8, 8, channels, generator=gen)
    # Coarse text prior on the 4 x 8 LLM grid: it picks the right (second) object but peaks on its
    # body, not on the neck: the paper's "neckband of the red sweater" case.
    prior = torch.zeros(4, 8)
    prior[1:3, 4:8] = 0.5
    prior[2, 6] = 1.0
    return support, target, (0, 3), prior


def test_paper_story_text_selects_instance_visual_selects_part():
    support, target, click_rc, prior = _two_objects_scene()
    image_size = (80, 160)
    visual = visual_similarity(support, target, click_rc)
    # Visual alone lights the neck of both objects.
    assert visual[0:2, 3:5].min() > 0.8 and visual[0:2, 11:13].min() > 0.8
    assert visual[2:6].max() < 0.3
    # Text alone peaks on the body of the right object.
    u_text, v_text = peak_to_pixel(fuse(prior, []), image_size)
    assert u_text > 80 and v_text > 20
    # Fused: the neck (rows 0-1 -> v < 20 px) of the right object (cols 11-12 -> 110 <= u < 130).
    u, v = peak_to_pixel(fuse(prior, [visual]), image_size)
    assert 110 <= u < 130 and v < 20
    # Forward only keeps the weak positive cosine between neck and body, so the text peak on the body
    # can win; the backward term (body patches match the support's body, not its neck) removes it.
    forward = visual_similarity(support, target, click_rc, "forward")
    backward = visual_similarity(support, target, click_rc, "backward")
    body_to_neck = float(torch.nn.functional.cosine_similarity(support[3, 3], support[0, 3], dim=0).clamp_min(0))
    assert forward[2:6, 9:15].mean() == pytest.approx(body_to_neck, abs=0.05)
    assert backward[2:6, 9:15].mean() == pytest.approx(body_to_neck, abs=0.05)
    torch.testing.assert_close(visual, forward * backward)
    assert visual[2:6].max() < forward[2:6].max()
    # Backward is flat over a whole part: both necks get the anchor's self-similarity, about 1.
    assert backward[0:2, 3:5].min() > 0.95 and backward[0:2, 11:13].min() > 0.95


def test_k_shot_mean_and_product_both_land_on_the_part():
    support, target, click_rc, prior = _two_objects_scene()
    gen = torch.Generator().manual_seed(7)
    supports = [support + 0.05 * torch.randn(support.shape, generator=gen) for _ in range(3)]
    maps = visual_similarity_batch(supports, target, [click_rc] * 3)
    for combination in ("mean", "product"):
        u, v = peak_to_pixel(fuse(prior, maps, shot_combination=combination), (80, 160))
        assert 110 <= u < 130 and v < 20, combination


def test_score_separates_visible_from_absent_part():
    support, target, click_rc, prior = _two_objects_scene()
    present = fuse(prior, [visual_similarity(support, target, click_rc)])
    score_present = peak_score(present, [visual_similarity(support, target, click_rc)])
    # Absent: the same scene with every neck patch replaced by background.
    absent_target = target.clone()
    absent_target[0:2, 3:5] = target[7, 0]
    absent_target[0:2, 11:13] = target[7, 0]
    absent_visual = visual_similarity(support, absent_target, click_rc)
    score_absent = peak_score(fuse(prior, [absent_visual]), [absent_visual])
    assert score_present > 0.8 and score_absent < 0.3


def test_scaling_text_prior_does_not_move_point():
    support, target, click_rc, prior = _two_objects_scene()
    visual = [visual_similarity(support, target, click_rc)]
    reference = peak_to_pixel(fuse(prior, visual), (80, 160))
    for scale in (1e-4, 3.0, 1e4):
        assert peak_to_pixel(fuse(prior * scale, visual), (80, 160)) == reference


def test_click_anywhere_in_a_patch_gives_the_same_patch_and_result():
    support, target, _, prior = _two_objects_scene()
    image_size = (128, 128)  # support image 128 x 128 px -> 16 px per cell of the 8 x 8 grid
    cells = {click_to_patch((u, v), image_size, (8, 8)) for u in (48.0, 55.5, 63.99) for v in (0.0, 7.2, 15.99)}
    assert cells == {(0, 3)}
    assert click_to_patch((64.0, 16.0), image_size, (8, 8)) == (1, 4)


def test_non_square_grids_and_images():
    assert click_to_patch((639.0, 0.0), (480, 640), (30, 40)) == (0, 39)
    assert click_to_patch((0.0, 479.9), (480, 640), (30, 40)) == (29, 0)
    final = torch.zeros(6, 10)
    final[5, 9] = 1
    u, v = peak_to_pixel(final, (300, 1000))
    assert (u, v) == (950.0, 275.0)


def test_float16_gives_the_same_point_as_float32():
    support, target, click_rc, prior = _two_objects_scene()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    reference = peak_to_pixel(fuse(prior, [visual_similarity(support, target, click_rc)]), (80, 160))
    for device in devices:
        half = [t.to(device=device, dtype=torch.float16) for t in (support, target, prior)]
        visual = visual_similarity(half[0], half[1], click_rc)
        assert visual.dtype == torch.float32 and visual.device.type == device
        assert peak_to_pixel(fuse(half[2], [visual]), (80, 160)) == reference


@pytest.mark.slow  # 640 MiB-class similarity work, about 10 s
def test_large_grid_k10_runs_and_bounds_blocks(monkeypatch):
    # 64 x 64 target against K = 10 supports of 64 x 64: a whole support x target block would be
    # 10 * 4096 * 4096 floats = 640 MiB. Every block actually made is recorded (the einsum that builds
    # it) and must stay within the bound; the result must equal an unchunked per-support reference.
    gen = torch.Generator().manual_seed(8)
    supports = torch.randn(10, 64, 64, 16, generator=gen)
    target = torch.randn(64, 64, 16, generator=gen)
    rcs = [(k, k) for k in range(10)]
    block_sizes = []
    einsum = torch.einsum

    def recording_einsum(equation, *operands):
        result = einsum(equation, *operands)
        if equation == "knc,tc->knt":  # (K, N_s, chunk): the support x target block
            block_sizes.append(result.numel())
        return result

    monkeypatch.setattr(torch, "einsum", recording_einsum)
    for bound in (2**22, DEFAULT_MAX_BLOCK_ELEMENTS):
        block_sizes.clear()
        result = visual_similarity_batch(supports, target, rcs, max_block_elements=bound)
        assert block_sizes and max(block_sizes) <= bound < 10 * 4096 * 4096
        assert sum(block_sizes) == 10 * 4096 * 4096  # every target patch seen once
    monkeypatch.undo()
    assert result.shape == (10, 64, 64)
    target_unit = torch.nn.functional.normalize(target.reshape(-1, 16), dim=-1)  # (4096, 16)
    for k, (row, col) in enumerate(rcs):
        support_unit = torch.nn.functional.normalize(supports[k].reshape(-1, 16), dim=-1)  # (4096, 16)
        anchor = support_unit[row * 64 + col]
        forward = (target_unit @ anchor).clamp_min(0)  # (4096,)
        best_support = (support_unit @ target_unit.T).argmax(dim=0)  # (4096,) for each target patch
        backward = (support_unit @ anchor).clamp_min(0)[best_support]
        torch.testing.assert_close(result[k], (forward * backward).reshape(64, 64))
