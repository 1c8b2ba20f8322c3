"""The POP pipeline: `PartPointer` and what it takes and gives.

The one place the pipeline is assembled; the node, the CLI, the evaluation and the benchmarks all
call it. Like segment-anything's predictor, the expensive work is done once and reused: support
features once per support image (`support_features`), a frame's DINO features and the MLLM's image
prefix (vision tower + keys/values of every token before the query text) once per frame for the
latest `frame_cache_size` frames (`frames`). Settings, their choices and limits: `settings`.
"""

from pop_ros.pipeline.api import (
    Instance,
    PointerError,
    PointRequest,
    PointResult,
    Support,
    from_core_pixel,
    to_core_pixel,
)
from pop_ros.pipeline.loading import RANDOM_WEIGHTS_BANNER, heads_file_for, resolve_model_config
from pop_ros.pipeline.pointer import PartPointer
from pop_ros.pipeline.settings import (
    AGGREGATIONS,
    HEAD_SETS,
    MAX_FRAME_CACHE_SIZE,
    MAX_INSTANCE_RADIUS,
    MAX_INSTANCES,
    MAX_QUERY_CHARS,
    RETRIEVALS,
    SHOT_COMBINATIONS,
    SIMILARITY_MODES,
    PointerSettings,
)

__all__ = [
    "AGGREGATIONS",
    "HEAD_SETS",
    "MAX_FRAME_CACHE_SIZE",
    "MAX_INSTANCES",
    "MAX_INSTANCE_RADIUS",
    "Instance",
    "MAX_QUERY_CHARS",
    "RANDOM_WEIGHTS_BANNER",
    "RETRIEVALS",
    "SHOT_COMBINATIONS",
    "SIMILARITY_MODES",
    "PartPointer",
    "PointRequest",
    "PointResult",
    "PointerError",
    "PointerSettings",
    "Support",
    "from_core_pixel",
    "heads_file_for",
    "resolve_model_config",
    "to_core_pixel",
]
