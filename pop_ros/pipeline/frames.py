"""FrameStore: what one target image gives every query on it (its DINO features and the MLLM's image
prefix), computed once and kept for the latest frames (LRU).

A frame is found by its cache key: the caller's frame id (the node: stamp + frame_id) when it gives
one, else a hash of the image content; the image shape is part of both."""

from __future__ import annotations

import collections
import dataclasses
import hashlib

import numpy as np
import torch

from pop_ros.models.mllm import ImagePrefix, MLLMAdapter
from pop_ros.models.visual import VisualEncoder, VisualFeatures
from pop_ros.pipeline.api import Timer
from pop_ros.pipeline.progress import MLLM_PREFIX, QueryProgress


@dataclasses.dataclass
class FrameFeatures:
    """What one target image gives every query on it."""

    target: VisualFeatures
    prefix: ImagePrefix | None = None  # made by the first text query on the frame


def frame_cache_key(image_rgb: np.ndarray, caller_frame_id: str | None) -> str:
    """The caller's frame id (the node: stamp + frame_id) or the image content's hash, with its shape."""
    if caller_frame_id:
        return f"key:{caller_frame_id}|{image_rgb.shape}"
    digest = hashlib.blake2b(np.ascontiguousarray(image_rgb).data, digest_size=16)
    return f"content:{digest.hexdigest()}|{image_rgb.shape}"


class FrameStore:
    """The latest frames' features, oldest first. Not thread-safe: the pointer's lock guards it."""

    def __init__(self, visual: VisualEncoder, mllm: MLLMAdapter):
        self.visual = visual
        self.mllm = mllm
        self._frames: collections.OrderedDict[str, FrameFeatures] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._frames)

    def clear(self) -> None:
        self._frames.clear()

    def _trim(self, capacity: int) -> None:
        while len(self._frames) > capacity:
            self._frames.popitem(last=False)

    def get(
        self,
        image_rgb: np.ndarray,
        cache_key: str,
        text_query: str | None,
        depth: int,
        capacity: int,
        overlap: bool,
        timer: Timer,
        progress: QueryProgress | None = None,
    ) -> tuple[FrameFeatures, bool]:
        """(the frame's features, whether they all came from the store); computes what is missing.

        `text_query` is any text query of this frame (None: no text prior needed): the MLLM prefix is
        made with it and reaches layer `depth` (the deepest head read). `capacity` frames are kept
        (the settings of this call); `overlap` allows the CUDA two-stream forward. `progress`: told
        when the MLLM prefix starts (a cancel there stops before it)."""
        progress = progress or QueryProgress()
        self._trim(capacity)  # the setting may have shrunk
        frame = self._frames.get(cache_key)
        if frame is not None:
            reused = text_query is None or frame.prefix is not None
            self._frames.move_to_end(cache_key)
            if text_query is not None and frame.prefix is None:
                progress.stage(MLLM_PREFIX)
                frame.prefix = self.mllm.image_prefix(image_rgb, text_query, depth)
                timer.lap("mllm_prefix")
            return frame, reused
        cuda = self.visual.device.type == "cuda" and self.mllm.device.type == "cuda"
        if overlap and text_query is not None and cuda:
            frame = self._compute_overlapped(image_rgb, text_query, depth, timer)
        else:
            frame = self._compute(image_rgb, text_query, depth, timer, progress)
        if capacity > 0:
            self._frames[cache_key] = frame
            self._trim(capacity)
        return frame, False

    def _compute(
        self, image_rgb: np.ndarray, text_query: str | None, depth: int, timer: Timer, progress: QueryProgress
    ) -> FrameFeatures:
        pixels = self.visual.preprocess(image_rgb)
        timer.lap("visual_preprocess")
        frame = FrameFeatures(self.visual.encode_preprocessed([pixels], [image_rgb.shape[:2]])[0])
        timer.lap("visual_forward")
        if text_query is not None:
            progress.stage(MLLM_PREFIX)  # the boundary between the visual encoder and the MLLM
            frame.prefix = self.mllm.image_prefix(image_rgb, text_query, depth)
            timer.lap("mllm_prefix")  # processor, vision tower, tokens before the query text
        return frame

    def _compute_overlapped(self, image_rgb: np.ndarray, text_query: str, depth: int, timer: Timer) -> FrameFeatures:
        """CUDA: the target's DINO forward on a side stream while the MLLM prefix runs on the current
        one. Laps are wall time after a device synchronise; each stream's own GPU time is a note."""
        device = self.visual.device
        main = torch.cuda.current_stream(device)
        side = torch.cuda.Stream(device=device)
        side.wait_stream(main)  # inputs made on the main stream are ready
        events = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
        with torch.cuda.stream(side):
            events[0].record(side)
            pixels = self.visual.preprocess(image_rgb)
            target = self.visual.encode_preprocessed([pixels], [image_rgb.shape[:2]])[0]
            events[1].record(side)
        events[2].record(main)
        prefix = self.mllm.image_prefix(image_rgb, text_query, depth)
        events[3].record(main)
        main.wait_stream(side)
        for tensor in (target.grid, target.cls):  # made on the side stream, read on the main one
            tensor.record_stream(main)
        timer.lap("frame_overlapped")  # synchronised: both streams are done
        timer.notes["visual_forward_stream"] = events[0].elapsed_time(events[1])
        timer.notes["mllm_prefix_stream"] = events[2].elapsed_time(events[3])
        return FrameFeatures(target, prefix)
