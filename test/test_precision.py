"""Half precision and CUDA: the fast text-prior path against eager attention, and the point, in
float16 / bfloat16 on every device present (CPU always; CUDA where a GPU is, skipped with that
reason elsewhere). References are the float32 CPU models loaded from the same checkpoints.

Stated tolerances, as a fraction of the map's peak (the maps are softmax rows, so an absolute
tolerance would mean nothing across models):
- fast vs eager attention maps: bfloat16 5 %, float16 1 %, float32 1e-6 absolute (as on CPU).
  Eager rounds each layer's attention probabilities to the model dtype and feeds that to the next
  layer; the fast path reads the same layer's q and k in float32. Measured on CPU: at most 2.0 %
  (bfloat16, Molmo2) and 0.23 % (float16).
- final POP map (text prior x visual correspondence) vs float32 on CPU: bfloat16 1 %, float16 0.5 %,
  float32 0.5 % (CUDA convolutions, the patch embeddings, run in TF32 by torch's default). Measured
  on CPU: at most 0.36 % (bfloat16) and 0.03 % (float16).
The point (argmax) is compared where the float32 map separates its peak from the runner-up by more
than twice that tolerance: there, any precision and device must give the same pixel.
"""

import functools

import numpy as np
import pytest
import torch

from pop_ros import core
from pop_ros.pipeline import from_core_pixel
from test.conftest import heads_on, random_image

HEADS = [(1, 0), (2, 3), (4, 1), (4, 2), (5, 0)]
QUERY = "neck of the bottle"
DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here (torch.cuda.is_available())"),
    ),
]
MAP_TOLERANCE = {"bfloat16": 0.05, "float16": 0.01}  # fast vs eager, fraction of the peak
# Against float32, Qwen3.5 in bfloat16 drifts further: its Gated DeltaNet layers carry a recurrent
# state through the whole prompt in the model dtype (the tiny model's DeltaNet output is also scaled
# up 30x, see qwen3_5.build_tiny). Measured on CPU: 11 % of the peak; fast vs eager stays within 5 %.
FLOAT32_TOLERANCE = {("qwen3_5", "bfloat16"): 0.15}
FINAL_TOLERANCE = {"bfloat16": 0.01, "float16": 0.005, "float32": 0.005}  # final map vs float32 CPU


def relative_to_peak(candidate: torch.Tensor, reference: torch.Tensor) -> float:
    """max |candidate - reference| / max |reference|, per map (leading dims), worst map."""
    candidate, reference = candidate.float().cpu(), reference.float().cpu()
    peak = reference.abs().flatten(-2).amax(-1)
    return float(((candidate - reference).abs().flatten(-2).amax(-1) / peak).max())


_ADAPTERS: dict = {}


def adapter(family: str, device: str, dtype: str):
    from pop_ros.models.loading import load_mllm

    key = (family, device, dtype)
    if key not in _ADAPTERS:
        _ADAPTERS[key] = load_mllm(f"tiny:{family}", device=device, dtype=dtype)
    return _ADAPTERS[key]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("family", ["qwen2_5_vl", "molmo2", "internvl", "qwen3_5", "ovis2"])
def test_fast_path_equals_eager_in_every_precision(rng, family, dtype, device):
    model = adapter(family, device, dtype)
    assert model.device.type == device and next(model.model.parameters()).dtype == getattr(torch, dtype)
    image = random_image(rng, 300, 500)
    prepared = model.prepare(image, QUERY)
    heads = heads_on(model, HEADS)  # Qwen3.5: on its full-attention layers
    fast = model.head_maps(image, QUERY, heads, prepared=prepared)
    eager = model.head_maps_eager(image, QUERY, heads, prepared=prepared)
    assert fast.dtype == torch.float32 and fast.device.type == device
    assert bool(torch.isfinite(fast).all()) and bool(torch.isfinite(eager).all())
    if dtype == "float32":
        torch.testing.assert_close(fast, eager.float(), atol=1e-6, rtol=0)
    else:
        assert relative_to_peak(fast, eager) <= MAP_TOLERANCE[dtype]
    # A part of a softmax row: non-negative, at most 1 in total per image token. On a patch grid finer
    # than the tokens (Molmo2: each token read by the up to 2x2 cells it pooled), a token's value
    # repeats in at most cells_per_token**2 cells.
    repeats = model.cells_per_token**2
    assert float(fast.min()) >= 0 and bool((fast.sum(dim=(1, 2)) <= repeats * (1 + 1e-3)).all())
    # The same maps as float32 on the CPU, within the same tolerance (the reference path).
    reference = adapter(family, "cpu", "float32")
    expected = reference.head_maps(image, QUERY, heads)
    assert relative_to_peak(fast, expected) <= FLOAT32_TOLERANCE.get((family, dtype), MAP_TOLERANCE.get(dtype, 0.01))


_POINTERS: dict = {}


def pointer(device: str, dtype: str):
    from pop_ros.pipeline import PartPointer

    if (device, dtype) not in _POINTERS:
        _POINTERS[device, dtype] = PartPointer.from_preset("tiny", device=device, dtype=dtype)
    return _POINTERS[device, dtype]


def final_map(part_pointer, image, click, eager: bool = False) -> torch.Tensor:
    """The POP map by hand from the pipeline's pieces; the target is its own support (a sharp
    visual peak at the click), the text prior from the fast or the eager path."""
    features = part_pointer.visual.encode_one(image)
    cell = core.click_to_patch(click, image.shape[:2], features.grid.shape[:2])
    visual = core.visual_similarity(features.grid, features.grid, cell)
    heads, aggregation = part_pointer.text_heads()
    read = part_pointer.mllm.head_maps_eager if eager else part_pointer.mllm.head_maps
    return core.fuse(core.text_prior(read(image, "handle of the mug", heads), aggregation=aggregation), [visual])


@functools.cache
def separated_cases(count: int, margin: float):
    """(image, click) cases whose float32 CPU map has its peak ahead of the runner-up by more than
    `margin` of the peak (seeded, so the same cases everywhere)."""
    reference = pointer("cpu", "float32")
    cases = []
    for seed in range(24):
        generator = np.random.default_rng(seed)
        image = random_image(generator, 240, 320)
        click = (float(generator.integers(0, 320)), float(generator.integers(0, 240)))
        values = torch.sort(final_map(reference, image, click).flatten(), descending=True).values
        if float((values[0] - values[1]) / values[0]) > margin:
            cases.append((image, click))
        if len(cases) == count:
            return cases
    raise AssertionError(f"fewer than {count} of 24 seeded cases separate their peak by {margin:.1%}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_point_is_the_same_in_every_precision_and_path(device, dtype):
    reference = pointer("cpu", "float32")
    candidate = pointer(device, dtype)
    assert candidate.visual.device.type == device and candidate.visual.dtype == getattr(torch, dtype)
    tolerance = FINAL_TOLERANCE[dtype]
    for image, click in separated_cases(2, 2 * tolerance):
        expected = final_map(reference, image, click)
        fast, eager = final_map(candidate, image, click), final_map(candidate, image, click, eager=True)
        assert relative_to_peak(fast, expected) <= tolerance
        point = core.peak_to_pixel(expected, image.shape[:2])
        assert core.peak_to_pixel(fast, image.shape[:2]) == point
        assert core.peak_to_pixel(eager, image.shape[:2]) == point
        # The pipeline's own query gives the point of its pieces, on this device and dtype.
        result = candidate.point(image, "handle of the mug", supports=[(image, click)])
        assert (result.u, result.v) == from_core_pixel(point)  # the pipeline answers in ROS pixel coordinates


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here (torch.cuda.is_available())")
@pytest.mark.parametrize("family_preset", ["tiny", "tiny-molmo2", "tiny-internvl"])
def test_cuda_stream_overlap_gives_the_sequential_answer(rng, family_preset):
    """The DINO forward on a side stream beside the MLLM prefix must change nothing but the time."""
    import dataclasses

    from pop_ros.pipeline import PartPointer, PointerSettings

    image = random_image(rng, 240, 320)
    answers = {}
    for overlap in (False, True):
        pointer = PartPointer.from_preset(
            family_preset, settings=PointerSettings(overlap=overlap), device="cuda", dtype="float32"
        )
        pointer.settings = dataclasses.replace(pointer.settings, frame_cache_size=0)  # every query computes
        result = pointer.point(image, QUERY)
        assert ("frame_overlapped" in result.timings_ms) == overlap
        answers[overlap] = result
    assert (answers[True].u, answers[True].v) == (answers[False].u, answers[False].v)
    np.testing.assert_allclose(answers[True].heatmap, answers[False].heatmap, atol=1e-5)
