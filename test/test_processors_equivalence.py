"""AutoProcessor (what users with torchvision get) against the processor pop_ros assembles from a
checkpoint's parts (what machines without torchvision get, this project's CPU tests included).

Runs wherever torchvision imports (the GPU check's stock image, any robot); skipped elsewhere
because AutoProcessor cannot be built there. Both processors load the same tiny checkpoint folder
of each family, written by `save_pretrained` like a hub checkpoint.
"""

import numpy as np
import pytest
import torch

from pop_ros.models.processors import torchvision_works
from test.conftest import random_image

pytestmark = pytest.mark.skipif(
    not torchvision_works(),
    reason="torchvision does not import here, so transformers' AutoProcessor cannot be built to compare with",
)

# Square, landscape, portrait, and the benchmark's camera frame.
SIZES = [(224, 224), (300, 500), (480, 200), (480, 640)]
QUERY = "handle of the mug"


class _ProcessorPairs(dict):
    """family -> (model folder, AutoProcessor, assembled processor, tiny model), built on first use:
    a family whose AutoProcessor fails to build fails its own tests only."""

    def __missing__(self, family):
        import transformers

        from pop_ros.models.processors import assemble_processor
        from pop_ros.models.tiny import ensure_tiny_checkpoint

        folder = ensure_tiny_checkpoint(family)
        model = transformers.AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32)
        self[family] = (
            folder,
            transformers.AutoProcessor.from_pretrained(folder),
            assemble_processor(str(folder)),
            model,
        )
        return self[family]


@pytest.fixture(scope="module")
def processor_pairs():
    return _ProcessorPairs()


def assert_same_inputs(reference: dict, other: dict, pixel_atol: float | None) -> None:
    """Same keys; integer tensors (ids, masks, grids, pooling indices) equal; float tensors within
    `pixel_atol` (None: shapes only)."""
    assert sorted(reference) == sorted(other)
    for name, value in reference.items():
        if not isinstance(value, torch.Tensor):
            assert value == other[name], name
            continue
        assert value.shape == other[name].shape, name
        if value.is_floating_point():
            if pixel_atol is not None:
                torch.testing.assert_close(other[name], value, atol=pixel_atol, rtol=0, msg=name)
        else:
            assert torch.equal(value, other[name]), name


@pytest.mark.parametrize("family", ["qwen2_5_vl", "molmo2", "internvl", "qwen3_5", "ovis2"])
def test_assembled_processor_equals_auto_processor(processor_pairs, rng, family):
    from pop_ros.models.mllm import adapter_for

    _, auto, assembled, model = processor_pairs[family]
    assert type(assembled) is type(auto)
    auto_adapter = adapter_for(model, auto)
    assembled_adapter = adapter_for(model, assembled)
    assert assembled_adapter.prompt(QUERY) == auto_adapter.prompt(QUERY)  # the chat template came along
    for size in SIZES:
        image = random_image(rng, *size)
        reference = auto_adapter.prepare(image, QUERY)
        candidate = assembled_adapter.prepare(image, QUERY)
        assert_same_inputs(reference.model_inputs, candidate.model_inputs, pixel_atol=1e-6)
        assert candidate.grid == reference.grid, size
        assert torch.equal(candidate.image_positions, reference.image_positions), size
        if size[0] != size[1] and family == "qwen2_5_vl":
            assert reference.grid[0] != reference.grid[1]  # a non-square image kept its aspect


@pytest.mark.parametrize("family", ["qwen2_5_vl", "internvl"])
def test_pil_backend_gives_the_same_token_layout(processor_pairs, rng, family):
    """Without torchvision, transformers falls back to the PIL image processors: their resize differs
    (pixel values are not compared), but the grids, token ids and image-token positions the adapters
    read must be the ones users get."""
    import copy

    import transformers

    from pop_ros.models.mllm import adapter_for

    folder, auto, assembled, model = processor_pairs[family]
    pil = copy.copy(assembled)
    pil.image_processor = transformers.AutoImageProcessor.from_pretrained(folder, backend="pil")
    assert type(pil.image_processor).__name__.endswith("Pil")
    auto_adapter = adapter_for(model, auto)
    pil_adapter = adapter_for(model, pil)
    for size in SIZES:
        image = random_image(rng, *size)
        reference = auto_adapter.prepare(image, QUERY)
        candidate = pil_adapter.prepare(image, QUERY)
        assert_same_inputs(reference.model_inputs, candidate.model_inputs, pixel_atol=None)
        assert candidate.grid == reference.grid and torch.equal(candidate.image_positions, reference.image_positions)


def test_torch_resize_molmo2_image_processor_equals_torchvision_one(rng):
    """The Molmo2 image processor pop_ros builds without torchvision (torch's bilinear resize and
    normalisation) against the stock torchvision one, directly on images of several shapes."""
    from PIL import Image
    from transformers.models.molmo2.image_processing_molmo2 import Molmo2ImageProcessor

    from pop_ros.models.processors import _torch_resize_molmo2_class

    settings = {"size": {"height": 112, "width": 112}, "max_crops": 4, "overlap_margins": [1, 1]}
    stock, ours = Molmo2ImageProcessor(**settings), _torch_resize_molmo2_class()(**settings)
    for size in SIZES + [(97, 131)]:
        image = Image.fromarray(np.ascontiguousarray(random_image(rng, *size)))
        assert_same_inputs(
            stock(images=[image], return_tensors="pt"), ours(images=[image], return_tensors="pt"), pixel_atol=1e-6
        )
