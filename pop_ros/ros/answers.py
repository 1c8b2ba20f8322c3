"""What a query comes back with: an `Answer` and its `Outcome` (what /diagnostics counts)."""

from __future__ import annotations

import dataclasses
import enum

# How every service answers while the node loads its models (autostart or a configure): clients that
# start a node wait while the message starts with this (ros_client.wait_for_node).
CONFIGURING = "node is configuring"


class Outcome(enum.Enum):
    """How a query ended. The value is the name /diagnostics counts it under ("answers <value>")."""

    OK = "ok"  # a point (its 3D point or pose may still be missing; the message says why)
    REJECTED = "rejected"  # the point scored below min_score: "part not visible"
    BUSY = "busy"  # another query held the models (busy_policy, max_waiting_queries)
    NOT_READY = "not active"  # the node is unconfigured, failed to configure, or inactive
    NO_FRAME = "no frame"  # no camera frame yet, or the latest is older than max_frame_age
    BAD_REQUEST = "refused"  # the request or its image cannot be answered (unknown set, bad encoding, ...)
    CANCELLED = "cancelled"  # an action goal cancelled by its client, or whose client is gone
    INTERNAL = "internal error"  # an exception nobody planned for, caught by the node's guard
    TRACK_LOST = "track lost"  # continuous tracking could not follow the part to this frame (ros/tracking.py)

    @property
    def is_refused_input(self) -> bool:
        """Counted among the errors on /diagnostics."""
        return self is Outcome.BAD_REQUEST


@dataclasses.dataclass
class Answer:
    outcome: Outcome
    message: str
    header: object  # std_msgs/Header of the source image
    u: float = 0.0
    v: float = 0.0
    score: float = 0.0
    has_3d: bool = False
    xyz: tuple[float, float, float] = (0.0, 0.0, 0.0)
    query: str = ""
    support_set: str = ""
    total_ms: float = 0.0
    # Approach pose (see geometry.locate): z axis along the surface normal, towards the camera.
    has_pose: bool = False
    normal: tuple[float, float, float] = (0.0, 0.0, 0.0)
    orientation: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 1.0)
    fit_rms_m: float = 0.0
    fit_inlier_ratio: float = 0.0
    # Several instances (max_instances > 1): which query of a ~/point_to_parts call, which instance.
    query_index: int = 0
    instance: int = 0
    # The part's region and grasp frame (grasp.py): mask (H, W) bool and cloud when computed.
    mask: object = None
    cloud: object = None
    has_grasp: bool = False
    grasp_orientation: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 1.0)  # (x, y, z, w)
    grasp_xyz: tuple[float, float, float] = (0.0, 0.0, 0.0)  # the frame's origin: xyz + grasp_tool_offset_m * z
    grasp_axes: tuple = ()  # (closing x, along y, approach z), unit vectors, when has_grasp
    grasp_width_m: float = 0.0
    part_length_m: float = 0.0
    # A tracked answer (continuous_tracking): the pixel followed from a full answer track_age_s earlier.
    tracked: bool = False
    track_age_s: float = 0.0
    # Every instance, best first: instances[0] is this answer itself (empty for answers without a point).
    instances: list = dataclasses.field(default_factory=list)
    # What it answers about (capture.Capture: frame, depth, camera_info), None when no capture was taken.
    capture: object = None

    @property
    def success(self) -> bool:
        return self.outcome is Outcome.OK
