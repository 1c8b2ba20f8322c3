"""A *capture*: one colour frame with the depth and camera_info that belong to it, taken once, when a
query gets the models, and kept through inference and locating.

Why: a query can take seconds (a real model, or a wait behind another query). Looking the depth up by
stamp *after* inference finds it gone from a short buffer, and choosing the frame *before* waiting
for the models answers about a frame that has aged meanwhile. So a query on the camera takes its
capture when it holds the models: the newest frame at that moment whose depth has arrived (the newest
frame if no fresh one has depth yet), refused only when even the newest is older than max_frame_age.
The capture then holds its messages: nothing that arrives later can change what the query answers
about, and nothing it needs can be dropped meanwhile.

Without ROS (pop-bag uses it too): messages are anything shaped like sensor_msgs Image /
CompressedImage / CameraInfo. Built on by the node's query services and continuous mode
(ros/queries.py, ros/continuous.py), pop-bag (bag_answers.py), and meant for anything else that
answers "the capture taken when a query gets the models" (an action server's goals, tracking)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from pop_ros.messages.stamps import StampBuffer, stamped_frame_key

# A colour/depth stamp gap larger than this is not a late frame but two different clocks.
IMPOSSIBLE_STAMP_GAP_S = 60.0


def stamp_seconds(stamp) -> float:
    """builtin_interfaces/Time (anything with sec, nanosec) -> seconds."""
    return stamp.sec + stamp.nanosec * 1e-9


@dataclasses.dataclass(frozen=True)
class Frame:
    """One received colour frame and its arrival number: a reader takes both in one read, so a frame
    arriving meanwhile cannot pair its number with another's pixels."""

    msg: object  # sensor_msgs/Image or CompressedImage
    stamp_s: float
    seq: int  # 1 for the first frame received, +1 for each next one (0: an image sent with a request)


@dataclasses.dataclass(frozen=True)
class Capture:
    """What one query answers about, fixed when it got the models.

    - `frame`: the colour frame (its message, stamp, arrival number);
    - `depth`: the depth image paired with it by stamp (within depth_max_dt), or None, with the
      reason in `depth_note` ("no 3D point: ...", the node's wording);
    - `camera_info`: the camera_info current when the capture was taken (None: none received).

    Immutable and self-contained: a query, an action's goal or a tracker can keep it as long as it
    needs without any buffer having to keep its messages."""

    frame: Frame
    depth: object | None
    camera_info: object | None
    depth_note: str = ""

    @property
    def msg(self):
        return self.frame.msg

    @property
    def header(self):
        return self.frame.msg.header

    @property
    def stamp_s(self) -> float:
        return self.frame.stamp_s

    @property
    def seq(self) -> int:
        return self.frame.seq

    def frame_key(self) -> str | None:
        """The pipeline's frame-cache key: frame_id + stamp + content fingerprint of a camera frame;
        None for an image sent with a request or unstamped (the pipeline then hashes its content)."""
        if self.frame.seq == 0:
            return None
        return stamped_frame_key(self.header, getattr(self.msg, "data", None))


def pair_depth(stamp_s: float, depth: StampBuffer, tolerance_s: float) -> tuple[object | None, str]:
    """(depth message, "") nearest to colour stamp `stamp_s` within `tolerance_s`, else (None, why not)."""
    if stamp_s == 0:
        return None, "no 3D point: the image has stamp 0, so no depth can be paired by time (set header.stamp)"
    depth_msg, gap = depth.nearest(stamp_s, tolerance_s)
    if depth_msg is not None:
        return depth_msg, ""
    if math.isinf(gap):
        detail = "no depth received"
    elif gap > IMPOSSIBLE_STAMP_GAP_S:
        detail = (
            f"impossible stamp difference: the nearest depth is {gap:.0f} s away, so colour and depth "
            "stamps come from different clocks (check the drivers and use_sim_time)"
        )
    else:
        detail = f"nearest depth is {gap:.3f} s away"
    return None, f"no 3D point: {detail} (depth_max_dt {tolerance_s} s)"


def capture_of(frame: Frame, depth: StampBuffer, camera_info, depth_max_dt: float) -> Capture:
    """`frame` with its depth paired by stamp from `depth` and `camera_info` (pop-bag's and a request
    image's way: the frame is given, not chosen)."""
    depth_msg, note = pair_depth(frame.stamp_s, depth, depth_max_dt)
    return Capture(frame, depth_msg, camera_info, note)


def newest_capture(
    frames: Sequence[Frame], depth: StampBuffer, camera_info, now_s: float, max_age_s: float, depth_max_dt: float
) -> tuple[Capture | None, str]:
    """The capture a query on the camera takes when it gets the models: of `frames` (oldest first)
    no older than `max_age_s` (0: no limit), the newest whose depth has arrived; if none has, the
    newest with the reason it has no depth. (None, why) when there is no frame or even the newest is
    too old."""
    if not frames:
        return None, "no camera frame received yet"
    newest = frames[-1]
    age = now_s - newest.stamp_s
    if max_age_s > 0 and age > max_age_s:
        return None, f"latest camera frame is stale: {age:.2f} s old > max_frame_age {max_age_s} s"
    fresh = [f for f in reversed(frames) if max_age_s <= 0 or now_s - f.stamp_s <= max_age_s]
    for frame in fresh:  # newest first: depth often arrives just after its colour frame
        depth_msg, _ = pair_depth(frame.stamp_s, depth, depth_max_dt)
        if depth_msg is not None:
            return Capture(frame, depth_msg, camera_info), ""
    return capture_of(newest, depth, camera_info, depth_max_dt), ""
