"""PointerSettings, checked against the choices and limits in `pop_ros.choices`.

The ROS parameter table offers the same constants, so the node and the pipeline cannot disagree on
what a setting accepts. A `PointerSettings` is frozen: `PartPointer` reads its `settings` once per
call and uses that one snapshot throughout, so a change from another thread (ros2 param set)
applies to the next call and never to half of one.
"""

from __future__ import annotations

import dataclasses

from pop_ros.choices import (
    AGGREGATIONS,
    HEAD_SETS,
    MAX_FRAME_CACHE_SIZE,
    MAX_INSTANCE_RADIUS,
    MAX_INSTANCES,
    MAX_QUERY_CHARS,
    RETRIEVALS,
    SHOT_COMBINATIONS,
    SIMILARITY_MODES,
)

__all__ = [
    "AGGREGATIONS",
    "HEAD_SETS",
    "MAX_FRAME_CACHE_SIZE",
    "MAX_INSTANCES",
    "MAX_INSTANCE_RADIUS",
    "MAX_QUERY_CHARS",
    "RETRIEVALS",
    "SHOT_COMBINATIONS",
    "SIMILARITY_MODES",
    "PointerSettings",
]


def _is_int_at_least(value, low: int) -> bool:
    return int(value) == value and value >= low


@dataclasses.dataclass(frozen=True)
class PointerSettings:
    similarity: str = "bidirectional"  # bidirectional | forward | backward (paper's ablation)
    aggregation: str = "sum"  # sum | mean | max over the heads' smoothed maps
    head_set: str = "selected"  # selected: calibrated heads (or the fallback); all: every head
    sigma: float = 1.0  # Gaussian smoothing of each head map, in LLM-token units
    shot_combination: str = "mean"  # mean | product: how the K visual maps combine (ROS: shots_combination)
    upsample: int = 2  # the fused map is upsampled this many times before the argmax
    max_shots: int = 3  # K: at most this many exemplars of a set are used per query
    retrieval: str = "cls"  # cls: the K exemplars closest to the target by DINO [CLS]; first: in order
    use_text: bool = True  # False = visual-only ablation
    frame_cache_size: int = 2  # latest N frames whose DINO features + MLLM image prefix are kept; 0 = none
    overlap: bool = True  # CUDA only: target DINO forward and MLLM prefix on separate streams
    # Several instances: peaks closer than this many patches of the visual grid to a better one are
    # suppressed; only peaks holding at least `instance_min_relative` of the best one count.
    instance_radius: float = 3.0
    instance_min_relative: float = 0.5
    # The part's region: the connected region around the point where the heatmap holds at least this
    # share of its value at the point (0 = no region, mask, cloud or grasp frame).
    part_threshold: float = 0.5

    def validate(self) -> PointerSettings:
        """This snapshot when every field is acceptable; ValueError naming the first that is not."""
        checks = [
            (self.similarity in SIMILARITY_MODES, f"similarity must be one of {SIMILARITY_MODES}"),
            (self.aggregation in AGGREGATIONS, f"aggregation must be one of {AGGREGATIONS}"),
            (self.head_set in HEAD_SETS, f"head_set must be one of {HEAD_SETS}"),
            (
                self.shot_combination in SHOT_COMBINATIONS,
                f"shot_combination must be one of {SHOT_COMBINATIONS}",
            ),
            (self.retrieval in RETRIEVALS, f"retrieval must be one of {RETRIEVALS}"),
            (self.sigma >= 0, "sigma must be >= 0"),
            (_is_int_at_least(self.upsample, 1), "upsample must be an integer >= 1"),
            (_is_int_at_least(self.max_shots, 1), "max_shots must be an integer >= 1"),
            (
                0 <= self.instance_radius <= MAX_INSTANCE_RADIUS,
                f"instance_radius must be in [0, {MAX_INSTANCE_RADIUS}]",
            ),
            (0 <= self.instance_min_relative <= 1, "instance_min_relative must be in [0, 1]"),
            (0 <= self.part_threshold <= 1, "part_threshold must be in [0, 1]"),
            (
                _is_int_at_least(self.frame_cache_size, 0) and self.frame_cache_size <= MAX_FRAME_CACHE_SIZE,
                f"frame_cache_size must be an integer in [0, {MAX_FRAME_CACHE_SIZE}]",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"{message}; got {dataclasses.asdict(self)}")
        return self
