"""What goes into and comes out of the pipeline: requests, results, errors, pixel convention, timings."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Sequence

import numpy as np
import torch


# Pixel coordinates: every public (u, v) (results, clicks, the node, the CLI, support YAML) is a
# ROS/OpenCV pixel coordinate, the convention of CameraInfo's K and P: the centre of the top-left
# pixel is (0, 0). The core's cell formulas use edge-origin coordinates (pixel i spans [i, i + 1));
# these two functions are the only place the half pixel between them is added or removed.
def to_core_pixel(uv) -> tuple[float, float]:
    """Public (ROS) pixel (u, v) -> the core's edge-origin coordinates."""
    return float(uv[0]) + 0.5, float(uv[1]) + 0.5


def from_core_pixel(uv) -> tuple[float, float]:
    """The core's edge-origin (u, v) -> public (ROS) pixel coordinates."""
    return float(uv[0]) - 0.5, float(uv[1]) - 0.5


class PointerError(ValueError):
    """A query that cannot be answered; the message says why (bad input, unknown set, no memory)."""


# An explicit support: an (H, W, 3) uint8 RGB image and the (u, v) click on the part in it.
Support = tuple[np.ndarray, tuple[float, float]]


@dataclasses.dataclass
class PointRequest:
    """One query of `point_many`: a part in words plus a named set or explicit (image, (u, v)) supports."""

    query: str = ""
    support_set: str | None = None
    supports: Sequence[Support] | None = None
    shots: int | None = None  # K: at most this many supports (default: the settings' max_shots)
    max_instances: int = 1  # up to this many answers (local maxima of the fused map), best first; 0 = 1
    roi: Sequence[int] | None = None  # (x, y, width, height) pixels: the answer lies inside; None = whole image


@dataclasses.dataclass(frozen=True)
class Instance:
    """One answer of a query: a peak of the fused map (instances[0] is the single answer)."""

    u: float  # ROS pixel convention, as PointResult
    v: float
    score: float  # core.peak_score at this peak


@dataclasses.dataclass
class PointResult:
    u: float  # pixel column of the point (ROS convention: the top-left pixel's centre is (0, 0))
    v: float  # pixel row of the point
    score: float  # see core.peak_score
    heatmap: np.ndarray  # (H, W) float32 in [0, 1], the fused map at image size
    timings_ms: dict[str, float]
    query: str
    support_set: str
    num_shots: int
    used_text: bool
    # point_many: the frame's stages, run once for all its requests ({} when the frame was cached);
    # `timings_ms` then holds this request's own stages only. point(): {} (all in `timings_ms`).
    shared_timings_ms: dict[str, float] = dataclasses.field(default_factory=dict)
    frame_reused: bool = False  # the frame's DINO features / MLLM prefix came from the frame cache
    # Every instance: instances[0] is (u, v, score) above, the others by decreasing score. Empty only
    # for results built by hand.
    instances: list[Instance] = dataclasses.field(default_factory=list)
    roi: tuple[int, int, int, int] | None = None  # the region the answer was searched in (clipped), or None

    def as_dict(self) -> dict:
        return {
            "u": self.u,
            "v": self.v,
            "score": self.score,
            "query": self.query,
            "support_set": self.support_set,
            "num_shots": self.num_shots,
            "used_text": self.used_text,
            "timings_ms": self.timings_ms,
            "shared_timings_ms": self.shared_timings_ms,
            "frame_reused": self.frame_reused,
            "image_size": list(self.heatmap.shape),
            "instances": [dataclasses.asdict(instance) for instance in self.instances],
            "roi": list(self.roi) if self.roi is not None else None,
        }


@contextlib.contextmanager
def out_of_memory_as_pointer_error(what: str):
    """GPU out-of-memory becomes a PointerError (the caller answers, the process keeps serving)."""
    try:
        yield
    except torch.OutOfMemoryError as error:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        raise PointerError(
            f"out of GPU memory during {what}; lower `resolution`, use fewer shots or a smaller preset"
        ) from error


class Timer:
    """Wall time of consecutive stages in ms (after a device synchronise on CUDA)."""

    def __init__(self, synchronize: bool):
        self.timings: dict[str, float] = {}
        self.notes: dict[str, float] = {}  # informative figures that overlap others: not in the total
        self.synchronize = synchronize
        self._start = time.perf_counter()

    def lap(self, name: str) -> None:
        if self.synchronize:
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.timings[name] = self.timings.get(name, 0.0) + (now - self._start) * 1000.0
        self._start = now

    def restart(self) -> None:
        self._start = time.perf_counter()

    def report(self) -> dict[str, float]:
        if not self.timings and not self.notes:
            return {}
        return {**self.timings, **self.notes, "total": sum(self.timings.values())}
