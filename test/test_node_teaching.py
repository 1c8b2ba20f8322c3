"""Teaching that lasts, with real rclpy: a click on ~/teach_click becomes an exemplar that survives a
restart of pop_node; edits persist; a read-only library refuses edits with the reason; a click on a
missing or stale frame is refused; a node killed while writing leaves a library that loads."""

import pathlib
import shutil
import signal
import time

import numpy as np
import pytest
from geometry_msgs.msg import Point, PointStamped
from sensor_msgs.msg import Image

from pop_ros.clients.ros_client import LIBRARY, RosClient
from pop_ros.clients.testing import NodeProcess
from pop_ros.messages.image_conversion import to_rgb8
from pop_ros.supports import KILL_AFTER_STEP_ENV, SupportLibrary
from pop_ros_interfaces.msg import TeachResult
from pop_ros_interfaces.srv import (
    AddExemplar,
    ListSupportSets,
    PointToPart,
    RemoveExemplar,
    RemoveSupportSet,
    SetDefaultQuery,
)
from test.conftest import HEIGHT, WIDTH, colour_msg, same_stamp, scene, wait_for

SCENE = scene()
TEACH_SET = "../über part ✓"  # path traversal, a space and unicode in one name
OTHER_SET = "a/../../b c"
FLIPPED = np.ascontiguousarray(SCENE[:, ::-1])


@pytest.fixture(scope="module")
def client():
    ros = RosClient("pop_teach_client")
    yield ros
    ros.close()


def start_node(client, library, log_path, program):
    process = NodeProcess(
        "-p", "preset:=tiny",
        "-p", f"support_library:={library}",
        "-p", "library_writable:=true",
        "-p", f"teach_set:={TEACH_SET}",
        "-p", "teach_query:=rim of the cup",
        "-p", "max_frame_age:=60.0",  # generous: a loaded machine delays a fresh frame by seconds
        "-p", "image_reliability:=reliable",  # see test_node.py: raw frames exceed this host's UDP buffer
        "-r", "image:=/teachcam/image_raw",
        log_path=log_path,
        program=program,
    )  # fmt: skip
    process.wait_until_serving(client)
    return process


def listing(client, prefix="/pop_node"):
    response = client.call(ListSupportSets, f"{prefix}/list_support_sets", ListSupportSets.Request())
    columns = (response.default_queries, response.num_exemplars, response.storage, response.writable)
    return {name: row for name, *row in zip(response.names, *columns, strict=True)}


def teach_until_answered(client, frame_topic, click_topic, click, image, results, msg_type=PointStamped):
    """Stream a frame, click, and wait for the answer; again (as a camera streams) until one succeeds,
    since the first frames can be lost to discovery. Returns (result, stamp of the frame clicked)."""
    frames = client.publisher(Image, frame_topic)
    clicks = client.publisher(msg_type, click_topic, qos=10)
    for _ in range(30):
        stamp = client.now_stamp()
        frames.publish(colour_msg(stamp, image=image))
        time.sleep(0.3)
        count = len(results)
        if msg_type is PointStamped:
            message = PointStamped(point=Point(x=float(click[0]), y=float(click[1])))
            message.header.stamp, message.header.frame_id = stamp, "cam_color_optical_frame"
        else:
            message = Point(x=float(click[0]), y=float(click[1]))
        clicks.publish(message)
        deadline = time.monotonic() + 15
        while len(results) == count and time.monotonic() < deadline:
            time.sleep(0.05)
        if len(results) > count and results[-1].success:
            return results[-1], stamp
    pytest.fail(f"no click was taught: {[r.message for r in results]}")


def away_from_ring(crop, centre, radius=9):
    rows, cols = np.mgrid[: crop.shape[0], : crop.shape[1]]
    return (rows - centre[1]) ** 2 + (cols - centre[0]) ** 2 > radius**2


@pytest.mark.slow
def test_taught_sets_survive_a_restart_edits_persist_and_a_killed_writer_leaves_a_library(
    client, tmp_path, monkeypatch, tool_shims
):
    program = [str(tool_shims / "pop_node")]
    library = tmp_path / "robot" / "library.yaml"
    shutil.copytree(LIBRARY.parent, library.parent)  # the shipped sets, in a folder we may write
    results = client.collect(TeachResult, "/pop_node/teach_result", wait_for_publisher=False)
    previews = client.collect(Image, "/pop_node/teach_preview", wait_for_publisher=False)
    node = start_node(client, library, tmp_path / "first.log", program)
    try:
        # One click on the camera stream (PointStamped), one as rqt_image_view sends it (Point).
        result, stamp = teach_until_answered(
            client, "/teachcam/image_raw", "/pop_node/teach_click", (200, 100), SCENE, results
        )
        assert result.support_set == TEACH_SET and result.num_exemplars == 1 and "saved to" in result.message
        assert (result.u, result.v) == (200.0, 100.0) and same_stamp(result.header.stamp, stamp)
        deadline = time.monotonic() + 10
        while not previews and time.monotonic() < deadline:
            time.sleep(0.05)
        preview = to_rgb8(previews[-1])
        assert preview.shape == (128, 128, 3) and same_stamp(previews[-1].header.stamp, stamp)
        expected = SCENE[100 - 64 : 100 + 64, 200 - 64 : 200 + 64]  # the crop centred on the click
        mask = away_from_ring(preview, (64, 64))
        np.testing.assert_array_equal(preview[mask], expected[mask])
        result, _ = teach_until_answered(
            client, "/teachcam/image_raw", "/pop_node/teach_click_point", (30, 200), FLIPPED, results, Point
        )
        assert result.num_exemplars == 2

        sets = listing(client)
        assert sets[TEACH_SET] == ["rim of the cup", 2, str(library), True]
        assert all(row[2] == str(library) and row[3] for row in sets.values())
        answer = client.call(
            PointToPart,
            "/pop_node/point_to_part",
            PointToPart.Request(support_set=TEACH_SET, image=colour_msg(client.now_stamp())),
        )
        assert answer.success, answer.message

        added = client.call(
            AddExemplar,
            "/pop_node/add_exemplar",
            AddExemplar.Request(support_set=OTHER_SET, query="lid", image=colour_msg(client.now_stamp()), u=5.0, v=6.0),
        )
        assert added.success, added.message
        removed = client.call(
            RemoveExemplar, "/pop_node/remove_exemplar", RemoveExemplar.Request(support_set=TEACH_SET, index=0)
        )
        assert removed.success and removed.num_exemplars == 1, removed.message
        missing = client.call(
            RemoveExemplar, "/pop_node/remove_exemplar", RemoveExemplar.Request(support_set="mug_handle", index=99)
        )
        assert not missing.success and "no exemplar 99" in missing.message
        edited = client.call(
            SetDefaultQuery, "/pop_node/set_default_query", SetDefaultQuery.Request(support_set=TEACH_SET, query="lid")
        )
        assert edited.success and "'lid'" in edited.message, edited.message
        dropped = client.call(
            RemoveSupportSet, "/pop_node/remove_support_set", RemoveSupportSet.Request(support_set="bottle_neck")
        )
        assert dropped.success, dropped.message
    finally:
        assert node.stop() == 0, node.log()

    # On disk: every image inside the library's images folder, the taught one bit-exact.
    stored = SupportLibrary.load(library)
    assert stored.errors == [] and sorted(stored.names()) == sorted(["mug_handle", TEACH_SET, OTHER_SET])
    taught = stored.get(TEACH_SET).exemplars
    assert len(taught) == 1 and taught[0].click == (30.0, 200.0)
    np.testing.assert_array_equal(taught[0].image, FLIPPED)  # the second click's frame, lossless
    images = (library.parent / "library_images").resolve()
    for name in (TEACH_SET, OTHER_SET):
        assert images in pathlib.Path(stored.get(name).exemplars[0].source).parents
    assert (library.parent / "library.yaml.bak").is_file()
    before = {name: (s.query, [e.click for e in s.exemplars]) for name, s in stored.sets.items()}

    # Restart: the sets are there and answer. This node kills itself half-way through its first write.
    monkeypatch.setenv(KILL_AFTER_STEP_ENV, "5")  # 5: the new YAML's temporary file half written
    node = start_node(client, library, tmp_path / "second.log", program)
    try:
        sets = listing(client)
        assert sets[TEACH_SET] == ["lid", 1, str(library), True] and "bottle_neck" not in sets
        assert sets[OTHER_SET][:2] == ["lid", 1]
        answer = client.call(
            PointToPart,
            "/pop_node/point_to_part",
            PointToPart.Request(support_set=TEACH_SET, image=colour_msg(client.now_stamp())),
        )
        assert answer.success, answer.message  # with the set's default query, edited before the restart
        never = client.call_async(
            AddExemplar,
            "/pop_node/add_exemplar",
            AddExemplar.Request(support_set="never", image=colour_msg(client.now_stamp()), u=1.0, v=1.0),
        )
        # The node dies half-way through the write, unanswered: wait for its death, not for a 30 s timeout.
        assert node.process.wait(timeout=60) == -signal.SIGKILL
        assert not wait_for(never.done, timeout=3.0)  # an answer sent before the kill would be here by now
    finally:
        node.stop()
    after = SupportLibrary.load(library)
    assert after.errors == []
    assert {name: (s.query, [e.click for e in s.exemplars]) for name, s in after.sets.items()} == before


# ---- refusals, in-process ----------------------------------------------------------------------------------
def click_once(ros, topic, results, u, v):
    count = len(results)
    ros.publisher(PointStamped, topic, qos=10).publish(PointStamped(point=Point(x=float(u), y=float(v))))
    deadline = time.monotonic() + 30
    while len(results) == count and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(results) > count, "no answer on ~/teach_result"
    return results[-1]


def test_read_only_library_refuses_edits_and_clicks_need_a_fresh_frame(inprocess):
    ros, node, _ = inprocess(
        "ro", f"support_library:={LIBRARY}", "teach_set:=lid", "max_frame_age:=60.0", "image_reliability:=reliable"
    )
    results = ros.collect(TeachResult, "/ro/pop_node/teach_result")
    result = click_once(ros, "/ro/pop_node/teach_click", results, 10, 10)
    assert not result.success and "no camera frame received yet on /ro/image" in result.message

    frames = ros.publisher(Image, "/ro/image")
    old = ros.now_stamp()
    old.sec -= 600  # 10 min: stale against max_frame_age 60 s however loaded the machine
    frames.publish(colour_msg(old))
    deadline = time.monotonic() + 20
    while node.camera.latest is None and time.monotonic() < deadline:
        time.sleep(0.05)
    result = click_once(ros, "/ro/pop_node/teach_click", results, 10, 10)
    assert not result.success and "stale" in result.message, result.message

    def fresh_click(u, v):
        received = node.camera.latest_seq
        frames.publish(colour_msg(ros.now_stamp()))
        assert wait_for(lambda: node.camera.latest_seq > received, 20)
        return click_once(ros, "/ro/pop_node/teach_click", results, u, v)

    result = fresh_click(WIDTH + 3, 10)
    assert not result.success and "outside" in result.message, result.message
    result = fresh_click(WIDTH - 1, HEIGHT - 1)
    assert result.success and "kept in memory only" in result.message, result.message
    assert node.pointer.library.get("lid").exemplars[0].click == (WIDTH - 1.0, HEIGHT - 1.0)

    sets = listing(ros, "/ro/pop_node")
    assert sets["mug_handle"][2:] == [str(LIBRARY), False] and sets["lid"][2:] == ["", False]
    before = LIBRARY.read_bytes()
    for srv_type, name, req in (
        (RemoveExemplar, "remove_exemplar", RemoveExemplar.Request(support_set="mug_handle", index=0)),
        (RemoveSupportSet, "remove_support_set", RemoveSupportSet.Request(support_set="mug_handle")),
        (SetDefaultQuery, "set_default_query", SetDefaultQuery.Request(support_set="mug_handle", query="x")),
    ):
        response = ros.call(srv_type, f"/ro/pop_node/{name}", req)
        assert not response.success and "read-only" in response.message and "library_writable" in response.message
    assert LIBRARY.read_bytes() == before and listing(ros, "/ro/pop_node")["mug_handle"][1] == 3

    from rclpy.parameter import Parameter

    assert not node.set_parameters([Parameter("teach_set", value="bad\nname")])[0].successful
    assert node.set_parameters([Parameter("teach_set", value="")])[0].successful
    result = fresh_click(5, 5)
    assert not result.success and "teach_set is empty" in result.message


def test_writable_needs_a_library_and_a_new_library_file_is_created(inprocess, tmp_path):
    ros, node, _ = inprocess("nolib", "library_writable:=true")
    assert node.pointer is None and "library_writable needs support_library" in node.configure_error
    library = tmp_path / "new.yaml"
    ros, node, _ = inprocess("newlib", f"support_library:={library}", "library_writable:=true")
    assert node.pointer is not None and listing(ros, "/newlib/pop_node") == {}
    added = ros.call(
        AddExemplar,
        "/newlib/pop_node/add_exemplar",
        AddExemplar.Request(support_set="lid", query="lid", image=colour_msg(ros.now_stamp()), u=3.0, v=4.0),
    )
    assert added.success, added.message
    assert SupportLibrary.load(library).get("lid").exemplars[0].click == (3.0, 4.0)
    assert listing(ros, "/newlib/pop_node")["lid"] == ["lid", 1, str(library), True]
    # The set continuous mode stands on cannot be removed from under it.
    from rclpy.parameter import Parameter

    assert node.set_parameters([Parameter("continuous_support_set", value="lid")])[0].successful
    removed = ros.call(
        RemoveSupportSet, "/newlib/pop_node/remove_support_set", RemoveSupportSet.Request(support_set="lid")
    )
    assert not removed.success and "is the continuous_support_set" in removed.message
    assert "lid" in SupportLibrary.load(library).names()


# ---- a click names its frame by stamp ----------------------------------------------------------------------
def stamped_click(ros, topic, results, u, v, stamp):
    """A PointStamped click whose header names the clicked frame; the answer on ~/teach_result."""
    count = len(results)
    message = PointStamped(point=Point(x=float(u), y=float(v)))
    message.header.stamp, message.header.frame_id = stamp, "cam_color_optical_frame"
    ros.publisher(PointStamped, topic, qos=10).publish(message)
    deadline = time.monotonic() + 30
    while len(results) == count and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(results) > count, "no answer on ~/teach_result"
    return results[-1]


def test_a_stamped_click_teaches_the_frame_it_names_stored_once_and_logged(inprocess, tmp_path, capfd):
    from builtin_interfaces.msg import Time

    from pop_ros.ros.camera import FRAME_HISTORY

    library = tmp_path / "taught.yaml"
    ros, node, _ = inprocess(
        "stamped", f"support_library:={library}", "library_writable:=true", "teach_set:=lid", "max_frame_age:=1.0"
    )
    results = ros.collect(TeachResult, "/stamped/pop_node/teach_result")
    now = ros.now_stamp()
    # Three frames of a moving camera, 5, 4 and 3 s old (older than max_frame_age), the clicked one first.
    frames = {age: (Time(sec=now.sec - age, nanosec=now.nanosec), image) for age, image in
              ((5, SCENE), (4, FLIPPED), (3, scene(1)))}  # fmt: skip
    for stamp, image in frames.values():
        node.camera.on_image(colour_msg(stamp, image=image))  # the subscription's callback, in order
    clicked_stamp = frames[5][0]

    for u, v in ((10, 20), (30, 40), (50, 60)):
        result = stamped_click(ros, "/stamped/pop_node/teach_click", results, u, v, clicked_stamp)
        assert result.success, result.message
        assert same_stamp(result.header.stamp, clicked_stamp)
    taught = node.pointer.library.get("lid").exemplars
    assert [e.click for e in taught] == [(10.0, 20.0), (30.0, 40.0), (50.0, 60.0)]
    for exemplar in taught:  # the clicked frame, not the latest one
        np.testing.assert_array_equal(exemplar.image, SCENE)
    stored = sorted((tmp_path / "taught_images").rglob("*.png"))
    assert len(stored) == 1 and {e.source for e in taught} == {str(stored[0])}  # one file for three clicks
    stamp_text = f"{clicked_stamp.sec}.{clicked_stamp.nanosec:09d}"
    log = capfd.readouterr().err
    assert (
        f"teach_click: added exemplar 2 of 'lid' at (50.0, 60.0) on the clicked frame (stamp {stamp_text}, 320x240); "
        f"'lid' has 3 exemplars; saved to {library}"
    ) in log

    # A stamp between two kept frames, one older than all, one newer: refused, each with its reason.
    between = Time(sec=now.sec - 5, nanosec=(now.nanosec + 1) % 1_000_000_000)
    if between.nanosec == 0:
        between.sec += 1
    refused = stamped_click(ros, "/stamped/pop_node/teach_click", results, 5, 5, between)
    assert not refused.success and "no kept frame has exactly that stamp" in refused.message, refused.message
    older = Time(sec=now.sec - 60, nanosec=0)
    refused = stamped_click(ros, "/stamped/pop_node/teach_click", results, 5, 5, older)
    assert not refused.success and "older than the last 3 frames kept" in refused.message, refused.message
    newer = Time(sec=now.sec + 60, nanosec=0)
    refused = stamped_click(ros, "/stamped/pop_node/teach_click", results, 5, 5, newer)
    assert not refused.success and "newer than every frame received" in refused.message, refused.message
    # Stamp zero: the latest frame, as before, so max_frame_age applies (it is 3 s old).
    refused = click_once(ros, "/stamped/pop_node/teach_click", results, 5, 5)
    assert not refused.success and "stale" in refused.message, refused.message

    # The history holds the last FRAME_HISTORY frames: the first frame is gone after that many more.
    for index in range(FRAME_HISTORY):
        node.camera.on_image(colour_msg(Time(sec=now.sec - 2, nanosec=index), image=FLIPPED))
    refused = stamped_click(ros, "/stamped/pop_node/teach_click", results, 5, 5, clicked_stamp)
    assert not refused.success and f"older than the last {FRAME_HISTORY} frames kept" in refused.message
    last = stamped_click(ros, "/stamped/pop_node/teach_click", results, 7, 8, Time(sec=now.sec - 2, nanosec=0))
    assert last.success and last.num_exemplars == 4, last.message
    np.testing.assert_array_equal(node.pointer.library.get("lid").exemplars[-1].image, FLIPPED)
    assert len(list((tmp_path / "taught_images").rglob("*.png"))) == 2
    assert SupportLibrary.load(library).errors == []
