"""Continuous mode: a standing query on the newest camera frame, at most `continuous_rate` times a
second, each frame at most once, never waiting behind a running query (no backlog). Its frame is the
capture taken once it holds the models (capture.py), as for the services."""

from __future__ import annotations

from sensor_msgs.msg import Image

from pop_ros.ros.answers import Answer, Outcome


class ContinuousMode:
    def __init__(self, node, queries, callback_group):
        self.node = node
        self.queries = queries
        self.callback_group = callback_group  # mutually exclusive: one tick at a time
        self._timer = None
        self._soon = None  # a one-off tick (tick_soon), cancelled until asked for
        self._done_seq = 0  # the newest frame a tick has answered about
        self.answered = None  # called with each answer of a tick (continuous tracking anchors on its capture)

    def restart(self, rate_hz: float) -> None:
        """Tick `rate_hz` times a second from now on (0 = stop)."""
        for timer in (self._timer, self._soon):
            if timer is not None:
                self.node.destroy_timer(timer)
        self._timer = self._soon = None
        if rate_hz > 0:
            self._timer = self.node.create_timer(
                1.0 / rate_hz, self.node.guarded(self.tick), callback_group=self.callback_group
            )
            self._soon = self.node.create_timer(0.001, self.node.guarded(self._tick_once), self.callback_group)
            self._soon.cancel()

    def tick_soon(self) -> None:
        """A tick as soon as the models are free, besides the rate's (continuous tracking lost its
        part); nothing while continuous mode is off."""
        soon = self._soon
        if soon is not None:
            soon.reset()

    def _tick_once(self) -> None:
        if self._soon is not None:
            self._soon.cancel()
        self.tick()

    def tick(self) -> Answer | None:
        """Answer the standing query about the newest frame (its capture), unless it was answered
        already or a query holds the models (then the next tick takes the newest frame). Returns the
        answer, or None when nothing ran."""
        node = self.node
        frame = node.camera.latest  # a cheap look first: nothing new, no need for the models
        if frame is None or frame.seq <= self._done_seq or node.pointer is None or not node.active:
            return None
        answer = self.queries.answer(
            node.param("continuous_query"),
            node.param("continuous_support_set"),
            Image(),
            publish=True,
            newer_than=self._done_seq,
            wait=False,
        )
        if answer is None or answer.outcome is Outcome.BUSY:
            return None  # nothing new once the models were held, or not answered: not done
        # The frame answered about; a frame refused (too old) is not tried again either.
        self._done_seq = answer.capture.seq if answer.capture is not None else frame.seq
        self.queries.record(answer)
        if self.answered is not None:
            self.answered(answer)
        if not answer.success:
            node.get_logger().warning(f"continuous query: {answer.message}", throttle_duration_sec=5.0)
        return answer
