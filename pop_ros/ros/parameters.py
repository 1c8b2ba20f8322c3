"""The node's parameters: one typed table, its validation and its Markdown rendering.

Each entry is a `ParameterSpec`: name, default (its type is the parameter's type), description,
whether `ros2 param set` takes effect at once (runtime) or the value is read at configure (refused
while configured, with that reason), and its choices or limits. Choices and limits that the pipeline
also checks come from `pop_ros.choices`, the pipeline's own constants, which import nothing heavy (the
table loads without torch, for `pop_node --help`).

`python -m pop_ros.ros.parameters > docs/parameters.md` writes the reference page, and
`python -m pop_ros.ros.parameters --yaml > config/pop_ros.yaml` the shipped params file.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import re
from collections.abc import Callable, Mapping

from pop_ros import choices
from pop_ros.models.presets import PRESETS

# Queries waiting for the running one each hold an executor thread: at most this many may wait,
# and the executor has that many threads for queries plus RESERVED_THREADS that timers and quick
# services always find free (camera input has a node and a thread of its own: ros/camera.py).
MAX_WAITING_QUERIES_LIMIT = 8
RESERVED_THREADS = 3
# Bound of the grasp distances (gripper opening, tool-point offset): a value past it is a unit mistake.
MAX_GRASP_DISTANCE_M = 2.0

Value = bool | int | float | str


@dataclasses.dataclass(frozen=True)
class ParameterSpec:
    """One declared parameter. `rule(value)` is an extra check beyond choices and limits (None = ok)."""

    name: str
    default: Value
    description: str
    runtime: bool  # True: `ros2 param set` takes effect at once; False: read at configure
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    rule: Callable[[Value], str | None] | None = None
    rule_text: str = ""  # the rule in words, for the documentation

    @property
    def type(self) -> type:
        return type(self.default)

    @property
    def when(self) -> str:
        return "runtime" if self.runtime else "configure"

    def described(self, code_marks: bool = True) -> str:
        """The description with the choices and limits in parentheses (`code_marks`: keep the
        backticks of Markdown; plain text drops them)."""
        limits = self.limits_text() if code_marks else self.limits_text().replace("`", "")
        return f"{self.description} ({limits})" if limits else self.description

    def limits_text(self) -> str:
        """Choices and limits in words ('' when any value of the type is accepted)."""
        parts = []
        if self.choices:
            parts.append(" | ".join(f"`{c}`" if c else "empty" for c in self.choices))
        if self.minimum is not None and self.maximum is not None:
            parts.append(f"{self.minimum} to {self.maximum}")
        elif self.minimum is not None:
            parts.append(f">= {self.minimum}")
        elif self.maximum is not None:
            parts.append(f"<= {self.maximum}")
        if self.rule_text:
            parts.append(self.rule_text)
        return "; ".join(parts)

    def check(self, value) -> str | None:
        """None if `value` (of the right type) is acceptable, else the reason."""
        name = self.name
        if isinstance(value, float) and not math.isfinite(value):
            return f"{name} must be a finite number, got {value}"
        if self.choices and value not in self.choices:
            return f"{name} must be one of {[c for c in self.choices if c]}, got {value!r}"
        if self.minimum is not None and value < self.minimum:
            return f"{name} must be >= {self.minimum}, got {value}"
        if self.maximum is not None and value > self.maximum:
            return f"{name} must be <= {self.maximum}, got {value}"
        return self.rule(value) if self.rule is not None else None

    def check_type(self, value) -> str | None:
        """None if `value` has this parameter's type (an integer is a valid float), else the reason."""
        if type(value) is self.type or (self.type is float and type(value) is int):
            return None
        return f"{self.name} must be a {self.type.__name__}, got {value!r}"


# ---- rules that are more than choices and limits -------------------------------------------------------
_DEVICE = re.compile(r"^(|auto|cpu|cuda|cuda:\d+)$")


def _device(value) -> str | None:
    return (
        None if _DEVICE.match(value) else f"device must be auto, cpu, cuda or cuda:N (empty = preset's), got {value!r}"
    )


def _odd(value) -> str | None:
    return None if value % 2 == 1 else f"depth_window must be odd (a box centred on the point), got {value}"


def _pose_window(value) -> str | None:
    if value != 0 and (value < 3 or value % 2 == 0):
        return f"pose_window must be 0 (no pose) or an odd number >= 3, got {value}"
    return None


def _positive_distance(value) -> str | None:
    return None if value > 0 else f"pose_inlier_distance must be > 0 metres, got {value}"


def _prompt_template(value) -> str | None:
    return "prompt_template must contain {query}" if value and "{query}" not in value else None


def _teach_set(value) -> str | None:
    if not value:
        return None
    from pop_ros.supports import SupportError, validate_set_name

    try:
        validate_set_name(value)
    except SupportError as error:
        return f"teach_set: {error}"
    return None


def _existing_file(name: str) -> Callable[[Value], str | None]:
    def rule(value) -> str | None:
        if value and not pathlib.Path(value).expanduser().is_file():
            return f"{name} {value!r} is not a file"
        return None

    return rule


def check_support_library(value: str, writable: bool) -> str | None:
    """A read-only library must exist; a writable one may be a new file in an existing folder
    (the library creates it at the first change)."""
    if not value:
        return None
    path = pathlib.Path(value).expanduser()
    if not writable:
        return _existing_file("support_library")(value)
    if path.is_dir():
        return f"support_library {value!r} is a folder: give the YAML file's path"
    if not path.parent.is_dir():
        return f"support_library: folder {path.parent} does not exist"
    return None


def _spec(name, default, description, runtime, **limits) -> ParameterSpec:
    return ParameterSpec(name, default, description, runtime, **limits)


CONFIGURE, RUNTIME = False, True
# fmt: off
_TABLE = [
    _spec("autostart", True, "configure and activate at start (for ros2 run); false = drive the lifecycle yourself",
          CONFIGURE),
    _spec("preset", "qwen2.5-vl-7b", "model preset (the tiny* presets have random weights)", CONFIGURE,
          choices=tuple(sorted(PRESETS))),
    _spec("mllm", "", "override the preset's MLLM (hub id or local folder); empty = preset's", CONFIGURE),
    _spec("visual_model", "", "override the preset's visual encoder (hub id or local folder); empty = preset's",
          CONFIGURE),
    _spec("heads_file", "", "localization-head YAML from pop-find-heads; empty = <model>.yaml in "
          "~/.local/share/pop_ros/heads (XDG_DATA_HOME) or share/pop_ros/config/heads if present, else the fallback",
          CONFIGURE, rule=_existing_file("heads_file"), rule_text="an existing file"),
    _spec("device", "", "where the models run; empty = preset's", CONFIGURE, rule=_device,
          rule_text="`auto` | `cpu` | `cuda` | `cuda:N` | empty"),
    _spec("dtype", "", "model weights' dtype; empty = preset's", CONFIGURE,
          choices=("", "auto", "float32", "bfloat16", "float16")),
    _spec("resolution", 0, "longer image side for the visual encoder, pixels; 0 = preset's", CONFIGURE, minimum=0),
    _spec("prompt_template", "", "MLLM prompt containing {query}; empty = preset's ('Point to the {query}.')",
          CONFIGURE, rule=_prompt_template, rule_text="contains `{query}`"),
    _spec("trust_remote_code", False, "let hub model code run; only for repositories you trust", CONFIGURE),
    _spec("mllm_trim", True, "load only the MLLM decoder layers up to the deepest localization head, no lm_head "
          "(head_set all then refused); false = the whole model", CONFIGURE),
    _spec("mllm_quantization", "none", "MLLM weight quantization (int8: torchao, weight-only)", CONFIGURE,
          choices=choices.QUANTIZATIONS),
    _spec("mllm_max_pixels", -1, "cap on the MLLM's input pixels (aspect kept), independent of resolution; "
          "-1 = preset's (Qwen presets: 1003520), 0 = the checkpoint's own", CONFIGURE, minimum=-1),
    _spec("system_prompt", "", "MLLM system turn: empty = preset's (the chat template's default); "
          "internvl-original = InternVL3's own; or a text", CONFIGURE),
    _spec("support_library", "", "support library YAML (see README); empty = none; with library_writable it may "
          "not exist yet (created at the first change)", CONFIGURE,
          rule_text="an existing file; with library_writable a new file in an existing folder"),
    _spec("library_writable", False, "persist add_exemplar, ~/teach_click and the edit services into "
          "support_library (images beside it, atomic rewrite, previous version in .bak); false = changes stay in "
          "memory and edits are refused", CONFIGURE),
    _spec("teach_set", "", "support set that a click on ~/teach_click adds to (created if new); empty = clicks "
          "refused", RUNTIME, rule=_teach_set, rule_text="a valid set name"),
    _spec("teach_query", "", "default query of a set that a teaching click creates; empty = none", RUNTIME),
    _spec("feature_cache_dir", "", "folder for the support-feature disk cache; empty = memory only", CONFIGURE),
    _spec("image_reliability", "best_effort", "camera subscriptions' QoS reliability", CONFIGURE,
          choices=("best_effort", "reliable")),
    _spec("image_transport", "raw", "colour image subscription, exactly one: raw (sensor_msgs/Image on `image`) | "
          "compressed (CompressedImage on <resolved image topic>/compressed, as image_transport names it); depth: "
          "depth_transport", CONFIGURE, choices=("raw", "compressed")),
    _spec("depth_transport", "raw", "depth subscription, exactly one: raw (sensor_msgs/Image on `depth`) | "
          "compressedDepth (CompressedImage on <resolved depth topic>/compressedDepth, image_transport's PNG depth: "
          "16UC1 mm, or 32FC1 with its quantization header; decoded when a query pairs it)", CONFIGURE,
          choices=("raw", "compressedDepth")),
    _spec("image_is_rectified", True, "true: images are rectified (intrinsics from camera_info P, K when P is all "
          "zero); false: raw images, pixels undistorted with K, D, R, P (plumb_bob, rational_polynomial, "
          "equidistant) before deprojection", RUNTIME),
    _spec("similarity", "bidirectional", "visual correspondence", RUNTIME,
          choices=choices.SIMILARITY_MODES),
    _spec("aggregation", "sum", "how head maps combine", RUNTIME, choices=choices.AGGREGATIONS),
    _spec("head_set", "selected", "selected (calibrated heads or fallback) | all (every head; ablation)", RUNTIME,
          choices=choices.HEAD_SETS),
    _spec("sigma", 1.0, "Gaussian smoothing of each head map, LLM-token units", RUNTIME, minimum=0.0),
    _spec("shots_combination", "mean", "how K visual maps combine", RUNTIME,
          choices=choices.SHOT_COMBINATIONS),
    _spec("upsample", 2, "upsampling of the fused map before the argmax", RUNTIME, minimum=1),
    _spec("max_shots", 3, "K: at most this many exemplars per query", RUNTIME, minimum=1),
    _spec("retrieval", "cls", "which K exemplars: cls (closest by DINO [CLS]) | first", RUNTIME,
          choices=choices.RETRIEVALS),
    _spec("use_text", True, "false = visual-only ablation (needs a support set)", RUNTIME),
    _spec("frame_cache_size", 2, "latest N frames (by stamp + frame_id) whose image features and MLLM image prefix "
          "further queries reuse; 0 = none", RUNTIME, minimum=0, maximum=choices.MAX_FRAME_CACHE_SIZE),
    _spec("instance_radius", 3.0, "several instances (max_instances > 1): a peak this close to a better one, in "
          "patches of the visual grid, is the same instance", RUNTIME, minimum=0.0,
          maximum=choices.MAX_INSTANCE_RADIUS),
    _spec("instance_min_relative", 0.5, "several instances: a peak counts only when it holds at least this share of "
          "the best one's fused-map value", RUNTIME, minimum=0.0, maximum=1.0),
    _spec("part_threshold", 0.5, "the part's region (~/part_mask, ~/part_cloud, ~/grasp): pixels connected to the "
          "point where the heatmap holds at least this share of its value at the point; 0 = off", RUNTIME,
          minimum=0.0, maximum=1.0),
    _spec("gripper_max_width_m", 0.0, "the gripper's largest opening, metres: a part wider than this across its "
          "closing axis (grasp_width_m) gets no grasp frame, with the reason; 0 = no limit", RUNTIME, minimum=0.0,
          maximum=MAX_GRASP_DISTANCE_M),
    _spec("grasp_tool_offset_m", 0.0, "~/grasp's origin is the 3D point moved this far along the grasp frame's z "
          "(the approach, into the surface): > 0 deeper into the part, < 0 back towards the camera (docs/grasping.md)",
          RUNTIME, minimum=-MAX_GRASP_DISTANCE_M, maximum=MAX_GRASP_DISTANCE_M),
    _spec("min_score", 0.0, "answers with a lower score fail with 'part not visible' (0 = never)", RUNTIME,
          minimum=0.0),
    _spec("max_frame_age", 1.0, "a query takes the newest camera frame when it gets the models and refuses it "
          "when older than this, seconds (0 = no limit)", RUNTIME,
          minimum=0.0),
    _spec("depth_max_dt", 0.05, "pair depth with colour when stamps differ by at most this, seconds", RUNTIME,
          minimum=0.0),
    _spec("depth_window", 5, "median of valid depths in this box around the point, pixels", RUNTIME, minimum=1,
          rule=_odd, rule_text="odd"),
    _spec("pose_window", 15, "approach pose: plane fit of the valid depth in this box around the point, pixels "
          "(0 = no pose)", RUNTIME, minimum=0, rule=_pose_window, rule_text="0 or odd >= 3"),
    _spec("pose_inlier_distance", 0.005, "approach pose: plane-fit inliers lie within this distance, metres",
          RUNTIME, rule=_positive_distance, rule_text="> 0"),
    _spec("pose_min_inlier_ratio", 0.6, "approach pose: no pose when a smaller fraction of the window's valid "
          "depth fits one plane", RUNTIME, minimum=0.0, maximum=1.0),
    _spec("busy_policy", "wait", "a query arriving during another: wait (up to busy_timeout) | reject", RUNTIME,
          choices=("wait", "reject")),
    _spec("busy_timeout", 10.0, "seconds a query waits for a running one before answering busy", RUNTIME,
          minimum=0.0),
    _spec("max_waiting_queries", 4, "queries that may wait for a running one (busy_policy wait); more are answered "
          "busy at once", RUNTIME, minimum=0, maximum=MAX_WAITING_QUERIES_LIMIT),
    _spec("publish_heatmap", True, "publish ~/heatmap (bgr8 overlay) and ~/heatmap_raw (32FC1)", RUNTIME),
    _spec("publish_rejected_heatmap", False, "also publish the heatmap of a rejected answer (debugging); a rejected "
          "point is never published", RUNTIME),
    _spec("diagnostics_period", 1.0, "seconds between /diagnostics messages (0 = off)", RUNTIME, minimum=0.0),
    _spec("continuous_query", "", "standing query for continuous mode (empty = the set's default query)", RUNTIME),
    _spec("continuous_support_set", "", "standing support set for continuous mode (a set of the library)", RUNTIME),
    _spec("continuous_rate", 0.0, "continuous mode: process the latest frame at most this often, Hz (0 = off)",
          RUNTIME, minimum=0.0),
    _spec("continuous_tracking", False, "continuous mode: follow the standing query's part through every colour "
          "frame between two full answers (tracked answers, tracked: true, 3D from each frame's own depth); a lost "
          "track publishes nothing more and asks for a full answer at once", RUNTIME),
]
# fmt: on
PARAMETERS: dict[str, ParameterSpec] = {spec.name: spec for spec in _TABLE}


# The node's parameters that make the pipeline's PointerSettings (field <- parameter).
SETTINGS_PARAMETERS = {
    "similarity": "similarity",
    "aggregation": "aggregation",
    "head_set": "head_set",
    "sigma": "sigma",
    "shot_combination": "shots_combination",
    "upsample": "upsample",
    "max_shots": "max_shots",
    "retrieval": "retrieval",
    "use_text": "use_text",
    "frame_cache_size": "frame_cache_size",
    "instance_radius": "instance_radius",
    "instance_min_relative": "instance_min_relative",
    "part_threshold": "part_threshold",
}


def pointer_settings(value: Callable[[str], Value]):
    """The pipeline's PointerSettings from parameter values (`value(name)`), validated: the node
    (its live parameters) and pop-bag (a params file, else the defaults) build them the same way."""
    from pop_ros.pipeline import PointerSettings

    fields = {field: value(name) for field, name in SETTINGS_PARAMETERS.items()}
    for field in ("sigma", "instance_radius", "instance_min_relative", "part_threshold"):
        fields[field] = float(fields[field])
    for field in ("upsample", "max_shots", "frame_cache_size"):
        fields[field] = int(fields[field])
    fields["use_text"] = bool(fields["use_text"])
    return PointerSettings(**fields).validate()


def check_parameter(name: str, value, others: Mapping[str, Value] | None = None) -> str | None:
    """None if `value` is acceptable for `name`, else the reason. `others` holds the values of the
    other parameters where one depends on another (support_library on library_writable)."""
    if name == "support_library":
        return check_support_library(value, bool((others or {}).get("library_writable", False)))
    return PARAMETERS[name].check(value)


def check_type(name: str, value) -> str | None:
    """None if `value` has the declared type of `name` (an integer is a valid float), else the reason."""
    return PARAMETERS[name].check_type(value)


def check_all(values: Mapping[str, Value]) -> str | None:
    """The first problem among all parameters' current values (type, then constraints), or None.
    Values from a params file or the command line never pass the on-set callback: checked here."""
    for name, value in values.items():
        if name in PARAMETERS:
            reason = check_type(name, value)
            if not reason and name not in ("support_library", "heads_file"):  # their loaders say more
                reason = check_parameter(name, value, values)
            if reason:
                return reason
    return None


def render_markdown() -> str:
    """The parameter reference as a Markdown page (docs/parameters.md is this text)."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    def default(spec: ParameterSpec) -> str:
        return f"`{str(spec.default).lower() if spec.type is bool else spec.default}`" if spec.default != "" else '`""`'

    lines = [
        "# pop_node parameters",
        "",
        "Generated from `pop_ros/ros/parameters.py` (`python -m pop_ros.ros.parameters > docs/parameters.md`);",
        "do not edit by hand. **runtime**: `ros2 param set` takes effect at once, an invalid value is refused",
        "with the reason. **configure**: read when the node configures; refused while it is configured",
        "(deactivate, clean up, set, configure again).",
        "",
        "| name | type | default | when | accepted values | description |",
        "|---|---|---|---|---|---|",
    ]
    for spec in PARAMETERS.values():
        lines.append(
            f"| `{spec.name}` | {spec.type.__name__} | {cell(default(spec))} | {spec.when} | "
            f"{cell(spec.limits_text())} | {cell(spec.description)} |"
        )
    return "\n".join(lines) + "\n"


# Notes the shipped params file adds after a value (the file is otherwise the table's rendering).
YAML_NOTES = {
    "support_library": "e.g. the example: <share>/config/supports/library.yaml (the launch file sets it)",
    "library_writable": "the shipped example stays read-only; point support_library at your own YAML (it may not "
    "exist yet)",
}


def yaml_value(value: Value) -> str:
    """A default as YAML writes it (strings double-quoted, JSON escapes being valid YAML ones)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return repr(value)


def render_yaml() -> str:
    """The shipped params file (config/pop_ros.yaml is this text): every parameter with its default,
    its description, limits and when it applies as the comment above it."""
    lines = [
        "# pop_node parameters. Every parameter the node declares is here with its default.",
        "# Generated from pop_ros/ros/parameters.py (python -m pop_ros.ros.parameters --yaml > config/pop_ros.yaml).",
        "# [configure]: read when the node configures (ros2 param set is refused while configured).",
        "# [runtime]: ros2 param set takes effect at once (invalid values are refused with the reason).",
        "/**:",
        "  ros__parameters:",
    ]
    for spec in PARAMETERS.values():
        note = f"  # {YAML_NOTES[spec.name]}" if spec.name in YAML_NOTES else ""
        lines.append(f"    # {spec.described(code_marks=False)} [{spec.when}]")
        lines.append(f"    {spec.name}: {yaml_value(spec.default)}{note}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import sys

    print(render_yaml() if "--yaml" in sys.argv[1:] else render_markdown(), end="")
