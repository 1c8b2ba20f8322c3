"""The node's parameters: the one declared table and its validation.

Each row is name: (default, description, when it takes effect). "runtime": at once (ros2 param set);
"configure": read at configure; refused while configured, with that reason.
"""

from __future__ import annotations

import math
import pathlib
import re

# Queries waiting for the running one each hold an executor thread: at most this many may wait,
# and the executor has that many threads for queries plus RESERVED_THREADS that camera input,
# timers and quick services always find free.
MAX_WAITING_QUERIES_LIMIT = 8
RESERVED_THREADS = 3

PARAMETERS = {
    "autostart": (
        True,
        "configure and activate at start (for ros2 run); false = drive the lifecycle yourself",
        "configure",
    ),
    "preset": (
        "qwen2.5-vl-7b",
        "model preset: qwen2.5-vl-3b, qwen2.5-vl-7b, qwen2.5-vl-7b-dinov2, molmo2-8b, internvl3-8b; "
        "tiny, tiny-molmo2, tiny-internvl (random weights)",
        "configure",
    ),
    "mllm": ("", "override the preset's MLLM (hub id or local folder); empty = preset's", "configure"),
    "visual_model": (
        "",
        "override the preset's visual encoder (hub id or local folder); empty = preset's",
        "configure",
    ),
    "heads_file": (
        "",
        "localization-head YAML from pop-find-heads; empty = <model>.yaml in ~/.local/share/pop_ros/heads "
        "(XDG_DATA_HOME) or share/pop_ros/config/heads if present, else the fallback",
        "configure",
    ),
    "device": ("", "auto | cpu | cuda | cuda:N; empty = preset's", "configure"),
    "dtype": ("", "auto | float32 | bfloat16 | float16; empty = preset's", "configure"),
    "resolution": (0, "longer image side for the visual encoder, pixels; 0 = preset's", "configure"),
    "prompt_template": ("", "MLLM prompt containing {query}; empty = preset's ('Point to the {query}.')", "configure"),
    "trust_remote_code": (False, "let hub model code run; only for repositories you trust", "configure"),
    "mllm_trim": (
        True,
        "load only the MLLM decoder layers up to the deepest localization head, no lm_head (head_set all then "
        "refused); false = the whole model",
        "configure",
    ),
    "mllm_quantization": ("none", "MLLM weight quantization: none | int8 (torchao, weight-only)", "configure"),
    "mllm_max_pixels": (
        -1,
        "cap on the MLLM's input pixels (aspect kept), independent of resolution; "
        "-1 = preset's (Qwen presets: 1003520), 0 = the checkpoint's own",
        "configure",
    ),
    "system_prompt": (
        "",
        "MLLM system turn: empty = preset's (the chat template's default); internvl-original = InternVL3's own; "
        "or a text",
        "configure",
    ),
    "support_library": ("", "support library YAML (see README); empty = none", "configure"),
    "library_writable": (
        False,
        "persist add_exemplar, ~/teach_click and the edit services into support_library (images beside it, "
        "atomic rewrite, previous version in .bak); false = changes stay in memory and edits are refused",
        "configure",
    ),
    "teach_set": (
        "",
        "support set that a click on ~/teach_click adds to (created if new); empty = clicks refused",
        "runtime",
    ),
    "teach_query": ("", "default query of a set that a teaching click creates; empty = none", "runtime"),
    "feature_cache_dir": ("", "folder for the support-feature disk cache; empty = memory only", "configure"),
    "image_reliability": ("best_effort", "camera subscriptions' QoS reliability: best_effort | reliable", "configure"),
    "image_transport": (
        "raw",
        "colour image subscription, exactly one: raw (sensor_msgs/Image on `image`) | compressed "
        "(CompressedImage on <resolved image topic>/compressed, as image_transport names it); depth stays raw",
        "configure",
    ),
    "image_is_rectified": (
        True,
        "true: images are rectified (intrinsics from camera_info P, K when P is all zero); false: raw images, "
        "pixels undistorted with K, D, R, P (plumb_bob, rational_polynomial, equidistant) before deprojection",
        "runtime",
    ),
    "similarity": ("bidirectional", "visual correspondence: bidirectional | forward | backward", "runtime"),
    "aggregation": ("sum", "how head maps combine: sum | mean | max", "runtime"),
    "head_set": ("selected", "selected (calibrated heads or fallback) | all (every head; ablation)", "runtime"),
    "sigma": (1.0, "Gaussian smoothing of each head map, LLM-token units (>= 0)", "runtime"),
    "shots_combination": ("mean", "how K visual maps combine: mean | product", "runtime"),
    "upsample": (2, "upsampling of the fused map before the argmax (integer >= 1)", "runtime"),
    "max_shots": (3, "K: at most this many exemplars per query (>= 1)", "runtime"),
    "retrieval": ("cls", "which K exemplars: cls (closest by DINO [CLS]) | first", "runtime"),
    "use_text": (True, "false = visual-only ablation (needs a support set)", "runtime"),
    "frame_cache_size": (
        2,
        "latest N frames (by stamp + frame_id) whose image features and MLLM image prefix further queries "
        "reuse; 0 = none, at most 64",
        "runtime",
    ),
    "min_score": (0.0, "answers with a lower score fail with 'part not visible' (0 = never)", "runtime"),
    "max_frame_age": (1.0, "refuse camera frames older than this, seconds (0 = no limit)", "runtime"),
    "depth_max_dt": (0.05, "pair depth with colour when stamps differ by at most this, seconds", "runtime"),
    "depth_window": (5, "median of valid depths in this box around the point, pixels (odd, >= 1)", "runtime"),
    "pose_window": (
        15,
        "approach pose: plane fit of the valid depth in this box around the point, pixels (odd, >= 3; 0 = no pose)",
        "runtime",
    ),
    "pose_inlier_distance": (
        0.005,
        "approach pose: plane-fit inliers lie within this distance, metres (> 0)",
        "runtime",
    ),
    "pose_min_inlier_ratio": (
        0.6,
        "approach pose: no pose when a smaller fraction of the window's valid depth fits one plane (0..1)",
        "runtime",
    ),
    "busy_policy": ("wait", "a query arriving during another: wait (up to busy_timeout) | reject", "runtime"),
    "busy_timeout": (10.0, "seconds a query waits for a running one before answering busy", "runtime"),
    "max_waiting_queries": (
        4,
        f"queries that may wait for a running one (busy_policy wait); more are answered busy at once "
        f"(0-{MAX_WAITING_QUERIES_LIMIT})",
        "runtime",
    ),
    "publish_heatmap": (True, "publish ~/heatmap (bgr8 overlay) and ~/heatmap_raw (32FC1)", "runtime"),
    "publish_rejected_heatmap": (
        False,
        "also publish the heatmap of a rejected answer (debugging); a rejected point is never published",
        "runtime",
    ),
    "diagnostics_period": (1.0, "seconds between /diagnostics messages (0 = off)", "runtime"),
    "continuous_query": ("", "standing query for continuous mode (empty = the set's default query)", "runtime"),
    "continuous_support_set": ("", "standing support set for continuous mode", "runtime"),
    "continuous_rate": (0.0, "continuous mode: process the latest frame at most this often, Hz (0 = off)", "runtime"),
}
_CHOICES = {
    "image_reliability": ("best_effort", "reliable"),
    "image_transport": ("raw", "compressed"),
    "similarity": ("bidirectional", "forward", "backward"),
    "aggregation": ("sum", "mean", "max"),
    "head_set": ("selected", "all"),
    "shots_combination": ("mean", "product"),
    "retrieval": ("cls", "first"),
    "busy_policy": ("wait", "reject"),
    "dtype": ("", "auto", "float32", "bfloat16", "float16"),
    "mllm_quantization": ("none", "int8"),
}
_MINIMUM = {
    "sigma": 0.0,
    "upsample": 1,
    "max_shots": 1,
    "min_score": 0.0,
    "max_frame_age": 0.0,
    "depth_max_dt": 0.0,
    "depth_window": 1,
    "pose_window": 0,
    "pose_min_inlier_ratio": 0.0,
    "busy_timeout": 0.0,
    "continuous_rate": 0.0,
    "resolution": 0,
    "frame_cache_size": 0,
    "mllm_max_pixels": -1,
    "max_waiting_queries": 0,
    "diagnostics_period": 0.0,
}
_MAXIMUM = {"max_waiting_queries": MAX_WAITING_QUERIES_LIMIT, "frame_cache_size": 64}
_ODD = ("depth_window",)
_DEVICE = re.compile(r"^(|auto|cpu|cuda|cuda:\d+)$")


def check_parameter(name: str, value) -> str | None:
    """None if `value` is acceptable for `name`, else the reason."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"{name} must be a finite number, got {value}"
    if name in _CHOICES and value not in _CHOICES[name]:
        return f"{name} must be one of {[c for c in _CHOICES[name] if c]}, got {value!r}"
    if name in _MINIMUM and value < _MINIMUM[name]:
        return f"{name} must be >= {_MINIMUM[name]}, got {value}"
    if name in _MAXIMUM and value > _MAXIMUM[name]:
        return f"{name} must be <= {_MAXIMUM[name]}, got {value}"
    if name in _ODD and value % 2 != 1:
        return f"{name} must be odd (a box centred on the point), got {value}"
    if name == "device" and not _DEVICE.match(value):
        return f"device must be auto, cpu, cuda or cuda:N (empty = preset's), got {value!r}"
    if name == "pose_window" and value != 0 and (value < 3 or value % 2 == 0):
        return f"pose_window must be 0 (no pose) or an odd number >= 3, got {value}"
    if name == "pose_inlier_distance" and not value > 0:
        return f"pose_inlier_distance must be > 0 metres, got {value}"
    if name == "pose_min_inlier_ratio" and value > 1:
        return f"pose_min_inlier_ratio must be <= 1, got {value}"
    if name == "prompt_template" and value and "{query}" not in value:
        return "prompt_template must contain {query}"
    if name == "preset":
        from pop_ros.models.presets import PRESETS

        if value not in PRESETS:
            return f"preset must be one of {sorted(PRESETS)}, got {value!r}"
    if name == "teach_set" and value:
        from pop_ros.supports import SupportError, validate_set_name

        try:
            validate_set_name(value)
        except SupportError as error:
            return f"teach_set: {error}"
    for path_name in ("support_library", "heads_file"):
        if name == path_name and value and not pathlib.Path(value).expanduser().is_file():
            return f"{name} {value!r} is not a file"
    return None


def check_all(values: dict) -> str | None:
    """The first problem among all parameters' current values (type, then constraints), or None.
    Values from a params file or the command line never pass the on-set callback: checked here."""
    for name, value in values.items():
        if name in PARAMETERS:
            reason = check_type(name, value)
            if not reason and name not in ("support_library", "heads_file"):  # their loaders say more
                reason = check_parameter(name, value)
            if reason:
                return reason
    return None


def check_type(name: str, value) -> str | None:
    """None if `value` has the declared type of `name` (an integer is a valid float), else the reason."""
    default = PARAMETERS[name][0]
    if type(value) is type(default) or (isinstance(default, float) and type(value) is int):
        return None
    return f"{name} must be a {type(default).__name__}, got {value!r}"
