"""The models serve one query at a time: who holds them, who may wait, who is answered busy."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator


class WorkSlots:
    """One caller holds the models; at most `max_waiting` more wait for them (each holds an executor
    thread), each for at most `timeout_s`; more are answered busy at once. No lock of this class is
    held while a caller's body runs, busy or not."""

    def __init__(self):
        self._work = threading.Lock()  # held by the caller that uses the models
        self._count_lock = threading.Lock()  # guards _in_flight only, never held across a yield
        self._in_flight = 0  # holding or waiting

    @contextlib.contextmanager
    def hold(self, max_waiting: int, timeout_s: float) -> Iterator[str]:
        """Yields '' while this caller holds the models, else why not ("busy: ..."). `timeout_s` 0:
        try once, never wait."""
        limit = max_waiting + 1
        with self._count_lock:
            crowded = self._in_flight >= limit
            in_flight = self._in_flight
            if not crowded:
                self._in_flight += 1
        if crowded:
            yield f"busy: {in_flight} queries running or waiting (max_waiting_queries {limit - 1}); try again"
            return
        try:
            if not self._work.acquire(timeout=max(0.0, timeout_s)):
                yield "busy: another query is running; try again"
                return
            try:
                yield ""
            finally:
                self._work.release()
        finally:
            with self._count_lock:
                self._in_flight -= 1

    @contextlib.contextmanager
    def idle(self, timeout_s: float) -> Iterator[bool]:
        """Yields True once no caller holds the models (and keeps them free meanwhile), or False
        after `timeout_s` with a caller still holding them."""
        acquired = self._work.acquire(timeout=max(0.0, timeout_s))
        try:
            yield acquired
        finally:
            if acquired:
                self._work.release()
