"""pop_ros.behaviours with real py_trees against a running pop_node (tiny preset, in-process).

The node's pipeline is gated (an Event) where a test needs a query to be running for as long as it
likes: ticks while the gate is shut happen before the answer can exist, so no timing bound is
needed to show that update() never waits for the answer."""

import operator
import subprocess
import sys
import threading
import time

import cv2
import numpy as np
import py_trees
import pytest
from sensor_msgs.msg import CameraInfo, Image

from pop_ros.behaviours import PointToPart, PointToParts, ServiceUnavailableError, TeachExemplar
from pop_ros.clients.ros_client import LIBRARY, RosClient
from pop_ros.messages.image_conversion import from_array
from pop_ros.paths import SAMPLE_DIR
from pop_ros_interfaces.action import PointToPart as PointToPartAction
from pop_ros_interfaces.msg import PartPointResult
from pop_ros_interfaces.srv import ListSupportSets
from pop_ros_interfaces.srv import PointToPart as PointToPartSrv
from test.conftest import has_depth_for, wait_for

Status = py_trees.common.Status
NS = "bt"
SERVICE = f"/{NS}/pop_node/point_to_part"
# The behaviours' wait for the in-process node's action server and answers: generous, so a loaded
# machine (two suites side by side) slows these tests but does not fail them.
UNHURRIED_S = 120.0
WIDTH, HEIGHT, DEPTH_M = 160, 120, 1.25
K = [150.0, 0.0, 80.0, 0.0, 150.0, 60.0, 0.0, 0.0, 1.0]
SCENE = cv2.resize(cv2.imread(str(SAMPLE_DIR / "scene_0.png")), (WIDTH, HEIGHT), interpolation=cv2.INTER_AREA)


class Gate:
    """Holds the node's queries inside the pipeline until opened; says when one is inside."""

    def __init__(self, node):
        self.open, self.entered, self.left = threading.Event(), threading.Event(), threading.Event()
        self.open.set()
        point = node.pointer.point

        def gated(*args, **kwargs):
            self.entered.set()
            try:
                assert self.open.wait(60), "the test never opened the gate"
                return point(*args, **kwargs)
            finally:
                self.left.set()

        node.pointer.point = gated

    def shut(self):
        self.open.clear()
        self.entered.clear()
        self.left.clear()


@pytest.fixture
def bt_node(inprocess):
    """(ros client whose node runs the tree, pop_node, gate), with one camera frame + depth + camera_info."""
    ros, node, _ = inprocess(NS, f"support_library:={LIBRARY}", "max_frame_age:=0.0", "busy_policy:=reject")
    assert node.pointer is not None and node.active
    publish_camera(ros, node)
    py_trees.blackboard.Blackboard.clear()
    yield ros, node, Gate(node)
    py_trees.blackboard.Blackboard.clear()


def publish_camera(ros, node):
    """One camera cycle (camera_info, depth, colour, one stamp), again until the node has all three."""
    for _ in range(50):
        stamp = ros.now_stamp()
        info = CameraInfo(width=WIDTH, height=HEIGHT, k=K, distortion_model="plumb_bob")
        depth = from_array(np.full((HEIGHT, WIDTH), DEPTH_M, np.float32), "32FC1")
        colour = from_array(SCENE, "bgr8")
        for msg in (info, depth, colour):
            msg.header.stamp, msg.header.frame_id = stamp, "bt_optical_frame"
        ros.publisher(CameraInfo, f"/{NS}/camera_info").publish(info)
        ros.publisher(Image, f"/{NS}/depth").publish(depth)
        ros.publisher(Image, f"/{NS}/image").publish(colour)
        if wait_for(lambda stamp=stamp: node.camera.latest is not None and has_depth_for(node, stamp), 1.0):
            return
    raise AssertionError("the node never received the camera frame")


class GraspStub(py_trees.behaviour.Behaviour):
    """Stands in for a grasp: succeeds with the point it found on the blackboard."""

    def __init__(self, name="grasp stub", point_key="point"):
        super().__init__(name)
        self.blackboard = self.attach_blackboard_client(name=name)
        self.blackboard.register_key(key=point_key, access=py_trees.common.Access.READ)
        self.point_key, self.grasped = point_key, []

    def update(self):
        point = self.blackboard.get(self.point_key)
        if point is None:
            self.feedback_message = "no point to grasp"
            return Status.FAILURE
        self.grasped.append(point)
        return Status.SUCCESS


def tick_until(tree, done, period_s=0.1, timeout=60.0) -> list[float]:
    """Tick at 1 / period_s Hz until `done()`; returns each tick's duration in seconds."""
    durations = []
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"tree still {tree.root.status} after {timeout} s"
        started = time.perf_counter()
        tree.tick()
        durations.append(time.perf_counter() - started)
        time.sleep(period_s)  # the tick rate, not a synchronisation
    return durations


def run_behaviour(behaviour, timeout=60.0) -> Status:
    """Tick one behaviour until it is done (as its parent would, every 20 ms); returns its status."""
    deadline = time.monotonic() + timeout
    behaviour.tick_once()
    while behaviour.status == Status.RUNNING:
        assert time.monotonic() < deadline, f"{behaviour.name} still running after {timeout} s"
        time.sleep(0.02)
        behaviour.tick_once()
    return behaviour.status


def direct_answer(ros, query, support_set):
    return ros.call(PointToPartSrv, SERVICE, PointToPartSrv.Request(query=query, support_set=support_set))


def test_find_handle_then_grasp_reaches_success_with_the_services_point(bt_node):
    ros, node, gate = bt_node
    find = PointToPart(
        "find handle", "handle of the mug", "mug_handle", service=SERVICE, require_3d=True, timeout_s=UNHURRIED_S
    )
    grasp = GraspStub()
    tree = py_trees.trees.BehaviourTree(
        py_trees.composites.Sequence("pick handle", memory=True, children=[find, grasp])
    )
    tree.setup(node=ros.node, timeout=UNHURRIED_S)

    gate.shut()
    durations = tick_until(tree, gate.entered.is_set)  # ticks until the node is inside the query
    assert tree.root.status == Status.RUNNING and find.status == Status.RUNNING
    for _ in range(5):  # the node cannot answer while the gate is shut: these ticks cannot wait for it
        started = time.perf_counter()
        tree.tick()
        durations.append(time.perf_counter() - started)
        assert find.status == Status.RUNNING and not gate.left.is_set() and find.pending
        time.sleep(0.1)
    longest_ms = max(durations) * 1000.0
    print(f"\nlongest tick while the query runs: {longest_ms:.2f} ms over {len(durations)} ticks")
    gate.open.set()
    tick_until(tree, lambda: tree.root.status != Status.RUNNING)
    assert tree.root.status == Status.SUCCESS, find.feedback_message

    expected = direct_answer(ros, "handle of the mug", "mug_handle")  # the same frame, asked directly
    assert expected.success and expected.has_3d, expected.message
    blackboard = py_trees.blackboard.Client(name="reader")
    for key in ("point", "pose", "result"):
        blackboard.register_key(key=key, access=py_trees.common.Access.READ)
    point, result = blackboard.get("point"), blackboard.get("result")
    assert (result.u, result.v) == (expected.u, expected.v)
    assert (point.point.x, point.point.y, point.point.z) == (
        expected.point.point.x,
        expected.point.point.y,
        expected.point.point.z,
    )
    assert point.point.z == pytest.approx(DEPTH_M) and point.header.frame_id == "bt_optical_frame"
    assert grasp.grasped == [point]
    assert (blackboard.get("pose") is None) == (not expected.has_pose)


def test_failure_reasons_arrive_as_feedback_message(bt_node):
    ros, node, gate = bt_node
    unknown = PointToPart("unknown set", "lid", "no_such_set", service=SERVICE, timeout_s=UNHURRIED_S)
    unknown.setup(node=ros.node)
    run_behaviour(unknown)
    assert unknown.status == Status.FAILURE
    assert unknown.feedback_message.startswith("unknown support set 'no_such_set' (known: ")
    reader = py_trees.blackboard.Client(name="reader")
    reader.register_key(key="point", access=py_trees.common.Access.READ)
    assert reader.get("point") is None  # a failure leaves no point to grasp

    # busy: a direct query holds the node (busy_policy reject) while the behaviour asks.
    gate.shut()
    holding = ros.call_async(PointToPartSrv, SERVICE, PointToPartSrv.Request(query="lid", support_set="mug_handle"))
    assert gate.entered.wait(30)
    busy = PointToPart("busy", "lid", "mug_handle", service=SERVICE, timeout_s=UNHURRIED_S)
    busy.setup(node=ros.node)
    run_behaviour(busy)
    gate.open.set()
    assert busy.status == Status.FAILURE and busy.feedback_message.startswith("busy"), busy.feedback_message
    assert ros.wait(holding).success

    # The query from the blackboard: a key that is not set is a failure that says so.
    from_board = PointToPart("from board", query_key="part", service=SERVICE, timeout_s=UNHURRIED_S)
    from_board.setup(node=ros.node)
    from_board.tick_once()
    assert from_board.status == Status.FAILURE and from_board.feedback_message == (
        "blackboard key 'part' (query) is not set"
    )


def test_preemption_mid_query_cancels_it_on_the_node_and_a_new_query_works(bt_node):
    ros, node, gate = bt_node
    published = ros.collect(PartPointResult, f"/{NS}/pop_node/result")
    board = py_trees.blackboard.Client(name="test")
    for key in ("stop", "part", "point", "result"):
        board.register_key(key=key, access=py_trees.common.Access.WRITE)
    board.stop, board.part = False, "handle of the mug"
    stop = py_trees.behaviours.CheckBlackboardVariableValue(
        "stop requested",
        check=py_trees.common.ComparisonExpression(variable="stop", value=True, operator=operator.eq),
    )
    find = PointToPart("find part", query_key="part", support_set="mug_handle", service=SERVICE, timeout_s=UNHURRIED_S)
    tree = py_trees.trees.BehaviourTree(py_trees.composites.Selector("root", memory=False, children=[stop, find]))
    tree.setup(node=ros.node, timeout=UNHURRIED_S)

    gate.shut()
    tick_until(tree, gate.entered.is_set)
    assert find.status == Status.RUNNING and find.pending
    board.stop = True
    tree.tick()  # the higher-priority branch pre-empts the query
    assert find.status == Status.INVALID and not find.pending
    assert find.feedback_message == "pre-empted: goal cancelled on the node"
    # The cancel reached the node while its query was inside the gate; opened, the query stops there.
    assert wait_for(lambda: [run.progress.reason for run in node.actions.runs()] == ["cancelled by its client"], 30)
    gate.open.set()
    assert wait_for(lambda: node.actions.runs() == [], 30)
    assert node.health.counts()[0].get("cancelled") == 1
    assert board.point is None and board.result is None  # initialise() cleared them; nothing came since

    board.stop, board.part = False, "rim of the cup"
    tick_until(tree, lambda: find.status in (Status.SUCCESS, Status.FAILURE))
    assert find.status == Status.SUCCESS, find.feedback_message
    expected = direct_answer(ros, "rim of the cup", "mug_handle")
    assert (board.result.u, board.result.v) == (expected.u, expected.v)
    assert board.point.point.z == pytest.approx(DEPTH_M)
    # Published: the new query's answer and the direct one's; nothing for the cancelled query.
    assert wait_for(lambda: len(published) == 2, 30)
    assert [result.query for result in published] == ["rim of the cup", "rim of the cup"]


def test_a_waiting_query_shows_its_place_and_a_new_run_clears_the_outputs(bt_node):
    from rclpy.parameter import Parameter

    ros, node, gate = bt_node
    node.set_parameters([Parameter("busy_policy", value="wait")])
    find = PointToPart("find", "handle of the mug", "mug_handle", service=SERVICE, timeout_s=UNHURRIED_S)
    find.setup(node=ros.node)
    assert run_behaviour(find) == Status.SUCCESS, find.feedback_message
    reader = py_trees.blackboard.Client(name="reader")
    for key in ("point", "pose", "result"):
        reader.register_key(key=key, access=py_trees.common.Access.READ)
    assert reader.get("result") is not None

    gate.shut()  # a direct query holds the models; the behaviour's goal waits behind it
    holding = ros.call_async(PointToPartSrv, SERVICE, PointToPartSrv.Request(query="lid", support_set="mug_handle"))
    assert gate.entered.wait(30)
    find.tick_once()
    # A Parallel sibling reading the blackboard now must not see the previous run's answer.
    assert find.status == Status.RUNNING
    assert (reader.get("point"), reader.get("pose"), reader.get("result")) == (None, None, None)
    assert wait_for(lambda: find.tick_once() or find.feedback_message.startswith("waiting (next), "), 30)
    gate.open.set()
    assert ros.wait(holding).success
    assert run_behaviour(find) == Status.SUCCESS, find.feedback_message
    assert reader.get("result").success


def test_a_missing_node_fails_setup_with_its_message(bt_node):
    ros, _, _ = bt_node
    find = PointToPart("find handle", "handle", service="/nobody/pop_node/point_to_part", timeout_s=0.5)
    tree = py_trees.trees.BehaviourTree(find)
    with pytest.raises(ServiceUnavailableError) as failure:
        tree.setup(node=ros.node, timeout=UNHURRIED_S)
    assert str(failure.value) == (
        "find handle: action /nobody/pop_node/point_to_part is not available after 0.5 s "
        "(is pop_node running, in this ROS_DOMAIN_ID and namespace?)"
    )
    with pytest.raises(ServiceUnavailableError, match=r"setup\(\) needs the ROS node"):
        PointToPart("no node").setup()


def test_a_server_the_client_cannot_match_is_named_in_setup_s_failure(bt_node):
    """The graph lists a server of that name, but of another type (a stale or foreign node): DDS never
    matches it, and setup says what the graph shows instead of suggesting the node is absent."""
    ros, _, _ = bt_node
    goal_service = "/impostor/pop_node/point_to_part/_action/send_goal"
    impostor = RosClient("impostor")  # another participant: Fast DDS refuses two types of one topic in one
    impostor.node.create_service(ListSupportSets, goal_service, lambda _request, response: response)
    try:
        assert wait_for(lambda: ros.node.count_services(goal_service) == 1, UNHURRIED_S)
        find = PointToPart("find handle", "handle", service="/impostor/pop_node/point_to_part", timeout_s=0.5)
        with pytest.raises(ServiceUnavailableError) as failure:
            find.setup(node=ros.node)
        assert str(failure.value) == (
            "find handle: action /impostor/pop_node/point_to_part is not available after 0.5 s (the ROS graph "
            f"lists 1 server(s) of {goal_service} that this client never matched: a stale or duplicate node "
            "of that name?)"
        )
    finally:
        impostor.close()


def test_several_parts_one_result_each(bt_node):
    ros, _, _ = bt_node
    parts = PointToParts(
        "parts",
        ["handle of the mug", "lid"],
        ["mug_handle", "no_such_set"],
        point_keys=["handle_point", "lid_point"],
        service=f"/{NS}/pop_node/point_to_parts",
        require_all=False,
        timeout_s=UNHURRIED_S,
    )
    parts.setup(node=ros.node)
    run_behaviour(parts)
    assert parts.status == Status.SUCCESS, parts.feedback_message
    reader = py_trees.blackboard.Client(name="reader")
    for key in ("results", "handle_point", "lid_point"):
        reader.register_key(key=key, access=py_trees.common.Access.READ)
    results = reader.get("results")
    assert [r.query for r in results] == ["handle of the mug", "lid"]
    assert results[0].success and not results[1].success
    assert results[1].message == "request 1: unknown support set 'no_such_set' (known: bottle_neck, mug_handle)"
    expected = direct_answer(ros, "handle of the mug", "mug_handle")
    assert (results[0].u, results[0].v) == (expected.u, expected.v)
    assert reader.get("handle_point").point.z == pytest.approx(DEPTH_M) and reader.get("lid_point") is None

    strict = PointToParts(
        "strict", ["lid"], ["no_such_set"], service=f"/{NS}/pop_node/point_to_parts", timeout_s=UNHURRIED_S
    )
    strict.setup(node=ros.node)
    run_behaviour(strict)
    assert (
        strict.status == Status.FAILURE
        and "'lid': request 0: unknown support set 'no_such_set'" in strict.feedback_message
    )


def test_teaching_a_clicked_pixel_then_pointing_with_the_new_set(bt_node):
    ros, node, _ = bt_node
    board = py_trees.blackboard.Client(name="test")
    board.register_key(key="click", access=py_trees.common.Access.WRITE)
    board.register_key(key="count", access=py_trees.common.Access.READ)
    board.click = (40.0, 30.0)
    teach = TeachExemplar(
        "teach",
        "bt_taught",
        query="rim of the cup",
        pixel_key="click",
        count_key="count",
        service=f"/{NS}/pop_node/add_exemplar",
        timeout_s=UNHURRIED_S,
    )
    find = PointToPart("find taught", support_set="bt_taught", service=SERVICE, timeout_s=UNHURRIED_S)
    tree = py_trees.trees.BehaviourTree(
        py_trees.composites.Sequence("teach then find", memory=True, children=[teach, find])
    )
    tree.setup(node=ros.node, timeout=UNHURRIED_S)
    tick_until(tree, lambda: tree.root.status in (Status.SUCCESS, Status.FAILURE), period_s=0.02)
    assert tree.root.status == Status.SUCCESS, (teach.feedback_message, find.feedback_message)
    assert board.count == 1 and teach.feedback_message == "added to 'bt_taught'"
    exemplar = node.pointer.library.get("bt_taught").exemplars[0]
    assert exemplar.click == (40.0, 30.0)
    np.testing.assert_array_equal(exemplar.image, cv2.cvtColor(SCENE, cv2.COLOR_BGR2RGB))  # the latest frame


def run_example(*args):
    command = [sys.executable, "-m", "pop_ros.examples.find_handle_tree", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.slow
def test_example_tree_finds_the_handle_and_prints_the_tree(bt_node):
    ros, _, _ = bt_node
    run = run_example("--namespace", f"/{NS}/pop_node", "--require-3d")
    assert run.returncode == 0, run.stdout + run.stderr
    expected = direct_answer(ros, "handle of the mug", "mug_handle")
    assert "{-} pick handle [*]\n    --> find handle [*] -- goal sent" in run.stdout
    assert "--> grasp (stub) [✓]" in run.stdout
    point = expected.point.point
    assert run.stdout.rstrip().endswith(
        f"SUCCESS: would grasp at ({point.x:.3f}, {point.y:.3f}, {point.z:.3f}) m in bt_optical_frame"
    )


@pytest.mark.slow
def test_example_tree_without_a_node_says_so():
    run = run_example("--namespace", "/nobody/pop_node", "--timeout", "1")
    assert run.returncode == 1
    assert run.stderr.strip() == (
        "error: find handle: action /nobody/pop_node/point_to_part is not available after 1 s "
        "(is pop_node running, in this ROS_DOMAIN_ID and namespace?)"
    )


def test_point_to_part_asks_for_instances_and_a_region_of_interest():
    plain = PointToPart("plain", "handle", "mug_handle")._request()
    assert plain.max_instances == 0 and (plain.roi.width, plain.roi.height) == (0, 0)  # today's request
    boxed = PointToPart("boxed", "handle", "mug_handle", max_instances=3, roi=(10, 20, 30, 40))._request()
    assert boxed.max_instances == 3
    assert (boxed.roi.x_offset, boxed.roi.y_offset, boxed.roi.width, boxed.roi.height) == (10, 20, 30, 40)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_instances": -1}, "max_instances must be an integer >= 0"),
        ({"max_instances": 2.5}, "max_instances must be an integer >= 0"),
        ({"roi": (1, 2, 3)}, "roi must be"),
        ({"roi": (1, 2, -3, 4)}, "roi must be"),
    ],
)
def test_bad_instances_or_roi_are_refused_when_the_tree_is_built(kwargs, message):
    # A message field out of range would raise inside initialise(), escaping the tree's tick.
    with pytest.raises(ValueError, match=message):
        PointToPart("bad", "handle", "mug_handle", **kwargs)


class StandInNode:
    """A real `point_to_part` action server whose answers the test chooses: each goal gets the next
    result of `answers`; while `silent` is set, goals get no answer (a node that hung) until they
    are cancelled."""

    def __init__(self, ros, action_name: str):
        from rclpy.action import ActionServer, CancelResponse
        from rclpy.callback_groups import ReentrantCallbackGroup

        self.answers: list = []
        self.unacknowledged = 0  # goal requests to leave unanswered (lost, as a new client's first can be)
        self.withheld: list = []  # their goal requests
        self.acknowledge = threading.Event()  # set: the withheld acceptances go out
        self.silent = threading.Event()
        self.release = threading.Event()
        self.requests = 0
        self.cancelled = 0
        self.server = ActionServer(
            ros.node,
            PointToPartAction,
            action_name,
            execute_callback=self._execute,
            goal_callback=self._on_goal,
            cancel_callback=lambda _goal: CancelResponse.ACCEPT,
            callback_group=ReentrantCallbackGroup(),
        )

    def _on_goal(self, goal_request):
        from rclpy.action import GoalResponse

        if self.unacknowledged > 0:  # its acceptance only comes once the test releases it
            self.unacknowledged -= 1
            self.withheld.append(goal_request)
            self.acknowledge.wait()
        return GoalResponse.ACCEPT

    def _execute(self, goal_handle):
        self.requests += 1
        while self.silent.is_set() and not self.release.wait(0.02):  # hung: only a cancel ends it
            if goal_handle.is_cancel_requested:
                self.cancelled += 1
                goal_handle.canceled()
                return PointToPartAction.Result(message="cancelled")
        goal_handle.succeed()
        return self.answers.pop(0)


def answer_3d(has_3d: bool) -> PointToPartAction.Result:
    result = PointToPartAction.Result(success=True, message="ok" if has_3d else "no 3D point: no depth", score=0.9)
    result.u, result.v, result.has_3d, result.has_pose = 40.0, 30.0, has_3d, has_3d
    result.point.point.x, result.point.point.y, result.point.point.z = (0.1, -0.2, 1.25) if has_3d else (0, 0, 0)
    result.point.header.frame_id = "bt_optical_frame"
    result.pose.pose.position.z = 1.25 if has_3d else 0.0
    return result


@pytest.fixture
def stand_in():
    from pop_ros.clients.ros_client import RosClient

    ros = RosClient("bt_stand_in")
    node = StandInNode(ros, "/stand_in/pop_node/point_to_part")
    py_trees.blackboard.Blackboard.clear()
    yield ros, node
    node.acknowledge.set()
    node.release.set()
    py_trees.blackboard.Blackboard.clear()
    ros.close()


def test_a_node_that_goes_silent_fails_the_behaviour_after_timeout_s(stand_in):
    ros, node = stand_in
    node.silent.set()
    find = PointToPart("find", "handle", service="/stand_in/pop_node/point_to_part", timeout_s=1.0)
    find.setup(node=ros.node)
    assert run_behaviour(find, timeout=60.0) == Status.FAILURE
    assert find.feedback_message == "no answer from /stand_in/pop_node/point_to_part within 1 s (goal cancelled)"
    assert node.requests == 1  # sent once, not again and again
    assert wait_for(lambda: node.cancelled == 1, 30)  # and the goal it gave up was cancelled on the node


def test_a_goal_whose_acceptance_never_comes_is_sent_again_and_the_late_one_cancelled(stand_in, monkeypatch):
    from pop_ros.clients import behaviour_requests

    # The stand-in acknowledges at once or never: the resend interval only sets how long this waits.
    monkeypatch.setattr(behaviour_requests, "GOAL_ACK_RESEND_S", 0.5)
    ros, node = stand_in
    node.unacknowledged = 1  # the first request's acceptance is held back (lost, as far as the client knows)
    node.answers = [answer_3d(True), answer_3d(True)]
    find = PointToPart("find", "handle", service="/stand_in/pop_node/point_to_part", timeout_s=60.0)
    find.setup(node=ros.node)
    assert run_behaviour(find, timeout=60.0) == Status.SUCCESS  # answered through the second request
    assert len(node.withheld) == 1 and node.requests == 1
    node.silent.set()  # the late goal would run forever: only a cancel ends it
    node.acknowledge.set()  # the first request's acceptance arrives late
    assert wait_for(lambda: node.cancelled == 1, 30)  # the behaviour cancelled that goal
    assert node.requests == 2 and node.answers == [answer_3d(True)]  # and it never answered


def test_require_3d_failure_after_a_success_leaves_no_point_or_pose_on_the_blackboard(stand_in):
    ros, node = stand_in
    node.answers = [answer_3d(True), answer_3d(False)]
    find = PointToPart("find", "handle", service="/stand_in/pop_node/point_to_part", require_3d=True)
    find.setup(node=ros.node)
    reader = py_trees.blackboard.Client(name="reader")
    for key in ("point", "pose", "result"):
        reader.register_key(key=key, access=py_trees.common.Access.READ)
    assert run_behaviour(find) == Status.SUCCESS
    assert (reader.get("point").point.z, reader.get("pose").pose.position.z) == (1.25, 1.25)
    find.stop(Status.SUCCESS)  # as a sequence does before ticking it again
    assert run_behaviour(find) == Status.FAILURE
    assert find.feedback_message == "no 3D point: no 3D point: no depth"
    assert reader.get("point") is None and reader.get("pose") is None  # the first answer's point is gone
    assert reader.get("result").has_3d is False  # the answer itself is kept


def test_action_clients_made_and_let_go_beside_a_spinning_executor_never_end_its_spin():
    """The behaviours make their action client in setup() and let it go in shutdown() (and again when
    a server is slow to appear) while the tree's node spins in another thread. rclpy's own
    ActionClient ends that spin() with an exception within a few rounds of this loop (ros2/rclpy#1589
    when made, #1385 when destroyed; a CI run lost a behaviour test to the first)."""
    from rclpy.action import get_action_client_names_and_types_by_node

    from pop_ros.clients.ros_client import RosClient, SpinSafeActionClient

    ros = RosClient("spin_safe_clients")
    ticks = []
    ros.node.create_timer(0.0005, lambda: ticks.append(1))  # keeps the executor rebuilding wait sets
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # thread switches inside the constructor and destroy: the races' windows
    try:
        for index in range(100):  # rclpy's own client ended the spin within 10-20 rounds here
            SpinSafeActionClient(ros.node, PointToPartAction, f"/spin_safe/action_{index}").destroy()
            assert ros._thread.is_alive(), f"the executor's spin() ended after {index + 1} clients"
    finally:
        sys.setswitchinterval(switch_interval)
    try:
        seen = len(ticks)
        assert wait_for(lambda: len(ticks) > seen + 10, 30)  # still spinning, not merely still a thread
        assert not [w for w in ros.node.waitables if isinstance(w, SpinSafeActionClient)]  # out of its wait sets
        assert wait_for(lambda: not get_action_client_names_and_types_by_node(ros.node, "spin_safe_clients", "/"), 30)
    finally:
        ros.close()


def test_an_action_client_destroyed_during_its_take_finishes_the_take_and_is_destroyed_after():
    """The interleaving of ros2/rclpy#1385 that the wait set does not cover: the executor's worker
    takes a client's data while another thread destroys it. The take finishes with nothing (no
    exception reaches spin()), and the handle is destroyed once the take let go of it."""
    from rclpy.exceptions import InvalidHandle

    from pop_ros.clients.ros_client import RosClient, SpinSafeActionClient

    class DestroyedMidTake(SpinSafeActionClient):
        @property
        def _is_goal_response_ready(self):  # read inside rclpy's take_data: destroy right there
            self.destroy()
            return True

        @_is_goal_response_ready.setter
        def _is_goal_response_ready(self, _value):
            pass

    ros = RosClient("destroyed_mid_take")
    try:
        client = DestroyedMidTake(ros.node, PointToPartAction, "/destroyed_mid_take/action")
        for flag in ("cancel_response", "result_response", "feedback", "status"):  # set by is_ready()
            setattr(client, f"_is_{flag}_ready", False)
        assert client.take_data() == {}
        with pytest.raises(InvalidHandle):
            with client._client_handle:
                pass
    finally:
        ros.close()


def test_wait_for_node_asks_again_when_an_answer_is_lost(monkeypatch):
    """A new client's first request (or its answer) can be lost while DDS matches both sides, and
    rclpy never resends it: a fresh-clone run waited its whole 120 s on one such call. wait_for_node
    asks list_support_sets again after ASK_AGAIN_S; here the stand-in never answers its first call."""
    from rclpy.callback_groups import ReentrantCallbackGroup

    from pop_ros.clients import ros_client
    from pop_ros.clients.ros_client import RosClient
    from pop_ros_interfaces.srv import ListSupportSets

    monkeypatch.setattr(ros_client, "ASK_AGAIN_S", 1.0)
    server, client = RosClient("lost_answer_server"), RosClient("lost_answer_client")
    calls, release = [], threading.Event()

    def list_sets(_request, response):
        calls.append(1)
        if len(calls) == 1:
            release.wait(60)  # the lost one: answered only when the test ends
        response.names = ["mug_handle"]
        response.message = "1 support set"
        return response

    server.node.create_service(
        ListSupportSets, "/lost/pop_node/list_support_sets", list_sets, callback_group=ReentrantCallbackGroup()
    )
    try:
        listing = client.wait_for_node("/lost", timeout=60.0)
        assert list(listing.names) == ["mug_handle"] and len(calls) >= 2
    finally:
        release.set()
        client.close()
        server.close()
