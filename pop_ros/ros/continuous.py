"""Continuous mode: a standing query on the newest camera frame, at most `continuous_rate` times a
second, each frame at most once, never waiting behind a running query (no backlog)."""

from __future__ import annotations

from sensor_msgs.msg import Image

from pop_ros.ros.answers import Answer, Outcome


class ContinuousMode:
    def __init__(self, node, queries, callback_group):
        self.node = node
        self.queries = queries
        self.callback_group = callback_group  # mutually exclusive: one tick at a time
        self._timer = None
        self._done_seq = 0  # the newest frame a tick has answered about

    def restart(self, rate_hz: float) -> None:
        """Tick `rate_hz` times a second from now on (0 = stop)."""
        if self._timer is not None:
            self.node.destroy_timer(self._timer)
            self._timer = None
        if rate_hz > 0:
            self._timer = self.node.create_timer(
                1.0 / rate_hz, self.node.guarded(self.tick), callback_group=self.callback_group
            )

    def tick(self) -> Answer | None:
        """Answer the standing query about the newest frame, unless it was answered already or a
        query holds the models (then the next tick takes the newest frame). Returns the answer, or
        None when nothing ran."""
        node = self.node
        frame = node.camera.latest  # one read: this frame and its number belong together
        if frame is None or frame.seq <= self._done_seq or node.pointer is None or not node.active:
            return None
        answer = self.queries.answer(
            node.param("continuous_query"),
            node.param("continuous_support_set"),
            Image(),
            publish=True,
            frame=frame,
            wait=False,
        )
        if answer.outcome is Outcome.BUSY:
            return None  # not answered: not done
        self._done_seq = frame.seq
        self.queries.record(answer)
        if not answer.success:
            node.get_logger().warning(f"continuous query: {answer.message}", throttle_duration_sec=5.0)
        return answer
