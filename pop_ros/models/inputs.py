"""What the MLLM adapters take and keep: a prepared prompt, a frame's image prefix, the image
shapes a family accepts, and the pixel cap applied before its processor."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from pop_ros.models.transformers_internals import StopForward

# Raised after the deepest chosen layer: nothing after it is needed (transformers_internals.py).
_StopForward = StopForward


@dataclasses.dataclass
class PromptInputs:
    """Model inputs of one (image, query) and where its image tokens are."""

    model_inputs: dict  # what the processor returned, on the model's device
    image_positions: torch.Tensor  # (H_l * W_l,) sequence positions of the grid's tokens, row-major
    grid: tuple[int, int]  # (H_l, W_l)


@dataclasses.dataclass
class ImagePrefix:
    """One frame's share of every query on it: the tokens before the query text, run once.

    `reusable` is False when the prompt layout puts query text before the image (then each query
    runs the full prefill and `reason` says why); everything below it is then unset.
    """

    image_rgb: np.ndarray  # (H, W, 3) uint8, kept for the full-prefill fallback
    reusable: bool
    reason: str = ""
    head_text: str = ""  # the prompt up to and including the image placeholder (query-independent)
    model_inputs: dict = dataclasses.field(default_factory=dict)  # processor outputs cut to the prefix
    image_positions: torch.Tensor | None = None  # (H_l * W_l,) sequence positions of the grid's tokens
    grid: tuple[int, int] = (0, 0)  # (H_l, W_l)
    length: int = 0  # P: tokens in the prefix
    position_offset: int = 0  # query token i gets rope position P + i + offset (Qwen: the mRoPE delta)
    depth: int = -1  # deepest decoder layer whose keys/values are held
    # Per layer 0..depth: (1, H_kv, P, D) k and v (a hybrid family's own entries: `_keep_prefix_state`).
    keys_values: list = dataclasses.field(default_factory=list)
    image_features: object | None = None  # the vision tower's output: a deeper prefix does not rerun it


@dataclasses.dataclass(frozen=True)
class ImageLimits:
    """The image shapes a family's processor accepts: a longer/shorter side ratio of at most
    `max_aspect` (inf: any), and `min_side` pixels per side. Checked before the model runs."""

    max_aspect: float = math.inf
    min_side: int = 1
    source: str = ""  # where the limit comes from

    def describe(self) -> str:
        aspect = "any aspect ratio" if math.isinf(self.max_aspect) else f"aspect ratio at most {self.max_aspect:g}:1"
        return f"sides of at least {self.min_side} px and {aspect}" + (f" ({self.source})" if self.source else "")

    def problem(self, height: int, width: int) -> str | None:
        """None if an image of `height` x `width` pixels is accepted, else why not (with the range)."""
        if min(height, width) < self.min_side or max(height, width) / min(height, width) > self.max_aspect:
            return f"{width}x{height} px is outside the supported range: {self.describe()}"
        return None


def cap_pixels(image_rgb: np.ndarray, max_pixels: int) -> np.ndarray:
    """`image_rgb (H, W, 3)` shrunk (aspect kept, area interpolation) to at most `max_pixels`
    pixels; unchanged when it already fits or `max_pixels` is 0 (no cap)."""
    height, width = image_rgb.shape[:2]
    if max_pixels <= 0 or height * width <= max_pixels:
        return image_rgb
    import cv2

    scale = (max_pixels / float(height * width)) ** 0.5
    size = (max(1, int(width * scale)), max(1, int(height * scale)))  # floor: never above the cap
    return cv2.resize(image_rgb, size, interpolation=cv2.INTER_AREA)
