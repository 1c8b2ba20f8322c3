"""PartPointer: image + query + support set -> point, score, heatmap, timings.

One call walks down once: take one settings snapshot, resolve each request (query, supports, K),
get the frame's features (`FrameStore`), the supports' features (`SupportFeatures`), then fuse
(`fusion`). `point` and `point_many` share that one path; `point_many` answers several (query,
support set) requests on one frame, whose DINO features and MLLM prefix are computed once.
"""

from __future__ import annotations

import dataclasses
import pathlib
import threading
from collections.abc import Sequence

import numpy as np
import torch

from pop_ros import core
from pop_ros.models.mllm import ImageLimits, MLLMAdapter
from pop_ros.models.presets import ModelConfig
from pop_ros.models.visual import VisualEncoder
from pop_ros.pipeline import fusion
from pop_ros.pipeline.api import (
    PointerError,
    PointRequest,
    PointResult,
    Support,
    Timer,
    out_of_memory_as_pointer_error,
)
from pop_ros.pipeline.frames import FrameFeatures, FrameStore, frame_cache_key
from pop_ros.pipeline.loading import calibrated_heads, load_models, resolve_model_config, text_heads
from pop_ros.pipeline.progress import IMAGE_FEATURES, QUERY, REGION, QueryProgress
from pop_ros.pipeline.settings import MAX_INSTANCES, MAX_QUERY_CHARS, PointerSettings
from pop_ros.pipeline.support_features import SupportFeatures
from pop_ros.supports import SupportError, SupportLibrary, SupportSet, validate_click, validate_image


@dataclasses.dataclass
class ResolvedRequest:
    """A validated request: what answering it needs."""

    query: str
    support_set: SupportSet | None  # the library set as it was when resolved; None: explicit supports
    supports: list[Support]  # the set's exemplars as (image, click), or the explicit supports
    max_shots: int  # K
    max_instances: int = 1
    roi: tuple[int, int, int, int] | None = None  # validated and clipped to the image


class PartPointer:
    def __init__(
        self,
        visual: VisualEncoder,
        mllm: MLLMAdapter,
        model_config: ModelConfig,
        settings: PointerSettings | None = None,
        library: SupportLibrary | None = None,
        feature_cache_dir: str | pathlib.Path | None = None,
        name: str = "custom",
    ):
        """Assemble a pointer from loaded models; `from_preset` / `from_config` load them."""
        self.visual = visual
        self.mllm = mllm
        self.model_config = model_config
        self.library = library or SupportLibrary()
        self.name = name
        self.load_timings_s: dict[str, float] = {}
        self.calibrated_heads, self.heads_source = calibrated_heads(mllm, model_config)
        self._settings = self._check_depth((settings or PointerSettings()).validate())
        self.support_features = SupportFeatures(visual, model_config, feature_cache_dir)
        self.frames = FrameStore(visual, mllm)
        self._lock = threading.Lock()  # one model forward at a time; guards both feature stores

    @property
    def settings(self) -> PointerSettings:
        """The current settings (frozen): each call reads them once and uses that snapshot throughout."""
        return self._settings

    @settings.setter
    def settings(self, settings: PointerSettings) -> None:
        # A reference swap: a query in flight keeps the snapshot it took, the next one sees these.
        self._settings = self._check_depth(settings.validate())

    def _check_depth(self, settings: PointerSettings) -> PointerSettings:
        """`settings` when the heads they read lie in the loaded layers; PointerError (a ValueError: the
        node refuses the parameter) when a trimmed MLLM lacks them (head_set all)."""
        heads, _ = self.text_heads(settings)
        deepest = max((layer for layer, _ in heads), default=-1)
        if settings.use_text and deepest >= self.mllm.loaded_layers:
            raise PointerError(self.mllm.trimmed_reason(f"head_set {settings.head_set!r}", deepest))
        return settings

    @classmethod
    def from_config(
        cls,
        model_config: ModelConfig,
        settings: PointerSettings | None = None,
        library: SupportLibrary | None = None,
        feature_cache_dir: str | pathlib.Path | None = None,
        name: str = "custom",
    ) -> PartPointer:
        visual, mllm, load_timings_s = load_models(model_config, name)
        pointer = cls(visual, mllm, model_config, settings, library, feature_cache_dir, name)
        pointer.load_timings_s = load_timings_s
        return pointer

    @classmethod
    def from_preset(
        cls,
        preset: str,
        settings: PointerSettings | None = None,
        library: SupportLibrary | None = None,
        feature_cache_dir: str | pathlib.Path | None = None,
        **overrides,
    ) -> PartPointer:
        config = resolve_model_config(preset, **overrides)
        return cls.from_config(config, settings, library, feature_cache_dir, name=preset)

    def text_heads(self, settings: PointerSettings | None = None) -> tuple[list[tuple[int, int]], str]:
        """(heads, aggregation) the text prior uses under `settings` (default: the current ones)."""
        return text_heads(self.mllm, self.calibrated_heads, settings or self._settings)

    # ---- input limits --------------------------------------------------------------------------
    def image_limits(self, with_text: bool | None = None) -> ImageLimits:
        """The image shapes this pointer takes. The visual encoder needs at least one patch of the
        image per side (smaller images would get a feature grid invented by upsampling); the MLLM
        adds its processor's aspect-ratio limit when the text prior is used (default: the settings')."""
        with_text = self._settings.use_text if with_text is None else with_text
        mllm = self.mllm.image_limits if with_text else ImageLimits()
        sources = [f"{self.visual.patch}-px patches of the visual encoder"] + ([mllm.source] if mllm.source else [])
        return ImageLimits(
            max_aspect=mllm.max_aspect, min_side=max(self.visual.patch, mllm.min_side), source="; ".join(sources)
        )

    def _check_size(self, image: np.ndarray, what: str, with_text: bool) -> None:
        problem = self.image_limits(with_text).problem(*image.shape[:2])
        if problem:
            raise PointerError(f"{what} image {problem}")

    def _validate_target(self, image_rgb, settings: PointerSettings) -> None:
        try:
            validate_image(image_rgb)
        except SupportError as error:
            raise PointerError(f"target {error}") from error
        self._check_size(image_rgb, "target", settings.use_text)  # before any model runs

    # ---- caches --------------------------------------------------------------------------------
    def clear_frame_cache(self) -> None:
        """Forget every frame's DINO features and MLLM prefix (the next query recomputes them)."""
        with self._lock:
            self.frames.clear()

    def cached_frames(self) -> int:
        return len(self.frames)

    def warm_support_set(self, name: str) -> int:
        """Compute (or load) the features of every exemplar of a set; returns how many."""
        support_set = self.library.get(name)
        with self._lock, out_of_memory_as_pointer_error(f"the features of support set {name!r}"):
            return len(self.support_features.for_set(support_set, self.library.names()))

    def add_exemplar(self, set_name: str, image_rgb: np.ndarray, click, query: str = "") -> SupportSet:
        """Validate an exemplar and compute its features, then add it to the library: all or nothing
        (an image the models cannot take is never stored). Other edits go to `self.library` directly:
        each makes a new version of the set, which the next query looks up afresh."""
        validate_click(click, validate_image(image_rgb))
        problem = self.image_limits(with_text=False).problem(*image_rgb.shape[:2])
        if problem:
            raise SupportError(f"exemplar image {problem}")
        with self._lock, out_of_memory_as_pointer_error(f"the features of support set {set_name!r}"):
            self.support_features.for_images([image_rgb])
        return self.library.add_exemplar(set_name, image_rgb, click, query)

    # ---- the query -----------------------------------------------------------------------------
    def point(
        self,
        image_rgb: np.ndarray,
        query: str = "",
        support_set: str | None = None,
        supports: Sequence[Support] | None = None,
        shots: int | None = None,
        frame_key: str | None = None,
        max_instances: int = 1,
        roi=None,
        progress: QueryProgress | None = None,
    ) -> PointResult:
        """Point at `query` in `image_rgb` ((H, W, 3) uint8 RGB) guided by a named support set or by
        explicit (image, (u, v)) supports; `shots` caps K (default `settings.max_shots`).

        A frame seen among the latest `frame_cache_size` (same content, or the same `frame_key`: a
        caller's unique frame id such as stamp + frame_id) reuses its DINO features and MLLM prefix.
        `max_instances`: up to this many answers in `result.instances` (local maxima, best first;
        instances[0] is the single answer). `roi (x, y, width, height)`: the answer lies inside it
        (the MLLM still sees the whole image); a zero-area region or one outside the image is refused.
        `progress`: told each stage; once cancelled, the call raises QueryCancelled at the next
        boundary (after the visual encoder, before each MLLM layer, before the similarity to the
        supports, the fusion and the heatmap)."""
        settings = self._settings  # the one snapshot this call uses
        self._validate_target(image_rgb, settings)
        request = self._resolve(
            PointRequest(query, support_set, supports, shots, max_instances, roi), settings, image_rgb.shape[:2]
        )
        return self._answer_all(image_rgb, [request], frame_key, settings, shared=False, progress=progress)[0]

    def point_many(
        self,
        image_rgb: np.ndarray,
        requests: Sequence[PointRequest | tuple],
        frame_key: str | None = None,
        progress: QueryProgress | None = None,
    ) -> list[PointResult | PointerError]:
        """Answer several requests on one frame: its DINO features and MLLM prefix are computed once.

        `requests`: `PointRequest`s or `(query, support_set)` pairs, where support_set is a set name,
        None, or a list of explicit (image, (u, v)) supports. One result per request, in order; a
        request that cannot be answered gets its PointerError in its slot (the others still run). A
        bad target image raises PointerError for the whole call. `progress`: as `point`'s."""
        settings = self._settings  # the one snapshot this call uses
        self._validate_target(image_rgb, settings)
        resolved: list[ResolvedRequest | PointerError] = []
        for index, request in enumerate(requests):
            try:
                resolved.append(self._resolve(_as_point_request(request), settings, image_rgb.shape[:2]))
            except PointerError as error:
                resolved.append(PointerError(f"request {index}: {error}"))
        if not any(isinstance(request, ResolvedRequest) for request in resolved):
            return resolved  # type: ignore[return-value]
        return self._answer_all(image_rgb, resolved, frame_key, settings, shared=True, progress=progress)

    def _resolve(self, request: PointRequest, settings: PointerSettings, image_size) -> ResolvedRequest:
        """Validate one request for a target of `image_size (H, W)` (PointerError with the reason otherwise)."""
        query, set_name, explicit = request.query, request.support_set, request.supports
        if set_name and explicit:
            raise PointerError("give a support set name or explicit supports, not both")
        if query is not None and not isinstance(query, str):
            raise PointerError(f"query must be a string, got {type(query).__name__}")
        query = (query or "").strip()
        chosen, supports = None, []
        if set_name:
            try:
                chosen = self.library.get(set_name)
            except SupportError as error:
                raise PointerError(str(error)) from error
            query = query or chosen.query
            supports = [(exemplar.image, exemplar.click) for exemplar in chosen.exemplars]
        elif explicit:
            for image, click in explicit:
                try:
                    validate_image(image)
                    supports.append((image, validate_click(list(click), image)))
                except SupportError as error:
                    raise PointerError(f"support {len(supports)}: {error}") from error
                self._check_size(image, f"support {len(supports) - 1}", with_text=False)
        if settings.use_text and not query:
            raise PointerError("the query is empty and the support set has no default query")
        if len(query) > MAX_QUERY_CHARS:
            raise PointerError(f"the query has {len(query)} characters; at most {MAX_QUERY_CHARS} are supported")
        if not settings.use_text and not supports:
            raise PointerError("visual-only pointing (use_text false) needs at least one support")
        max_shots = settings.max_shots if request.shots is None else int(request.shots)
        if max_shots < 1:
            raise PointerError(f"shots must be >= 1, got {request.shots}")
        max_instances = int(request.max_instances or 1)
        if not 1 <= max_instances <= MAX_INSTANCES:
            raise PointerError(f"max_instances must be in [0, {MAX_INSTANCES}], got {request.max_instances}")
        roi = None
        if request.roi is not None:
            try:
                roi = core.validate_roi(request.roi, image_size)
            except (TypeError, ValueError) as error:
                raise PointerError(str(error)) from error
        return ResolvedRequest(query, chosen, supports, max_shots, max_instances, roi)

    def _answer_all(
        self,
        image_rgb: np.ndarray,
        resolved: list[ResolvedRequest | PointerError],
        caller_frame_id: str | None,
        settings: PointerSettings,
        shared: bool,
        progress: QueryProgress | None = None,
    ) -> list[PointResult | PointerError]:
        """The frame once, then each request on it. `shared` (point_many): the frame's stages are
        reported in each result's `shared_timings_ms`; else (point) all stages are in `timings_ms`.
        `progress` (None: a call nobody cancels) is checked at each stage and between the MLLM's layers."""
        layer_check = None if progress is None else progress.check
        progress = progress or QueryProgress()
        heads, aggregation = self.text_heads(settings)
        synchronize = self.visual.device.type == "cuda"
        valid = [request for request in resolved if isinstance(request, ResolvedRequest)]
        text_query = valid[0].query if settings.use_text else None
        depth = max(layer for layer, _ in heads) if text_query is not None else -1
        with (
            self._lock,
            out_of_memory_as_pointer_error("the queries" if shared else "the query"),
            self.mllm.checked_between_layers(layer_check),
        ):
            progress.stage(IMAGE_FEATURES)
            frame_timer = Timer(synchronize)
            cache_key = frame_cache_key(image_rgb, caller_frame_id)
            frame_timer.lap("frame_lookup")
            capacity, overlap = settings.frame_cache_size, settings.overlap
            frame, reused = self.frames.get(
                image_rgb, cache_key, text_query, depth, capacity, overlap, frame_timer, progress
            )
            head_maps: list[torch.Tensor | None] = [None] * len(valid)
            if text_query is not None:
                # Every query's own tokens through the layers as one batch (point: a batch of one),
                # each attending to the frame's prefix; up to the deepest localization head.
                progress.stage(QUERY)
                head_maps = self.mllm.head_maps_from_prefix_batch(frame.prefix, [r.query for r in valid], heads)
                frame_timer.lap("mllm_prefill_batch" if shared else "mllm_prefill")
            maps_of = {id(request): maps for request, maps in zip(valid, head_maps, strict=True)}
            shared_timings = frame_timer.report() if shared else {}
            progress.stage(REGION)
            results: list[PointResult | PointerError] = []
            for request in resolved:
                if isinstance(request, PointerError):
                    results.append(request)
                    continue
                timer = Timer(synchronize) if shared else frame_timer
                maps_and_aggregation = (maps_of[id(request)], aggregation)
                result = self._answer(image_rgb, frame, request, settings, maps_and_aggregation, timer, progress)
                result.shared_timings_ms, result.frame_reused = shared_timings, reused
                results.append(result)
            return results

    @torch.inference_mode()
    def _answer(
        self,
        image_rgb: np.ndarray,
        frame: FrameFeatures,
        request: ResolvedRequest,
        settings: PointerSettings,
        head_maps_and_aggregation: tuple[torch.Tensor | None, str],
        timer: Timer,
        progress: QueryProgress,
    ) -> PointResult:
        """One request on a frame whose features (and this request's `(N, H_l, W_l)` head maps, when
        the text prior is used) are ready; laps into `timer`. `progress` is checked between its steps."""
        timer.restart()
        image_size = image_rgb.shape[:2]
        maps = None  # (K, H_t, W_t)
        if request.supports:
            if request.support_set is not None:
                features = self.support_features.for_set(request.support_set, self.library.names())
            else:
                features = self.support_features.for_images([image for image, _ in request.supports])
            chosen = fusion.retrieve(features, frame.target, request.max_shots, settings.retrieval)
            timer.lap("supports")
            progress.check()
            maps = fusion.visual_maps(request.supports, features, chosen, frame.target, settings.similarity)
            timer.lap("similarity")
            progress.check()
        prior = None  # (H_l, W_l)
        if settings.use_text:
            head_maps, aggregation = head_maps_and_aggregation
            device = frame.target.grid.device
            prior = fusion.text_prior(self.mllm, head_maps, aggregation, settings.sigma, device)  # lapped in "fusion"
        instances, final = fusion.fuse_to_instances(
            prior, maps, settings, image_size, frame.target.grid.shape[1], request.max_instances, request.roi
        )
        timer.lap("fusion")
        progress.check()
        heatmap = fusion.heatmap_at(final, image_size, request.roi)
        timer.lap("heatmap")
        best = instances[0]
        return PointResult(
            u=best.u,
            v=best.v,
            score=best.score,
            heatmap=heatmap,
            timings_ms=timer.report(),
            query=request.query,
            support_set=request.support_set.name if request.support_set is not None else "",
            num_shots=0 if maps is None else int(maps.shape[0]),
            used_text=prior is not None,
            instances=instances,
            roi=request.roi,
        )


def _as_point_request(request) -> PointRequest:
    """A PointRequest, or a (query, support_set) pair where support_set is a name, None or explicit supports."""
    if isinstance(request, PointRequest):
        return request
    if isinstance(request, (tuple, list)) and len(request) == 2:
        query, support = request
        if support is None or isinstance(support, str):
            return PointRequest(query, support)
        return PointRequest(query, supports=list(support))
    raise PointerError(f"a request is a PointRequest or a (query, support_set) pair, got {request!r}")
