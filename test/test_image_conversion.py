"""Image conversion (cv_bridge semantics) and 3D geometry, on real sensor_msgs messages."""

import math
import re
import sys

import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image

from pop_ros.messages.image_conversion import (
    ImageConversionError,
    compressed_to_rgb8,
    from_array,
    to_depth_m,
    to_rgb8,
)
from pop_ros.messages.stamps import StampBuffer
from pop_ros.spatial import geometry


def make_msg(array: np.ndarray, encoding: str, pad: int = 0, big_endian: bool = False) -> Image:
    """An Image message laid out by hand: rows padded by `pad` bytes, chosen byte order."""
    if array.dtype.itemsize > 1:
        array = array.astype(array.dtype.newbyteorder(">" if big_endian else "<"))
    rows = array.reshape(array.shape[0], -1).view(np.uint8)
    padded = np.concatenate([rows, np.full((rows.shape[0], pad), 0xAB, np.uint8)], axis=1)
    msg = Image()
    msg.height, msg.width = array.shape[:2]
    msg.encoding = encoding
    msg.is_bigendian = int(big_endian)
    msg.step = padded.shape[1]
    msg.data = padded.tobytes()
    return msg


@pytest.fixture
def rgb():
    return np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)


@pytest.mark.parametrize("pad", [0, 3])
def test_colour_encodings_with_row_padding(rgb, pad):
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    alpha = np.full((5, 7, 1), 200, np.uint8)
    np.testing.assert_array_equal(to_rgb8(make_msg(rgb, "rgb8", pad)), rgb)
    np.testing.assert_array_equal(to_rgb8(make_msg(bgr, "bgr8", pad)), rgb)
    np.testing.assert_array_equal(to_rgb8(make_msg(np.concatenate([rgb, alpha], 2), "rgba8", pad)), rgb)
    np.testing.assert_array_equal(to_rgb8(make_msg(np.concatenate([bgr, alpha], 2), "bgra8", pad)), rgb)
    grey = rgb[:, :, 0]
    np.testing.assert_array_equal(to_rgb8(make_msg(grey, "mono8", pad)), np.repeat(grey[:, :, None], 3, 2))


@pytest.mark.parametrize("big_endian", [False, True])
def test_mono16_scaled_like_cv_bridge_in_either_byte_order(big_endian):
    values = np.array([[0, 257, 65535], [1000, 32768, 65280]], np.uint16)
    out = to_rgb8(make_msg(values, "mono16", pad=2, big_endian=big_endian))
    expected = np.round(values.astype(np.float64) * 255 / 65535).astype(np.uint8)
    np.testing.assert_array_equal(out[:, :, 0], expected)
    assert out.shape == (2, 3, 3)


@pytest.mark.parametrize("big_endian", [False, True])
def test_depth_encodings_in_metres_with_invalid_as_nan(big_endian):
    millimetres = np.array([[0, 1500], [65535, 250]], np.uint16)
    depth = to_depth_m(make_msg(millimetres, "16UC1", pad=4, big_endian=big_endian))
    assert math.isnan(depth[0, 0]) and depth[0, 1] == pytest.approx(1.5) and depth[1, 1] == pytest.approx(0.25)
    metres = np.array([[np.nan, 2.0], [np.inf, -1.0]], np.float32)
    depth = to_depth_m(make_msg(metres, "32FC1", big_endian=big_endian))
    assert depth[0, 1] == 2.0 and np.isnan(depth[[0, 1, 1], [0, 0, 1]]).all()


def test_compressed_png_and_jpeg(rgb):
    for extension in (".png", ".jpg"):
        ok, encoded = cv2.imencode(extension, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        msg = CompressedImage(format=extension[1:], data=encoded.tobytes())
        decoded = compressed_to_rgb8(msg)
        assert decoded.shape == rgb.shape
        if extension == ".png":
            np.testing.assert_array_equal(decoded, rgb)
    with pytest.raises(ImageConversionError, match="could not be decoded"):
        compressed_to_rgb8(CompressedImage(format="jpeg", data=b"\x00\x01"))


def test_inconsistent_messages_are_clear_errors(rgb):
    msg = make_msg(rgb, "rgb8")
    msg.encoding = "bayer_rggb8"
    with pytest.raises(ImageConversionError, match="unsupported"):
        to_rgb8(msg)
    msg = make_msg(rgb, "rgb8")
    msg.step = 5  # smaller than 7 px * 3 bytes
    with pytest.raises(ImageConversionError, match="step 5 is smaller"):
        to_rgb8(msg)
    msg = make_msg(rgb, "rgb8")
    msg.height = 6
    with pytest.raises(ImageConversionError, match="data has 105 bytes but step x height = 126"):
        to_rgb8(msg)
    with pytest.raises(ImageConversionError, match="empty"):
        to_rgb8(Image(height=0, width=4, encoding="rgb8", step=12))
    with pytest.raises(ImageConversionError, match="depth encoding"):
        to_depth_m(make_msg(rgb, "rgb8"))


def test_round_trip_through_from_array(rgb):
    msg = from_array(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), "bgr8")
    assert msg.step == 21 and msg.is_bigendian == int(sys.byteorder == "big")
    np.testing.assert_array_equal(to_rgb8(msg), rgb)
    heat = np.linspace(0, 1, 35, dtype=np.float32).reshape(5, 7)
    np.testing.assert_array_equal(to_depth_m(from_array(heat + 1, "32FC1")), heat + 1)
    with pytest.raises(ImageConversionError):
        from_array(rgb, "32FC1")


# ---- geometry ------------------------------------------------------------------------------------
def test_robust_depth_median_ignores_invalid_and_scales_resolution():
    depth = np.full((10, 10), np.nan, np.float32)
    depth[4:7, 4:7] = [[1.0, 1.1, 1.2], [1.3, 5.0, 1.4], [1.5, 1.6, 0.0]]  # 0 = no depth, like NaN
    # Pixel (5, 5): ROS pixel coordinates, the centre of the top-left pixel is (0, 0).
    assert geometry.robust_depth(depth, 5.0, 5.0, (10, 10), window=3) == pytest.approx(1.35)  # 8 valid values
    assert geometry.robust_depth(depth, 5.4, 4.6, (10, 10), window=3) == pytest.approx(1.35)  # nearest pixel
    assert geometry.robust_depth(depth, 10.0, 10.0, (20, 20), window=3) == pytest.approx(1.35)  # colour at 2x
    assert math.isnan(geometry.robust_depth(depth, 0.5, 0.5, (10, 10), window=3))


def test_stamp_buffer_pairs_by_nearest_stamp_within_tolerance():
    buffer = StampBuffer(capacity=3)
    for stamp in (1.0, 1.1, 1.2, 1.3):
        buffer.add(stamp, f"depth@{stamp}")
    assert buffer.nearest(1.24, 0.05) == ("depth@1.2", pytest.approx(0.04))
    item, gap = buffer.nearest(1.0, 0.05)  # 1.0 fell out of the 3-slot buffer
    assert item is None and gap == pytest.approx(0.1)
    assert StampBuffer().nearest(1.0, 1.0) == (None, math.inf)


# ---- known bad compressed input ------------------------------------------------------------------
def test_empty_and_undecodable_compressed_data_are_refused_with_the_reason():
    with pytest.raises(ImageConversionError, match=r"compressed image \(format 'jpeg'\) is empty \(0 bytes\)"):
        compressed_to_rgb8(CompressedImage(format="jpeg", data=b""))  # cv2.imdecode itself raises on this
    with pytest.raises(ImageConversionError, match="could not be decoded as jpeg or png"):
        compressed_to_rgb8(CompressedImage(format="png", data=b"\x89PNG\r\n\x1a\n" + b"\x00" * 20))
    with pytest.raises(ImageConversionError, match="compressed depth image, not a colour frame"):
        compressed_to_rgb8(CompressedImage(format="16UC1; compressedDepth", data=b"\x00" * 16))


def test_exif_orientation_is_ignored_so_pixels_stay_aligned_with_depth():
    """A JPEG whose EXIF says 'rotate 90' keeps its stored 20x40 layout, the one camera_info and
    the depth image describe (OpenCV's default would rotate it to 40x20)."""
    import io

    from PIL import Image as PILImage

    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :20] = (255, 0, 0)  # left half red, right half black
    exif = PILImage.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    buffer = io.BytesIO()
    PILImage.fromarray(stored).save(buffer, "JPEG", exif=exif, quality=95)
    decoded = compressed_to_rgb8(CompressedImage(format="jpeg", data=buffer.getvalue()))
    assert decoded.shape == (20, 40, 3)
    assert decoded[10, 5, 0] > 200 and decoded[10, 35, 0] < 50
    rotated = cv2.imdecode(np.frombuffer(buffer.getvalue(), np.uint8), cv2.IMREAD_COLOR)
    assert rotated.shape == (40, 20, 3)  # what the default flags would have given


def bt601_rgb(y: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB from studio-range BT.601 Y, Cb, Cr (the textbook formula, float)."""
    y, u, v = (c.astype(np.float64) for c in (y, u, v))
    red = 1.164 * (y - 16) + 1.596 * (v - 128)
    green = 1.164 * (y - 16) - 0.813 * (v - 128) - 0.391 * (u - 128)
    blue = 1.164 * (y - 16) + 2.018 * (u - 128)
    return np.clip(np.round(np.stack([red, green, blue], axis=2)), 0, 255).astype(np.uint8)


def packed_yuv422(y: np.ndarray, u: np.ndarray, v: np.ndarray, order: str) -> np.ndarray:
    """(H, W, 2) uint8 bytes of a packed 4:2:2 image: per pixel pair U Y0 V Y1 (uyvy) or Y0 U Y1 V (yuyv)."""
    y0, y1 = y[:, 0::2], y[:, 1::2]
    quads = np.stack([u, y0, v, y1] if order == "uyvy" else [y0, u, y1, v], axis=2)  # (H, W/2, 4)
    return quads.reshape(y.shape[0], y.shape[1], 2)


@pytest.mark.parametrize(
    "encoding,order,opencv_code",
    [
        ("uyvy", "uyvy", cv2.COLOR_YUV2RGB_UYVY),
        ("yuv422", "uyvy", cv2.COLOR_YUV2RGB_UYVY),  # the older name of uyvy
        ("yuyv", "yuyv", cv2.COLOR_YUV2RGB_YUY2),
        ("yuv422_yuy2", "yuyv", cv2.COLOR_YUV2RGB_YUY2),  # the older name of yuyv
    ],
)
@pytest.mark.parametrize("pad", [0, 4])
def test_usb_camera_yuv422_encodings_convert_like_cv_bridge(encoding, order, opencv_code, pad):
    rng = np.random.default_rng(1)
    height, width = 6, 10
    y = rng.integers(16, 236, (height, width), dtype=np.uint8)
    u, v = (rng.integers(16, 241, (height, width // 2), dtype=np.uint8) for _ in range(2))
    packed = packed_yuv422(y, u, v, order)
    out = to_rgb8(make_msg(packed, encoding, pad))
    assert out.shape == (height, width, 3) and out.dtype == np.uint8
    # The OpenCV code cv_bridge picks for this encoding, on the same bytes: identical.
    np.testing.assert_array_equal(out, cv2.cvtColor(packed, opencv_code))
    # And the textbook BT.601 formula with each chroma pair shared by two pixels: within rounding.
    expected = bt601_rgb(y, np.repeat(u, 2, axis=1), np.repeat(v, 2, axis=1))
    assert np.abs(out.astype(int) - expected.astype(int)).max() <= 2
    # The byte order matters: the same bytes read in the other layout are a different picture.
    other = {"uyvy": "yuyv", "yuv422": "yuyv", "yuyv": "uyvy", "yuv422_yuy2": "uyvy"}[encoding]
    assert np.abs(to_rgb8(make_msg(packed, other, pad)).astype(int) - expected.astype(int)).max() > 30


def test_yuv422_with_an_odd_width_is_refused_with_the_reason():
    msg = Image(height=2, width=5, encoding="yuyv", step=10, data=bytes(20))
    with pytest.raises(ImageConversionError, match="yuyv image is 5 px wide: .* the width must be even"):
        to_rgb8(msg)


# ---- compressedDepth: depths as image_transport's compressed_depth_image_transport writes them -----------
def encode_compressed_depth(depth, encoding: str, depth_max=10.0, depth_quantization=100.0, codec="png"):
    """A CompressedImage laid out as the plugin's publisher writes it, from its documented format and
    written out here (not pop_ros's code): format "<encoding>; compressedDepth png"; data = a 12-byte
    header {int32 format = 0 (INV_DEPTH), float32 A, float32 B}, then a 16-bit PNG. 32FC1: the PNG holds
    q = A / depth + B truncated to uint16 (0 for NaN and depths >= depth_max), A = z0 (z0 + 1),
    B = 1 - A / depth_max. 16UC1: the millimetres, those past depth_max set to 0."""
    import struct

    a = np.float32(depth_quantization * (depth_quantization + 1.0))
    b = np.float32(1.0 - a / np.float32(depth_max))
    if encoding == "32FC1":
        depth = np.asarray(depth, np.float32)
        with np.errstate(invalid="ignore"):
            keep = depth < depth_max  # NaN compares false: 0
        stored = np.zeros(depth.shape, np.uint16)
        stored[keep] = (a / depth[keep] + b).astype(np.uint16)  # C++ float -> unsigned short truncates
    else:
        stored = np.where(depth > depth_max * 1000, 0, depth).astype(np.uint16)
        a = b = np.float32(0.0)  # the publisher leaves them unset for 16-bit depth
    ok, png = cv2.imencode(".png", stored)
    assert ok
    data = struct.pack("<iff", 0, a, b) + png.tobytes()
    return CompressedImage(format=f"{encoding}; compressedDepth {codec}", data=data)


def test_compressed_depth_32fc1_round_trips_within_the_quantization_step():
    depth = np.array([[1.0, 2.5, 0.8, 3.3], [np.nan, 12.0, 9.99, 0.3]], np.float32)
    decoded = to_depth_m(encode_compressed_depth(depth, "32FC1"))
    assert decoded.dtype == np.float32 and decoded.shape == (2, 4)
    # A = 10100, B = -1009 (the publisher's defaults): 1 m -> q 9091 -> 10100 / 10100 exactly, etc.
    assert decoded[0, :3].tolist() == np.float32([1.0, 2.5, 0.8]).tolist()
    assert decoded[0, 3] == pytest.approx(10100 / 3060, rel=1e-6)  # q = 2051.6 truncated: 3.3007 m
    assert math.isnan(decoded[1, 0]) and math.isnan(decoded[1, 1])  # NaN, and past depth_max (10 m)
    valid = np.isfinite(depth) & (depth < 10.0)
    step = depth[valid] ** 2 / 10100  # the quantization step at each depth
    assert np.all(np.abs(decoded[valid] - depth[valid]) <= step)
    # Another publisher setting (depth_max 4 m, depth_quantization 50): its own header decodes it.
    coarse = to_depth_m(encode_compressed_depth(np.array([[1.5, 3.9, 4.5]], np.float32), "32FC1", 4.0, 50.0))
    assert abs(coarse[0, 0] - 1.5) <= 1.5**2 / 2550 and abs(coarse[0, 1] - 3.9) <= 3.9**2 / 2550
    assert math.isnan(coarse[0, 2])


def test_compressed_depth_16uc1_is_millimetres_and_matches_the_raw_image():
    millimetres = np.array([[0, 1500, 65535], [250, 9999, 10001]], np.uint16)
    decoded = to_depth_m(encode_compressed_depth(millimetres, "16UC1"))
    np.testing.assert_array_equal(decoded[1, :2], np.float32([0.25, 9.999]))
    assert decoded[0, 1] == np.float32(1.5) and np.isnan(decoded[[0, 0, 1], [0, 2, 2]]).all()  # 0; past 10 m
    raw = millimetres.copy()
    raw[raw > 10000] = 0
    np.testing.assert_array_equal(decoded, to_depth_m(make_msg(raw, "16UC1")))  # as the raw topic gives it


@pytest.mark.parametrize(
    "change, reason",
    [
        (lambda m: setattr(m, "data", bytes(m.data)[:12]), "has 12 bytes: no room for the 12-byte header and a PNG"),
        (lambda m: setattr(m, "data", bytes(m.data)[:40]), "the data after the 12-byte header is not a readable PNG"),
        (lambda m: setattr(m, "data", bytes(m.data)[12:]), "is not a readable PNG"),  # no header: the PNG is cut
        (lambda m: setattr(m, "format", "32FC1; compressedDepth rvl"), "codec 'rvl' (format"),
        (lambda m: setattr(m, "format", "32FC1; compressed png"), "not the compressedDepth transport's"),
        (lambda m: setattr(m, "format", "rgb8; compressedDepth png"), "encoding 'rgb8'"),
        (lambda m: setattr(m, "data", b"\x01\x00\x00\x00" + bytes(m.data)[4:]), "quantization header (format 1"),
        (lambda m: setattr(m, "data", bytes(m.data)[:4] + b"\x00\x00\xc0\x7f" + bytes(m.data)[8:]), "A nan"),
    ],
)
def test_malformed_compressed_depth_is_refused_with_the_reason(change, reason):
    msg = encode_compressed_depth(np.full((4, 6), 1.2, np.float32), "32FC1")
    change(msg)
    with pytest.raises(ImageConversionError, match=re.escape(reason)):
        to_depth_m(msg)


def test_an_eight_bit_png_is_not_depth():
    import struct

    ok, png = cv2.imencode(".png", np.full((3, 3), 7, np.uint8))
    msg = CompressedImage(format="16UC1; compressedDepth png", data=struct.pack("<iff", 0, 0, 0) + png.tobytes())
    with pytest.raises(ImageConversionError, match="holds a 1-channel uint8 PNG; the transport writes one 16-bit"):
        to_depth_m(msg)
