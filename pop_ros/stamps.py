"""Pairing messages of two streams by stamp (approximate time), e.g. a depth image with a colour one."""

from __future__ import annotations

import collections
import math
import threading


class StampBuffer:
    """The last few messages of a stream, looked up by nearest stamp (approximate time pairing)."""

    def __init__(self, capacity: int = 15):
        self._items: collections.deque = collections.deque(maxlen=capacity)
        self._lock = threading.Lock()

    def add(self, stamp_s: float, item) -> None:
        with self._lock:
            self._items.append((stamp_s, item))

    def nearest(self, stamp_s: float, tolerance_s: float):
        """(item, |dt|) of the message closest to `stamp_s`, or (None, best |dt| or inf)."""
        with self._lock:
            items = list(self._items)
        if not items:
            return None, math.inf
        best_stamp, best_item = min(items, key=lambda entry: abs(entry[0] - stamp_s))
        gap = abs(best_stamp - stamp_s)
        return (best_item, gap) if gap <= tolerance_s else (None, gap)


def stamped_frame_key(header) -> str | None:
    """A camera frame's name for the pipeline's frame cache: frame_id + stamp (no hashing of the
    pixels); None for an unstamped frame (stamp 0 names no frame: the pipeline then hashes its content)."""
    if header.stamp.sec == 0 and header.stamp.nanosec == 0:
        return None
    return f"{header.frame_id}@{header.stamp.sec}.{header.stamp.nanosec:09d}"
