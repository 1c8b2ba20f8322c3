"""What a query comes back with: an `Answer` and its `Outcome` (what /diagnostics counts), and
`result_answer`, which builds a pipeline result's Answer in one pass. An Answer is a value (frozen):
the service, the action, the topics and pop-bag all read the one built here."""

from __future__ import annotations

import dataclasses
import enum
from collections import namedtuple

from pop_ros.spatial.grasp import GraspSettings
from pop_ros.spatial.locate import LocateSettings, Placement, part_region, score_note

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


@dataclasses.dataclass(frozen=True)
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
    # The further instances (max_instances > 1) after this best one, as Answers without others of their own.
    others: tuple = ()
    # What it answers about (capture.Capture: frame, depth, camera_info), None when no capture was taken.
    capture: object = None

    @property
    def success(self) -> bool:
        return self.outcome is Outcome.OK

    @property
    def instances(self) -> tuple[Answer, ...]:
        """Every instance, best first: this answer, then `others`; none for an answer without a point
        (refused, no frame, busy, track lost...)."""
        return (self, *self.others) if self.outcome in (Outcome.OK, Outcome.REJECTED) else ()


# A result built without instances (by hand, in tests) answers with its single peak.
_Peak = namedtuple("_Peak", "u v score")


@dataclasses.dataclass(frozen=True)
class AnswerSettings:
    """The node parameters an answer is built with (the node reads them per query, pop-bag from its
    --params-file)."""

    locate: LocateSettings
    region: GraspSettings
    min_score: float = 0.0


def result_answer(
    result, capture, placement: Placement, image_size, settings: AnswerSettings, query_index: int = 0, total_ms=0.0
) -> Answer:
    """A pipeline result (`PointResult`) as the node's Answer: its best instance, holding the others
    (`others`, best first). `placement`: where the best instance's pixel is in the capture (the caller
    locates it: the node counts the depth lookup); each further instance is located in the same
    decoded depth (`Placement.at`). Each instance: its 3D point and pose, the min_score check, and
    for an accepted one the part's region and grasp frame; its message joins the notes of all three."""
    peaks = result.instances or [_Peak(result.u, result.v, result.score)]
    answers = []
    for index, peak in enumerate(peaks):
        where = placement if index == 0 else placement.at(peak.u, peak.v, image_size, settings.locate)
        answers.append(_instance_answer(result, index, peak, capture, where, settings, query_index))
    return dataclasses.replace(answers[0], others=tuple(answers[1:]), total_ms=float(total_ms))


def _instance_answer(result, index: int, peak, capture, placement: Placement, settings, query_index: int) -> Answer:
    """One instance (`peak`: u, v, score) of a result, located at `placement`."""
    rejection = score_note(peak.score, settings.min_score)
    region = part_region(result.heatmap, peak.u, peak.v, placement, settings.region) if not rejection else None
    notes = [rejection] if rejection else []
    notes += placement.notes
    notes += region.notes if region is not None else ()
    return Answer(
        Outcome.REJECTED if rejection else Outcome.OK,
        "; ".join(notes) or "ok",
        capture.header,
        u=peak.u,
        v=peak.v,
        score=peak.score,
        query=result.query,
        support_set=result.support_set,
        query_index=query_index,
        instance=index,
        capture=capture,
        **placement.answer_fields(),
        **(region.answer_fields() if region is not None else {}),
    )
