"""sensor_msgs/Image <-> numpy with cv_bridge's semantics, for the encodings pop_ros handles.

Why not cv_bridge: no ROS 2 cv_bridge installs from pip (the PyPI package of that name is an old
ROS 1 copy that breaks on numpy 2), and a colcon-built one ties the node to a system OpenCV. This
module is small and tested: it honours the row `step` (padding), `is_bigendian`, and channel order.

Colour in: rgb8, bgr8, rgba8, bgra8, mono8, mono16 (scaled to 8 bit like cv_bridge: x * 255 / 65535),
and the packed YUV 4:2:2 of USB cameras (usb_cam, v4l2_camera), converted with the OpenCV codes cv_bridge
uses: `uyvy` and its older name `yuv422` (bytes U Y0 V Y1) -> COLOR_YUV2RGB_UYVY; `yuyv` and its older
name `yuv422_yuy2` (Y0 U Y1 V) -> COLOR_YUV2RGB_YUY2. Two pixels share 4 bytes, so the width must be even.
Depth in (REP-118): 16UC1 millimetres (0 = invalid) and 32FC1 metres (NaN/inf/<=0 = invalid), both
returned as float32 metres with NaN where invalid; and the same depths as image_transport's
`compressedDepth` transport writes them (a sensor_msgs/CompressedImage, see `compressed_depth_to_m`).
"""

from __future__ import annotations

import math
import struct
import sys

import cv2
import numpy as np

# encoding -> (channels, numpy dtype)
_FORMATS = {
    "rgb8": (3, np.uint8),
    "bgr8": (3, np.uint8),
    "rgba8": (4, np.uint8),
    "bgra8": (4, np.uint8),
    "mono8": (1, np.uint8),
    "8UC1": (1, np.uint8),
    "mono16": (1, np.uint16),
    "16UC1": (1, np.uint16),
    "32FC1": (1, np.float32),
    "uyvy": (2, np.uint8),
    "yuv422": (2, np.uint8),
    "yuyv": (2, np.uint8),
    "yuv422_yuy2": (2, np.uint8),
}
# sensor_msgs/image_encodings.hpp: "yuv422" is the deprecated name of "uyvy", "yuv422_yuy2" of "yuyv".
_YUV422_TO_RGB = {
    "uyvy": cv2.COLOR_YUV2RGB_UYVY,
    "yuv422": cv2.COLOR_YUV2RGB_UYVY,
    "yuyv": cv2.COLOR_YUV2RGB_YUY2,
    "yuv422_yuy2": cv2.COLOR_YUV2RGB_YUY2,
}
COLOUR_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16", *_YUV422_TO_RGB)
DEPTH_ENCODINGS = ("16UC1", "32FC1")


class ImageConversionError(ValueError):
    """The message cannot be read as an image; the text says which field is wrong."""


def _to_array(msg) -> np.ndarray:
    """The message's pixels as (H, W) or (H, W, C), native byte order, padding removed."""
    encoding = msg.encoding
    if encoding not in _FORMATS:
        supported = ", ".join(COLOUR_ENCODINGS + DEPTH_ENCODINGS)
        raise ImageConversionError(f"unsupported encoding {encoding!r} (supported: {supported})")
    channels, dtype = _FORMATS[encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height == 0 or width == 0:
        raise ImageConversionError(f"image is empty ({width}x{height})")
    row_bytes = width * channels * np.dtype(dtype).itemsize
    if step < row_bytes:
        raise ImageConversionError(f"step {step} is smaller than width x pixel size = {row_bytes} bytes")
    data = msg.data
    size = len(data)
    if size != step * height:
        raise ImageConversionError(f"data has {size} bytes but step x height = {step * height}")
    buffer = np.frombuffer(bytes(data) if not isinstance(data, (bytes, bytearray, memoryview)) else data, np.uint8)
    rows = buffer.reshape(height, step)[:, :row_bytes]
    array = np.ascontiguousarray(rows).view(dtype).reshape(height, width, channels)
    if np.dtype(dtype).itemsize > 1 and bool(msg.is_bigendian) != (sys.byteorder == "big"):
        array = array.byteswap()
    return array[:, :, 0] if channels == 1 else array


def to_rgb8(msg) -> np.ndarray:
    """A colour or mono sensor_msgs/Image as (H, W, 3) uint8 RGB."""
    if msg.encoding not in COLOUR_ENCODINGS:
        raise ImageConversionError(
            f"unsupported colour encoding {msg.encoding!r} (supported: {', '.join(COLOUR_ENCODINGS)})"
        )
    encoding = msg.encoding
    if encoding in _YUV422_TO_RGB and int(msg.width) % 2:
        raise ImageConversionError(
            f"{encoding} image is {msg.width} px wide: packed YUV 4:2:2 stores pixel pairs, so the width must be even"
        )
    array = _to_array(msg)
    if encoding in _YUV422_TO_RGB:
        return cv2.cvtColor(array, _YUV422_TO_RGB[encoding])
    if encoding == "rgb8":
        return array
    if encoding == "bgr8":
        return cv2.cvtColor(array, cv2.COLOR_BGR2RGB)
    if encoding == "rgba8":
        return cv2.cvtColor(array, cv2.COLOR_RGBA2RGB)
    if encoding == "bgra8":
        return cv2.cvtColor(array, cv2.COLOR_BGRA2RGB)
    if encoding == "mono16":
        array = np.round(array.astype(np.float32) * (255.0 / 65535.0)).astype(np.uint8)
    return cv2.cvtColor(array, cv2.COLOR_GRAY2RGB)


def compressed_to_rgb8(msg) -> np.ndarray:
    """A sensor_msgs/CompressedImage (jpeg, png) as (H, W, 3) uint8 RGB.

    EXIF orientation is ignored: the pixels stay in the sensor's layout, the one the depth image and
    camera_info describe (a rotated image would put the point on the wrong depth pixel)."""
    data = bytes(msg.data)
    if not data:
        raise ImageConversionError(f"compressed image (format {msg.format!r}) is empty (0 bytes)")
    if "compresseddepth" in str(msg.format).lower():
        raise ImageConversionError(
            f"compressed image has format {msg.format!r}: a compressed depth image, not a colour frame"
        )
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    except cv2.error as error:  # OpenCV raises on some malformed streams instead of returning None
        reason = str(error).strip().splitlines()[-1][:200]
        raise ImageConversionError(
            f"compressed image (format {msg.format!r}, {len(data)} bytes) could not be decoded: {reason}"
        ) from error
    if image is None or image.size == 0:
        raise ImageConversionError(
            f"compressed image (format {msg.format!r}, {len(data)} bytes) could not be decoded as jpeg or png"
        )
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def to_depth_m(msg) -> np.ndarray:
    """A REP-118 depth image as (H, W) float32 metres, NaN where invalid: a sensor_msgs/Image, or a
    sensor_msgs/CompressedImage of the compressedDepth transport."""
    if is_compressed(msg):
        return compressed_depth_to_m(msg)
    if msg.encoding not in DEPTH_ENCODINGS:
        raise ImageConversionError(f"unsupported depth encoding {msg.encoding!r} (supported: 16UC1 mm, 32FC1 m)")
    array = _to_array(msg)
    if msg.encoding == "16UC1":
        metres = array.astype(np.float32) / 1000.0
        metres[array == 0] = np.nan
        return metres
    metres = array.astype(np.float32, copy=True)
    metres[~np.isfinite(metres) | (metres <= 0)] = np.nan
    return metres


def is_compressed(msg) -> bool:
    """A sensor_msgs/CompressedImage (it has `format`, no `encoding`), rather than an Image."""
    return hasattr(msg, "format") and not hasattr(msg, "encoding")


# compressed_depth_image_transport (image_transport_plugins, compression_common.h and codec.cpp): `data`
# is a 12-byte ConfigHeader, then the image. The header is the C struct { enum compressionFormat format;
# float depthParam[2]; } copied in the publisher's byte order (little-endian on every ROS platform):
# int32 format (INV_DEPTH = 0), float32 quantization A, float32 B. `format` is "<encoding>;
# compressedDepth <codec>", codec png (also when missing) or rvl. 16UC1: the image is the millimetre
# depth as a 16-bit PNG (depths past the publisher's depth_max written 0). 32FC1: the image is the
# quantized inverse depth q = A / depth + B as a 16-bit PNG, 0 = invalid (NaN or past depth_max),
# decoded as depth = A / (q - B); A = z0 (z0 + 1), B = 1 - A / depth_max from the publisher's
# depth_quantization z0 (default 100) and depth_max (default 10 m): a step of depth^2 / A metres.
COMPRESSED_DEPTH_HEADER = struct.Struct("<iff")
INV_DEPTH = 0
COMPRESSED_DEPTH_ENCODINGS = ("16UC1", "mono16", "32FC1")


def _compressed_depth_format(text: str) -> tuple[str, str]:
    """(depth encoding, codec) of a compressedDepth `format` ("32FC1; compressedDepth png")."""
    encoding, separator, transport = text.partition(";")
    encoding, words = encoding.strip(), transport.split()
    if separator and (not words or words[0] != "compressedDepth"):
        raise ImageConversionError(f"compressed image has format {text!r}: not the compressedDepth transport's")
    codec = words[1] if len(words) > 1 else "png"  # the plugin's older messages name no codec: png
    if codec != "png":
        raise ImageConversionError(
            f"compressedDepth codec {codec!r} (format {text!r}) is not supported: publish with the png codec (the "
            "default; `<topic>.compressedDepth.format: png`)"
        )
    if encoding not in COMPRESSED_DEPTH_ENCODINGS:
        raise ImageConversionError(
            f"compressedDepth image of encoding {encoding!r} (format {text!r}); supported: 16UC1 mm, 32FC1 m"
        )
    return encoding, codec


def compressed_depth_to_m(msg) -> np.ndarray:
    """A sensor_msgs/CompressedImage of image_transport's compressedDepth transport (png codec, 16UC1 or
    32FC1) as (H, W) float32 metres, NaN where invalid. ImageConversionError says what is malformed."""
    encoding, _ = _compressed_depth_format(str(msg.format))
    data = bytes(msg.data)
    header_size = COMPRESSED_DEPTH_HEADER.size
    if len(data) <= header_size:
        raise ImageConversionError(
            f"compressedDepth image (format {msg.format!r}) has {len(data)} bytes: no room for the "
            f"{header_size}-byte header and a PNG"
        )
    kind, quant_a, quant_b = COMPRESSED_DEPTH_HEADER.unpack_from(data)
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8, offset=header_size), cv2.IMREAD_UNCHANGED)
    except cv2.error as error:  # OpenCV raises on some malformed streams instead of returning None
        image = None
        reason = ": " + str(error).strip().splitlines()[-1][:200]
    else:
        reason = ""
    if image is None or image.size == 0:
        raise ImageConversionError(
            f"compressedDepth image (format {msg.format!r}, {len(data)} bytes): the data after the "
            f"{header_size}-byte header is not a readable PNG{reason}"
        )
    if image.ndim != 2 or image.dtype != np.uint16:
        channels = 1 if image.ndim == 2 else image.shape[2]
        raise ImageConversionError(
            f"compressedDepth image (format {msg.format!r}) holds a {channels}-channel {image.dtype} PNG; the "
            "transport writes one 16-bit channel"
        )
    if encoding != "32FC1":
        metres = image.astype(np.float32) / 1000.0
        metres[image == 0] = np.nan
        return metres
    if kind != INV_DEPTH or not (math.isfinite(quant_a) and math.isfinite(quant_b)) or quant_a <= 0:
        raise ImageConversionError(
            f"compressedDepth 32FC1 image has a malformed quantization header (format {kind}, A {quant_a}, "
            f"B {quant_b}; expected format {INV_DEPTH} and a finite A > 0)"
        )
    quantized = image.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        metres = np.float32(quant_a) / (quantized - np.float32(quant_b))  # float32, as the plugin decodes
    metres[(image == 0) | ~np.isfinite(metres) | (metres <= 0)] = np.nan
    return metres


def from_array(array: np.ndarray, encoding: str, header=None):
    """A sensor_msgs/Image holding `array` (bgr8/rgb8 (H, W, 3) uint8, or 32FC1 (H, W) float32)."""
    from sensor_msgs.msg import Image

    if encoding not in ("bgr8", "rgb8", "mono8", "32FC1", "16UC1"):
        raise ImageConversionError(f"cannot write encoding {encoding!r}")
    channels, dtype = _FORMATS[encoding]
    array = np.ascontiguousarray(array, dtype=dtype)
    if array.ndim != (3 if channels > 1 else 2) or (channels > 1 and array.shape[2] != channels):
        raise ImageConversionError(f"array of shape {array.shape} does not fit encoding {encoding}")
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(array.shape[0]), int(array.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = int(sys.byteorder == "big")
    msg.step = int(array.shape[1] * channels * np.dtype(dtype).itemsize)
    msg.data = array.tobytes()
    return msg
