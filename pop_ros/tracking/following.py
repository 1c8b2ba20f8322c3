"""Tracked answers between two full answers of a standing query, without ROS: pop_node's continuous
tracking (ros/tracking.py) and `pop-bag --track` both go through `PartFollower` and `tracked_answer`,
so a recording gives the tracked answers the node gives live.

A full answer (the "anchor") is about a frame that may be seconds old when it arrives (a model's
latency). `PartFollower` keeps the last frames it saw (grey) and, when an anchor arrives, seeds the
tracker on the anchor's own image and catches up through the kept frames that came after it (at
most CATCH_UP_HOPS of them, evenly spaced) before following the newest frame; so the pixel is where
the part is now, not where it was when the model was asked.
"""

from __future__ import annotations

import collections
import dataclasses
import threading

import numpy as np

from pop_ros.spatial.grasp import GraspSettings
from pop_ros.spatial.locate import LocateSettings, add_grasp, locate_capture
from pop_ros.tracking.tracker import PartTracker, TrackSettings, TrackUpdate, grey_image

# Grey frames kept for catching up: two seconds of a 30 Hz camera (0.3 MB each at 640x480).
FOLLOW_HISTORY = 60
# A late anchor catches up through at most this many kept frames (each one tracker update).
CATCH_UP_HOPS = 8
# A tracked answer's part cloud (and so its grasp frame) keeps at most this many points: the grasp
# frame of a 34 000-point region took 17 ms, too much for every frame of a 30 Hz camera.
TRACKED_CLOUD_POINTS = 3000


@dataclasses.dataclass
class TrackStep:
    """One frame's outcome: the update, the full answer it continues, seconds since that answer's frame."""

    update: TrackUpdate
    anchor: object  # the full Answer (ros/answers.py) being continued
    age_s: float
    region: np.ndarray | None  # the part's mask moved to this frame, when the anchor had one
    want_anchor: bool  # lost or weak: a new full answer is wanted now


@dataclasses.dataclass
class _Anchor:
    answer: object
    grey: np.ndarray | None  # None: the answer has no point to follow
    stamp_s: float
    mask: np.ndarray | None


class PartFollower:
    """Follows the standing query's part from each full answer (`anchor`) through every next frame
    (`track`). `anchor` may be called from another thread than `track` (the node's query thread)."""

    def __init__(self, settings: TrackSettings | None = None, history: int = FOLLOW_HISTORY):
        self.settings = settings or TrackSettings()
        self._tracker = PartTracker(self.settings)
        self._history: collections.deque = collections.deque(maxlen=history)  # (stamp_s, grey), oldest first
        self._pending: _Anchor | None = None
        self._lock = threading.Lock()
        self.anchor_answer = None  # the full answer the current track continues
        self._anchor_stamp_s = 0.0
        self._asked = False  # a new anchor was already asked for on this track

    @property
    def holds(self) -> bool:
        return self.anchor_answer is not None and self._tracker.holds

    def anchor(self, answer, image: np.ndarray | None, stamp_s: float, mask=None) -> None:
        """A full answer about `image` (stamped `stamp_s`): the next `track` starts from it. An
        answer without an accepted point (its image may be None) ends the track (nothing to follow)."""
        grey = None if image is None or not answer.success else grey_image(image)
        with self._lock:
            self._pending = _Anchor(answer, grey, stamp_s, None if mask is None else np.asarray(mask))

    def reset(self) -> None:
        with self._lock:
            self._pending = None
            self._history.clear()
        self.anchor_answer = None

    def remember(self, image: np.ndarray, stamp_s: float) -> np.ndarray:
        """Keep a frame for catching up (`track` keeps its frames itself); returns it in grey."""
        grey = grey_image(image)
        with self._lock:
            self._history.append((stamp_s, grey))
        return grey

    def track(self, image: np.ndarray, stamp_s: float) -> TrackStep | None:
        """This frame's tracked outcome, or None when there is nothing to follow (no anchor yet, the
        last full answer found no part, or the track was lost on an earlier frame)."""
        with self._lock:
            pending, self._pending = self._pending, None
            kept = list(self._history)
        grey = self.remember(image, stamp_s)
        if pending is not None:
            if not self._start(pending, kept):
                return None
        elif self.anchor_answer is None or not self._tracker.holds:
            return None
        update = self._tracker.update(grey)
        want = (not update.ok or update.weak) and not self._asked
        self._asked = self._asked or want
        region = self._tracker.region() if update.ok else None
        return TrackStep(update, self.anchor_answer, stamp_s - self._anchor_stamp_s, region, want)

    def _start(self, pending: _Anchor, kept: list) -> bool:
        """Seed on the anchor's image and catch up through the kept frames after it; False when the
        anchor has no point to follow."""
        answer = pending.answer
        self._asked = False
        if not answer.success:
            self.anchor_answer = None
            return False
        self.anchor_answer, self._anchor_stamp_s = answer, pending.stamp_s
        self._tracker.seed(pending.grey, answer.u, answer.v, pending.mask)
        later = [grey for stamp, grey in kept if stamp > pending.stamp_s]
        if len(later) > CATCH_UP_HOPS:
            picks = np.linspace(0, len(later) - 1, CATCH_UP_HOPS).round().astype(int)
            later = [later[i] for i in picks]
        for grey in later:
            if not self._tracker.update(grey).ok:
                break
        return True


def tracked_answer(
    step: TrackStep, capture, image_size, settings: LocateSettings, region: GraspSettings, topic: str = "camera_info"
):
    """The node's Answer for a tracked frame: the followed pixel, its 3D point and approach pose from
    this frame's own depth (its `capture`: the depth paired by stamp and the camera_info, as a full
    answer's), and its grasp frame (`region`'s gripper settings) from the part's region moved with
    the track. A lost track: an Answer that says why (no point, no 3D). Returns (answer, placement or
    None)."""
    from pop_ros.ros.answers import Answer, Outcome

    anchor, update = step.anchor, step.update
    answer = Answer(
        Outcome.OK,
        "",
        capture.header,
        u=update.u,
        v=update.v,
        score=anchor.score,
        query=anchor.query,
        support_set=anchor.support_set,
        tracked=True,
        track_age_s=step.age_s,
        capture=capture,
    )
    if not update.ok:
        answer.outcome, answer.message = Outcome.TRACK_LOST, f"track lost: {update.reason}"
        return answer, None
    placement = locate_capture(capture, update.u, update.v, image_size, settings, topic)
    notes = placement.apply(answer)
    if step.region is not None and region.part_threshold > 0:
        answer.mask = step.region
        notes += add_grasp(answer, step.region, None, placement, region, TRACKED_CLOUD_POINTS)
    features = f"tracked {step.age_s:.2f} s from the full answer, {update.features} features"
    answer.message = "; ".join([features, *notes])
    return answer, placement
