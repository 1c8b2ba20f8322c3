"""POP math on tensors (no ROS, no transformers, no file I/O)."""

from pop_ros.core.fusion import (
    AGGREGATIONS,
    SHOT_COMBINATIONS,
    SIMILARITY_MODES,
    click_to_patch,
    combine_shots,
    fuse,
    gaussian_smooth,
    peak_cell,
    peak_score,
    peak_to_pixel,
    text_prior,
    visual_similarity,
    visual_similarity_batch,
)
from pop_ros.core.regions import (
    cell_centre_pixel,
    instance_cells,
    pixel_in_roi,
    restrict_to_cells,
    roi_cells,
    validate_roi,
)

__all__ = [
    "AGGREGATIONS",
    "SHOT_COMBINATIONS",
    "SIMILARITY_MODES",
    "click_to_patch",
    "combine_shots",
    "fuse",
    "gaussian_smooth",
    "peak_cell",
    "peak_score",
    "peak_to_pixel",
    "text_prior",
    "visual_similarity",
    "visual_similarity_batch",
    "cell_centre_pixel",
    "instance_cells",
    "pixel_in_roi",
    "restrict_to_cells",
    "roi_cells",
    "validate_roi",
]
