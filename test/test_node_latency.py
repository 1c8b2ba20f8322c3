"""pop_node at a real model's latency: queries slower than the depth stream's period and the busy wait,
on a RealSense-like stream (30 Hz colour, aligned depth and camera_info on the same stamps), with 3D
checked on every answer; and what such latency exposed: depth that does not fit, answers published
out of frame order, repeated stamps, unbounded batches, lifecycle leftovers.

The slowness is injected (conftest.slow_queries: the models sleep 0.7 s, as the tiny preset at
resolution 1024 does on a CPU), so the outcome does not depend on the machine's speed; every
wall-clock threshold the node has (max_frame_age, busy_timeout) is set generously here."""

import threading

import numpy as np
import pytest
from lifecycle_msgs.msg import State, Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rcl_interfaces.srv import GetParameters
from rclpy.lifecycle import TransitionCallbackReturn
from sensor_msgs.msg import CameraInfo, RegionOfInterest

from pop_ros.clients.ros_client import LIBRARY
from pop_ros.messages.image_conversion import from_array
from pop_ros.ros.diagnostics import WARN
from pop_ros.ros.queries import MAX_QUERIES_PER_CALL
from pop_ros_interfaces.msg import PartPointResult
from pop_ros_interfaces.srv import PointToPart, PointToParts
from test.conftest import (
    HEIGHT,
    WIDTH,
    CameraStream,
    K,
    colour_msg,
    request,
    scene,
    set_parameter,
    slow_queries,
    wait_for,
)

QUERY_S = 0.7  # a real model's query on a robot's CPU (seconds; > the depth stream's 33 ms period)
GENEROUS = ("max_frame_age:=5.0", "busy_timeout:=60.0", "max_waiting_queries:=4", "min_score:=0.0")
PLANE_M = 1.25  # the stream's depth


def streaming(node) -> bool:
    """The node holds a frame whose depth has arrived, and camera_info."""
    latest, camera = node.camera.latest, node.camera
    return (
        latest is not None
        and camera.camera_info is not None
        and camera.depth.nearest(latest.stamp_s, 0.0)[0] is not None
    )


def point(ros, namespace, timeout=120.0):
    return ros.call(PointToPart, f"/{namespace}/pop_node/point_to_part", request("handle", "mug_handle"), timeout)


def assert_3d(response) -> None:
    assert response.success and response.has_3d, response.message
    assert abs(response.point.point.z - PLANE_M) < 1e-3


# ---- capture: depth and freshness held through a slow query --------------------------------------------------
def test_a_query_slower_than_the_depth_buffer_keeps_its_frame_s_depth(realtime):
    ros, node = realtime("lone", f"support_library:={LIBRARY}", *GENEROUS)
    with CameraStream(ros, "lone"):
        assert wait_for(lambda: streaming(node), 30)
        slow_queries(node, QUERY_S)
        for _ in range(3):
            assert_3d(point(ros, "lone"))


def test_queued_slow_queries_each_answer_about_the_newest_frame_with_its_depth(realtime):
    """Four queries at once, each 0.7 s: each takes its frame when it gets the models, so each answers
    about a newer frame than the one before it (a frame arrives during every query), all with 3D."""
    ros, node = realtime("queued", f"support_library:={LIBRARY}", *GENEROUS)
    with CameraStream(ros, "queued"):
        assert wait_for(lambda: streaming(node), 30)
        slow_queries(node, QUERY_S, new_frame=True)
        futures = [
            ros.call_async(PointToPart, "/queued/pop_node/point_to_part", request("handle", "mug_handle"))
            for _ in range(4)
        ]
        responses = [ros.wait(future, 120.0) for future in futures]
    for response in responses:
        assert_3d(response)
    stamps = sorted((r.header.stamp.sec, r.header.stamp.nanosec) for r in responses)
    assert len(set(stamps)) == 4, f"queued queries answered about the same frames: {stamps}"


def test_continuous_mode_at_a_real_latency_keeps_3d_on_every_answer(realtime):
    ros, node = realtime(
        "steady", f"support_library:={LIBRARY}", "continuous_support_set:=mug_handle", *GENEROUS, activate=False
    )
    results = ros.collect(PartPointResult, "/steady/pop_node/result")
    slow_queries(node, QUERY_S)
    node.trigger_activate()
    with CameraStream(ros, "steady"):
        assert wait_for(lambda: streaming(node), 30)
        from rclpy.parameter import Parameter

        node.set_parameters([Parameter("continuous_rate", value=10.0)])
        assert wait_for(lambda: len(results) >= 3, 120)
        node.set_parameters([Parameter("continuous_rate", value=0.0)])
    for result in results:
        assert result.success and result.has_3d, result.message
        assert abs(result.point.z - PLANE_M) < 1e-3


# ---- depth that does not fit ----------------------------------------------------------------------------------
def test_a_request_s_depth_of_another_size_answers_2d_with_the_reason(inprocess):
    """A 16:9 depth beside a 4:3 image and its camera_info (an unaligned RealSense depth topic), with the
    part's region asked for: once an internal error (the part cloud raised CameraModelError)."""
    ros, node, _ = inprocess("misfit", f"support_library:={LIBRARY}", "part_threshold:=0.3")
    req = request("handle", "mug_handle", colour_msg(ros.now_stamp(), "cam"))
    req.depth = from_array(np.full((HEIGHT, 426), PLANE_M, np.float32), "32FC1")
    req.camera_info = CameraInfo(width=WIDTH, height=HEIGHT, k=K, distortion_model="plumb_bob")
    req.return_region = True
    response = ros.call(PointToPart, "/misfit/pop_node/point_to_part", req)
    assert response.success and not response.has_3d, response.message
    assert "depth does not fit the colour image" in response.message and "426x240" in response.message
    assert node.internal_errors == {}


def test_depth_of_another_frame_on_the_streams_answers_2d_warned_on_diagnostics(realtime):
    ros, node = realtime("unaligned", f"support_library:={LIBRARY}", *GENEROUS)
    with CameraStream(ros, "unaligned", depth_frame_id="cam_depth_optical_frame"):
        assert wait_for(lambda: streaming(node), 30)
        response = point(ros, "unaligned")
    assert response.success and not response.has_3d
    assert "frame_ids differ" in response.message and "cam_depth_optical_frame" in response.message
    camera = next(s for s in node.diagnostics.statuses() if s.name.endswith("camera input"))
    values = {item.key: item.value for item in camera.values}
    assert camera.level == WARN and "frame_ids differ" in camera.message and values["depth misfits"] != "0"


# ---- order, frame identity, bounds ------------------------------------------------------------------------------
def test_an_answer_about_an_older_frame_is_not_published_after_a_newer_one(inprocess):
    ros, node, _ = inprocess("order", f"support_library:={LIBRARY}")
    results = ros.collect(PartPointResult, "/order/pop_node/result")
    older, newer = ros.now_stamp(), ros.now_stamp()
    newer.sec += 1
    service = "/order/pop_node/point_to_part"
    assert ros.call(PointToPart, service, request("handle", "mug_handle", colour_msg(newer, "newer"))).success
    late = ros.call(PointToPart, service, request("handle", "mug_handle", colour_msg(older, "older")))
    assert late.success and late.header.frame_id == "older"  # the service still answers it ...
    assert ros.call(PointToPart, service, request("handle", "mug_handle", colour_msg(newer, "fence"))).success
    assert wait_for(lambda: any(r.header.frame_id == "fence" for r in results), 10)
    assert [r.header.frame_id for r in results] == ["newer", "fence"]  # ... but not on the topics
    queries = next(s for s in node.diagnostics.statuses() if s.name.endswith("queries"))
    assert {item.key: item.value for item in queries.values}["answers not published (older frame)"] == "1"


def test_a_repeated_stamp_with_new_pixels_is_a_new_frame(inprocess):
    ros, node, _ = inprocess("repeat", f"support_library:={LIBRARY}")
    keys, original = [], node.pointer.point

    def recorded(image, query, frame_key=None, **options):
        keys.append(frame_key)
        return original(image, query, frame_key=frame_key, **options)

    node.pointer.point = recorded
    stamp = ros.now_stamp()  # a paused simulator: the same stamp, a changed scene
    for image in (scene(0), scene(1), scene(1)):
        node.camera.on_image(colour_msg(stamp, "sim", image))
        assert ros.call(PointToPart, "/repeat/pop_node/point_to_part", request("handle", "mug_handle")).success
    assert keys[0] != keys[1] and keys[1] == keys[2], keys


def test_point_to_parts_refuses_more_queries_than_its_limit(inprocess):
    ros, node, _ = inprocess("bounds", f"support_library:={LIBRARY}")
    node.camera.on_image(colour_msg(ros.now_stamp()))
    calls = []
    node.pointer.point_many = lambda *args, **kwargs: calls.append(1)
    parts = PointToParts.Request(queries=["handle"] * (MAX_QUERIES_PER_CALL + 1))
    response = ros.call(PointToParts, "/bounds/pop_node/point_to_parts", parts)
    assert not response.success and f"at most {MAX_QUERIES_PER_CALL}" in response.message and calls == []


# ---- lifecycle ----------------------------------------------------------------------------------------------------
def test_cleanup_forgets_camera_info_and_depth(inprocess):
    ros, node, _ = inprocess("forget", f"support_library:={LIBRARY}")
    with CameraStream(ros, "forget"):
        assert wait_for(lambda: streaming(node), 30)
    node.trigger_deactivate()
    node.trigger_cleanup()
    assert node.camera.camera_info is None and len(node.camera.depth) == 0 and node.camera.latest is None


def test_shutdown_from_active_stops_subscriptions_and_timers(inprocess):
    ros, node, _ = inprocess("down", f"support_library:={LIBRARY}", "continuous_support_set:=mug_handle")
    from rclpy.parameter import Parameter

    node.set_parameters([Parameter("continuous_rate", value=5.0)])
    node.trigger_shutdown()
    assert node.camera.subscriptions == [] and node._frames_check is None and node.continuous._timer is None
    assert not any(sub.topic_name.endswith("/image") for sub in node.subscriptions)
    assert node.pointer is None


def hold_model_load(monkeypatch) -> tuple[threading.Event, threading.Event]:
    """(loading, release): the node's next model load sets `loading`, then waits for `release` (at
    most 120 s) before it loads: a configure that takes as long as the test wants."""
    import pop_ros.ros.node as node_module

    loading, release, original = threading.Event(), threading.Event(), node_module.load_pointer

    def slow_load(*args):
        loading.set()
        release.wait(120)
        return original(*args)

    monkeypatch.setattr(node_module, "load_pointer", slow_load)
    return loading, release


def test_lifecycle_and_parameter_services_answer_during_a_long_configure(inprocess, monkeypatch):
    """A configure that loads a model for minutes: get_state (what lifecycle managers poll) and the
    parameter services answer meanwhile. Here the load waits until they have answered."""
    ros, node, _ = inprocess("slowload", f"support_library:={LIBRARY}", activate=False)
    node.trigger_cleanup()
    loading, release = hold_model_load(monkeypatch)
    configure = ros.call_async(
        ChangeState, "/slowload/pop_node/change_state", ChangeState.Request(transition=Transition(id=1))
    )
    try:
        assert loading.wait(60)
        state = ros.call(GetState, "/slowload/pop_node/get_state", GetState.Request(), timeout=20.0)
        assert state.current_state.id == State.TRANSITION_STATE_CONFIGURING
        names = GetParameters.Request(names=["preset"])
        assert ros.call(GetParameters, "/slowload/pop_node/get_parameters", names, timeout=20.0).values
        assert set_parameter(ros, "similarity", "forward", "/slowload/pop_node").successful  # runtime: taken
        refused = set_parameter(ros, "preset", "tiny-molmo2", "/slowload/pop_node")  # read at configure: not now
        assert not refused.successful and "read at configure" in refused.reason
    finally:
        release.set()
    assert ros.wait(configure, 120).success and node.pointer is not None
    assert node.pointer.settings.similarity == "forward"  # set while the models loaded, applied to them


def test_autostart_loads_the_models_while_the_services_answer_configuring(inprocess, monkeypatch):
    """autostart (pop_node's default) configures once the executor spins: during a long load,
    get_state answers CONFIGURING, a query and list_support_sets answer "node is configuring", and the
    node ends active (main() configured before spinning: nothing answered until the models were in)."""
    from pop_ros.ros.answers import CONFIGURING

    ros, node, _ = inprocess("autoload", f"support_library:={LIBRARY}", activate=False)
    node.trigger_cleanup()
    loading, release = hold_model_load(monkeypatch)
    node.autostart_later()
    try:
        assert node.not_ready_reason().startswith(CONFIGURING)  # before the timer fires, too
        assert loading.wait(60)
        state = ros.call(GetState, "/autoload/pop_node/get_state", GetState.Request(), timeout=20.0)
        assert state.current_state.id == State.TRANSITION_STATE_CONFIGURING
        answer = ros.call(PointToPart, "/autoload/pop_node/point_to_part", request("handle", "mug_handle"), 20.0)
        assert not answer.success and answer.message.startswith(CONFIGURING), answer.message
    finally:
        release.set()
    listing = ros.wait_for_node("/autoload", timeout=120.0)
    assert listing.success and "mug_handle" in listing.names
    assert wait_for(lambda: node.active, 60) and not node.autostarting


def test_a_node_destroyed_during_a_configure_finishes_it_then_refuses_transitions(inprocess, monkeypatch):
    """destroy_node destroys rclpy's lifecycle state machine (rclpy leaves it, and it kept the node in
    the graph), which rclpy uses without holding it: the destroy waits for a configure in progress,
    and a transition asked for afterwards is a Python error, not a use of freed memory (a SIGSEGV
    before the guard)."""
    ros, node, _ = inprocess("destroyload", f"support_library:={LIBRARY}", activate=False)
    node.trigger_cleanup()
    loading, release = hold_model_load(monkeypatch)
    configured = []
    configuring = threading.Thread(target=lambda: configured.append(node.trigger_configure()))
    configuring.start()
    destroyed = threading.Event()
    try:
        assert loading.wait(60)
        ros.executor.remove_node(node)
        destroying = threading.Thread(target=lambda: (node.destroy_node(), destroyed.set()))
        destroying.start()
        assert not destroyed.wait(0.5)  # held by the configure in progress
    finally:
        release.set()
    configuring.join(120)
    assert destroyed.wait(60) and configured == [TransitionCallbackReturn.SUCCESS]
    with pytest.raises(RuntimeError, match="state machine is not initialized"):
        node.trigger_activate()
    with pytest.raises(Exception, match="Shutdown transtion not possible"):  # rclpy's words for a finalized node
        node.trigger_shutdown()


def test_a_roi_request_keeps_working_at_latency(realtime):
    """A region of interest and several instances through the capture path (the request options survive)."""
    ros, node = realtime("roi", f"support_library:={LIBRARY}", *GENEROUS)
    with CameraStream(ros, "roi"):
        assert wait_for(lambda: streaming(node), 30)
        slow_queries(node, QUERY_S)
        req = request("handle", "mug_handle")
        req.roi = RegionOfInterest(x_offset=40, y_offset=40, width=200, height=150)
        req.max_instances = 2
        response = ros.call(PointToPart, "/roi/pop_node/point_to_part", req, 120.0)
    assert_3d(response)
    assert 40 <= response.u < 240 and 40 <= response.v < 190
    assert all(instance.has_3d for instance in response.instances)
