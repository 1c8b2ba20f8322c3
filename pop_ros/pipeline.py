"""PartPointer: image + query + support set -> point, score, heatmap, timings.

The one place the POP pipeline is assembled; the node, the CLI, the evaluation and the benchmarks
all call it. Like segment-anything's predictor, the expensive support features are computed once
per support set (per exemplar image, keyed by content) and reused by every query.

The target frame is shared the same way: its DINO features and the MLLM's image prefix (vision
tower + keys/values of every token before the query text) are computed once per frame and kept for
the latest `frame_cache_size` frames (keyed by content, or by the caller's frame key such as the
node's stamp + frame_id); a further query on that frame runs only its own text tokens.
`point_many` answers several (query, support set) requests on one frame in one call.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import logging
import pathlib
import threading
import time
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pop_ros import core
from pop_ros.models.heads import fallback_heads, load_head_file
from pop_ros.models.mllm import ImagePrefix, MLLMAdapter
from pop_ros.models.presets import ModelConfig, default_head_file, get_preset, head_file_candidates
from pop_ros.models.visual import VisualEncoder, VisualFeatures
from pop_ros.supports import SupportError, SupportLibrary, validate_click, validate_image

LOG = logging.getLogger(__name__)

RETRIEVALS = ("cls", "first")
# A part is named in a few words; a longer query only costs prefill time (and GPU memory).
MAX_QUERY_CHARS = 2000
HEAD_SETS = ("selected", "all")
RANDOM_WEIGHTS_BANNER = (
    "RANDOM WEIGHTS: the '{name}' models are tiny and randomly initialised; every point they give is "
    "meaningless. Use a real preset (see README) for real pointing."
)


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


@dataclasses.dataclass
class PointerSettings:
    similarity: str = "bidirectional"  # bidirectional | forward | backward (paper's ablation)
    aggregation: str = "sum"  # sum | mean | max over the heads' smoothed maps
    head_set: str = "selected"  # selected: calibrated heads (or the fallback); all: every head
    sigma: float = 1.0  # Gaussian smoothing of each head map, in LLM-token units
    shots: str = "mean"  # mean | product: how K visual maps combine
    upsample: int = 2  # the fused map is upsampled this many times before the argmax
    max_shots: int = 3  # K: at most this many exemplars of a set are used per query
    retrieval: str = "cls"  # cls: the K exemplars closest to the target by DINO [CLS]; first: in order
    use_text: bool = True  # False = visual-only ablation
    frame_cache_size: int = 2  # latest N frames whose DINO features + MLLM image prefix are kept; 0 = none
    overlap: bool = True  # CUDA only: target DINO forward and MLLM prefix on separate streams

    def validate(self) -> PointerSettings:
        checks = [
            (self.similarity in core.SIMILARITY_MODES, f"similarity must be one of {core.SIMILARITY_MODES}"),
            (self.aggregation in core.AGGREGATIONS, f"aggregation must be one of {core.AGGREGATIONS}"),
            (self.head_set in HEAD_SETS, f"head_set must be one of {HEAD_SETS}"),
            (self.shots in core.SHOT_COMBINATIONS, f"shots must be one of {core.SHOT_COMBINATIONS}"),
            (self.retrieval in RETRIEVALS, f"retrieval must be one of {RETRIEVALS}"),
            (self.sigma >= 0, "sigma must be >= 0"),
            (int(self.upsample) == self.upsample and self.upsample >= 1, "upsample must be an integer >= 1"),
            (int(self.max_shots) == self.max_shots and self.max_shots >= 1, "max_shots must be an integer >= 1"),
            (
                int(self.frame_cache_size) == self.frame_cache_size and 0 <= self.frame_cache_size <= 64,
                "frame_cache_size must be an integer in [0, 64]",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"{message}; got {dataclasses.asdict(self)}")
        return self


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
        }


@dataclasses.dataclass
class PointRequest:
    """One query of `point_many`: a part in words plus a named set or explicit (image, (u, v)) supports."""

    query: str = ""
    support_set: str | None = None
    supports: Sequence[tuple[np.ndarray, tuple[float, float]]] | None = None
    shots: int | None = None


@dataclasses.dataclass
class _Resolved:
    """A validated request: what `_answer` needs."""

    query: str
    set_name: str
    set_key: tuple[str, int] | None
    examples: list[tuple[np.ndarray, tuple[float, float]]]
    max_shots: int


@dataclasses.dataclass
class _Frame:
    """What one target image gives every query on it."""

    target: VisualFeatures
    prefix: ImagePrefix | None = None  # made by the first text query on the frame


@contextlib.contextmanager
def _out_of_memory_as_pointer_error(what: str):
    """GPU out-of-memory becomes a PointerError (the caller answers, the process keeps serving)."""
    try:
        yield
    except torch.OutOfMemoryError as error:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        raise PointerError(
            f"out of GPU memory during {what}; lower `resolution`, use fewer shots or a smaller preset"
        ) from error


class _Timer:
    def __init__(self, synchronize: bool):
        self.timings: dict[str, float] = {}
        self.notes: dict[str, float] = {}  # informative figures that overlap others: not in the total
        self._synchronize = synchronize
        self._start = time.perf_counter()

    def lap(self, name: str) -> None:
        if self._synchronize:
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


def resolve_model_config(preset: str, **overrides) -> ModelConfig:
    """The configuration `PartPointer.from_preset(preset, **overrides)` loads, without loading it
    (the evaluation records it before any model is read)."""
    return get_preset(preset).replace(**{k: v for k, v in overrides.items() if v is not None})


def heads_file_for(model_config: ModelConfig) -> pathlib.Path | None:
    """The head file a pointer on `model_config` reads, or None when it falls back to all heads."""
    if model_config.heads_file:
        return pathlib.Path(model_config.heads_file)
    path = default_head_file(model_config.mllm)
    return path if path.is_file() else None


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
        self._lock = threading.Lock()
        self._settings = (settings or PointerSettings()).validate()
        self.library = library or SupportLibrary()
        self.name = name
        self.load_timings_s: dict[str, float] = {}
        self.calibrated_heads, self.heads_source = self._resolve_heads()
        self._feature_cache: dict[str, VisualFeatures] = {}  # by image content (+ visual model)
        # A library set's features by (name, version): queries on a set never re-hash its images.
        self._set_features: dict[tuple[str, int], list[VisualFeatures]] = {}
        self._feature_cache_dir = pathlib.Path(feature_cache_dir) if feature_cache_dir else None
        # Latest frames, oldest first: frame key -> _Frame (LRU, `settings.frame_cache_size` long).
        self._frames: collections.OrderedDict[str, _Frame] = collections.OrderedDict()

    @property
    def settings(self) -> PointerSettings:
        return self._settings

    @settings.setter
    def settings(self, settings: PointerSettings) -> None:
        # Waits for a query in flight: a query reads its settings several times and must see one set.
        validated = settings.validate()
        with self._lock:
            self._settings = validated

    @classmethod
    def from_config(
        cls,
        model_config: ModelConfig,
        settings: PointerSettings | None = None,
        library: SupportLibrary | None = None,
        feature_cache_dir: str | pathlib.Path | None = None,
        name: str = "custom",
    ) -> PartPointer:
        if model_config.random_weights:
            LOG.warning(RANDOM_WEIGHTS_BANNER.format(name=name))
        started = time.perf_counter()
        visual = model_config.load_visual()
        visual_s = time.perf_counter() - started
        started = time.perf_counter()
        mllm = model_config.load_mllm()
        pointer = cls(visual, mllm, model_config, settings, library, feature_cache_dir, name)
        pointer.load_timings_s = {"visual": visual_s, "mllm": time.perf_counter() - started}
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
        config = get_preset(preset).replace(**{k: v for k, v in overrides.items() if v is not None})
        return cls.from_config(config, settings, library, feature_cache_dir, name=preset)

    # ---- heads ---------------------------------------------------------------------------------
    def _resolve_heads(self) -> tuple[list[tuple[int, int]] | None, str]:
        layers, heads = self.mllm.num_layers, self.mllm.num_heads
        explicit = self.model_config.heads_file
        path = pathlib.Path(explicit) if explicit else default_head_file(self.model_config.mllm)
        if explicit or path.is_file():
            selected = load_head_file(path, layers, heads)
            LOG.info("localization heads of %s from %s: %s", self.model_config.mllm, path, selected)
            return selected, str(path)
        LOG.warning(
            "no calibrated localization heads for %s (looked for %s): using the mean over all heads of layers "
            "%d-%d as the text prior until `pop-find-heads` has been run for this model",
            self.model_config.mllm,
            " and ".join(str(candidate) for candidate in head_file_candidates(self.model_config.mllm)),
            layers // 3,
            max(layers // 3 + 1, 2 * layers // 3) - 1,
        )
        return None, "fallback"

    def text_heads(self) -> tuple[list[tuple[int, int]], str]:
        """(heads, aggregation) the text prior uses under the current settings."""
        if self.settings.head_set == "all":
            heads = [(layer, head) for layer in range(self.mllm.num_layers) for head in range(self.mllm.num_heads)]
            return heads, self.settings.aggregation
        if self.calibrated_heads is None:
            return fallback_heads(self.mllm.num_layers, self.mllm.num_heads), "mean"
        return self.calibrated_heads, self.settings.aggregation

    # ---- supports ------------------------------------------------------------------------------
    def _cache_key(self, image: np.ndarray) -> str:
        digest = hashlib.sha256()
        config = self.model_config
        digest.update(f"{config.visual}|{config.resolution}|{config.dtype}|{image.shape}".encode())
        digest.update(np.ascontiguousarray(image).data)
        return digest.hexdigest()

    def support_features(self, images: Sequence[np.ndarray]) -> list[VisualFeatures]:
        """Features of support images: from memory, then the disk cache, else one batched forward."""
        keys = [self._cache_key(image) for image in images]
        missing = []
        for index, key in enumerate(keys):
            if key in self._feature_cache:
                continue
            cached = self._load_cached(key)
            if cached is not None:
                self._feature_cache[key] = cached
            else:
                missing.append(index)
        if missing:
            computed = self.visual.encode([images[i] for i in missing])
            for index, features in zip(missing, computed, strict=True):
                self._feature_cache[keys[index]] = features
                self._store_cached(keys[index], features)
        return [self._feature_cache[key] for key in keys]

    def _load_cached(self, key: str) -> VisualFeatures | None:
        if self._feature_cache_dir is None:
            return None
        path = self._feature_cache_dir / f"{key}.pt"
        if not path.is_file():
            return None
        try:
            data = torch.load(path, map_location=self.visual.device, weights_only=True)
            return VisualFeatures(data["grid"], data["cls"], tuple(data["image_size"]))
        except Exception as error:  # noqa: BLE001 - a corrupt cache entry is recomputed, not fatal
            LOG.warning("ignoring unreadable feature cache entry %s: %s", path, error)
            return None

    def _store_cached(self, key: str, features: VisualFeatures) -> None:
        if self._feature_cache_dir is None:
            return
        self._feature_cache_dir.mkdir(parents=True, exist_ok=True)
        temporary = self._feature_cache_dir / f"{key}.pt.tmp"
        torch.save(
            {"grid": features.grid.cpu(), "cls": features.cls.cpu(), "image_size": list(features.image_size)}, temporary
        )
        temporary.replace(self._feature_cache_dir / f"{key}.pt")  # atomic: no half-written entries

    def add_exemplar(self, set_name: str, image_rgb: np.ndarray, click, query: str = ""):
        """Validate an exemplar, compute its features, then add it to the library (all or nothing)."""
        validate_click(click, validate_image(image_rgb))
        problem = self.image_limits(with_text=False).problem(*image_rgb.shape[:2])
        if problem:
            raise SupportError(f"exemplar image {problem}")
        with self._lock, _out_of_memory_as_pointer_error(f"the features of support set {set_name!r}"):
            self.support_features([image_rgb])
        updated = self.library.add_exemplar(set_name, image_rgb, click, query)
        self._forget_set_features(set_name)
        return updated

    # Editing goes through the pointer so the set-feature cache follows: (name, version) keys are
    # never reused (see supports._VERSIONS), and the entries of a changed set are dropped at once.
    def remove_exemplar(self, set_name: str, index: int):
        """Remove exemplar `index` of a set (persisted when the library is writable); returns the set."""
        updated = self.library.remove_exemplar(set_name, index)
        self._forget_set_features(set_name)
        return updated

    def remove_support_set(self, set_name: str) -> None:
        self.library.remove_support_set(set_name)
        self._forget_set_features(set_name)

    def set_default_query(self, set_name: str, query: str):
        updated = self.library.set_default_query(set_name, query)
        self._forget_set_features(set_name)
        return updated

    def _forget_set_features(self, set_name: str) -> None:
        with self._lock:
            self._set_features = {key: value for key, value in self._set_features.items() if key[0] != set_name}

    def warm_support_set(self, name: str) -> int:
        """Compute (or load) the features of every exemplar of a set; returns how many."""
        support_set = self.library.get(name)
        with self._lock, _out_of_memory_as_pointer_error(f"the features of support set {name!r}"):
            return len(self.support_features([exemplar.image for exemplar in support_set.exemplars]))

    # ---- frames --------------------------------------------------------------------------------
    def _frame_key(self, image_rgb: np.ndarray, frame_key: str | None) -> str:
        """The caller's key (the node: stamp + frame_id) or the image content's hash, with its shape."""
        if frame_key:
            return f"key:{frame_key}|{image_rgb.shape}"
        digest = hashlib.blake2b(np.ascontiguousarray(image_rgb).data, digest_size=16)
        return f"content:{digest.hexdigest()}|{image_rgb.shape}"

    def clear_frame_cache(self) -> None:
        """Forget every frame's DINO features and MLLM prefix (the next query recomputes them)."""
        with self._lock:
            self._frames.clear()

    def cached_frames(self) -> int:
        return len(self._frames)

    def _frame(self, image_rgb: np.ndarray, key: str, text_query: str | None, timer: _Timer) -> tuple[_Frame, bool]:
        """(the frame's shared state, whether it came from the cache); computes what is missing.

        `text_query` is any text query of this frame (None: no text prior needed): the MLLM prefix
        is made with it and reaches the deepest layer the current heads need."""
        while len(self._frames) > self.settings.frame_cache_size:  # the setting may have shrunk
            self._frames.popitem(last=False)
        frame = self._frames.get(key)
        reused = frame is not None and (text_query is None or frame.prefix is not None)
        depth = max(layer for layer, _ in self.text_heads()[0]) if text_query is not None else -1
        if frame is not None:
            self._frames.move_to_end(key)
            if text_query is not None and frame.prefix is None:
                frame.prefix = self.mllm.image_prefix(image_rgb, text_query, depth)
                timer.lap("mllm_prefix")
            return frame, reused
        height, width = image_rgb.shape[:2]
        overlap = (
            self.settings.overlap
            and text_query is not None
            and self.visual.device.type == "cuda"
            and self.mllm.device.type == "cuda"
        )
        if overlap:
            frame = self._frame_overlapped(image_rgb, text_query, depth, timer)
        else:
            pixels = self.visual.preprocess(image_rgb)
            timer.lap("visual_preprocess")
            frame = _Frame(self.visual.encode_preprocessed([pixels], [(height, width)])[0])
            timer.lap("visual_forward")
            if text_query is not None:
                frame.prefix = self.mllm.image_prefix(image_rgb, text_query, depth)
                timer.lap("mllm_prefix")  # processor, vision tower, tokens before the query text
        if self.settings.frame_cache_size > 0:
            self._frames[key] = frame
            while len(self._frames) > self.settings.frame_cache_size:
                self._frames.popitem(last=False)
        return frame, False

    def _frame_overlapped(self, image_rgb: np.ndarray, text_query: str, depth: int, timer: _Timer) -> _Frame:
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
        return _Frame(target, prefix)

    # ---- input limits --------------------------------------------------------------------------
    def image_limits(self, with_text: bool | None = None):
        """The image shapes this pointer takes. The visual encoder needs at least one patch of the
        image per side (smaller images would get a feature grid invented by upsampling); the MLLM
        adds its processor's aspect-ratio limit when the text prior is used."""
        from pop_ros.models.mllm import ImageLimits

        with_text = self.settings.use_text if with_text is None else with_text
        mllm = self.mllm.image_limits if with_text else ImageLimits()
        sources = [f"{self.visual.patch}-px patches of the visual encoder"] + ([mllm.source] if mllm.source else [])
        return ImageLimits(
            max_aspect=mllm.max_aspect, min_side=max(self.visual.patch, mllm.min_side), source="; ".join(sources)
        )

    def _check_size(self, image: np.ndarray, what: str, with_text: bool | None = None) -> None:
        problem = self.image_limits(with_text).problem(*image.shape[:2])
        if problem:
            raise PointerError(f"{what} image {problem}")

    # ---- the query -----------------------------------------------------------------------------
    def _resolve(self, query, support_set, supports, shots) -> _Resolved:
        """Validate one request (PointerError with the reason otherwise)."""
        if support_set and supports:
            raise PointerError("give a support set name or explicit supports, not both")
        if query is not None and not isinstance(query, str):
            raise PointerError(f"query must be a string, got {type(query).__name__}")
        query = (query or "").strip()
        examples: list[tuple[np.ndarray, tuple[float, float]]] = []
        set_name, set_key = "", None
        if support_set:
            try:
                chosen = self.library.get(support_set)
            except SupportError as error:
                raise PointerError(str(error)) from error
            set_name, set_key = chosen.name, (chosen.name, chosen.version)
            query = query or chosen.query
            examples = [(exemplar.image, exemplar.click) for exemplar in chosen.exemplars]
        elif supports:
            for image, click in supports:
                try:
                    validate_image(image)
                    examples.append((image, validate_click(list(click), image)))
                except SupportError as error:
                    raise PointerError(f"support {len(examples)}: {error}") from error
                self._check_size(image, f"support {len(examples) - 1}", with_text=False)
        if self.settings.use_text and not query:
            raise PointerError("the query is empty and the support set has no default query")
        if len(query) > MAX_QUERY_CHARS:
            raise PointerError(f"the query has {len(query)} characters; at most {MAX_QUERY_CHARS} are supported")
        if not self.settings.use_text and not examples:
            raise PointerError("visual-only pointing (use_text false) needs at least one support")
        max_shots = self.settings.max_shots if shots is None else int(shots)
        if max_shots < 1:
            raise PointerError(f"shots must be >= 1, got {shots}")
        return _Resolved(query, set_name, set_key, examples, max_shots)

    def point(
        self,
        image_rgb: np.ndarray,
        query: str = "",
        support_set: str | None = None,
        supports: Sequence[tuple[np.ndarray, tuple[float, float]]] | None = None,
        shots: int | None = None,
        frame_key: str | None = None,
    ) -> PointResult:
        """Point at `query` in `image_rgb` ((H, W, 3) uint8 RGB) guided by a named support set or by
        explicit (image, (u, v)) supports; `shots` caps K (default `settings.max_shots`).

        A frame seen among the latest `frame_cache_size` (same content, or the same `frame_key`: a
        caller's unique frame id such as stamp + frame_id) reuses its DINO features and MLLM prefix."""
        self._validate_target(image_rgb)
        request = self._resolve(query, support_set, supports, shots)
        with self._lock, _out_of_memory_as_pointer_error("the query"):
            timer = _Timer(synchronize=self.visual.device.type == "cuda")
            key = self._frame_key(image_rgb, frame_key)
            timer.lap("frame_lookup")
            frame, reused = self._frame(image_rgb, key, request.query if self.settings.use_text else None, timer)
            return self._answer(image_rgb, frame, request, timer, reused)

    def point_many(
        self,
        image_rgb: np.ndarray,
        requests: Sequence[PointRequest | tuple],
        frame_key: str | None = None,
    ) -> list[PointResult | PointerError]:
        """Answer several requests on one frame: its DINO features and MLLM prefix are computed once.

        `requests`: `PointRequest`s or `(query, support_set)` pairs, where support_set is a set name,
        None, or a list of explicit (image, (u, v)) supports. One result per request, in order; a
        request that cannot be answered gets its PointerError in its slot (the others still run). A
        bad target image raises PointerError for the whole call."""
        self._validate_target(image_rgb)
        resolved: list[_Resolved | PointerError] = []
        for index, request in enumerate(requests):
            try:
                resolved.append(self._resolve(*self._request_fields(request)))
            except PointerError as error:
                resolved.append(PointerError(f"request {index}: {error}"))
        valid = [r for r in resolved if isinstance(r, _Resolved)]
        if not valid:
            return resolved  # type: ignore[return-value]
        with self._lock, _out_of_memory_as_pointer_error("the queries"):
            shared = _Timer(synchronize=self.visual.device.type == "cuda")
            text_query = valid[0].query if self.settings.use_text else None
            key = self._frame_key(image_rgb, frame_key)
            shared.lap("frame_lookup")
            frame, reused = self._frame(image_rgb, key, text_query, shared)
            head_maps = [None] * len(valid)  # every query's own tokens through the layers as one batch
            if text_query is not None:
                head_maps = self.mllm.head_maps_from_prefix_batch(
                    frame.prefix, [r.query for r in valid], self.text_heads()[0]
                )
                shared.lap("mllm_prefill_batch")
            maps_of = {id(request): maps for request, maps in zip(valid, head_maps, strict=True)}
            shared_timings = shared.report()
            results: list[PointResult | PointerError] = []
            for request in resolved:
                if isinstance(request, PointerError):
                    results.append(request)
                    continue
                timer = _Timer(shared._synchronize)
                result = self._answer(image_rgb, frame, request, timer, reused, maps_of[id(request)])
                result.shared_timings_ms = shared_timings
                results.append(result)
            return results

    @staticmethod
    def _request_fields(request) -> tuple:
        """(query, support_set, supports, shots) of a PointRequest or a (query, support_set) pair."""
        if isinstance(request, PointRequest):
            return request.query, request.support_set, request.supports, request.shots
        if isinstance(request, (tuple, list)) and len(request) == 2:
            query, support = request
            if support is None or isinstance(support, str):
                return query, support, None, None
            return query, None, list(support), None
        raise PointerError(f"a request is a PointRequest or a (query, support_set) pair, got {request!r}")

    def _validate_target(self, image_rgb) -> None:
        try:
            validate_image(image_rgb)
        except SupportError as error:
            raise PointerError(f"target {error}") from error
        self._check_size(image_rgb, "target")  # before any model runs

    @torch.inference_mode()
    def _answer(
        self, image_rgb, frame: _Frame, request: _Resolved, timer: _Timer, reused: bool, head_maps=None
    ) -> PointResult:
        """One request on a frame whose shared state is ready; laps into `timer`. `head_maps`: the
        request's text-branch maps when already computed (point_many's batch)."""
        timer.restart()
        height, width = image_rgb.shape[:2]
        target = frame.target
        examples, set_key, max_shots = request.examples, request.set_key, request.max_shots

        visual_maps = None
        if examples:
            features = self._set_features.get(set_key) if set_key else None
            if features is None:
                features = self.support_features([image for image, _ in examples])
                if set_key:  # keep only the newest version of each set
                    self._set_features = {k: v for k, v in self._set_features.items() if k[0] != set_key[0]}
                    self._set_features[set_key] = features
            order = list(range(len(examples)))
            if self.settings.retrieval == "cls" and len(examples) > max_shots:
                support_cls = torch.stack([f.cls for f in features])
                similarity = F.cosine_similarity(support_cls, target.cls[None], dim=-1)
                order = torch.argsort(similarity, descending=True, stable=True).tolist()
            chosen = order[:max_shots]
            grids = [features[i].grid for i in chosen]
            rcs = [
                core.click_to_patch(to_core_pixel(examples[i][1]), examples[i][0].shape[:2], grids[n].shape[:2])
                for n, i in enumerate(chosen)
            ]
            timer.lap("supports")
            visual_maps = core.visual_similarity_batch(grids, target.grid, rcs, mode=self.settings.similarity)
            timer.lap("similarity")

        prior = None
        if self.settings.use_text:
            heads, aggregation = self.text_heads()
            if head_maps is None:
                head_maps = self.mllm.head_maps_from_prefix(frame.prefix, request.query, heads)
                timer.lap("mllm_prefill")  # this query's own tokens, up to the deepest localization head
            # sigma is in LLM tokens; Molmo2's map is on its patch grid (2 cells per token).
            sigma = self.settings.sigma * self.mllm.cells_per_token
            prior = core.text_prior(head_maps.to(target.grid.device), sigma=sigma, aggregation=aggregation)

        maps = visual_maps if visual_maps is not None else []
        final = core.fuse(prior, maps, shots=self.settings.shots, upsample=int(self.settings.upsample))
        u, v = from_core_pixel(core.peak_to_pixel(final, (height, width)))
        score = core.peak_score(final, visual_maps, prior)
        timer.lap("fusion")

        heatmap = F.interpolate(final[None, None], size=(height, width), mode="bilinear", align_corners=False)[0, 0]
        peak = float(heatmap.max())
        heatmap = (heatmap.clamp_min(0) / peak if peak > 0 else heatmap.clamp_min(0)).cpu().numpy().astype(np.float32)
        timer.lap("heatmap")
        return PointResult(
            u=u,
            v=v,
            score=score,
            heatmap=heatmap,
            timings_ms=timer.report(),
            query=request.query,
            support_set=request.set_name,
            num_shots=0 if visual_maps is None else int(visual_maps.shape[0]),
            used_text=prior is not None,
            frame_reused=reused,
        )
