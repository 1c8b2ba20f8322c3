"""pop_node with several parts on one frame: ~/point_to_parts, and ~/point_to_part calls on the same
latest camera frame reusing its features (frame key = stamp + frame_id). Real rclpy, in-process
nodes in their own namespaces (the inprocess fixture of conftest.py)."""

import time

import cv2
import pytest
from sensor_msgs.msg import Image

from pop_ros.clients.ros_client import LIBRARY
from pop_ros.paths import SAMPLE_DIR
from pop_ros_interfaces.srv import PointToPart, PointToParts
from test.conftest import colour_msg, request, same_stamp, set_parameter

OTHER_SCENE = cv2.cvtColor(cv2.imread(str(SAMPLE_DIR / "scene_1.png")), cv2.COLOR_BGR2RGB)


def parts_request(queries, support_sets=(), image=None):
    req = PointToParts.Request(queries=list(queries), support_sets=list(support_sets))
    if image is not None:
        req.image = image
    return req


def counting(node):
    """Count the target DINO forwards and MLLM image prefixes the node's pipeline runs."""
    counts = {"visual": 0, "prefix": 0}
    pointer = node.pointer
    visual, prefix = pointer.visual.encode_preprocessed, pointer.mllm.image_prefix

    def counted_visual(tensors, sizes):
        counts["visual"] += 1
        return visual(tensors, sizes)

    def counted_prefix(*args):
        counts["prefix"] += 1
        return prefix(*args)

    pointer.visual.encode_preprocessed, pointer.mllm.image_prefix = counted_visual, counted_prefix
    return counts


def test_point_to_parts_answers_each_query_like_single_calls(inprocess):
    ros, node, _ = inprocess("parts", f"support_library:={LIBRARY}")
    service = "/parts/pop_node/point_to_parts"
    image = colour_msg(ros.now_stamp(), frame_id="parts_optical")
    queries = ["handle of the mug", "", "rim", "spout"]
    sets = ["mug_handle", "mug_handle", "no_such_set", ""]
    response = ros.call(PointToParts, service, parts_request(queries, sets, image))
    assert response.success, response.message
    assert response.header.frame_id == "parts_optical" and same_stamp(response.header.stamp, image.header.stamp)
    assert len(response.results) == 4 and response.shared_ms > 0
    assert [r.success for r in response.results] == [True, True, False, True]
    assert "unknown support set" in response.results[2].message and "3/4 queries answered" in response.message
    assert node.health.outcomes["ok"] == 3 and node.health.outcomes["refused"] == 1  # each query in /diagnostics
    for result, query, name in zip(response.results, queries, sets, strict=True):
        assert result.header.frame_id == "parts_optical" and same_stamp(result.header.stamp, image.header.stamp)
        assert result.support_set == name
        if result.success:
            assert result.query == (query or "handle of the mug")  # "" = the set's default query
    # Each answer equals the same query asked alone (a fresh node: nothing shared with the call above).
    ros_single, single_node, _ = inprocess("single", f"support_library:={LIBRARY}", "frame_cache_size:=0")
    for result, query, name in zip(response.results, queries, sets, strict=True):
        if not result.success:
            continue
        alone = ros_single.call(PointToPart, "/single/pop_node/point_to_part", request(query, name, image))
        assert alone.success, alone.message
        assert (alone.u, alone.v) == (result.u, result.v)
        assert alone.score == pytest.approx(result.score, abs=1e-5)


def test_point_to_parts_bad_requests_fail_with_the_reason(inprocess):
    ros, node, _ = inprocess("badparts", f"support_library:={LIBRARY}")
    service = "/badparts/pop_node/point_to_parts"
    image = colour_msg(ros.now_stamp())
    cases = [
        (parts_request([], image=image), "queries is empty"),
        (parts_request(["a", "b"], ["mug_handle"], image), "1 entries for 2 queries"),
        (parts_request(["handle"]), "no camera frame received yet on /badparts/image"),
    ]
    for req, message in cases:
        response = ros.call(PointToParts, service, req)
        assert not response.success and message in response.message and not response.results
    assert node.health.outcomes["refused"] == 2 and node.health.outcomes["no frame"] == 1
    # A whole call of bad queries still answers each one.
    response = ros.call(PointToParts, service, parts_request(["", "lid"], ["", "nope"], image))
    assert response.success and [r.success for r in response.results] == [False, False]
    assert "query is empty" in response.results[0].message and "unknown support set" in response.results[1].message


def test_sequential_calls_on_the_latest_frame_reuse_it(inprocess):
    ros, node, _ = inprocess("seq", f"support_library:={LIBRARY}", "image_reliability:=reliable", "max_frame_age:=60.0")
    counts = counting(node)
    camera = ros.publisher(Image, "/seq/image")

    def publish(image):
        seen = node.camera.latest_seq
        msg = colour_msg(ros.now_stamp(), image=image)
        camera.publish(msg)
        deadline = time.monotonic() + 10
        while node.camera.latest_seq == seen and time.monotonic() < deadline:
            time.sleep(0.02)
        assert node.camera.latest_seq > seen, "the camera frame did not arrive"
        return msg.header.stamp

    service = "/seq/pop_node/point_to_part"
    stamp = publish(OTHER_SCENE)
    first = ros.call(PointToPart, service, request("handle of the mug", "mug_handle"))
    second = ros.call(PointToPart, service, request("rim of the mug", ""))
    parts = ros.call(PointToParts, "/seq/pop_node/point_to_parts", parts_request(["lid", "spout"]))
    assert first.success and second.success and parts.success, (first.message, second.message, parts.message)
    assert all(same_stamp(r.header.stamp, stamp) for r in (first, second, parts))
    assert counts == {"visual": 1, "prefix": 1}  # one frame: its features and prefix computed once
    publish(OTHER_SCENE)  # the same pixels with a new stamp: a new frame
    assert ros.call(PointToPart, service, request("handle of the mug", "mug_handle")).success
    assert counts == {"visual": 2, "prefix": 2}


def test_request_images_with_equal_headers_are_not_confused(inprocess):
    # Images sent with the request are keyed by content: a client reusing a header cannot get the
    # answer of another image.
    ros, node, _ = inprocess("content", f"support_library:={LIBRARY}")
    counts = counting(node)
    stamp = ros.now_stamp()
    service = "/content/pop_node/point_to_part"
    first = ros.call(PointToPart, service, request("handle of the mug", "", colour_msg(stamp)))
    other = ros.call(PointToPart, service, request("handle of the mug", "", colour_msg(stamp, image=OTHER_SCENE)))
    assert first.success and other.success and counts == {"visual": 2, "prefix": 2}
    again = ros.call(PointToPart, service, request("handle of the mug", "", colour_msg(stamp)))
    assert counts == {"visual": 2, "prefix": 2} and (again.u, again.v) == (first.u, first.v)


def test_frame_cache_size_parameter(inprocess):
    ros, node, _ = inprocess("cachesize", f"support_library:={LIBRARY}")

    def set_size(value):
        return set_parameter(ros, "frame_cache_size", value, node="/cachesize/pop_node")

    assert node.pointer.settings.frame_cache_size == 2
    for bad, reason in ((-1, ">= 0"), (65, "<= 64")):
        result = set_size(bad)
        assert not result.successful and reason in result.reason
    assert set_size(0).successful and node.pointer.settings.frame_cache_size == 0
    image = colour_msg(ros.now_stamp())
    for _ in range(2):
        assert ros.call(PointToPart, "/cachesize/pop_node/point_to_part", request("lid", "", image)).success
    assert node.pointer.cached_frames() == 0
