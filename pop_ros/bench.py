"""pop-bench: where a query's time goes, and POP against the model's own pointing, side by side.

    pop-bench                      # Qwen2.5-VL-3B's exact shape, random weights, plus a streaming run
    pop-bench --preset tiny --repeats 3 --stream-seconds 10   # a quick smoke run
    pop-bench --json > bench.json

`--shape qwen2.5-vl-3b` builds random-weight models with the real widths and depth of
Qwen2.5-VL-3B-Instruct (3.75B parameters) and DINOv3 ViT-B/16, so the *ratios* mean what they would
with the real checkpoints (random weights change no FLOP). Every comparison runs in the same process
on the same models and the same 640x480 image. Absolute times depend on the machine; the report
names the device.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: --help must not import torch (imported where used)
    import numpy as np
    import torch


NATIVE_NEW_TOKENS = 24  # a point answer: [{"point_2d": [412, 233], "label": "handle of the mug"}]
QUERY = "handle of the mug"
# Five parts asked of one frame (a behaviour tree's usual burst); the first is QUERY.
MANY_QUERIES = (QUERY, "rim of the mug", "neck of the bottle", "lid of the cup", "handle of the kettle")


def percentile(values, q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else float("nan")


def summary(values) -> dict:
    return {"median": statistics.median(values), "p90": percentile(values, 90), "n": len(values)}


def peak_memory_mb(device: torch.device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def memory_in_use_mb(device: torch.device) -> float:
    """GPU memory held by tensors now (the models, once loaded); on a CPU the process's resident set."""
    import torch

    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**20
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def peak_memory_detail_mb(device: torch.device) -> dict:
    """Peaks of the run: tensors (`peak_allocated`) and, on CUDA, what the caching allocator reserved
    from the driver (`peak_reserved`, what other processes on the GPU cannot use)."""
    import torch

    detail = {"peak_allocated": peak_memory_mb(device)}
    if device.type == "cuda":
        detail["peak_reserved"] = torch.cuda.max_memory_reserved(device) / 2**20
    return detail


def device_name(device: torch.device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


# ---- models -------------------------------------------------------------------------------------------
# Real checkpoints' config.json figures (text and vision tower of the MLLM, the DINOv3 ViT); the
# token ids are mapped to the small tokenizer, which changes no FLOP but the embedding lookups.
QWEN25_VL_3B_TEXT = {
    "hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36, "num_attention_heads": 16,
    "num_key_value_heads": 2, "vocab_size": 151936, "max_position_embeddings": 128000, "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
    "tie_word_embeddings": True,
}  # fmt: skip
QWEN25_VL_7B_TEXT = {
    "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
    "num_key_value_heads": 4, "vocab_size": 152064, "max_position_embeddings": 128000, "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
    "tie_word_embeddings": False,
}  # fmt: skip
QWEN25_VL_VISION = {  # the same tower in 3B and 7B; only its output width differs
    "depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16, "patch_size": 14,
    "spatial_merge_size": 2, "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31],
}  # fmt: skip
DINOV3_VITB16 = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12}
DINOV3_VITL16 = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16}

# Qwen3.5 (hybrid: a full-attention layer every 4th, the rest Gated DeltaNet). 4B and 9B: checked
# against their published config.json figures (text widths, heads, DeltaNet heads, vocabulary, tied
# embeddings; the vision towers: 24 x 1024 / 4096 for the 4B, 27 x 1152 / 4304 for the 9B).
QWEN35_TEXT = {
    "num_hidden_layers": 32, "num_attention_heads": 16, "num_key_value_heads": 4, "head_dim": 256,
    "linear_num_key_heads": 16, "linear_num_value_heads": 32, "linear_key_head_dim": 128, "linear_value_head_dim": 128,
    "vocab_size": 248320, "max_position_embeddings": 262144,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000000.0, "partial_rotary_factor": 0.25,
                        "mrope_section": [11, 11, 10], "mrope_interleaved": True},
}  # fmt: skip
QWEN35_VISION = {"patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2, "num_position_embeddings": 2304}

# name -> (MLLM text config, MLLM vision config, DINOv3 config, visual model named in the report)
SHAPES = {
    "qwen3.5-4b": ({**QWEN35_TEXT, "hidden_size": 2560, "intermediate_size": 9216, "tie_word_embeddings": True},
                   {**QWEN35_VISION, "depth": 24, "hidden_size": 1024, "intermediate_size": 4096, "num_heads": 16,
                    "out_hidden_size": 2560}, DINOV3_VITB16, "dinov3-vitb16"),
    "qwen3.5-9b": ({**QWEN35_TEXT, "hidden_size": 4096, "intermediate_size": 12288},
                   {**QWEN35_VISION, "depth": 27, "hidden_size": 1152, "intermediate_size": 4304, "num_heads": 16,
                    "out_hidden_size": 4096}, DINOV3_VITL16, "dinov3-vitl16"),
    "qwen2.5-vl-3b": (QWEN25_VL_3B_TEXT, {**QWEN25_VL_VISION, "out_hidden_size": 2048}, DINOV3_VITB16,
                      "dinov3-vitb16"),
    "qwen2.5-vl-7b": (QWEN25_VL_7B_TEXT, {**QWEN25_VL_VISION, "out_hidden_size": 3584}, DINOV3_VITL16,
                      "dinov3-vitl16"),
    # The same code on models small enough for a CPU test of the benchmark itself (tools/device_check.py --dry-run).
    "tiny": (
        {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 6, "num_attention_heads": 4,
         "num_key_value_heads": 2, "vocab_size": 128,
         "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}},
        {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 64,
         "fullatt_block_indexes": [1], "window_size": 112},
        {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2},
        "dinov3-tiny",
    ),
}  # fmt: skip


def build_shape_pointer(shape: str, device: str, dtype: str):
    """A PartPointer on random-weight models with a real model's shape (nothing downloaded)."""
    import torch
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
    from pop_ros.models.mllm import adapter_for
    from pop_ros.models.presets import ModelConfig
    from pop_ros.models.processors import build_processor, torchvision_works
    from pop_ros.models.tiny import CHAT_TEMPLATES, build_tokenizer
    from pop_ros.models.visual import VisualEncoder
    from pop_ros.pipeline import PartPointer

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
    ids = {
        t: tokenizer.convert_tokens_to_ids(t)
        for t in ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")
    }
    config = Qwen2_5_VLConfig(
        text_config=dict(text_config),
        vision_config=dict(vision_config),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    visual_config = DINOv3ViTConfig(**dino_config, patch_size=16, num_register_tokens=4)
    started = time.perf_counter()
    torch.manual_seed(0)
    # Built where they run: random initialisation of 8B parameters on a CPU alone takes minutes.
    with torch.device(torch_device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=torch_dtype, attn_implementation="sdpa")
        dino = DINOv3ViTModel._from_config(visual_config, dtype=torch_dtype)
    # The image processor users get: AutoProcessor picks the torchvision one where torchvision imports.
    image_processor = Qwen2VLImageProcessor() if torchvision_works() else Qwen2VLImageProcessorPil()
    processor = build_processor(Qwen2_5_VLProcessor, image_processor, tokenizer, CHAT_TEMPLATES["qwen2_5_vl"])
    mllm = adapter_for(model.to(torch_device), processor)
    visual = VisualEncoder(dino.to(torch_device), resolution=448)
    model_config = ModelConfig(mllm=f"shape:{shape}", visual=f"shape:{visual_name}", random_weights=True)
    pointer = PartPointer(visual, mllm, model_config, name=f"shape:{shape}")
    pointer.load_timings_s = {"build": time.perf_counter() - started}
    return pointer


def _finish_shape_pointer(shape, torch_device, torch_dtype, dino_config, visual_name, build_mllm, configs):
    """`build_shape_pointer` for a family whose (model, processor) come from `build_mllm(*configs, dtype)`."""
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    from pop_ros.models.mllm import adapter_for
    from pop_ros.models.presets import ModelConfig
    from pop_ros.models.visual import VisualEncoder
    from pop_ros.pipeline import PartPointer

    started = time.perf_counter()
    torch.manual_seed(0)
    with torch.device(torch_device):
        model, processor = build_mllm(*configs, torch_dtype)
        dino = DINOv3ViTModel._from_config(
            DINOv3ViTConfig(**dino_config, patch_size=16, num_register_tokens=4), dtype=torch_dtype
        )
    mllm = adapter_for(model.to(torch_device), processor)
    visual = VisualEncoder(dino.to(torch_device), resolution=448)
    model_config = ModelConfig(mllm=f"shape:{shape}", visual=f"shape:{visual_name}", random_weights=True)
    pointer = PartPointer(visual, mllm, model_config, name=f"shape:{shape}")
    pointer.load_timings_s = {"build": time.perf_counter() - started}
    return pointer


def bench_images(count: int) -> tuple[np.ndarray, list[tuple[np.ndarray, tuple[float, float]]]]:
    """A 640x480 target and `count` distinct 640x480 supports (sample images, flipped and shifted)."""
    import cv2
    import numpy as np

    from pop_ros.paths import SAMPLE_DIR, config_dir
    from pop_ros.supports import SupportLibrary, read_rgb

    # The shipped library, found without rclpy: the model benchmarks also run where ROS is absent.
    target = cv2.resize(read_rgb(SAMPLE_DIR / "scene_0.png"), (640, 480))
    exemplars = SupportLibrary.load(config_dir() / "supports" / "library.yaml").get("mug_handle").exemplars
    supports = []
    for index in range(count):
        exemplar = exemplars[index % len(exemplars)]
        image = cv2.resize(exemplar.image, (640, 480))
        # The same pixel after a 2x resize (ROS pixel coordinates: centres at integers).
        u, v = (exemplar.click[0] + 0.5) * 2 - 0.5, (exemplar.click[1] + 0.5) * 2 - 0.5
        shift = 4 * (index // len(exemplars))
        image = np.roll(image, shift, axis=1)  # a distinct image (cache key), same part
        supports.append((image, (min(u + shift, 639.0), v)))
    return target, supports


def timed(function, repeats: int, device: torch.device) -> list[float]:
    import torch

    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        function()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - started) * 1000.0)
    return times


def run_model_benchmarks(pointer, repeats: int, warmup: int, progress) -> dict:
    device = pointer.visual.device
    adapter = pointer.mllm
    target, supports = bench_images(10)
    heads, _ = pointer.text_heads()
    for image, _ in supports:  # cached support features, as in use
        pointer.support_features.for_images([image])
    results: dict = {"device": device_name(device), "dtype": str(next(adapter.model.parameters()).dtype)}
    results["model"] = {
        "mllm": pointer.model_config.mllm,
        "layers": adapter.num_layers,
        "heads_per_layer": adapter.num_heads,
        "text_prior_heads": len(heads),
        "deepest_head_layer": max(layer for layer, _ in heads),
    }

    def query(k):
        pointer.clear_frame_cache()  # a fresh frame each time: these rows time the whole query
        return pointer.point(target, QUERY, supports=supports[:k], shots=k)

    for _ in range(warmup):
        query(1)
        adapter.head_maps_eager(target, QUERY, heads)
        adapter.head_maps_naive(target, QUERY, heads)
        adapter.generate_text(target, QUERY, max_new_tokens=2)
    progress("per-stage timings")
    stage_times: dict[str, list[float]] = {}
    for _ in range(repeats):
        for stage, value in query(1).timings_ms.items():
            stage_times.setdefault(stage, []).append(value)
    results["stages_ms"] = {stage: summary(values) for stage, values in stage_times.items()}
    total = statistics.median(stage_times["total"])
    model_stages = ("visual_forward", "mllm_prefix", "mllm_prefill", "frame_overlapped")
    model_time = sum(statistics.median(stage_times[name]) for name in model_stages if name in stage_times)
    results["overhead_fraction"] = (total - model_time) / total

    progress("text prior: fast path vs eager output_attentions (everywhere, and text layers only)")
    prepared = adapter.prepare(target, QUERY)
    fast = timed(lambda: adapter.head_maps(target, QUERY, heads, prepared=prepared), repeats, device)
    eager = timed(lambda: adapter.head_maps_eager(target, QUERY, heads, prepared=prepared), repeats, device)
    naive = timed(lambda: adapter.head_maps_naive(target, QUERY, heads, prepared=prepared), repeats, device)
    # The floor both paths share: the vision tower, the embeddings and layer 0 (a head in layer 0
    # stops the forward right there). What the fast path saves is in the layers above it.
    floor = timed(lambda: adapter.head_maps(target, QUERY, [(0, 0)], prepared=prepared), repeats, device)
    results["text_prior_ms"] = {
        "fast": summary(fast),
        "eager_everywhere": summary(naive),  # whole model eager, output_attentions, all logits
        "eager": summary(eager),  # only the text layers eager, last-position logits
        "shared_floor": summary(floor),
    }
    results["ratio_fast_vs_eager"] = statistics.median(fast) / statistics.median(naive)
    results["ratio_fast_vs_eager_text_only"] = statistics.median(fast) / statistics.median(eager)
    above_floor = statistics.median(eager) - statistics.median(floor)
    results["ratio_fast_vs_eager_above_floor"] = (statistics.median(fast) - statistics.median(floor)) / above_floor

    progress(f"POP query vs native pointing ({NATIVE_NEW_TOKENS} new tokens)")
    from pop_ros.evaluation.native import NATIVE_PROMPTS

    prompt = NATIVE_PROMPTS.get(adapter.family, "Point to the {query}.").format(query=QUERY)
    pop = timed(lambda: query(1), repeats, device)
    native = timed(lambda: adapter.generate_text(target, prompt, max_new_tokens=NATIVE_NEW_TOKENS), repeats, device)
    results["query_ms"] = {"pop_1shot": summary(pop), "native_pointing": summary(native)}
    results["ratio_pop_vs_native"] = statistics.median(pop) / statistics.median(native)

    progress("K = 1, 3, 10 supports (cached features)")
    by_k = {k: timed(lambda k=k: query(k), repeats, device) for k in (1, 3, 10)}
    results["k_shots_ms"] = {str(k): summary(v) for k, v in by_k.items()}
    results["ratio_k10_vs_k1"] = statistics.median(by_k[10]) / statistics.median(by_k[1])

    progress(f"many parts on one frame: a second query, and {len(MANY_QUERIES)} queries in one call")
    results.update(run_many_parts(pointer, target, supports, repeats))
    results["peak_memory_mb"] = peak_memory_mb(device)
    return results


def run_many_parts(pointer, target, supports, repeats: int) -> dict:
    """Per-frame reuse: a first query on a fresh frame, a second query on the same frame, and
    MANY_QUERIES in one point_many call on a fresh frame (1-shot, cached support features)."""
    from pop_ros.pipeline import PointRequest

    device = pointer.visual.device
    first, second, many = [], [], []
    requests = [PointRequest(q, supports=supports[:1], shots=1) for q in MANY_QUERIES]
    for _ in range(repeats):
        pointer.clear_frame_cache()
        first += timed(lambda: pointer.point(target, MANY_QUERIES[0], supports=supports[:1], shots=1), 1, device)
        second += timed(lambda: pointer.point(target, MANY_QUERIES[1], supports=supports[:1], shots=1), 1, device)
        pointer.clear_frame_cache()
        many += timed(lambda: pointer.point_many(target, requests), 1, device)
    return {
        "many_parts_ms": {
            "first_query": summary(first),
            "second_query": summary(second),
            "five_queries": summary(many),
        },
        "ratio_second_vs_first_query": statistics.median(second) / statistics.median(first),
        "ratio_5_queries_vs_1": statistics.median(many) / statistics.median(first),
    }


# ---- streaming ------------------------------------------------------------------------------------------
def serve_camera(topic: str, seconds: float, rate_hz: float = 30.0) -> int:
    """Publish a 640x480 bgr8 frame on `topic` at `rate_hz` for `seconds` (run as its own process, as
    a camera driver is); prints how many frames it published."""
    import cv2
    from sensor_msgs.msg import Image

    from pop_ros.image_conversion import from_array
    from pop_ros.paths import SAMPLE_DIR
    from pop_ros.ros_client import RosClient

    bgr = cv2.resize(cv2.imread(str(SAMPLE_DIR / "scene_0.png")), (640, 480))
    ros = RosClient("pop_bench_camera")
    try:
        publisher = ros.publisher(Image, topic)
        published, started = 0, time.monotonic()
        next_frame = started
        while time.monotonic() - started < seconds:
            msg = from_array(bgr, "bgr8")
            msg.header.stamp, msg.header.frame_id = ros.now_stamp(), "bench_optical"
            publisher.publish(msg)
            published += 1
            next_frame += 1.0 / rate_hz
            time.sleep(max(0.0, next_frame - time.monotonic()))
        print(json.dumps({"published": published, "seconds": time.monotonic() - started}), flush=True)
    finally:
        ros.close()
    return 0


def run_streaming(preset: str, seconds: float, rate_hz: float, progress, reliability: str = "reliable") -> dict:
    """pop_node in this process (to read its callback statistics), a 30 Hz camera in another process,
    a standing query at `rate_hz`. Measured after a warm-up of min(5 s, seconds / 5)."""
    import subprocess

    import psutil

    from pop_ros.ros.node import PopNode
    from pop_ros.ros_client import LIBRARY, PARAMS_FILE, RosClient
    from pop_ros_interfaces.msg import PartPointResult

    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    args = ["--ros-args", "--params-file", str(PARAMS_FILE), "-p", f"preset:={preset}", "-p", "autostart:=false",
            "-p", f"support_library:={LIBRARY}", "-p", "continuous_support_set:=mug_handle",
            "-p", f"continuous_rate:={rate_hz}", "-p", "publish_heatmap:=true",
            # 640x480 frames from another process: best-effort UDP drops them without DDS tuning (README).
            "-p", f"image_reliability:={reliability}"]  # fmt: skip
    ros = RosClient("pop_bench_listener", args=args)
    node = PopNode(context=ros.context, namespace="bench")
    ros.add_node(node)
    camera = None
    try:
        node.trigger_configure()
        node.trigger_activate()
        results = ros.collect(PartPointResult, "/bench/pop_node/result")
        process = psutil.Process()
        warmup = min(5.0, seconds / 5)
        progress(f"streaming: 30 Hz camera (own process) for {seconds:.0f} s, standing query at {rate_hz} Hz")
        camera = subprocess.Popen(
            [sys.executable, "-m", "pop_ros.bench", "--serve-camera", "/bench/image", "--stream-seconds", str(seconds)],
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(warmup)
        rss_start = process.memory_info().rss  # after the first queries allocated what they need
        node.camera.callback_durations_ms.clear()
        node.camera.callback_latency_ms.clear()
        results.clear()
        output, _ = camera.communicate(timeout=seconds + 120)
        rss_end = process.memory_info().rss
        time.sleep(0.5)
        camera_report = json.loads(output.strip().splitlines()[-1])
        measured = camera_report["seconds"] - warmup
        published = int(round(camera_report["published"] * measured / camera_report["seconds"]))
        query_ms = [result.total_ms for result in results]
        latency = list(node.camera.callback_latency_ms)
        duration = list(node.camera.callback_durations_ms)
        stamps = {(r.header.stamp.sec, r.header.stamp.nanosec) for r in results}
        return {
            "preset": preset,
            "reliability": reliability,
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
            "rss_mb": {"start": rss_start / 2**20, "end": rss_end / 2**20},
            "rss_growth_fraction": (rss_end - rss_start) / rss_start,
        }
    finally:
        if camera is not None and camera.poll() is None:
            camera.kill()
        ros.executor.remove_node(node)
        node.destroy_node()
        ros.close()


# ---- report ---------------------------------------------------------------------------------------------
TARGETS = {
    "ratio_fast_vs_eager": 0.5,
    "ratio_pop_vs_native": 0.6,
    "ratio_k10_vs_k1": 1.3,
    "overhead_fraction": 0.10,
    "ratio_second_vs_first_query": 0.15,  # a second query on the same frame, over the first
    "ratio_5_queries_vs_1": 1.5,  # 5 queries on one frame (point_many), over 1 query
}


def table(report: dict) -> str:
    lines = []
    models = report.get("models")
    if models:
        lines += [
            f"Device: {models['device']}, {models['dtype']}; MLLM {models['model']['mllm']} "
            f"({models['model']['layers']} layers, text prior from {models['model']['text_prior_heads']} heads, "
            f"deepest in layer {models['model']['deepest_head_layer']}); repeats per row: "
            f"{models['stages_ms']['total']['n']}",
            "",
            "| stage | median ms | p90 ms |",
            "|---|---|---|",
        ]
        lines += [f"| {k} | {v['median']:.1f} | {v['p90']:.1f} |" for k, v in models["stages_ms"].items()]
        lines += ["", "| comparison | measured | target | met |", "|---|---|---|---|"]
        for key, target in TARGETS.items():
            value = models[key]
            lines.append(f"| {key} | {value:.3f} | <= {target} | {'yes' if value <= target else 'NO'} |")
        text, query, shots = models["text_prior_ms"], models["query_ms"], models["k_shots_ms"]
        lines += [
            "",
            f"text prior: fast {text['fast']['median']:.1f} ms vs eager everywhere (the usual way) "
            f"{text['eager_everywhere']['median']:.1f} ms, vs eager in the text layers only "
            f"{text['eager']['median']:.1f} ms (ratio {models['ratio_fast_vs_eager_text_only']:.3f}), of which "
            f"{text['shared_floor']['median']:.1f} ms is the vision tower + layer 0 both must run (fast/eager above "
            f"that: {models['ratio_fast_vs_eager_above_floor']:.3f}; layers up to the deepest head: "
            f"{(models['model']['deepest_head_layer'] + 1)}/{models['model']['layers']}); "
            f"query: POP 1-shot {query['pop_1shot']['median']:.1f} ms vs native pointing "
            f"{query['native_pointing']['median']:.1f} ms ({NATIVE_NEW_TOKENS} new tokens); "
            f"K=1/3/10: {shots['1']['median']:.1f} / {shots['3']['median']:.1f} / {shots['10']['median']:.1f} ms; "
            f"peak memory {models['peak_memory_mb']:.0f} MiB",
        ]
        many = models.get("many_parts_ms")
        if many:
            lines.append(
                f"one frame, many parts: first query {many['first_query']['median']:.1f} ms, a second query on the "
                f"same frame {many['second_query']['median']:.1f} ms, {len(MANY_QUERIES)} queries in one call "
                f"{many['five_queries']['median']:.1f} ms"
            )
    stream = report.get("streaming")
    if stream:
        lines += [
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
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from pop_ros.models.presets import PRESETS

    parser = argparse.ArgumentParser(prog="pop-bench", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--shape",
        default="qwen2.5-vl-3b",
        choices=sorted(SHAPES),
        help="random-weight models of a real shape: qwen2.5-vl-3b (+ DINOv3 ViT-B/16, default), "
        "qwen2.5-vl-7b (+ DINOv3 ViT-L/16), qwen3.5-4b / qwen3.5-9b (hybrid attention; + DINOv3 ViT-B/16 / "
        "ViT-L/16), tiny (a CPU test of the benchmark itself)",
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), help="benchmark a preset's models instead of --shape")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="bfloat16", help="default bfloat16 (also on CPUs with bf16 units)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per row after warm-up (default 5)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--stream-seconds", type=float, default=60.0, help="streaming run length; 0 = skip")
    parser.add_argument(
        "--stream-preset", default="tiny", choices=sorted(PRESETS), help="the node's preset (default tiny)"
    )
    parser.add_argument("--stream-rate", type=float, default=5.0, help="standing-query rate, Hz")
    parser.add_argument(
        "--stream-reliability",
        default="reliable",
        choices=["reliable", "best_effort"],
        help="the node's image_reliability in the streaming run (default reliable; see README, DDS tuning)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--memory",
        action="store_true",
        help="only print what each preset needs in memory (real configs on the meta device; see docs/memory.md)",
    )
    parser.add_argument("--serve-camera", metavar="TOPIC", help=argparse.SUPPRESS)  # the streaming run's camera
    args = parser.parse_args(argv)
    if args.serve_camera:
        return serve_camera(args.serve_camera, args.stream_seconds)
    if args.memory:
        from pop_ros.models.footprint import memory_report, memory_table

        report = memory_report()
        print(json.dumps(report, indent=2) if args.json else memory_table(report))
        return 0
    if args.repeats < 1 or args.warmup < 0 or args.stream_seconds < 0:
        parser.error("--repeats must be >= 1, --warmup and --stream-seconds >= 0")

    def progress(message: str) -> None:
        print(f"[pop-bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    report: dict = {"command": " ".join(["pop-bench", *(argv if argv is not None else sys.argv[1:])])}
    if args.preset:
        from pop_ros.pipeline import PartPointer

        progress(f"loading preset {args.preset}")
        # Whole model: the benchmark also times native pointing, which generates.
        pointer = PartPointer.from_preset(args.preset, device=args.device, dtype=args.dtype, trim=False)
    else:
        progress(f"building random-weight models of shape {args.shape} ({args.dtype})")
        pointer = build_shape_pointer(args.shape, args.device, args.dtype)
    loaded_memory_mb = memory_in_use_mb(pointer.visual.device)
    report["models"] = run_model_benchmarks(pointer, args.repeats, args.warmup, progress)
    report["memory_mb"] = {"models_loaded": loaded_memory_mb, **peak_memory_detail_mb(pointer.visual.device)}
    del pointer
    if args.stream_seconds > 0:
        report["streaming"] = run_streaming(
            args.stream_preset, args.stream_seconds, args.stream_rate, progress, args.stream_reliability
        )
    print(json.dumps(report, indent=2) if args.json else table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
