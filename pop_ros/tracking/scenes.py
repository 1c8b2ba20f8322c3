"""Synthetic sequences with known motion for the part tracker (tests, pop-bench, the docs' picture).

A textured square "part" moves over a static textured background by a known similarity per frame
(translation, in-plane rotation, scale), rendered with cv2.warpAffine, so the true pixel of any point
of the part is exact in every frame; an occluder may slide over it. No ROS.
"""

from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np


def texture(rng: np.random.Generator, height: int, width: int, blur: float = 1.5) -> np.ndarray:
    """RGB uint8 noise, smoothed and stretched to full contrast: corners everywhere, no repeats."""
    noise = rng.random((height, width, 3)).astype(np.float32)
    smooth = cv2.GaussianBlur(noise, (0, 0), blur)
    low, high = smooth.min(), smooth.max()
    return ((smooth - low) / (high - low) * 255).astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class Pose:
    """Where the part's centre is (pixels), its rotation (degrees, counter-clockwise on screen) and scale."""

    x: float
    y: float
    angle_deg: float = 0.0
    scale: float = 1.0


class MovingPart:
    """A `size` x `size` textured part over a `width` x `height` background."""

    def __init__(self, width: int = 320, height: int = 240, size: int = 96, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.width, self.height, self.size = width, height, size
        self.background = texture(rng, height, width, blur=2.0)
        self.part = texture(rng, size, size, blur=1.5)
        self.occluder = texture(rng, height, width, blur=3.0)

    def transform(self, pose: Pose) -> np.ndarray:
        """(2, 3): the part's own pixel coordinates -> image pixel coordinates at `pose`."""
        half = (self.size - 1) / 2.0
        angle = math.radians(pose.angle_deg)
        cos, sin = pose.scale * math.cos(angle), pose.scale * math.sin(angle)
        # Image y points down: a counter-clockwise turn on screen is a negative angle in (x, y).
        linear = np.array([[cos, sin], [-sin, cos]])
        offset = np.array([pose.x, pose.y]) - linear @ np.array([half, half])
        return np.hstack([linear, offset[:, None]])

    def pixel(self, pose: Pose, part_xy=None) -> tuple[float, float]:
        """The image pixel of the part's point `part_xy` (default: its centre) at `pose`."""
        half = (self.size - 1) / 2.0
        x, y = part_xy if part_xy is not None else (half, half)
        u, v = self.transform(pose) @ np.array([x, y, 1.0])
        return float(u), float(v)

    def render(self, pose: Pose, occluder_box: tuple[int, int, int, int] | None = None):
        """(RGB image, part mask bool) at `pose`; `occluder_box` (x, y, w, h) hides what is under it."""
        matrix = self.transform(pose)
        size = (self.width, self.height)
        part = cv2.warpAffine(self.part, matrix, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        coverage = cv2.warpAffine(np.ones((self.size, self.size), np.float32), matrix, size, flags=cv2.INTER_LINEAR)[
            ..., None
        ]
        image = (coverage * part + (1.0 - coverage) * self.background).astype(np.uint8)
        if occluder_box is not None:
            x, y, w, h = occluder_box
            image[y : y + h, x : x + w] = self.occluder[y : y + h, x : x + w]
        return image, coverage[..., 0] > 0.5


def poses_between(start: Pose, end: Pose, frames: int) -> list[Pose]:
    """`frames` poses from `start` to `end`, every step the same."""
    steps = np.linspace(0.0, 1.0, frames)
    return [
        Pose(
            start.x + t * (end.x - start.x),
            start.y + t * (end.y - start.y),
            start.angle_deg + t * (end.angle_deg - start.angle_deg),
            start.scale * (end.scale / start.scale) ** t,
        )
        for t in steps
    ]
