"""The transport under pop_ros.behaviours: one request to pop_node per run of a behaviour, as an
action goal (the part queries: cancellable, with feedback) or a service call (teaching).

The py_trees_ros conventions: the tree's ROS node comes in `setup(node=...)` (which waits up to
`timeout_s` for the server and raises `ServiceUnavailableError` if it is absent), `initialise()`
clears the outputs and sends the request asynchronously, `update()` only looks at what has arrived
(RUNNING until the answer is there, never waiting) and `terminate(INVALID)` (a higher-priority
branch pre-empted the behaviour) gives the request up: an action goal is cancelled on the node
(its work stops, nothing is published for it), a service call is forgotten (the node still answers
it). Timeouts are wall-clock (`time.monotonic`).
"""

from __future__ import annotations

import math
import threading
import time

import py_trees
from action_msgs.msg import GoalStatus
from rclpy.callback_groups import ReentrantCallbackGroup

from pop_ros.clients.ros_client import SpinSafeActionClient

Status = py_trees.common.Status


class ServiceUnavailableError(RuntimeError):
    """setup() found no node to talk to, or the node's action or service did not appear in time."""


class Refused(Exception):  # noqa: N818 - a request that is refused, not an error of ours
    """The request cannot be built (a blackboard input is missing or malformed): one line."""


class RequestBehaviour(py_trees.behaviour.Behaviour):
    """One request to one pop_node server per run of the behaviour (initialise -> terminate).

    Subclasses say what to ask (`_request`), what the answer means (`_on_answer`) and which outputs
    a failure or a new run clears (`_clear_outputs`, `_reset_outputs`); the transport subclasses
    (`ActionBehaviour`, `ServiceBehaviour`) say how it travels."""

    kind = ""  # "action" | "service", in messages

    def __init__(self, name: str, service: str, timeout_s: float):
        super().__init__(name)
        if not (isinstance(timeout_s, (int, float)) and math.isfinite(timeout_s) and timeout_s > 0):
            raise ValueError(f"{name}: timeout_s must be a positive number of seconds, got {timeout_s!r}")
        self.service = service
        self.timeout_s = float(timeout_s)
        self.blackboard = self.attach_blackboard_client(name=name)
        self.node = None
        self.client = None
        self._request_msg = None  # built in initialise(), sent as soon as the server is there
        self._sent_at = 0.0
        self._started_at = 0.0
        self._refusal = ""

    # ---- py_trees lifecycle ------------------------------------------------------------------------
    def setup(self, **kwargs) -> None:
        node = kwargs.get("node")
        if node is None:
            raise ServiceUnavailableError(
                f"{self.name}: setup() needs the ROS node: tree.setup(node=node, ...) (py_trees_ros convention)"
            )
        self.node = node
        if not self._found_server(node):
            servers = node.count_services(self._server_service)
            hint = (
                "is pop_node running, in this ROS_DOMAIN_ID and namespace?"
                if servers == 0
                else f"the ROS graph lists {servers} server(s) of {self._server_service} that this client "
                "never matched: a stale or duplicate node of that name?"
            )
            raise ServiceUnavailableError(
                f"{self.name}: {self.kind} {self.service} is not available after {self.timeout_s:g} s ({hint})"
            )

    def initialise(self) -> None:
        self._give_up()
        self._started_at = time.monotonic()
        self._refusal = ""
        self.feedback_message = ""
        self._request_msg = None
        self._reset_outputs()  # a sibling reading the blackboard must not see the previous run's answer
        if self.client is None:
            self._refusal = f"{self.name}: setup(node=...) was not called or failed"
            return
        try:
            self._request_msg = self._request()
        except Refused as refusal:
            self._refusal = str(refusal)
            return
        self._send_if_ready()

    def update(self) -> Status:
        if self._refusal:
            return self._fail(self._refusal)
        if not self.pending:  # the server was not there at initialise(): keep looking, no waiting
            if not self._send_if_ready():
                if time.monotonic() - self._started_at > self.timeout_s:
                    return self._fail(f"{self.kind} {self.service} is not available after {self.timeout_s:g} s")
                self.feedback_message = f"waiting for {self.kind} {self.service}"
                return Status.RUNNING
        return self._poll()

    def terminate(self, new_status: Status) -> None:
        # INVALID: pre-empted by a higher-priority branch (or the tree stopped): give the request up;
        # the next tick's initialise() sends a fresh one.
        if new_status == Status.INVALID and self._give_up():
            self.feedback_message = f"pre-empted: {self._given_up_text}"

    def shutdown(self) -> None:
        self._give_up()
        self._destroy_client()

    # ---- shared helpers ----------------------------------------------------------------------------
    def _found_server(self, node) -> bool:
        """Wait up to `timeout_s` for the server. A client that has not seen it within
        SERVER_REDISCOVERY_S is made again: a new client's discovery was seen to stall for minutes in
        the tests (an in-process node, several clients of one action), while a fresh one matched."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            if self.client is None:
                self.client = self._create_client(node)
            left = deadline - time.monotonic()
            if self._wait_for_server(max(0.0, min(left, SERVER_REDISCOVERY_S))):
                return True
            self._destroy_client()
            if time.monotonic() >= deadline:
                return False

    def _send_if_ready(self) -> bool:
        if self._request_msg is None or not self._server_ready():
            return False
        self._send(self._request_msg)
        self._sent_at = time.monotonic()
        return True

    def _timed_out(self) -> bool:
        return time.monotonic() - self._sent_at > self.timeout_s

    def _fail(self, reason: str) -> Status:
        self.feedback_message = reason
        self._clear_outputs()
        return Status.FAILURE

    def _read(self, key: str, what: str):
        try:
            return self.blackboard.get(key)
        except KeyError:
            raise Refused(f"blackboard key {key!r} ({what}) is not set") from None

    def _request(self):
        raise NotImplementedError

    def _on_answer(self, response) -> Status:
        raise NotImplementedError

    def _clear_outputs(self) -> None:
        """Outputs that must not outlive a failure (a stale point must never be grasped)."""

    def _reset_outputs(self) -> None:
        """Every output, at the start of a run: nothing of the previous run stays visible."""
        self._clear_outputs()

    # ---- the transport -----------------------------------------------------------------------------
    _given_up_text = ""

    @property
    def pending(self) -> bool:
        """Whether a request of this behaviour awaits its answer."""
        raise NotImplementedError

    @property
    def _server_service(self) -> str:
        """The service whose servers the ROS graph counts for this request's server."""
        raise NotImplementedError

    def _create_client(self, node):
        raise NotImplementedError

    def _wait_for_server(self, timeout_s: float) -> bool:
        raise NotImplementedError

    def _server_ready(self) -> bool:
        raise NotImplementedError

    def _send(self, request) -> None:
        raise NotImplementedError

    def _poll(self) -> Status:
        """The status once the request is sent: RUNNING, or the answer's meaning."""
        raise NotImplementedError

    def _give_up(self) -> bool:
        """Abandon the pending request, if any (True then)."""
        raise NotImplementedError

    def _destroy_client(self) -> None:
        if self.client is not None and self.node is not None:
            if isinstance(self.client, SpinSafeActionClient):
                self.client.destroy()
            else:
                self.node.destroy_client(self.client)
        self.client = None


class ServiceBehaviour(RequestBehaviour):
    """The request is a service call: it cannot be cancelled; giving it up forgets its answer."""

    kind = "service"
    srv_type: type = None
    _given_up_text = "pending request dropped"

    def __init__(self, name: str, service: str, timeout_s: float):
        super().__init__(name, service, timeout_s)
        self._future = None  # the pending request of this run; None: not sent (yet) or dropped

    @property
    def pending(self) -> bool:
        return self._future is not None

    @property
    def _server_service(self) -> str:
        return self.service

    def _create_client(self, node):
        return node.create_client(self.srv_type, self.service, callback_group=ReentrantCallbackGroup())

    def _wait_for_server(self, timeout_s: float) -> bool:
        return self.client.wait_for_service(timeout_sec=timeout_s)

    def _server_ready(self) -> bool:
        return self.client.service_is_ready()

    def _send(self, request) -> None:
        self._future = self.client.call_async(request)

    def _poll(self) -> Status:
        if not self._future.done():
            if self._timed_out():
                self._give_up()
                return self._fail(f"no answer from {self.service} within {self.timeout_s:g} s")
            self.feedback_message = f"waiting for {self.service}"
            return Status.RUNNING
        future, self._future = self._future, None
        if future.cancelled() or future.exception() is not None:
            return self._fail(f"{self.service} failed: {future.exception() or 'request cancelled'}")
        return self._on_answer(future.result())

    def _give_up(self) -> bool:
        future, self._future = self._future, None
        if future is None or future.done():
            return False
        self.client.remove_pending_request(future)  # the answer, when it comes, finds no one waiting
        future.cancel()
        return True


# Seconds a new client may take to see its server before it is made again (see _found_server).
SERVER_REDISCOVERY_S = 10.0
# Seconds a goal may go unacknowledged before it is sent again (acceptance takes milliseconds: the node
# queues a goal at once and answers busy or not-ready in the result, never by withholding acceptance).
GOAL_ACK_RESEND_S = 3.0


class GoalInFlight:
    """One goal of a behaviour: its acceptance, its latest feedback, its result. The node's answers
    arrive in the executor's threads; `cancel` comes from the tree's."""

    def __init__(self, client: SpinSafeActionClient, goal):
        self.sent_at = time.monotonic()
        self.feedback = None  # the latest Feedback
        self.rejected = False
        self.error = ""
        self._lock = threading.Lock()
        self._handle = None
        self._cancelled = False
        self._result = None  # the get_result future, once the goal is accepted
        client.send_goal_async(goal, feedback_callback=self._on_feedback).add_done_callback(self._on_response)

    def _on_feedback(self, message) -> None:
        self.feedback = message.feedback

    def _on_response(self, future) -> None:
        if future.exception() is not None:
            self.error = str(future.exception())
            return
        handle = future.result()
        if not handle.accepted:
            self.rejected = True
            return
        with self._lock:
            self._handle = handle
            cancelled = self._cancelled
            if not cancelled:
                self._result = handle.get_result_async()
        if cancelled:  # given up before the node accepted it
            handle.cancel_goal_async()

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            handle = self._handle
        if handle is not None:
            handle.cancel_goal_async()

    @property
    def acknowledged(self) -> bool:
        """The node answered the goal request (accepted, rejected or failed)."""
        return self._handle is not None or self.rejected or bool(self.error)

    def response(self):
        """The GetResult response (status, result) once the goal has ended, else None."""
        result = self._result
        return result.result() if result is not None and result.done() else None

    def describe(self) -> str:
        feedback = self.feedback
        if feedback is None:
            return "goal sent"
        if feedback.stage == "waiting":
            place = "next" if feedback.queue_position == 0 else f"{feedback.queue_position} ahead"
            return f"waiting ({place}), {feedback.elapsed_ms:.0f} ms"
        return f"{feedback.stage}, {feedback.elapsed_ms:.0f} ms"


class ActionBehaviour(RequestBehaviour):
    """The request is an action goal: `feedback_message` shows its stage while RUNNING, and giving
    it up (pre-emption, timeout, shutdown) cancels it on the node."""

    kind = "action"
    action_type: type = None
    _given_up_text = "goal cancelled on the node"

    def __init__(self, name: str, service: str, timeout_s: float):
        super().__init__(name, service, timeout_s)
        self._goal: GoalInFlight | None = None

    @property
    def pending(self) -> bool:
        return self._goal is not None

    @property
    def _server_service(self) -> str:
        return f"{self.service}/_action/send_goal"  # rcl's name for an action's goal service

    def _create_client(self, node):
        return SpinSafeActionClient(node, self.action_type, self.service, callback_group=ReentrantCallbackGroup())

    def _wait_for_server(self, timeout_s: float) -> bool:
        return self.client.wait_for_server(timeout_sec=timeout_s)

    def _server_ready(self) -> bool:
        return self.client.server_is_ready()

    def _send(self, goal) -> None:
        self._goal = GoalInFlight(self.client, goal)
        self._resends = 0

    def _resend_if_unacknowledged(self) -> None:
        """A goal request whose acceptance never comes: DDS matches each side of a new client on its
        own, so the first request (or its answer) can be lost while the node has not yet matched this
        client, and rclpy never retries it. After GOAL_ACK_RESEND_S without an answer, the same goal is
        sent again; the first is cancelled should the node accept it after all."""
        goal = self._goal
        if goal.acknowledged or time.monotonic() - goal.sent_at < GOAL_ACK_RESEND_S:
            return
        goal.cancel()
        self._goal = GoalInFlight(self.client, self._request_msg)
        self._resends += 1

    def _poll(self) -> Status:
        self._resend_if_unacknowledged()
        goal = self._goal
        if goal.rejected or goal.error:
            self._goal = None
            return self._fail(f"{self.service} failed: {goal.error or 'goal rejected'}")
        response = goal.response()
        if response is None:
            if self._timed_out():
                self._give_up()
                return self._fail(f"no answer from {self.service} within {self.timeout_s:g} s (goal cancelled)")
            self.feedback_message = goal.describe()
            return Status.RUNNING
        self._goal = None
        if response.status == GoalStatus.STATUS_CANCELED:
            return self._fail(response.result.message or "cancelled on the node")
        return self._on_answer(response.result)

    def _give_up(self) -> bool:
        goal, self._goal = self._goal, None
        if goal is None or goal.response() is not None:
            return False
        goal.cancel()
        return True
