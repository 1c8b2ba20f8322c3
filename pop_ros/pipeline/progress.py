"""One query's progress and its cancellation: the stages it reports and the flag it checks between them.

A caller that can give up on a query (an action goal) passes a `QueryProgress`; the work reports
each stage it enters (`stage`) and checks the flag at every boundary: while it waits for the
models, between the visual encoder and the MLLM, before each of the MLLM's decoder layers, between
the steps of the region (similarity to the supports, fusion, heatmap) and before anything is
published. A cancelled query raises `QueryCancelled` at the next
boundary, so the models are free as soon as the current stage ends. A caller that cannot cancel (a
service call) passes nothing: `QueryProgress()` then never fires.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

# The stages a query reports, in order, as the actions' feedback names them (`queue_position` is
# meaningful while waiting only: the queries ahead of this one in the queue, 0 = next).
WAITING = "waiting"  # for the models: another query holds them
CAPTURE = "capture"  # the models are held; the frame it answers about, with its depth, is taken
IMAGE_FEATURES = "image features"  # the visual encoder on the frame (or its cached features)
MLLM_PREFIX = "mllm prefix"  # the MLLM's vision tower and the tokens before the query text
QUERY = "query"  # the query's own tokens through the MLLM's layers, up to the deepest head
REGION = "region"  # fusion of the priors, the part's peak(s) and heatmap
PUBLISHING = "publishing"  # 3D point, approach pose, grasp frame; then the answer is published
STAGES = (WAITING, CAPTURE, IMAGE_FEATURES, MLLM_PREFIX, QUERY, REGION, PUBLISHING)


class QueryCancelled(BaseException):  # noqa: N818 - named for what happened, as asyncio.CancelledError
    """The query was cancelled; raised at the next stage boundary. A BaseException (as
    asyncio.CancelledError) so that no `except Exception` on the way, ours or a library's, takes it
    for an error and carries on."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class QueryProgress:
    """Stage reports and the cancel flag of one query. Thread-safe: `cancel` comes from another
    thread (an action server's cancel callback, a watch on its client)."""

    def __init__(self, on_stage: Callable[[str, int, float], None] | None = None):
        """`on_stage(stage, queue_position, elapsed_ms)` is called in the query's thread as it
        enters each stage (and while waiting, each time its place in the queue changes)."""
        self._on_stage = on_stage
        self._started = time.perf_counter()
        self._lock = threading.Lock()
        self._reason = ""
        self._wakers: list[Callable[[], None]] = []
        self.stage_name = ""

    @property
    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self._started) * 1000.0

    @property
    def cancelled(self) -> bool:
        return bool(self._reason)

    @property
    def reason(self) -> str:
        return self._reason

    def cancel(self, reason: str) -> bool:
        """Ask the query to stop; False if it was already asked. Wakes it if it waits."""
        with self._lock:
            if self._reason:
                return False
            self._reason = reason or "cancelled"
            wakers = list(self._wakers)
        for wake in wakers:  # outside our lock: a waker takes the waiter's lock
            wake()
        return True

    def check(self) -> None:
        """A stage boundary: raises QueryCancelled once the query is cancelled."""
        if self._reason:
            raise QueryCancelled(self._reason)

    def stage(self, name: str, queue_position: int = 0) -> None:
        """Enter stage `name` (after checking the flag) and report it."""
        self.check()
        self.stage_name = name
        if self._on_stage is not None:
            self._on_stage(name, queue_position, self.elapsed_ms)

    def add_waker(self, wake: Callable[[], None]) -> Callable[[], None]:
        """Call `wake()` when the query is cancelled (a waiter blocked on a condition); returns the
        function that removes it."""
        with self._lock:
            self._wakers.append(wake)

        def remove() -> None:
            with self._lock:
                if wake in self._wakers:
                    self._wakers.remove(wake)

        return remove
