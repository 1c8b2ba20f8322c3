"""Continuous tracking (`continuous_tracking`): a tracked answer for every colour frame between two
full answers of the standing query (continuous mode).

It runs beside the sensor path, on a thread of its own: the colour and depth callbacks only hand
their stamp over and return (a colour frame is never lost because the last one is still being
tracked: the callbacks return in about 0.1 ms, and a 30 Hz camera leaves 33 ms). The thread takes the
newest colour frame each time (frames that came while it was busy are skipped, counted in
/diagnostics) and hands it to `PartFollower` (following.py, shared with `pop-bag --track`), which
moves the last full answer's pixel to it; the answer's 3D point, approach pose and grasp frame come
from this frame's own depth, paired by stamp like a full answer's. A tracked frame whose depth has
not arrived yet waits for it, as pop-bag's replay does: until its own depth arrives or one stamped
past its pairing window (then its depth was dropped), at most MAX_WAITING frames. Nothing here waits
for the models or for a full answer in progress: continuous mode's tick hands each new full answer
over (`anchor`), and a track that is lost or weak asks continuous mode for a full answer at once
(`tick_soon`).

A lost track publishes one ~/result (success false, tracked true, "track lost: <reason>"), clears
the markers, then nothing until the next full answer; /diagnostics says why under "tracking".
"""

from __future__ import annotations

import collections
import threading

from sensor_msgs.msg import CompressedImage

from pop_ros.messages.capture import Frame, capture_of
from pop_ros.messages.image_conversion import compressed_to_rgb8, to_rgb8
from pop_ros.ros.diagnostics import OK, WARN
from pop_ros.spatial.grasp import GraspSettings
from pop_ros.spatial.locate import LocateSettings
from pop_ros.tracking.following import PartFollower, TrackStep, tracked_answer

# A depth image stamped within this of a tracked frame's stamp is its own: publish at once.
SAME_STAMP_S = 1e-3
# Tracked frames waiting for their depth; a newer one publishes the oldest without waiting more.
MAX_WAITING = 3


def frame_rgb(frame):
    return compressed_to_rgb8(frame.msg) if isinstance(frame.msg, CompressedImage) else to_rgb8(frame.msg)


class ContinuousTracking:
    def __init__(self, node, continuous):
        self.node = node
        self.continuous = continuous
        self.follower = PartFollower()
        # Tracked frames waiting for their depth, oldest first: (step, frame, image size). Tracking thread only.
        self._waiting: collections.deque[tuple[TrackStep, Frame, tuple[int, int]]] = collections.deque()
        self._lock = threading.Lock()  # the counters, read by /diagnostics
        self.tracked_total = 0
        self.lost_total = 0
        self.skipped_total = 0  # colour frames that came while the thread was busy: never tracked
        self.last_reason = ""  # why the last track ended ('' while one holds)
        # Handed from the callbacks to the tracking thread, under _handover:
        self._handover = threading.Condition()
        self._newest: Frame | None = None  # the newest colour frame not tracked yet
        self._newest_depth_s: float | None = None  # the newest depth stamp not looked at yet
        self._reset_asked = False
        self._closing = False
        self._thread: threading.Thread | None = None
        continuous.answered = self.anchor
        node.camera.on_colour = self.on_colour
        node.camera.on_depth_image = self.on_depth

    def enabled(self) -> bool:
        return bool(self.node.param("continuous_tracking"))

    def reset(self) -> None:
        """Forget the track and the waiting frames (deactivate; tracking switched off): done by the
        tracking thread before it looks at another frame."""
        with self._handover:
            self._newest = None
            self._reset_asked = True
            self._handover.notify()

    def close(self) -> None:
        """End the tracking thread (the node is destroyed)."""
        with self._handover:
            self._closing = True
            self._handover.notify()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)

    # ---- from continuous mode (the query thread) -----------------------------------------------------
    def anchor(self, answer) -> None:
        """A full answer of the standing query (about its capture's frame): the track starts again
        from it; one without a point (or without a capture) ends the track."""
        if not self.enabled() or not self.node.active:  # a query that ended after deactivate: no track
            return
        capture = answer.capture
        if not answer.success or capture is None:
            self.follower.anchor(answer, None, 0.0)
            self.last_reason = f"the last full answer has no point: {answer.message}"
            return
        self.follower.anchor(answer, frame_rgb(capture.frame), capture.stamp_s, answer.mask)

    # ---- from the camera callbacks: hand over and return -----------------------------------------------
    def on_colour(self, frame) -> None:
        if not self.enabled():
            if self.follower.anchor_answer is not None:
                self.reset()
            return
        with self._handover:
            if self._newest is not None:
                with self._lock:
                    self.skipped_total += 1
            self._newest = frame
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="pop_node tracking", daemon=True)
                self._thread.start()
            self._handover.notify()

    def on_depth(self, stamp_s: float) -> None:
        with self._handover:
            self._newest_depth_s = max(stamp_s, self._newest_depth_s or stamp_s)
            self._handover.notify()

    # ---- the tracking thread -------------------------------------------------------------------------------
    def _run(self) -> None:
        # An exception is logged and counted by the guard (which then returns None); the thread goes on.
        step = self.node.guarded(self._step)
        while step() is not False:
            pass

    def _has_work(self) -> bool:  # under _handover
        return self._closing or self._reset_asked or self._newest is not None or self._newest_depth_s is not None

    def _step(self) -> bool:
        """Wait for a colour frame or a depth image, and do what it allows; False once closing."""
        with self._handover:
            self._handover.wait_for(self._has_work)
            if self._closing:
                return False
            reset, self._reset_asked = self._reset_asked, False
            frame, self._newest = self._newest, None
            depth_s, self._newest_depth_s = self._newest_depth_s, None
        if reset:
            self.follower.reset()
            self._waiting.clear()
        if frame is not None:
            self._track(frame)
        if depth_s is not None:
            self._depth_arrived(depth_s)
        return True

    def _track(self, frame) -> None:
        image = frame_rgb(frame)
        step = self.follower.track(image, frame.stamp_s)
        if step is None:
            return
        if step.want_anchor:
            self.continuous.tick_soon()
        self._waiting.append((step, frame, image.shape[:2]))
        _, gap = self.node.camera.depth_near(frame.msg.header.stamp, SAME_STAMP_S)
        if not step.update.ok or gap <= SAME_STAMP_S:  # lost (no 3D to wait for), or its depth is here
            self._publish_until(frame.stamp_s)
        while len(self._waiting) > MAX_WAITING:
            self._publish(*self._waiting.popleft())

    def _depth_arrived(self, stamp_s: float) -> None:
        """Publish the waiting frames this depth is for, or that their own depth can no longer reach
        (it is stamped past their pairing window: theirs was dropped)."""
        window = float(self.node.param("depth_max_dt"))
        ready = [
            frame.stamp_s
            for _, frame, _ in self._waiting
            if abs(frame.stamp_s - stamp_s) <= SAME_STAMP_S or stamp_s > frame.stamp_s + window
        ]
        if ready:
            self._publish_until(max(ready))

    def _publish_until(self, stamp_s: float) -> None:
        """Publish the waiting frames stamped up to `stamp_s`, in order."""
        while self._waiting and self._waiting[0][1].stamp_s <= stamp_s:
            self._publish(*self._waiting.popleft())

    def _publish(self, step: TrackStep, frame: Frame, image_size) -> None:
        node = self.node
        camera = node.camera
        # The frame's capture (capture.py), taken now that its depth had its chance to arrive.
        capture = capture_of(frame, camera.depth, camera.camera_info, float(node.param("depth_max_dt")))
        answer, placement = tracked_answer(
            step,
            capture,
            image_size,
            LocateSettings.from_parameters(node.param),
            GraspSettings.from_parameters(node.param),
            node.resolve_topic_name("camera_info"),
        )
        if placement is not None and placement.depth_paired is not None:
            node.health.depth_lookup(placement.depth_paired)
        node.outputs.publish(answer, None, None, publish_heatmap=False)
        with self._lock:
            if answer.success:
                self.tracked_total += 1
                self.last_reason = ""
            else:
                self.lost_total += 1
                self.last_reason = answer.message
        if not answer.success:
            node.get_logger().info(f"continuous tracking: {answer.message}", throttle_duration_sec=5.0)

    # ---- /diagnostics --------------------------------------------------------------------------------------
    def diagnostic(self) -> list[tuple[str, bytes, str, dict]]:
        """The "tracking" task when continuous_tracking is on: (name, level, message, values)."""
        if not self.enabled():
            return []
        with self._lock:
            values = {
                "tracked answers": self.tracked_total,
                "tracks lost": self.lost_total,
                "frames skipped (came while tracking)": self.skipped_total,
            }
            reason = self.last_reason
        if self.follower.holds:
            return [("tracking", OK, "following the part", values)]
        if reason:
            return [("tracking", WARN, reason, values)]
        return [("tracking", OK, "waiting for a full answer of the standing query", values)]
