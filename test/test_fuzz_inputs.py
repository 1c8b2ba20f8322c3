"""Property-based fuzzing of everything that reads outside input without the node: message
conversion, geometry on any camera_info, and the pipeline on any query and image shape. Each
input is either accepted with a well-formed result or refused with the module's own error class
(one line, saying what is wrong); nothing else may escape."""

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pop_ros.messages.image_conversion import ImageConversionError, compressed_to_rgb8, to_depth_m, to_rgb8
from pop_ros.messages.stamps import StampBuffer
from pop_ros.pipeline import PointerError
from pop_ros.spatial import geometry
from pop_ros.spatial.camera_model import CameraModel, CameraModelError
from test import fuzz_strategies as fs

pytestmark = pytest.mark.slow  # generated inputs by the hundred

FUZZ = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


def one_line(error: Exception) -> str:
    text = str(error)
    assert text and "\n" not in text, repr(text)
    return text


@FUZZ
@given(fs.images())
def test_any_image_message_is_converted_or_refused_with_a_reason(msg):
    try:
        rgb = to_rgb8(msg)
    except ImageConversionError as error:
        one_line(error)
    else:
        assert rgb.shape == (msg.height, msg.width, 3) and rgb.dtype == np.uint8
    try:
        depth = to_depth_m(msg)
    except ImageConversionError as error:
        one_line(error)
    else:
        assert depth.shape == (msg.height, msg.width) and depth.dtype == np.float32
        valid = depth[~np.isnan(depth)]
        assert np.isfinite(valid).all() and (valid > 0).all()


@FUZZ
@given(fs.depth_images())
def test_any_depth_message_gives_positive_finite_metres_or_nan(msg):
    try:
        depth = to_depth_m(msg)
    except ImageConversionError as error:
        one_line(error)
        return
    valid = depth[~np.isnan(depth)]
    assert np.isfinite(valid).all() and (valid > 0).all()
    # The robust depth anywhere in the image is NaN or one of the valid depths' medians: finite, > 0.
    value = geometry.robust_depth(depth, msg.width / 2, msg.height / 2, (msg.height, msg.width), 5)
    assert math.isnan(value) or (math.isfinite(value) and value > 0)


@FUZZ
@given(fs.compressed_images())
def test_any_compressed_message_is_decoded_or_refused_with_a_reason(msg):
    try:
        rgb = compressed_to_rgb8(msg)
    except ImageConversionError as error:
        assert str(msg.format) in one_line(error) or "format" in str(error)
    else:
        assert rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.dtype == np.uint8 and rgb.size > 0


@FUZZ
@given(fs.camera_infos(), st.floats(0, 2000), st.floats(0, 2000), st.floats(0.01, 100))
def test_any_camera_info_deprojects_to_a_finite_point_or_is_refused(info, u, v, depth):
    """The node's deprojection (CameraModel, rectified image) on any camera_info."""
    model = CameraModel.from_camera_info(info, rectified=True)
    try:
        xyz = model.pixel_to_point(u, v, depth, (info.height or 480, info.width or 640))
    except CameraModelError as error:
        one_line(error)
    else:
        assert all(math.isfinite(c) for c in xyz) and xyz[2] == depth


def test_stamp_zero_and_out_of_range_stamps_pair_nothing():
    buffer = StampBuffer()
    buffer.add(1_795_656_176.76, "depth")
    item, gap = buffer.nearest(0.0, 0.05)
    assert item is None and gap > 1e9  # the node reports such a gap as an impossible stamp difference


# ---- the pipeline on any query and any image shape ------------------------------------------------
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(query=fs.queries, support_set=fs.support_set_names)
def test_any_query_is_answered_or_refused_with_a_reason(tiny_pointer, query, support_set):
    image = np.random.default_rng(0).integers(0, 256, (48, 64, 3), np.uint8)
    try:
        result = tiny_pointer.point(image, query, support_set=support_set or None)
    except PointerError as error:
        one_line(error)
    else:
        assert 0 <= result.u < 64 and 0 <= result.v < 48 and math.isfinite(result.score)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(height=st.integers(1, 2000), width=st.integers(1, 2000))
def test_any_image_shape_is_answered_or_refused_before_the_models(tiny_pointer, height, width):
    if height * width > 400_000:  # keep the test fast; large images are exercised elsewhere
        height = max(1, height // 8)
    image = np.zeros((height, width, 3), np.uint8)
    try:
        result = tiny_pointer.point(image, "the handle")
    except PointerError as error:
        assert "supported" in one_line(error)
    else:
        assert 0 <= result.u < width and 0 <= result.v < height


@pytest.mark.parametrize("family", ["qwen2_5_vl", "molmo2", "internvl"])
def test_image_size_limits_are_the_processors_own(tiny_adapters, family):
    """The stated limits are the processor's own: at the edge of the range it runs, beyond the edge
    the processor itself fails (so refusing first loses nothing and says why)."""
    adapter = tiny_adapters[family]
    limits = adapter.image_limits
    if math.isinf(limits.max_aspect):  # resized to a fixed crop: extreme shapes run
        for height, width in ((1, 1), (1, 2000), (2000, 1)):
            assert limits.problem(height, width) is None
            adapter.prepare(np.zeros((height, width, 3), np.uint8), "the lid")
        return
    edge = int(limits.max_aspect)
    for height, width in ((2, 2 * edge), (2 * edge, 2)):
        assert limits.problem(height, width) is None
        adapter.prepare(np.zeros((height, width, 3), np.uint8), "the lid")
    for height, width in ((2, 2 * edge + 1), (2 * edge + 1, 2)):
        problem = limits.problem(height, width)
        assert problem and f"aspect ratio at most {edge}:1" in problem
        with pytest.raises(ValueError, match="aspect ratio"):
            adapter.prepare(np.zeros((height, width, 3), np.uint8), "the lid")


@pytest.mark.parametrize(
    "size,message",
    [
        ((10, 300), "300x10 px is outside the supported range: sides of at least 16 px"),
        ((16, 3201), "3201x16 px is outside the supported range: sides of at least 16 px and aspect ratio at most 200"),
        ((3300, 16), "aspect ratio at most 200:1"),
    ],
)
def test_unusable_target_sizes_are_refused_before_any_model_runs(tiny_pointer, monkeypatch, size, message):
    calls = []
    monkeypatch.setattr(tiny_pointer.visual, "preprocess", lambda *a: calls.append("visual"))
    monkeypatch.setattr(tiny_pointer.mllm, "prepare", lambda *a: calls.append("mllm"))
    with pytest.raises(PointerError, match=message) as caught:
        tiny_pointer.point(np.zeros((*size, 3), np.uint8), "the handle")
    assert str(caught.value).startswith("target image") and not calls
    # Visual-only pointing has no MLLM, hence no aspect limit; a small support image is refused too.
    support = (np.zeros((12, 40, 3), np.uint8), (5.0, 5.0))
    with pytest.raises(PointerError, match="support 0 image 40x12 px is outside the supported range"):
        tiny_pointer.point(np.zeros((64, 64, 3), np.uint8), "the handle", supports=[support])


@FUZZ
@given(
    st.sampled_from(["16UC1", "32FC1", "mono16", "rgb8", ""]),
    st.sampled_from(["; compressedDepth png", "; compressedDepth", "; compressedDepth rvl", "", ";", "; png"]),
    st.integers(0, 2),
    st.lists(st.integers(0, 65535), min_size=1, max_size=24),
    st.integers(0, 400),
    st.binary(max_size=64),
    st.tuples(st.integers(-2, 2), st.floats(allow_nan=True, width=32), st.floats(allow_nan=True, width=32)),
)
def test_any_compressed_depth_payload_is_decoded_or_refused_with_a_reason(
    encoding, transport, rows, values, cut, tail, header
):
    """compressedDepth messages as a broken or hostile publisher may send them: any format string, header,
    PNG (whole, cut short, or followed by junk)."""
    import struct

    import cv2
    from sensor_msgs.msg import CompressedImage

    stored = np.repeat(np.array(values, np.uint16)[None, :], rows + 1, axis=0)
    png = cv2.imencode(".png", stored)[1].tobytes()
    data = struct.pack("<iff", *header) + (png[:cut] if cut < len(png) else png + tail)
    msg = CompressedImage(format=encoding + transport, data=data)
    try:
        depth = to_depth_m(msg)
    except ImageConversionError as error:
        one_line(error)
    else:
        assert depth.dtype == np.float32 and depth.ndim == 2
        assert np.all(np.isnan(depth) | (np.isfinite(depth) & (depth > 0)))
