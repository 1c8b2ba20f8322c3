"""DINOv3 / DINOv2 patch features: the precise-but-ambiguous branch of POP.

Preprocessing is owned here (the transformers DINOv3 processor needs torchvision): RGB uint8 ->
float in [0, 1] -> bilinear (antialiased) resize so the longer side is `resolution` and both sides
are multiples of the patch, aspect kept as closely as the patch allows, never cropped or padded ->
ImageNet normalisation. The patch grid therefore covers the whole image, which is what
`click_to_patch` and `peak_to_pixel` assume.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass
class VisualFeatures:
    grid: torch.Tensor  # (H, W, C) patch features
    cls: torch.Tensor  # (C,) class token (used for support retrieval)
    image_size: tuple[int, int]  # (H_img, W_img) of the original image, pixels


def resized_shape(height: int, width: int, resolution: int, patch: int) -> tuple[int, int]:
    """(H', W'): longer side = `resolution`, both multiples of `patch` (at least one patch)."""
    if height <= 0 or width <= 0:
        raise ValueError(f"image must have a positive size, got {height}x{width}")
    scale = resolution / max(height, width)
    new_h = max(patch, int(round(height * scale / patch)) * patch)
    new_w = max(patch, int(round(width * scale / patch)) * patch)
    return new_h, new_w


class VisualEncoder:
    """Patch-grid features of a DINO ViT (`DINOv3ViTModel`, `Dinov2Model`, `Dinov2WithRegistersModel`)."""

    def __init__(self, model, resolution: int = 448):
        config = model.config
        self.patch = int(config.patch_size if isinstance(config.patch_size, int) else config.patch_size[0])
        if resolution < self.patch:
            raise ValueError(f"resolution {resolution} is smaller than one {self.patch}-pixel patch")
        self.model = model.eval()
        self.resolution = int(resolution)
        # Tokens before the patches in last_hidden_state: CLS, then the register tokens.
        self.num_prefix_tokens = 1 + int(getattr(config, "num_register_tokens", 0) or 0)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def preprocess(self, image_rgb: np.ndarray) -> torch.Tensor:
        """`(H, W, 3)` uint8 RGB -> `(3, H', W')` normalised float on the model's device."""
        if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or image_rgb.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {image_rgb.shape} {image_rgb.dtype}")
        height, width = image_rgb.shape[:2]
        pixels = torch.from_numpy(np.ascontiguousarray(image_rgb)).to(self.device).permute(2, 0, 1).float() / 255.0
        size = resized_shape(height, width, self.resolution, self.patch)
        if size != (height, width):
            pixels = F.interpolate(pixels[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
        mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=self.device).view(3, 1, 1)
        return (pixels - mean) / std

    @torch.inference_mode()
    def encode(self, images_rgb: Sequence[np.ndarray]) -> list[VisualFeatures]:
        """Features of several RGB images (preprocessing included)."""
        return self.encode_preprocessed([self.preprocess(i) for i in images_rgb], [i.shape[:2] for i in images_rgb])

    @torch.inference_mode()
    def encode_preprocessed(self, tensors: Sequence[torch.Tensor], image_sizes) -> list[VisualFeatures]:
        """Features of preprocessed `(3, H', W')` tensors; those of the same shape share one forward."""
        results: list[VisualFeatures | None] = [None] * len(tensors)
        by_shape: dict[tuple[int, int], list[int]] = {}
        for index, tensor in enumerate(tensors):
            by_shape.setdefault(tuple(tensor.shape[1:]), []).append(index)
        for (height, width), indices in by_shape.items():
            batch = torch.stack([tensors[i] for i in indices]).to(self.dtype)
            hidden = self.model(pixel_values=batch).last_hidden_state  # (B, prefix + h*w, C)
            grid_h, grid_w = height // self.patch, width // self.patch
            patches = hidden[:, self.num_prefix_tokens :]
            if patches.shape[1] != grid_h * grid_w:
                raise RuntimeError(
                    f"visual model returned {patches.shape[1]} patch tokens for a {grid_h}x{grid_w} grid "
                    f"(prefix tokens assumed: {self.num_prefix_tokens})"
                )
            for row, index in enumerate(indices):
                results[index] = VisualFeatures(
                    grid=patches[row].reshape(grid_h, grid_w, -1).float(),
                    cls=hidden[row, 0].float(),
                    image_size=tuple(image_sizes[index]),
                )
        return results  # type: ignore[return-value]

    def encode_one(self, image_rgb: np.ndarray) -> VisualFeatures:
        return self.encode([image_rgb])[0]
