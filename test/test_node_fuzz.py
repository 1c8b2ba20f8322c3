"""Property-based fuzzing of a running pop_node (started as users start it, tiny preset, shipped
config): generated Image, CompressedImage, depth and CameraInfo messages on every input topic,
interleaved with generated service requests. Every call must be answered, never with an internal
error; the node must be alive at the end and give a correct 3D answer on a good frame afterwards.

The examples are derandomized (the same every run), so the counts this test prints are the ones the
README quotes."""

import collections
import math
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from pop_ros.clients.ros_client import LIBRARY, RosClient
from pop_ros.clients.testing import NodeProcess
from pop_ros.messages.image_conversion import from_array
from pop_ros_interfaces.srv import AddExemplar, ListSupportSets, PointToPart
from test import fuzz_strategies as fs
from test.conftest import HEIGHT, WIDTH, K, colour_msg, same_stamp

pytestmark = pytest.mark.slow  # a node process fuzzed with 80 generated cycles

NS = "/fuzz"
TOPICS = {
    "image": (Image, f"{NS}/image"),
    "compressed": (CompressedImage, f"{NS}/image/compressed"),
    "depth": (Image, f"{NS}/depth"),
    "camera_info": (CameraInfo, f"{NS}/camera_info"),
}


@pytest.fixture(scope="module")
def fuzz_node(tmp_path_factory, tool_shims):
    ros = RosClient("fuzz_client")
    process = NodeProcess(
        "-p", "preset:=tiny", "-p", f"support_library:={LIBRARY}", "-p", "image_reliability:=reliable",
        "-p", "max_frame_age:=0.0",  # no age limit: every fuzzed frame reaches the conversion
        "-p", "busy_timeout:=60.0", "-r", f"__ns:={NS}",
        log_path=tmp_path_factory.mktemp("fuzz") / "node.log",
        program=[str(tool_shims / "pop_node")],
    )  # fmt: skip
    process.wait_until_serving(ros, NS)
    for kind, (msg_type, topic) in TOPICS.items():
        # Matched once, before the fuzzing starts. With the default transport (raw) the node has no
        # subscription on image/compressed: waiting for one spent the publisher's whole 20 s deadline.
        ros.publisher(msg_type, topic, wait_for_subscriber=kind != "compressed")
    yield ros, process
    ros.close()
    assert process.stop() == 0, process.log()


def valid_images():
    """Well-formed request images of every size class: normal, tiny, extreme aspect, mono16."""
    rng = np.random.default_rng(7)
    return st.sampled_from(
        [
            from_array(rng.integers(0, 256, (48, 64, 3), np.uint8), "rgb8"),
            from_array(rng.integers(0, 256, (1, 1, 3), np.uint8), "bgr8"),
            from_array(rng.integers(0, 256, (16, 3300, 3), np.uint8), "rgb8"),
            from_array(rng.integers(0, 256, (40, 40), np.uint8), "mono8"),
        ]
    )


request_images = st.one_of(st.just(Image()), fs.images(), valid_images())
messages = st.one_of(
    st.tuples(st.just("image"), fs.images()),
    st.tuples(st.just("compressed"), fs.compressed_images()),
    st.tuples(st.just("depth"), fs.depth_images()),
    st.tuples(st.just("camera_info"), fs.camera_infos()),
)
point_requests = st.builds(
    lambda query, support_set, image: ("point", PointToPart.Request(query=query, support_set=support_set, image=image)),
    fs.queries,
    fs.support_set_names,
    request_images,
)
exemplar_requests = st.builds(
    lambda name, query, image, u, v: (
        "exemplar",
        AddExemplar.Request(support_set=name, query=query, image=image, u=u, v=v),
    ),
    fs.support_set_names,
    fs.queries,
    request_images,
    st.floats(width=32, allow_nan=True, allow_infinity=True),
    st.floats(width=32, allow_nan=True, allow_infinity=True),
)
calls = st.one_of(point_requests, point_requests, point_requests, exemplar_requests, st.just(("list", None)))


FUZZ_SETTINGS = settings(
    max_examples=80,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def send_and_call(ros, process, sent, burst, call):
    """Publish the fuzzed `burst` on the input topics, then make the fuzzed service `call`."""
    for kind, msg in burst:
        msg_type, topic = TOPICS[kind]
        ros.publisher(msg_type, topic, wait_for_subscriber=False).publish(msg)
        sent["messages"] += 1
    kind, req = call
    sent["calls"] += 1
    if kind == "list":
        response = ros.call(ListSupportSets, f"{NS}/pop_node/list_support_sets", ListSupportSets.Request())
        assert len(response.names) == len(response.num_exemplars)
        return
    srv_type, name = (PointToPart, "point_to_part") if kind == "point" else (AddExemplar, "add_exemplar")
    response = ros.call(srv_type, f"{NS}/pop_node/{name}", req)  # TimeoutError = not answered
    assert process.process.poll() is None, process.log()[-3000:]
    assert "internal error" not in response.message, response.message
    if not response.success:
        assert response.message.strip(), "a refusal must say why"


# Hypothesis builds a repr of the inner @given's strategies, which hold the sample images (774 kB).
@pytest.mark.filterwarnings("ignore:Generating overly large repr")
def test_fuzzed_inputs_never_kill_the_node_which_then_answers_a_good_frame_correctly(fuzz_node, capsys):
    """One test, so the node checked at the end is the one just fuzzed (not left over from another test)."""
    ros, process = fuzz_node
    sent: collections.Counter = collections.Counter()

    @FUZZ_SETTINGS
    @given(burst=st.lists(messages, min_size=1, max_size=4), call=calls)
    def fuzz(burst, call):
        send_and_call(ros, process, sent, burst, call)

    fuzz()
    assert sent["calls"] >= 80  # hypothesis really ran its examples against this node
    assert process.process.poll() is None, process.log()[-3000:]
    rows = np.arange(HEIGHT, dtype=np.float32)[:, None]
    plane = np.repeat(1.0 + 0.002 * rows, WIDTH, axis=1).astype(np.float32)
    response = stamp = None
    for _ in range(40):  # delivery is asynchronous: a fresh camera cycle per attempt
        stamp = ros.now_stamp()
        info = CameraInfo(width=WIDTH, height=HEIGHT, k=K, distortion_model="plumb_bob")
        info.header.stamp = stamp
        depth = from_array(plane, "32FC1")
        depth.header.stamp = stamp
        ros.publisher(CameraInfo, TOPICS["camera_info"][1]).publish(info)
        ros.publisher(Image, TOPICS["depth"][1]).publish(depth)
        time.sleep(0.1)
        ros.publisher(Image, TOPICS["image"][1]).publish(colour_msg(stamp, frame_id="good_frame"))
        time.sleep(0.1)
        response = ros.call(PointToPart, f"{NS}/pop_node/point_to_part", PointToPart.Request(support_set="mug_handle"))
        if response.has_3d and same_stamp(response.header.stamp, stamp):
            break
    assert response.success and response.has_3d, response.message
    assert response.header.frame_id == "good_frame" and same_stamp(response.header.stamp, stamp)
    z = 1.0 + 0.002 * math.floor(response.v + 0.5)  # median of a linear column: its centre (ROS pixel rows)
    point = response.point.point
    assert point.z == pytest.approx(z, abs=1e-5)
    assert point.x == pytest.approx((response.u - K[2]) * point.z / K[0], abs=1e-5)
    assert point.y == pytest.approx((response.v - K[5]) * point.z / K[4], abs=1e-5)
    internal = process.log().count("internal error in")
    with capsys.disabled():
        print(
            f"\n[fuzz] {sent['messages']} generated messages on 4 input topics and {sent['calls']} generated "
            f"service calls: every call answered, {internal} internal errors logged, node alive (deaths: 0)"
        )
    assert internal == 0
