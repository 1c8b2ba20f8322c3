"""The capture a query takes when it gets the models (capture.py), and the stamp buffer it pairs from."""

import types

import numpy as np

from pop_ros.messages.capture import Capture, Frame, capture_of, newest_capture
from pop_ros.messages.stamps import StampBuffer, stamped_frame_key

PERIOD_S = 1 / 30  # a RealSense's 30 Hz


def message(stamp_s: float, frame_id: str = "cam", data=b"pixels"):
    sec = int(stamp_s)
    header = types.SimpleNamespace(
        stamp=types.SimpleNamespace(sec=sec, nanosec=int(round((stamp_s - sec) * 1e9))), frame_id=frame_id
    )
    return types.SimpleNamespace(header=header, data=data)


def stream(count: int, start_s: float = 100.0):
    """`count` colour frames at 30 Hz and a depth buffer with the depth of each but the last."""
    frames = [Frame(message(start_s + i * PERIOD_S), start_s + i * PERIOD_S, i + 1) for i in range(count)]
    depth = StampBuffer()
    for frame in frames[:-1]:
        depth.add(frame.stamp_s, message(frame.stamp_s))
    return frames, depth


def test_a_capture_takes_the_newest_fresh_frame_whose_depth_has_arrived():
    frames, depth = stream(10)
    capture, problem = newest_capture(frames, depth, "info", frames[-1].stamp_s + 0.05, 0.3, 0.01)
    assert problem == "" and capture.seq == 9  # the 10th frame's depth has not arrived yet
    assert capture.depth.header.stamp == frames[8].msg.header.stamp and capture.camera_info == "info"
    depth.add(frames[-1].stamp_s, message(frames[-1].stamp_s))
    capture, _ = newest_capture(frames, depth, "info", frames[-1].stamp_s + 0.05, 0.3, 0.01)
    assert capture.seq == 10 and capture.depth is not None


def test_without_any_fresh_depth_the_newest_frame_is_taken_with_the_reason():
    frames, _ = stream(5)
    capture, _ = newest_capture(frames, StampBuffer(), "info", frames[-1].stamp_s, 0.3, 0.01)
    assert capture.seq == 5 and capture.depth is None and "no depth received" in capture.depth_note


def test_a_capture_is_refused_only_when_even_the_newest_frame_is_too_old():
    frames, depth = stream(5)
    capture, problem = newest_capture(frames, depth, None, frames[-1].stamp_s + 0.5, 0.3, 0.01)
    assert capture is None and "stale" in problem and "max_frame_age 0.3" in problem
    assert newest_capture([], depth, None, 0.0, 0.3, 0.01) == (None, "no camera frame received yet")


def test_depth_is_kept_over_a_time_span_not_a_count():
    """At 90 Hz the old 15-message ring held 0.17 s of depth; a span holds the same time at any rate."""
    buffer = StampBuffer(span_s=0.5)
    for i in range(100):
        buffer.add(i / 90, i)
    assert buffer.nearest(99 / 90 - 0.45, 0.01)[0] is not None  # 0.45 s back at 90 Hz: still there
    assert buffer.nearest(99 / 90 - 0.6, 0.01)[0] is None


def test_a_capture_keeps_its_messages_whatever_arrives_later():
    frames, depth = stream(3)
    capture = capture_of(frames[0], depth, "info", 0.01)
    for i in range(200):  # two seconds of newer depth push the frame's own depth out of the buffer
        depth.add(frames[-1].stamp_s + i * PERIOD_S, message(0.0))
    assert depth.nearest(frames[0].stamp_s, 0.01)[0] is None
    assert capture.depth.header.stamp == frames[0].msg.header.stamp


def test_a_repeated_stamp_with_new_pixels_is_a_new_frame():
    first, second = message(5.0, data=np.zeros(12, np.uint8)), message(5.0, data=np.ones(12, np.uint8))
    assert stamped_frame_key(first.header, first.data) != stamped_frame_key(second.header, second.data)
    assert stamped_frame_key(first.header, first.data) == stamped_frame_key(first.header, np.zeros(12, np.uint8))
    assert Capture(Frame(first, 5.0, 1), None, None).frame_key() == stamped_frame_key(first.header, first.data)
    assert Capture(Frame(first, 5.0, 0), None, None).frame_key() is None  # a request's image: hashed by content
