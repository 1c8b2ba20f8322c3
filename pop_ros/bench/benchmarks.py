"""The measurements behind `pop-bench` (pop_ros/bench/cli.py parses the command line, then imports this):
random-weight models of a real shape, per-stage timings, POP against native pointing, many parts
on one frame, a streaming run of the node, and the report's table."""

from __future__ import annotations

import os
import platform
import resource
import statistics
import sys
import time

import cv2
import numpy as np
import torch

from pop_ros.bench import tracking as bench_tracking
from pop_ros.bench.plan import ratio_above_base
from pop_ros.models.shapes import SHAPES

NATIVE_NEW_TOKENS = 24  # a point answer: [{"point_2d": [412, 233], "label": "handle of the mug"}]
QUERY = "handle of the mug"
# Five parts asked of one frame (a behaviour tree's usual burst); the first is QUERY.
MANY_QUERIES = (QUERY, "rim of the mug", "neck of the bottle", "lid of the cup", "handle of the kettle")


def percentile(values, q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else float("nan")


def summary(values) -> dict:
    return {"median": statistics.median(values), "p90": percentile(values, 90), "n": len(values)}


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def memory_in_use_mb(device: torch.device) -> float:
    """GPU memory held by tensors now (the models, once loaded); on a CPU the process's resident set."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**20
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def peak_memory_detail_mb(device: torch.device) -> dict:
    """Peaks of the run: tensors (`peak_allocated`) and, on CUDA, what the caching allocator reserved
    from the driver (`peak_reserved`, what other processes on the GPU cannot use)."""
    detail = {"peak_allocated": peak_memory_mb(device)}
    if device.type == "cuda":
        detail["peak_reserved"] = torch.cuda.max_memory_reserved(device) / 2**20
    return detail


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({cpu_model()}, {torch.get_num_threads()} threads)"


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_capability() -> dict:
    """What torch's CPU kernels can use here: its dispatch level (DEFAULT, AVX2, AVX512, ...) and
    whether bf16 arithmetic is native (AVX512-BF16 or AMX); else bf16 matmuls are emulated."""
    flags = cpu_flags()

    def probe(name: str, flag: str) -> bool:
        check = getattr(torch.cpu, name, None)  # torch's own cpuinfo probe, where this torch has it
        return bool(check()) if callable(check) else flag in flags

    avx512_bf16 = probe("_is_avx512_bf16_supported", "avx512_bf16")
    amx = probe("_is_amx_tile_supported", "amx_bf16")
    return {
        "model": cpu_model(),
        "torch_capability": torch.backends.cpu.get_cpu_capability(),
        "avx512_bf16": avx512_bf16,
        "amx": amx,
        "native_bf16": avx512_bf16 or amx,
        "threads": torch.get_num_threads(),
    }


def choose_dtype(requested: str, device: torch.device, capability: dict) -> tuple[str, str]:
    """(dtype name, why): `auto` is bf16 on CUDA and on a CPU with native bf16, else float32."""
    if requested != "auto":
        return requested, "asked for"
    if device.type == "cuda":
        return "bfloat16", "auto: CUDA"
    if capability["native_bf16"]:
        return "bfloat16", "auto: the CPU has native bf16 (AVX512-BF16/AMX)"
    return "float32", f"auto: no native bf16 on this CPU ({capability['torch_capability']}): bf16 would be emulated"


def build_shape_pointer(shape: str, device: str, dtype: str, seed: int = 0):
    """A PartPointer on random-weight models with a real model's shape (nothing downloaded), built
    on the meta device and filled from one seeded generator (about a minute for the 3B shape)."""
    from transformers import (
        DINOv3ViTConfig,
        DINOv3ViTModel,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLImageProcessorPil,
    )

    from pop_ros.models.loading import resolve_device, resolve_dtype
    from pop_ros.models.processors import build_processor, qwen_vision_token_ids, torchvision_works
    from pop_ros.models.random_weights import build_random
    from pop_ros.models.tiny import CHAT_TEMPLATES, build_tokenizer

    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; choose one of {sorted(SHAPES)}")
    text_config, vision_config, dino_config, visual_name = SHAPES[shape]
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    if shape.startswith("qwen3.5"):  # the hybrid family builds from its own classes
        from pop_ros.models.qwen3_5 import build_shape_mllm

        return _finish_shape_pointer(shape, torch_device, torch_dtype, dino_config, visual_name, build_shape_mllm,
                                     (text_config, vision_config))  # fmt: skip
    tokenizer = build_tokenizer("qwen2_5_vl")
    config = Qwen2_5_VLConfig(
        text_config=dict(text_config),
        vision_config=dict(vision_config),
        **qwen_vision_token_ids(tokenizer),
    )
    visual_config = DINOv3ViTConfig(**dino_config, patch_size=16, num_register_tokens=4)
    started = time.perf_counter()
    # transformers' own initialisation of 3.75B parameters on a CPU takes 20 minutes; a seeded
    # uniform fill of the same tensors takes about one.
    model = build_random(
        Qwen2_5_VLForConditionalGeneration, config, torch_device, torch_dtype, seed, attn_implementation="sdpa"
    )
    dino = build_random(DINOv3ViTModel, visual_config, torch_device, torch_dtype, seed + 1)
    # The image processor users get: AutoProcessor picks the torchvision one where torchvision imports.
    image_processor = Qwen2VLImageProcessor() if torchvision_works() else Qwen2VLImageProcessorPil()
    processor = build_processor(Qwen2_5_VLProcessor, image_processor, tokenizer, CHAT_TEMPLATES["qwen2_5_vl"])
    return _shape_pointer(shape, visual_name, model, processor, dino, started)


def _shape_pointer(shape: str, visual_name: str, model, processor, dino, started: float):
    """The PartPointer of a shape's random-weight models, with its build time."""
    from pop_ros.models.mllm import adapter_for
    from pop_ros.models.presets import ModelConfig
    from pop_ros.models.visual import VisualEncoder
    from pop_ros.pipeline import PartPointer

    model_config = ModelConfig(mllm=f"shape:{shape}", visual=f"shape:{visual_name}", random_weights=True)
    pointer = PartPointer(VisualEncoder(dino, resolution=448), adapter_for(model, processor), model_config,
                          name=f"shape:{shape}")  # fmt: skip
    pointer.load_timings_s = {"build": time.perf_counter() - started}
    return pointer


def _finish_shape_pointer(shape, torch_device, torch_dtype, dino_config, visual_name, build_mllm, configs):
    """`build_shape_pointer` for a family whose (model, processor) come from
    `build_mllm(*configs, device, dtype, seed)`; both models seeded and filled as the 3B shape's."""
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    from pop_ros.models.random_weights import build_random

    started = time.perf_counter()
    model, processor = build_mllm(*configs, torch_device, torch_dtype, 0)
    dino_config = DINOv3ViTConfig(**dino_config, patch_size=16, num_register_tokens=4)
    dino = build_random(DINOv3ViTModel, dino_config, torch_device, torch_dtype, 1)
    return _shape_pointer(shape, visual_name, model, processor, dino, started)


IMAGE_SIZE = (640, 480)  # (width, height): a usual camera frame
QUICK_IMAGE_SIZE = (320, 240)  # --quick


def bench_images(
    count: int, size: tuple[int, int] = IMAGE_SIZE
) -> tuple[np.ndarray, list[tuple[np.ndarray, tuple[float, float]]]]:
    """A target and `count` distinct supports, all `size` (width, height) (sample images, flipped
    and shifted)."""
    from pop_ros.paths import SAMPLE_DIR, config_dir
    from pop_ros.supports import SupportLibrary, read_rgb

    width, height = size
    # The shipped library, found without rclpy: the model benchmarks also run where ROS is absent.
    target = cv2.resize(read_rgb(SAMPLE_DIR / "scene_0.png"), (width, height))
    exemplars = SupportLibrary.load(config_dir() / "supports" / "library.yaml").get("mug_handle").exemplars
    supports = []
    for index in range(count):
        exemplar = exemplars[index % len(exemplars)]
        scale_u, scale_v = width / exemplar.image.shape[1], height / exemplar.image.shape[0]
        image = cv2.resize(exemplar.image, (width, height))
        # The same pixel after the resize (ROS pixel coordinates: centres at integers).
        u, v = (exemplar.click[0] + 0.5) * scale_u - 0.5, (exemplar.click[1] + 0.5) * scale_v - 0.5
        shift = 4 * (index // len(exemplars))
        image = np.roll(image, shift, axis=1)  # a distinct image (cache key), same part
        supports.append((image, (min(u + shift, width - 1.0), v)))
    return target, supports


def timed(function, repeats: int, device: torch.device, label: str = "", progress=None) -> list[float]:
    """Wall times (ms) of `repeats` calls; with `progress`, one line per call: `label n/N` and the
    running median, so a slow machine shows at once."""
    times = []
    for index in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        function()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - started) * 1000.0)
        if progress is not None:
            progress(f"  {label} {index + 1}/{repeats}: {times[-1]:.0f} ms (median {statistics.median(times):.0f} ms)")
    return times


class SectionRun:
    """The state the sections share: the models, the image and supports, the repeats, and the 1-shot
    fresh-frame query times of the `stages` section (the 1-shot row of the later comparisons)."""

    def __init__(self, pointer, progress):
        self.pointer, self.adapter, self.progress = pointer, pointer.mllm, progress
        self.device = pointer.visual.device
        self.heads, _ = pointer.text_heads()
        self.repeats, self.one_shot = 1, []

    def use_image(self, size: tuple[int, int]) -> None:
        self.image = tuple(size)
        self.target, self.supports = bench_images(10, self.image)
        self.progress(f"support features of 10 {size[0]}x{size[1]} images (cached, as in use)")
        for image, _ in self.supports:
            self.pointer.support_features.for_images([image])

    def query(self, k: int):
        self.pointer.clear_frame_cache()  # a fresh frame each time: these rows time the whole query
        return self.pointer.point(self.target, QUERY, supports=self.supports[:k], shots=k)

    def warm_up(self, name: str, round_: int, rounds: int) -> list[float]:
        """One warm-up round of section `name`: seconds of each call."""
        seconds = []
        for label, function in SECTION_WARMUPS.get(name, ()):
            seconds.append(timed(lambda f=function: f(self), 1, self.device)[0] / 1000.0)
            self.progress(f"  warm-up {round_}/{rounds}: {label} {1000 * seconds[-1]:.0f} ms")
        return seconds


def _stages(run: SectionRun) -> dict:
    stages, run.one_shot = run_stages(run.query, run.repeats, run.device, run.progress)
    # A tracked update on the same frame, against these queries (milliseconds: no budget to plan).
    return stages | bench_tracking.run_track_ratio(run.target, run.one_shot, run.repeats, run.progress)


def _text_prior(run: SectionRun) -> dict:
    return run_text_prior(run.adapter, run.target, run.heads, run.repeats, run.device, run.progress)


def _native(run: SectionRun) -> dict:
    from pop_ros.evaluation.native import NATIVE_PROMPTS

    run.progress(f"native pointing ({NATIVE_NEW_TOKENS} new tokens), against the 1-shot queries of the stages")
    prompt = NATIVE_PROMPTS.get(run.adapter.family, "Point to the {query}.").format(query=QUERY)
    native = timed(
        lambda: run.adapter.generate_text(run.target, prompt, max_new_tokens=NATIVE_NEW_TOKENS),
        run.repeats,
        run.device,
        "native pointing",
        run.progress,
    )
    return {
        "query_ms": {"pop_1shot": summary(run.one_shot), "native_pointing": summary(native)},
        "ratio_pop_vs_native": statistics.median(run.one_shot) / statistics.median(native),
    }


def _k_shots(run: SectionRun) -> dict:
    run.progress("K = 3, 10 supports (cached features; K = 1: the 1-shot queries of the stages)")
    by_k = {1: run.one_shot}
    by_k |= {k: timed(lambda k=k: run.query(k), run.repeats, run.device, f"K={k}", run.progress) for k in (3, 10)}
    return {
        "k_shots_ms": {str(k): summary(v) for k, v in by_k.items()},
        "ratio_k10_vs_k1": statistics.median(by_k[10]) / statistics.median(by_k[1]),
    }


def _many_parts(run: SectionRun) -> dict:
    run.progress(f"many parts on one frame: a second query, {len(MANY_QUERIES)} queries batched and one by one")
    return run_many_parts(run.pointer, run.target, run.supports, run.repeats, run.progress, first=run.one_shot)


# Each model section of pop_ros.bench.plan.SECTIONS (streaming runs in run_report, after the models are
# freed), in the order they run; `stages` first, the others reuse its 1-shot queries.
SECTION_RUNNERS = {
    "stages": _stages,
    "text_prior": _text_prior,
    "native": _native,
    "k_shots": _k_shots,
    "many_parts": _many_parts,
}
# Warm-ups per section: (label, call) each round; `stages`' one query is the cost a budget plans with.
SECTION_WARMUPS = {
    "stages": (("a query", lambda run: run.query(1)),),
    "text_prior": (
        ("eager in the text layers", lambda run: run.adapter.head_maps_eager(run.target, QUERY, run.heads)),
        ("eager everywhere", lambda run: run.adapter.head_maps_naive(run.target, QUERY, run.heads)),
    ),
    "native": (
        ("native pointing (2 tokens)", lambda run: run.adapter.generate_text(run.target, QUERY, max_new_tokens=2)),
    ),
}


class Budget:
    """`--budget MINUTES` from `started` (time.perf_counter() at the run's start): the plans made, and the
    query cost they were made from."""

    def __init__(self, minutes: float, started: float):
        self.minutes, self.started = minutes, started
        self.plans: list = []
        self.query_s: float | None = None

    def left_s(self) -> float:
        return 60.0 * self.minutes - (time.perf_counter() - self.started)

    def plan(self, query_s: float, measured_at, repeats: int, image, sections, progress, **options):
        from pop_ros.bench.plan import plan_run

        plan = plan_run(query_s, measured_at, self.left_s(), repeats, image, sections, **options)
        self.plans.append(plan)
        self.query_s = query_s
        verdict = "fits" if plan.fits else "DOES NOT FIT even with only the required sections"
        progress(
            f"budget: a query {query_s:.1f} s at {measured_at[0]}x{measured_at[1]}, {self.left_s():.0f} s left; "
            f"plan {plan.estimate_s:.0f} s ({verdict}): {'; '.join(plan.changes) or 'nothing changed'}"
        )
        return plan

    def keeps(self, name: str) -> bool:
        return not self.plans or name in self.plans[-1].sections


def run_model_benchmarks(
    pointer, repeats: int, warmup: int, progress, image_size=IMAGE_SIZE, sections=None, budget: Budget | None = None
) -> dict:
    """The model sections of `sections` (default: all of them); with a `budget`, after the first warm-up
    query, those of its plan (repeats, image, sections), re-planned once the warm-up is done."""
    from pop_ros.bench.plan import sections_for

    sections = tuple(sections if sections is not None else sections_for(0))
    run = SectionRun(pointer, progress)
    run.use_image(image_size)
    warmup = max(warmup, 1) if budget is not None else warmup  # a budget plans from a warm-up query
    kept = [s for s in sections if s.name in SECTION_RUNNERS]
    if warmup:
        query_s = run.warm_up("stages", 1, warmup)[0]
        if budget is not None:
            plan = budget.plan(query_s, run.image, repeats, run.image, sections, progress, warmup_rounds=warmup)
            repeats, kept = plan.repeats, [s for s in kept if s.name in plan.sections]
            if plan.image != run.image:
                run.use_image(plan.image)
                query_s = run.warm_up("stages", 1, warmup)[0]
        for round_ in range(1, warmup + 1):
            for section in kept:
                if round_ > 1 or section.name != "stages":
                    seconds = run.warm_up(section.name, round_, warmup)
                    query_s = seconds[0] if section.name == "stages" else query_s
        if budget is not None:  # the warm-ups' cost known: fewer repeats or sections if the first plan was short
            rest = [s for s in sections if s.name not in SECTION_RUNNERS and budget.keeps(s.name)]
            plan = budget.plan(query_s, run.image, repeats, run.image, kept + rest, progress, warmup_rounds=0,
                               warmed_queries=0.0, ladder=())  # fmt: skip
            repeats, kept = plan.repeats, [s for s in kept if s.name in plan.sections]
    run.repeats = repeats
    results: dict = {"device": device_name(run.device), "dtype": str(next(run.adapter.model.parameters()).dtype),
                     "image": list(run.image)}  # fmt: skip
    results["model"] = {
        "mllm": pointer.model_config.mllm,
        "layers": run.adapter.num_layers,
        "heads_per_layer": run.adapter.num_heads,
        "text_prior_heads": len(run.heads),
        "deepest_head_layer": max(layer for layer, _ in run.heads),
    }
    for section in kept:
        results.update(SECTION_RUNNERS[section.name](run))
    results["peak_memory_mb"] = peak_memory_mb(run.device)
    return results


def run_stages(query, repeats: int, device: torch.device, progress) -> tuple[dict, list[float]]:
    """`repeats` fresh-frame 1-shot queries: their stage medians and overhead fraction, and their
    wall times (the 1-shot row of the later comparisons: POP vs native, K = 1, the first query of
    the many-parts rows)."""
    progress(f"per-stage timings: {repeats} fresh-frame 1-shot queries")
    stage_times: dict[str, list[float]] = {}

    def one_query():
        for stage, value in query(1).timings_ms.items():
            stage_times.setdefault(stage, []).append(value)

    wall = timed(one_query, repeats, device, "1-shot query", progress)
    total = statistics.median(stage_times["total"])
    model_stages = ("visual_forward", "mllm_prefix", "mllm_prefill", "frame_overlapped")
    model_time = sum(statistics.median(stage_times[name]) for name in model_stages if name in stage_times)
    stages = {stage: summary(values) for stage, values in stage_times.items()}
    return {"stages_ms": stages, "overhead_fraction": (total - model_time) / total}, wall


def run_text_prior(adapter, target, heads, repeats: int, device: torch.device, progress) -> dict:
    """The text prior by the fast path against eager `output_attentions` (everywhere, and in the
    text layers only), and the floor both must run."""
    progress("text prior: fast path vs eager output_attentions (everywhere, and text layers only)")
    prepared = adapter.prepare(target, QUERY)
    fast = timed(lambda: adapter.head_maps(target, QUERY, heads, prepared=prepared), repeats, device, "fast", progress)
    eager = timed(
        lambda: adapter.head_maps_eager(target, QUERY, heads, prepared=prepared), repeats, device, "eager", progress
    )
    naive = timed(
        lambda: adapter.head_maps_naive(target, QUERY, heads, prepared=prepared),
        repeats,
        device,
        "eager everywhere",
        progress,
    )
    # The floor both paths share: the vision tower, the embeddings and the layers up to the first that
    # can hold a head (layer 0; Qwen3.5: its first full-attention layer), where a head there stops the
    # forward. What the fast path saves is in the layers above it.
    first_head = [(adapter.head_layers[0], 0)]
    floor = timed(
        lambda: adapter.head_maps(target, QUERY, first_head, prepared=prepared), repeats, device, "floor", progress
    )
    above_floor, why_not = ratio_above_base(fast, eager, floor)
    return {
        "text_prior_ms": {
            "fast": summary(fast),
            "eager_everywhere": summary(naive),  # whole model eager, output_attentions, all logits
            "eager": summary(eager),  # only the text layers eager, last-position logits
            "shared_floor": summary(floor),
        },
        "ratio_fast_vs_eager": statistics.median(fast) / statistics.median(naive),
        "ratio_fast_vs_eager_text_only": statistics.median(fast) / statistics.median(eager),
        "ratio_fast_vs_eager_above_floor": above_floor,
        **({"withheld_ratios": {"ratio_fast_vs_eager_above_floor": why_not}} if why_not else {}),
    }


def run_many_parts(pointer, target, supports, repeats: int, progress=None, first=None) -> dict:
    """Per-frame reuse: a first query on a fresh frame, a second query on the same frame, MANY_QUERIES
    in one point_many call on a fresh frame (their own tokens in one batch), and the same queries
    one by one on a fresh frame (one pass each: what point_many did before batching). 1-shot, cached
    support features. `first`: wall times (ms) of fresh-frame 1-shot queries of MANY_QUERIES[0]
    already measured (pop-bench's stage rows), else measured here."""
    from pop_ros.pipeline import PointRequest

    device = pointer.visual.device
    measure_first = first is None
    first, second, many, one_by_one = list(first or []), [], [], []
    requests = [PointRequest(q, supports=supports[:1], shots=1) for q in MANY_QUERIES]

    def each_alone():
        for q in MANY_QUERIES:  # the first builds the frame, the others reuse it
            pointer.point(target, q, supports=supports[:1], shots=1)

    for index in range(repeats):
        if measure_first:
            pointer.clear_frame_cache()
            first += timed(lambda: pointer.point(target, MANY_QUERIES[0], supports=supports[:1], shots=1), 1, device)
        pointer.clear_frame_cache()
        many += timed(lambda: pointer.point_many(target, requests), 1, device)
        # A query on the frame point_many just left in the cache: a second query on the same frame.
        second += timed(lambda: pointer.point(target, MANY_QUERIES[1], supports=supports[:1], shots=1), 1, device)
        pointer.clear_frame_cache()
        one_by_one += timed(each_alone, 1, device)
        if progress is not None:
            progress(
                f"  many parts {index + 1}/{repeats}: medians first {statistics.median(first):.0f} ms, second "
                f"{statistics.median(second):.0f} ms, {len(MANY_QUERIES)} batched {statistics.median(many):.0f} ms, "
                f"{len(MANY_QUERIES)} one by one {statistics.median(one_by_one):.0f} ms"
            )
    return {
        "many_parts_ms": {
            "first_query": summary(first),
            "second_query": summary(second),
            "five_queries": summary(many),
            "five_queries_unbatched": summary(one_by_one),
        },
        "ratio_second_vs_first_query": statistics.median(second) / statistics.median(first),
        "ratio_5_queries_vs_1": statistics.median(many) / statistics.median(first),
        "ratio_5_queries_vs_1_unbatched": statistics.median(one_by_one) / statistics.median(first),
    }


# ---- streaming ------------------------------------------------------------------------------------------
def run_streaming(preset: str, seconds: float, rate_hz: float, progress, reliability: str = "reliable") -> dict:
    """pop_node in this process (to read its callback statistics), a 30 Hz camera in another process,
    a standing query at `rate_hz`. Measured after a warm-up of min(5 s, seconds / 5)."""
    import subprocess

    import psutil

    from pop_ros.clients.ros_client import LIBRARY
    from pop_ros.clients.testing import node_beside_client
    from pop_ros_interfaces.msg import PartPointResult

    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    parameters = [f"preset:={preset}", "autostart:=false", f"support_library:={LIBRARY}",
                  "continuous_support_set:=mug_handle", f"continuous_rate:={rate_hz}", "publish_heatmap:=true",
                  # 640x480 frames from another process: best-effort UDP drops them without DDS tuning (README).
                  f"image_reliability:={reliability}"]  # fmt: skip
    with node_beside_client("bench", "pop_bench_listener", parameters) as (ros, node):
        camera = None
        try:
            results = ros.collect(PartPointResult, "/bench/pop_node/result")
            process = psutil.Process()
            warmup = min(5.0, seconds / 5)
            progress(f"streaming: 30 Hz camera (own process) for {seconds:.0f} s, standing query at {rate_hz} Hz")
            command = [sys.executable, "-m", "pop_ros.bench", "--serve-camera", "/bench/image"]
            camera = subprocess.Popen(
                [*command, "--stream-seconds", str(seconds)],
                stdout=subprocess.PIPE,
                text=True,
                env=bench_tracking.camera_environment(),
            )
            rss_start = []

            def start_measuring():
                rss_start.append(process.memory_info().rss)  # after the first queries allocated what they need
                node.camera.callback_durations_ms.clear()
                node.camera.callback_latency_ms.clear()
                results.clear()

            first, last, camera_report = bench_tracking.camera_window(node, camera, warmup, seconds, start_measuring)
            rss = (rss_start[0], process.memory_info().rss)
            window = (first.stamp_s, last.stamp_s)
            latency, duration = list(node.camera.callback_latency_ms), list(node.camera.callback_durations_ms)
            report = {"preset": preset, "reliability": reliability}
            return report | streaming_report(bench_tracking.in_window(list(results), window), camera_report, window,
                                             (latency, duration), rss)  # fmt: skip
        finally:
            if camera is not None and camera.poll() is None:
                camera.kill()


def streaming_report(results: list, camera_report: dict, window: tuple, callbacks: tuple, rss: tuple) -> dict:
    """The streaming run's figures: the standing query's `results` about frames in `window` (first,
    last frame stamp), the camera process's report, the colour callbacks' delivery latencies and
    durations (ms) and the process's resident memory at the window's start and end (bytes)."""
    measured = window[1] - window[0]
    published = int(round(camera_report["published"] * measured / camera_report["seconds"]))
    latency, duration = callbacks
    query_ms = [result.total_ms for result in results]
    stamps = {(r.header.stamp.sec, r.header.stamp.nanosec) for r in results}
    return {
        "seconds_measured": measured,
        "frames_published": published,
        "frames_received": len(latency),
        "queries_processed": len(results),
        "processed_rate_hz": len(results) / measured,
        "frames_not_processed": published - len(stamps),
        "distinct_frames_processed": len(stamps),
        "callback_delivery_ms": {"p50": percentile(latency, 50), "p99": percentile(latency, 99)},
        "callback_duration_ms": {"p50": percentile(duration, 50), "p99": percentile(duration, 99)},
        "query_ms": {"p50": percentile(query_ms, 50), "p99": percentile(query_ms, 99)},
        "rss_mb": {"start": rss[0] / 2**20, "end": rss[1] / 2**20},
        "rss_growth_fraction": (rss[1] - rss[0]) / rss[0],
    }


# ---- report ---------------------------------------------------------------------------------------------
TARGETS = {
    "ratio_fast_vs_eager": 0.5,
    "ratio_pop_vs_native": 0.6,
    "ratio_k10_vs_k1": 1.3,
    "overhead_fraction": 0.10,
    "ratio_second_vs_first_query": 0.15,  # a second query on the same frame, over the first
    "ratio_5_queries_vs_1": 1.05,  # 5 queries on one frame (point_many: one batch), over 1 query
    "ratio_track_vs_query": 0.05,  # a tracked update (continuous_tracking) over a full query, same frame
}
# Reported beside the targets, for comparison only.
INFORMATIVE = {"ratio_5_queries_vs_1_unbatched": "the same 5 queries one by one (one pass each)"}


def table(report: dict) -> str:
    lines = []
    models = report.get("models")
    dtype, cpu = report.get("dtype"), report.get("cpu")
    if dtype and cpu:
        lines.append(
            f"dtype {dtype['chosen']} ({dtype['reason']}); CPU {cpu['model']}: torch capability "
            f"{cpu['torch_capability']}, native bf16 {'yes' if cpu['native_bf16'] else 'no'}"
        )
    budget = report.get("budget")
    if budget and budget.get("minutes"):
        lines.append(
            f"Budget {budget['minutes']:g} min (a query {budget['query_s']:.1f} s here; "
            f"took {budget['wall_s']:.0f} s): "
            + ("; ".join(budget["changes"]) if budget["changes"] else "nothing changed")
            + ("" if budget["fits"] else "; DOES NOT FIT even with only the required sections")
        )
    if models:
        lines += _model_lines(models)
    stream = report.get("streaming")
    if stream:
        lines += _stream_lines(stream)
    return "\n".join(lines)


def _ratio_row(models: dict, key: str, target: str = "") -> str:
    value = models.get(key)
    if value is None:
        why = models.get("withheld_ratios", {}).get(key, "its section did not run (see the budget line)")
        return f"| {key} | not reported: {why} | {target} | |"
    met = ("yes" if value <= float(target.split()[-1]) else "NO") if target else ""
    return f"| {key} | {value:.3f} | {target} | {met} |"


def _model_lines(models: dict) -> list[str]:
    lines = [
        f"Device: {models['device']}, {models['dtype']}, image {models['image'][0]}x{models['image'][1]}; "
        f"MLLM {models['model']['mllm']} "
        f"({models['model']['layers']} layers, text prior from {models['model']['text_prior_heads']} heads, "
        f"deepest in layer {models['model']['deepest_head_layer']}); repeats per row: "
        f"{models['stages_ms']['total']['n']}",
        "",
        "| stage | median ms | p90 ms |",
        "|---|---|---|",
    ]
    lines += [f"| {k} | {v['median']:.1f} | {v['p90']:.1f} |" for k, v in models["stages_ms"].items()]
    lines += ["", "| comparison | measured | target | met |", "|---|---|---|---|"]
    lines += [_ratio_row(models, key, f"<= {target}") for key, target in TARGETS.items()]
    lines += [_ratio_row(models, key) for key in ("ratio_fast_vs_eager_text_only", "ratio_fast_vs_eager_above_floor")]
    for key, meaning in INFORMATIVE.items():
        if key in models:
            lines.append(f"| {key} ({meaning}) | {models[key]:.3f} | | |")
    details = []
    text = models.get("text_prior_ms")
    if text:
        details.append(
            f"text prior: fast {text['fast']['median']:.1f} ms vs eager everywhere (the usual way) "
            f"{text['eager_everywhere']['median']:.1f} ms, vs eager in the text layers only "
            f"{text['eager']['median']:.1f} ms, of which {text['shared_floor']['median']:.1f} ms is the vision "
            "tower + the layers up to the first head layer, which both must run (layers up to the deepest head: "
            f"{(models['model']['deepest_head_layer'] + 1)}/{models['model']['layers']})"
        )
    query = models.get("query_ms")
    if query:
        details.append(
            f"query: POP 1-shot {query['pop_1shot']['median']:.1f} ms vs native pointing "
            f"{query['native_pointing']['median']:.1f} ms ({NATIVE_NEW_TOKENS} new tokens)"
        )
    shots = models.get("k_shots_ms")
    if shots:
        details.append(
            f"K=1/3/10: {shots['1']['median']:.1f} / {shots['3']['median']:.1f} / {shots['10']['median']:.1f} ms"
        )
    details.append(f"peak memory {models['peak_memory_mb']:.0f} MiB")
    lines += ["", "; ".join(details)]
    many = models.get("many_parts_ms")
    if many:
        lines.append(
            f"one frame, many parts: first query {many['first_query']['median']:.1f} ms, a second query on the "
            f"same frame {many['second_query']['median']:.1f} ms, {len(MANY_QUERIES)} queries in one call "
            f"{many['five_queries']['median']:.1f} ms (one by one: "
            f"{many['five_queries_unbatched']['median']:.1f} ms)"
        )
    return lines


def _stream_lines(stream: dict) -> list[str]:
    return [
        "",
        f"Streaming ({stream['preset']}, {stream['seconds_measured']:.0f} s measured, 30 Hz 640x480 camera in "
        f"another process, {stream['reliability']} QoS): "
        f"{stream['frames_published']} frames published, {stream['frames_received']} received, "
        f"{stream['queries_processed']} queries ({stream['processed_rate_hz']:.2f} Hz), "
        f"{stream['frames_not_processed']} frames skipped by design (only the latest is processed)",
        f"image callback: delivery p50 {stream['callback_delivery_ms']['p50']:.2f} ms, "
        f"p99 {stream['callback_delivery_ms']['p99']:.2f} ms; duration p99 "
        f"{stream['callback_duration_ms']['p99']:.3f} ms; query p50/p99 {stream['query_ms']['p50']:.0f}/"
        f"{stream['query_ms']['p99']:.0f} ms; "
        f"RSS {stream['rss_mb']['start']:.0f} -> {stream['rss_mb']['end']:.0f} MiB "
        f"({100 * stream['rss_growth_fraction']:+.2f} %)",
        *bench_tracking.table_lines(stream.get("tracking", [])),
    ]


def run_report(args, command: str, progress, started: float | None = None) -> dict:
    """Every section `pop-bench`'s arguments ask for, as one report (see pop_ros/bench/cli.py); with
    `args.budget` (minutes, counted from `started`, a time.perf_counter()) those that fit (bench/plan.py)."""
    from pop_ros.bench.plan import budget_report, sections_for
    from pop_ros.models.loading import resolve_device

    started = time.perf_counter() if started is None else started
    report: dict = {"command": command}
    report["cpu"] = cpu_capability()
    dtype, reason = choose_dtype(args.dtype, resolve_device(args.device), report["cpu"])
    report["dtype"] = {"requested": args.dtype, "chosen": dtype, "reason": reason}
    progress(
        f"CPU {report['cpu']['model']}: torch capability {report['cpu']['torch_capability']}, native bf16 "
        f"{'yes' if report['cpu']['native_bf16'] else 'no'}; dtype {dtype} ({reason})"
    )
    budget = Budget(args.budget, started) if getattr(args, "budget", None) else None
    loading = time.perf_counter()
    if args.preset:
        from pop_ros.pipeline import PartPointer

        progress(f"loading preset {args.preset}")
        # Whole model: the benchmark also times native pointing, which generates.
        pointer = PartPointer.from_preset(args.preset, device=args.device, dtype=dtype, trim=False)
    else:
        progress(f"building random-weight models of shape {args.shape} ({dtype})")
        pointer = build_shape_pointer(args.shape, args.device, dtype)
    report["load_s"] = time.perf_counter() - loading
    progress(f"models ready in {report['load_s']:.0f} s")
    loaded_memory_mb = memory_in_use_mb(pointer.visual.device)
    image_size = QUICK_IMAGE_SIZE if args.quick else IMAGE_SIZE
    sections = sections_for(args.stream_seconds)
    requested = {"repeats": args.repeats, "image": list(image_size), "sections": [s.name for s in sections]}
    report["models"] = run_model_benchmarks(pointer, args.repeats, args.warmup, progress, image_size, sections, budget)
    report["memory_mb"] = {"models_loaded": loaded_memory_mb, **peak_memory_detail_mb(pointer.visual.device)}
    del pointer
    if args.stream_seconds > 0 and (budget is None or budget.keeps("streaming")):
        report["streaming"] = run_streaming(
            args.stream_preset, args.stream_seconds, args.stream_rate, progress, args.stream_reliability
        )
        report["streaming"]["tracking"] = bench_tracking.run_tracking_streams(
            args.stream_preset, args.stream_seconds, args.stream_rate, progress
        )
    report["budget"] = budget_report(
        budget and budget.minutes, requested, budget and budget.query_s, budget.plans if budget else []
    )
    report["wall_s"] = time.perf_counter() - started
    if budget is not None:
        report["budget"]["wall_s"] = report["wall_s"]
        progress(f"budget {budget.minutes:g} min: {'; '.join(report['budget']['changes']) or 'nothing changed'}")
    progress(f"done in {report['wall_s']:.0f} s")
    return report
