"""Hypothesis strategies for what the outside world can send pop_ros: sensor_msgs Image (colour and
depth), CompressedImage and CameraInfo messages, and part queries.

Every generated message is one that rclpy can build and DDS can carry (field types and ranges of
the message definitions are respected); everything else is fair game: any encoding string, any
size, step and byte order, a data length that does or does not match, NaN/inf/zero/negative
depths, empty or random or truncated compressed bytes, zero/NaN/negative intrinsics, stamp 0."""

from __future__ import annotations

import math

import cv2
import numpy as np
from hypothesis import strategies as st

UINT32_MAX = 2**32 - 1
INT32_MAX = 2**31 - 1

ENCODINGS = (
    "rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16", "8UC1", "16UC1", "32FC1",
    "8UC3", "16UC3", "32FC3", "64FC1", "yuv422", "bayer_rggb8", "RGB8", "",
)  # fmt: skip
BYTES_PER_PIXEL = {
    "rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1, "8UC1": 1, "mono16": 2, "16UC1": 2,
    "32FC1": 4, "8UC3": 3, "16UC3": 6, "32FC3": 12, "64FC1": 8, "yuv422": 2, "bayer_rggb8": 1,
}  # fmt: skip
SPECIAL_FLOATS = (math.nan, math.inf, -math.inf, 0.0, -0.0, -1.0, 1e-30, 1e30, -1e30)

encodings = st.one_of(st.sampled_from(ENCODINGS), st.text(max_size=20))


@st.composite
def stamps(draw):
    """(sec, nanosec): zero, small, now-ish, extreme."""
    sec = draw(st.one_of(st.just(0), st.integers(0, 10), st.integers(1_700_000_000, 1_900_000_000),
                         st.integers(-(2**31), INT32_MAX)))  # fmt: skip
    nanosec = draw(st.one_of(st.just(0), st.integers(0, 999_999_999), st.integers(0, UINT32_MAX)))
    return sec, nanosec


def _set_header(msg, stamp, frame_id):
    msg.header.stamp.sec, msg.header.stamp.nanosec = stamp
    msg.header.frame_id = frame_id


def _float_pixels(draw, count: int) -> bytes:
    values = draw(
        st.lists(
            st.one_of(st.sampled_from(SPECIAL_FLOATS), st.floats(-100, 100, width=32)), min_size=count, max_size=count
        )
    )
    return np.asarray(values, dtype=np.float32).tobytes()


@st.composite
def image_fields(draw, encoding_strategy=encodings, max_side: int = 24):
    """The fields of a sensor_msgs/Image as a dict (consistent or not)."""
    encoding = draw(encoding_strategy)
    consistent = draw(st.booleans())
    height = draw(st.integers(0, max_side))
    width = draw(st.integers(0, max_side))
    pixel = BYTES_PER_PIXEL.get(encoding, draw(st.integers(1, 4)))
    step = width * pixel + draw(st.sampled_from([0, 0, 1, 3, 8]))
    if consistent:
        if encoding == "32FC1":
            rows = [_float_pixels(draw, width) + b"\x00" * (step - width * 4) for _ in range(height)]
            data = b"".join(rows)
        else:
            data = draw(st.binary(min_size=step * height, max_size=step * height)) if step * height < 4096 else (
                np.random.default_rng(height * 131 + width).integers(0, 256, step * height, np.uint8).tobytes()
            )  # fmt: skip
    else:
        height = draw(st.one_of(st.just(height), st.integers(0, UINT32_MAX)))
        width = draw(st.one_of(st.just(width), st.integers(0, UINT32_MAX)))
        step = draw(st.one_of(st.just(step), st.integers(0, UINT32_MAX)))
        data = draw(st.binary(max_size=256))
    return {
        "encoding": encoding,
        "height": height,
        "width": width,
        "step": step,
        "is_bigendian": draw(st.sampled_from([0, 1, 1, 255])),
        "data": data,
        "stamp": draw(stamps()),
        "frame_id": draw(st.sampled_from(["camera_optical", "", "ünï cødé/frame"])),
    }


def build_image(fields: dict):
    from sensor_msgs.msg import Image

    msg = Image()
    _set_header(msg, fields["stamp"], fields["frame_id"])
    msg.height, msg.width, msg.step = fields["height"], fields["width"], fields["step"]
    msg.encoding, msg.is_bigendian, msg.data = fields["encoding"], fields["is_bigendian"], fields["data"]
    return msg


def images(max_side: int = 24):
    """Colour-topic Image messages (also depth encodings and nonsense ones)."""
    return image_fields(max_side=max_side).map(build_image)


def depth_images(max_side: int = 24):
    """Depth-topic Image messages: mostly the REP-118 encodings, with NaN/inf/0/negative values."""
    return image_fields(st.one_of(st.sampled_from(["32FC1", "16UC1", "32FC1"]), encodings), max_side).map(build_image)


def _encoded(extension: str, seed: int, size: tuple[int, int]) -> bytes:
    image = np.random.default_rng(seed).integers(0, 256, (*size, 3), np.uint8)
    ok, buffer = cv2.imencode(extension, image)
    assert ok
    return buffer.tobytes()


@st.composite
def compressed_images(draw):
    from sensor_msgs.msg import CompressedImage

    kind = draw(st.sampled_from(["empty", "random", "truncated", "valid", "valid", "corrupted"]))
    extension = draw(st.sampled_from([".png", ".jpg"]))
    size = (draw(st.integers(1, 40)), draw(st.integers(1, 40)))
    valid = _encoded(extension, draw(st.integers(0, 1000)), size)
    if kind == "empty":
        data = b""
    elif kind == "random":
        data = draw(st.binary(min_size=1, max_size=512))
    elif kind == "truncated":
        data = valid[: draw(st.integers(1, max(1, len(valid) - 1)))]
    elif kind == "corrupted":
        position = draw(st.integers(0, len(valid) - 1))
        data = valid[:position] + bytes([valid[position] ^ 0xFF]) + valid[position + 1 :]
    else:
        data = valid
    msg = CompressedImage()
    _set_header(msg, draw(stamps()), "camera_optical")
    formats = ["jpeg", "png", "rgb8; jpeg compressed bgr8", "16UC1; compressedDepth"]
    msg.format = draw(st.one_of(st.sampled_from(formats), st.text(max_size=30)))
    msg.data = data
    return msg


@st.composite
def camera_infos(draw):
    from sensor_msgs.msg import CameraInfo

    msg = CameraInfo()
    _set_header(msg, draw(stamps()), "camera_optical")
    msg.height = draw(st.one_of(st.just(0), st.integers(1, 2000), st.integers(0, UINT32_MAX)))
    msg.width = draw(st.one_of(st.just(0), st.integers(1, 2000), st.integers(0, UINT32_MAX)))
    number = st.one_of(st.sampled_from(SPECIAL_FLOATS), st.floats(-2000, 2000))
    msg.k = draw(st.one_of(st.lists(number, min_size=9, max_size=9),
                           st.just([500.0, 0.0, 320.0, 0.0, 500.0, 240.0, 0.0, 0.0, 1.0])))  # fmt: skip
    msg.distortion_model = draw(st.sampled_from(["plumb_bob", "", "equidistant"]))
    msg.d = draw(st.lists(number, max_size=8))
    return msg


queries = st.one_of(
    st.sampled_from(["", " ", "handle of the mug", "the spout", "把手", "ручка кружки", "🫖 spout", "\n\t", "{query}"]),
    st.text(max_size=60),
    st.text(min_size=200, max_size=2000),
)
support_set_names = st.one_of(st.sampled_from(["", "mug_handle", "nope", "../../etc/passwd"]), st.text(max_size=20))
