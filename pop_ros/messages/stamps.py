"""Pairing messages of two streams by stamp (approximate time), e.g. a depth image with a colour one,
and naming a camera frame for the pipeline's frame cache."""

from __future__ import annotations

import collections
import math
import threading
import zlib

# Depth images kept for pairing: those stamped within this span of the newest. A query pairs its frame
# when it gets the models (capture.py), so the span only has to cover the gap between a colour frame
# and its depth, whatever the query's latency; kept by time, not count, so a 90 Hz stream keeps as long.
DEPTH_SPAN_S = 1.0


class StampBuffer:
    """Recent messages of a stream, looked up by nearest stamp (approximate time pairing): those
    stamped within `span_s` of the newest, and at most `capacity` of them (a bound on memory)."""

    def __init__(self, capacity: int = 120, span_s: float = DEPTH_SPAN_S):
        self._items: collections.deque = collections.deque(maxlen=capacity)
        self.span_s = span_s
        self._lock = threading.Lock()

    def add(self, stamp_s: float, item) -> None:
        with self._lock:
            self._items.append((stamp_s, item))
            newest = max(stamp_s, self._items[0][0])
            while len(self._items) > 1 and self._items[0][0] < newest - self.span_s:
                self._items.popleft()

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def nearest(self, stamp_s: float, tolerance_s: float):
        """(item, |dt|) of the message closest to `stamp_s`, or (None, best |dt| or inf)."""
        with self._lock:
            items = list(self._items)
        if not items:
            return None, math.inf
        best_stamp, best_item = min(items, key=lambda entry: abs(entry[0] - stamp_s))
        gap = abs(best_stamp - stamp_s)
        return (best_item, gap) if gap <= tolerance_s else (None, gap)


def content_fingerprint(data) -> str:
    """A cheap fingerprint of an image's bytes (CRC-32 of all of them: about 1 ms for a 1280x720
    rgb8 frame), so a repeated stamp with new pixels names a new frame."""
    return f"{zlib.crc32(memoryview(data).cast('B')) if data is not None else 0:08x}"


def stamped_frame_key(header, data=None) -> str | None:
    """A camera frame's name for the pipeline's frame cache: frame_id + stamp + a fingerprint of its
    bytes `data` (a paused simulator or a driver with coarse stamps repeats a stamp with new pixels);
    None for an unstamped frame (stamp 0 names no frame: the pipeline then hashes its content)."""
    if header.stamp.sec == 0 and header.stamp.nanosec == 0:
        return None
    key = f"{header.frame_id}@{header.stamp.sec}.{header.stamp.nanosec:09d}"
    return key if data is None else f"{key}#{content_fingerprint(data)}"
