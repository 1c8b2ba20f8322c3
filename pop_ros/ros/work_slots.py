"""The models serve one query at a time: who holds them, who may wait, who is answered busy."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

from pop_ros.pipeline.progress import WAITING, QueryProgress


class WorkSlots:
    """One caller holds the models; at most `max_waiting` more wait for them (each holds an executor
    thread), each for at most `timeout_s`, in the order they came; more are answered busy at once.
    A waiter whose query is cancelled leaves the queue at once. No lock of this class is held while
    a caller's body runs, busy or not."""

    def __init__(self):
        self._changed = threading.Condition()  # guards everything below; notified on every change
        self._held = False  # a caller uses the models
        self._queue: list[object] = []  # the waiters' tickets, first come first
        self._in_flight = 0  # holding or waiting

    @contextlib.contextmanager
    def hold(self, max_waiting: int, timeout_s: float, progress: QueryProgress | None = None) -> Iterator[str]:
        """Yields '' while this caller holds the models, else why not ("busy: ..."). `timeout_s` 0:
        try once, never wait. `progress`: told the place in the queue while waiting (the waiters
        ahead of this one: 0 = next); its cancellation raises QueryCancelled out of the wait."""
        progress = progress or QueryProgress()
        limit = max_waiting + 1
        with self._changed:
            crowded = self._in_flight >= limit
            in_flight = self._in_flight
            if not crowded:
                self._in_flight += 1
        if crowded:
            yield f"busy: {in_flight} queries running or waiting (max_waiting_queries {limit - 1}); try again"
            return
        try:
            if not self._take_turn(max(0.0, timeout_s), progress):
                yield "busy: another query is running; try again"
                return
            try:
                yield ""
            finally:
                self._release()
        finally:
            with self._changed:
                self._in_flight -= 1

    def _take_turn(self, timeout_s: float, progress: QueryProgress) -> bool:
        """Wait in the queue until this caller holds the models (True), or `timeout_s` passes (False)."""
        deadline = time.monotonic() + timeout_s
        ticket = object()
        remove_waker = progress.add_waker(self._wake)
        reported = None  # the place last reported
        try:
            with self._changed:
                self._queue.append(ticket)
            while True:
                with self._changed:
                    # Checked under the lock: a cancel after this check notifies only once we wait.
                    progress.check()
                    if not self._held and self._queue[0] is ticket:
                        self._held = True
                        return True
                    ahead = self._queue.index(ticket)
                    if ahead == reported:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            return False
                        self._changed.wait(remaining)
                        continue
                reported = ahead
                progress.stage(WAITING, ahead)  # outside the lock: it publishes feedback
        finally:
            remove_waker()
            with self._changed:
                if ticket in self._queue:
                    self._queue.remove(ticket)
                self._changed.notify_all()  # the next in line may take the models now

    def _wake(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def _release(self) -> None:
        with self._changed:
            self._held = False
            self._changed.notify_all()

    @contextlib.contextmanager
    def idle(self, timeout_s: float) -> Iterator[bool]:
        """Yields True once no caller holds the models (and keeps them free meanwhile, ahead of any
        waiter), or False after `timeout_s` with a caller still holding them."""
        with self._changed:
            acquired = self._changed.wait_for(lambda: not self._held, timeout=max(0.0, timeout_s))
            if acquired:
                self._held = True
        try:
            yield acquired
        finally:
            if acquired:
                self._release()
