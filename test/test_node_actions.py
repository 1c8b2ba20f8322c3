"""~/point_to_part and ~/point_to_parts as actions: real rclpy action clients against an in-process
pop_node (tiny preset, frame cache off so each goal runs the visual encoder).

Where a goal must be running or waiting for as long as a test likes, the node's visual encoder is
gated (an Event): the goal is then inside the pipeline, and its cancel is caught by the real stage
boundary that follows the encoder. No timing bound is asserted."""

import threading

import pytest
from action_msgs.msg import GoalStatus
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.executors import MultiThreadedExecutor

from pop_ros.clients.ros_client import LIBRARY, RosClient, SpinSafeActionClient
from pop_ros.ros.node import EXECUTOR_THREADS
from pop_ros_interfaces.action import PointToPart, PointToParts
from pop_ros_interfaces.msg import PartPointResult
from pop_ros_interfaces.srv import PointToPart as PointToPartSrv
from test.conftest import colour_msg, scene, wait_for

NS = "act"
ACTION = f"/{NS}/pop_node/point_to_part"
TIMEOUT = 60.0


class EncoderGate:
    """Holds every query inside the node's visual encoder until opened; counts MLLM prefixes made."""

    def __init__(self, pointer):
        self.open, self.entered = threading.Event(), threading.Event()
        self.open.set()
        self.prefixes = 0
        encode, prefix = pointer.visual.encode_preprocessed, pointer.mllm.image_prefix

        def gated_encode(*args, **kwargs):
            self.entered.set()
            assert self.open.wait(TIMEOUT), "the test never opened the gate"
            return encode(*args, **kwargs)

        def counted_prefix(*args, **kwargs):
            self.prefixes += 1
            return prefix(*args, **kwargs)

        pointer.visual.encode_preprocessed = gated_encode
        pointer.mllm.image_prefix = counted_prefix

    def shut(self):
        self.open.clear()
        self.entered.clear()


class Goal:
    """One goal sent through an action client (rclpy's, made spin-safe): its feedback as it comes, its end."""

    def __init__(self, client: SpinSafeActionClient, goal_msg):
        self.feedback: list = []
        self.feedback_at_result = -1
        sent = client.send_goal_async(goal_msg, feedback_callback=lambda msg: self.feedback.append(msg.feedback))
        self.handle = RosClient.wait(sent, TIMEOUT)
        assert self.handle.accepted
        self._result = self.handle.get_result_async()
        self._result.add_done_callback(lambda _: setattr(self, "feedback_at_result", len(self.feedback)))

    def cancel(self):
        response = RosClient.wait(self.handle.cancel_goal_async(), TIMEOUT)
        assert len(response.goals_canceling) == 1, "the node refused the cancel"

    def done(self) -> bool:
        return self._result.done()

    def end(self):
        """(status, result) once the goal has ended."""
        response = RosClient.wait(self._result, TIMEOUT)
        return response.status, response.result

    def stages(self) -> list[str]:
        return [feedback.stage for feedback in self.feedback]


@pytest.fixture
def action_node(inprocess):
    """(ros client, pop_node, gate, action client, ~/result messages): the node spun by an executor
    with as many threads as pop_node's own (each waiting goal holds one)."""
    ros, node, _ = inprocess(NS, f"support_library:={LIBRARY}", "frame_cache_size:=0", "max_frame_age:=0.0")
    assert node.pointer is not None and node.active
    ros.executor.remove_node(node)
    executor = MultiThreadedExecutor(num_threads=EXECUTOR_THREADS, context=ros.context)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    client = SpinSafeActionClient(ros.node, PointToPart, ACTION, callback_group=ReentrantCallbackGroup())
    assert client.wait_for_server(timeout_sec=TIMEOUT)
    results = ros.collect(PartPointResult, f"/{NS}/pop_node/result")
    yield ros, node, EncoderGate(node.pointer), client, results
    if client in list(ros.node.waitables):  # a test may have destroyed it
        client.destroy()
    executor.remove_node(node)
    executor.shutdown()


def goal(index: int, ros, query="handle of the mug"):
    """A goal on sample scene `index` (sent with the goal: the test does not depend on a camera)."""
    image = colour_msg(ros.now_stamp(), image=scene(index))
    return PointToPart.Goal(query=query, support_set="mug_handle", image=image)


def stamps(results) -> list:
    return [(r.header.stamp.sec, r.header.stamp.nanosec) for r in results]


def stamp_of(goal_msg):
    return (goal_msg.image.header.stamp.sec, goal_msg.image.header.stamp.nanosec)


def test_a_goal_reports_its_stages_before_its_result_and_answers_as_the_service(action_node):
    ros, node, _, client, results = action_node
    message = goal(0, ros)
    sent = Goal(client, message)
    status, result = sent.end()
    assert status == GoalStatus.STATUS_SUCCEEDED, result.message
    assert sent.feedback_at_result > 0  # feedback came before the result
    assert wait_for(lambda: len(sent.feedback) >= 5)
    assert sent.stages() == ["capture", "image features", "mllm prefix", "query", "region", "publishing"]
    elapsed = [feedback.elapsed_ms for feedback in sent.feedback]
    assert elapsed == sorted(elapsed) and elapsed[0] >= 0.0
    request = PointToPartSrv.Request(query=message.query, support_set=message.support_set, image=message.image)
    service = ros.call(PointToPartSrv, ACTION, request)
    assert (result.success, result.u, result.v, result.score) == (service.success, service.u, service.v, service.score)
    assert wait_for(lambda: len(results) == 2)  # each published its answer


def test_a_running_goal_cancelled_stops_after_the_visual_encoder_and_publishes_nothing(action_node):
    ros, node, gate, client, results = action_node
    gate.shut()
    cancelled = Goal(client, goal(0, ros))
    assert gate.entered.wait(TIMEOUT)
    assert wait_for(lambda: "image features" in cancelled.stages())
    cancelled.cancel()
    gate.open.set()
    status, result = cancelled.end()
    assert status == GoalStatus.STATUS_CANCELED
    assert result.message == "cancelled: cancelled by its client" and not result.success
    assert gate.prefixes == 0  # the MLLM never ran for it
    assert node.health.counts()[0].get("cancelled") == 1
    # The models are free: the next goal runs to its end, and only its answer is published.
    following = goal(1, ros)
    status, _ = Goal(client, following).end()
    assert status == GoalStatus.STATUS_SUCCEEDED
    assert wait_for(lambda: len(results) == 1)
    assert stamps(results) == [stamp_of(following)] and gate.prefixes == 1
    assert node.actions.runs() == []


def test_a_waiting_goal_cancelled_leaves_the_queue_at_once(action_node):
    ros, node, gate, client, results = action_node
    gate.shut()
    first_msg = goal(0, ros)
    first = Goal(client, first_msg)
    assert gate.entered.wait(TIMEOUT)
    waiting = Goal(client, goal(1, ros))
    assert wait_for(lambda: waiting.stages() == ["waiting"])
    assert waiting.feedback[0].queue_position == 0  # next, behind the running one
    waiting.cancel()
    status, result = waiting.end()  # while the first still holds the models
    assert status == GoalStatus.STATUS_CANCELED and result.message.startswith("cancelled")
    assert not first.done() and not gate.open.is_set()
    third_msg = goal(2, ros)
    third = Goal(client, third_msg)  # the cancelled goal's place is free: the third is next
    assert wait_for(lambda: third.stages() == ["waiting"]) and third.feedback[0].queue_position == 0
    gate.open.set()
    assert first.end()[0] == GoalStatus.STATUS_SUCCEEDED and third.end()[0] == GoalStatus.STATUS_SUCCEEDED
    assert wait_for(lambda: len(results) == 2)
    assert sorted(stamps(results)) == sorted([stamp_of(first_msg), stamp_of(third_msg)])


def test_goals_are_answered_busy_as_service_calls_are(action_node):
    ros, node, gate, client, _ = action_node
    from rclpy.parameter import Parameter

    node.set_parameters([Parameter("busy_policy", value="reject")])
    gate.shut()
    first = Goal(client, goal(0, ros))
    assert gate.entered.wait(TIMEOUT)
    status, result = Goal(client, goal(1, ros)).end()
    image = colour_msg(ros.now_stamp(), image=scene(2))
    request = PointToPartSrv.Request(query="lid", support_set="mug_handle", image=image)
    service = ros.call(PointToPartSrv, ACTION, request)
    gate.open.set()
    assert status == GoalStatus.STATUS_SUCCEEDED and not result.success  # answered, as the service is
    assert result.message == service.message == "busy: another query is running; try again"
    assert first.end()[0] == GoalStatus.STATUS_SUCCEEDED


def test_a_goal_whose_client_vanishes_is_cancelled_and_frees_the_node(action_node):
    ros, node, gate, client, results = action_node
    ros.client(PointToPartSrv, ACTION)  # the service call at the end: matched by then, even on a loaded machine
    client.destroy()  # the node cannot tell which client sent a goal: the ghost must be the only one
    ghost = RosClient(f"{NS}_ghost")
    ghost_client = SpinSafeActionClient(ghost.node, PointToPart, ACTION)
    assert ghost_client.wait_for_server(timeout_sec=TIMEOUT)
    # The node must have discovered the ghost too (DDS matches each side on its own): a request
    # sent before that may be dropped.
    assert wait_for(lambda: node.count_clients(f"{ACTION}/_action/send_goal") == 1, TIMEOUT)
    assert wait_for(lambda: node.count_subscribers(f"{ACTION}/_action/feedback") == 1, TIMEOUT)
    gate.shut()
    ghosted = goal(0, ros)
    # A new client's request can still be lost on a loaded machine (DDS matching is per endpoint and
    # rclpy never resends): sent again until one runs; any that arrive later wait behind it (and are
    # cancelled with it). Every 2 s: a lost first request (seen in about one run in three) cost 5 s.
    assert any(ghost_client.send_goal_async(ghosted) and gate.entered.wait(2.0) for _ in range(int(TIMEOUT / 2)))
    ghost_client.destroy()
    ghost.close()  # the client's process ends mid-goal
    assert wait_for(lambda: {run.progress.reason for run in node.actions.runs()} == {"its client is gone"}, TIMEOUT)
    orphans = len(node.actions.runs())
    gate.open.set()
    assert wait_for(lambda: node.actions.runs() == [], TIMEOUT)
    assert node.health.counts()[0].get("cancelled") == orphans and gate.prefixes == 0
    # The node is free: the next query (a service call here) runs, and only its answer is published.
    following = goal(1, ros)
    request = PointToPartSrv.Request(query=following.query, support_set=following.support_set, image=following.image)
    assert ros.call(PointToPartSrv, ACTION, request, timeout=TIMEOUT).message != ""
    assert wait_for(lambda: len(results) == 1) and stamps(results) == [stamp_of(following)]


def test_point_to_parts_goal_can_be_cancelled_while_running(action_node):
    ros, node, gate, _, results = action_node
    client = SpinSafeActionClient(ros.node, PointToParts, f"/{NS}/pop_node/point_to_parts")
    assert client.wait_for_server(timeout_sec=TIMEOUT)
    message = PointToParts.Goal(
        queries=["handle", "rim"], support_sets=["mug_handle", "mug_handle"], image=colour_msg(ros.now_stamp())
    )
    finished = Goal(client, message)
    status, result = finished.end()
    assert status == GoalStatus.STATUS_SUCCEEDED and len(result.results) == 2
    assert finished.stages()[:2] == ["capture", "image features"]
    assert wait_for(lambda: len(results) == 2)
    gate.shut()
    message.image = colour_msg(ros.now_stamp(), image=scene(1))
    cancelled = Goal(client, message)
    assert gate.entered.wait(TIMEOUT)
    cancelled.cancel()
    gate.open.set()
    status, result = cancelled.end()
    assert status == GoalStatus.STATUS_CANCELED and not result.success and list(result.results) == []
    assert gate.prefixes == 1 and len(results) == 2  # nothing more published
    client.destroy()


def test_a_destroyed_node_leaves_nothing_in_the_graph(inprocess):
    """An in-process pop_node destroyed, its client closed: a fresh context no longer sees the node,
    its action servers or its lifecycle services. rclpy's destroy_node leaves action servers (waitables)
    and LifecycleNode's state machine alive, and each kept the node and its DDS participant serving:
    stale `point_to_parts` servers beside a new node's made the graph's counts disagree with what a new
    action client matched, and a behaviour's setup waited its whole timeout (a CI failure)."""
    gone = RosClient("gone_client")
    ros, node, _ = inprocess("gone")
    send_goal = "/gone/pop_node/point_to_parts/_action/send_goal"

    def seen():
        names = gone.node.get_node_names_and_namespaces()
        return ("pop_node", "/gone") in names, gone.node.count_services(send_goal)

    try:
        assert wait_for(lambda: seen() == (True, 1), TIMEOUT), f"the live node never appeared: {seen()}"
        ros.executor.remove_node(node)
        node.destroy_node()
        ros.close()
        # Discovery carries the removals within a second; the stale entities stayed for minutes.
        assert wait_for(lambda: seen() == (False, 0), 30.0), f"still in the graph after destroy: {seen()}"
    finally:
        gone.close()


def test_a_destroyed_node_gives_the_package_s_log_records_back_to_python_logging(inprocess, caplog):
    """While a pop_node lives, pop_ros's Python log records go to its ROS logger (rosout); destroyed, it
    gives them back to the root logger. It kept them: a tool run in-process later in the same process
    (a test's `tool_here`) lost every log line."""
    import logging

    ros, node, _ = inprocess("logs")
    package = logging.getLogger("pop_ros.pipeline.loading")
    with caplog.at_level(logging.INFO):
        package.warning("while the node lives")
        assert "while the node lives" not in caplog.text  # routed to the node's ROS logger
        ros.executor.remove_node(node)
        node.destroy_node()
        package.warning("after the node is gone")
    assert "after the node is gone" in caplog.text
