"""The node's query actions: ~/point_to_part and ~/point_to_parts (the services of the same names stay).

A goal holds the fields of the service's request and is answered by the same code (`queries.py`),
through the same work slot (busy_policy, max_waiting_queries, busy_timeout); its result holds the
fields of the service's response. On the way it sends feedback: its stage (`pop_ros.pipeline.progress`:
waiting, with its place in the queue; image features; mllm prefix; query; region; answer) and the
milliseconds since it was accepted.

A goal can be cancelled while it waits (it leaves the queue at once) or while it runs (the work
stops at the next stage boundary; nothing is published for it; the models go to the next query).
A goal whose client is gone from the ROS graph is cancelled the same way (`cancel_orphans`).

A goal the node answered ends SUCCEEDED, whatever the answer: as with the service, the result's
`success` says whether it is a part and `message` why not (busy, refused, no frame, part not
visible...); clients that only look at the status would lose that reason (BehaviorTree.ROS2's
RosActionNode passes no result to onFailure). A goal cancelled by its client ends CANCELED; one
whose client vanished ends ABORTED ("cancelled: its client is gone"; nobody reads it).
"""

from __future__ import annotations

import dataclasses
import threading
import time

from rclpy.action import ActionServer, CancelResponse
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup

from pop_ros.pipeline.progress import QueryCancelled, QueryProgress
from pop_ros.ros.answers import Answer, Outcome
from pop_ros_interfaces.action import PointToPart, PointToParts

# How often goals are checked for a client that is gone: the longest a vanished client's query
# keeps the models before its next stage boundary is reached.
CLIENT_CHECK_PERIOD_S = 0.5
# rclpy marks a goal CANCELING just after our cancel callback returns; the goal's thread, woken by
# that callback, waits at most this long for the mark before it may end the goal CANCELED.
CANCELING_MARK_WAIT_S = 2.0
CLIENT_GONE = "its client is gone"


@dataclasses.dataclass
class GoalRun:
    """One accepted goal: its progress (feedback, cancel flag) and who asked for it."""

    progress: QueryProgress
    feedback_topic: str
    # Endpoint ids of the action's feedback subscribers when the goal came: its client is among
    # them (every rclpy / rclcpp action client subscribes before it sends goals).
    clients: set[bytes]
    cancelled_by_client: bool = False


class QueryActions:
    def __init__(self, node, queries, callback_group):
        self.node = node
        self.queries = queries
        self._runs: dict[bytes, GoalRun] = {}
        self._runs_lock = threading.Lock()
        actions = {  # name: (type, the query's handler: (goal, result, progress) -> result)
            "~/point_to_part": (PointToPart, queries.on_point_to_part),
            "~/point_to_parts": (PointToParts, queries.on_point_to_parts),
        }
        self.servers = []
        for name, (action_type, handler) in actions.items():
            guarded = node.guarded(handler, query=True)
            feedback_topic = node.resolve_topic_name(name) + "/_action/feedback"
            self.servers.append(
                ActionServer(
                    node,
                    action_type,
                    name,
                    execute_callback=self._executor(action_type, guarded),
                    handle_accepted_callback=self._acceptor(action_type, feedback_topic),
                    cancel_callback=self.on_cancel,
                    callback_group=callback_group,
                )
            )
        self._watch = node.create_timer(
            CLIENT_CHECK_PERIOD_S, node.guarded(self.cancel_orphans), callback_group=MutuallyExclusiveCallbackGroup()
        )

    def destroy(self) -> None:
        """Destroy the action servers. rclpy's `Node.destroy_node` leaves waitables alone: an action
        server not destroyed here keeps its node, and with it the context's DDS participant, alive and
        serving in the ROS graph after the node is gone (seen: two stale `point_to_parts` servers in
        the graph of a process whose in-process nodes had all been destroyed)."""
        for server in self.servers:
            server.destroy()
        self.servers = []

    # ---- goal lifecycle ----------------------------------------------------------------------------------
    def _acceptor(self, action_type, feedback_topic: str):
        def on_accepted(goal_handle) -> None:
            def send_feedback(stage: str, queue_position: int, elapsed_ms: float) -> None:
                feedback = action_type.Feedback(stage=stage, queue_position=queue_position, elapsed_ms=elapsed_ms)
                goal_handle.publish_feedback(feedback)

            run = GoalRun(QueryProgress(send_feedback), feedback_topic, self._subscribers(feedback_topic))
            with self._runs_lock:
                self._runs.setdefault(_goal_key(goal_handle), run)
            goal_handle.execute()

        return on_accepted

    def _executor(self, action_type, guarded_handler):
        def execute(goal_handle):
            run = self._run(goal_handle)
            result = action_type.Result()
            try:
                guarded_handler(goal_handle.request, result, run.progress)
            except QueryCancelled as cancelled:
                return self._end_cancelled(goal_handle, run, result, cancelled.reason)
            finally:
                with self._runs_lock:
                    self._runs.pop(_goal_key(goal_handle), None)
            goal_handle.succeed()  # answered: `success` and `message` say how (see the module's note)
            return result

        return execute

    def on_cancel(self, goal_handle) -> CancelResponse:
        """Accepted whenever the goal has not ended: a waiting goal leaves the queue at once, a
        running one stops at its next stage boundary."""
        run = self._run(goal_handle)
        run.cancelled_by_client = True
        run.progress.cancel("cancelled by its client")
        return CancelResponse.ACCEPT

    def _end_cancelled(self, goal_handle, run: GoalRun, result, reason: str):
        result.success, result.message = False, f"cancelled: {reason}"
        self.queries.record(Answer(Outcome.CANCELLED, result.message, None))
        if run.cancelled_by_client and self._wait_canceling_mark(goal_handle):
            goal_handle.canceled()
        else:
            goal_handle.abort()
        self.node.get_logger().info(f"goal {_goal_key(goal_handle).hex()[:8]} {result.message}")
        return result

    @staticmethod
    def _wait_canceling_mark(goal_handle) -> bool:
        deadline = time.monotonic() + CANCELING_MARK_WAIT_S
        while not goal_handle.is_cancel_requested and time.monotonic() < deadline:
            time.sleep(0.002)  # a bounded wait on rclpy's own state change (no event to wait on)
        return goal_handle.is_cancel_requested

    def _run(self, goal_handle) -> GoalRun:
        """The goal's run; made here when a cancel (or the execution) comes before the accept callback."""
        with self._runs_lock:
            key = _goal_key(goal_handle)
            if key not in self._runs:
                self._runs[key] = GoalRun(QueryProgress(), "", set())
            return self._runs[key]

    def runs(self) -> list[GoalRun]:
        """The goals accepted and not ended yet (waiting or running)."""
        with self._runs_lock:
            return list(self._runs.values())

    # ---- clients that are gone -------------------------------------------------------------------------
    def _subscribers(self, topic: str) -> set[bytes]:
        if not topic:
            return set()
        return {bytes(info.endpoint_gid) for info in self.node.get_subscriptions_info_by_topic(topic)}

    def cancel_orphans(self) -> None:
        """Cancel each goal none of whose possible clients is still subscribed to its feedback. With
        several clients on one action, a goal is cancelled once every client that was there when it
        came is gone (the graph does not say which of them sent it)."""
        with self._runs_lock:
            runs = [run for run in self._runs.values() if run.feedback_topic and not run.progress.cancelled]
        present: dict[str, set[bytes]] = {}
        for run in runs:
            if run.feedback_topic not in present:
                present[run.feedback_topic] = self._subscribers(run.feedback_topic)
            now = present[run.feedback_topic]
            if not run.clients:
                run.clients = set(now)  # discovery lagged the goal: the first subscribers seen
            elif not run.clients & now:
                run.progress.cancel(CLIENT_GONE)


def _goal_key(goal_handle) -> bytes:
    return bytes(goal_handle.goal_id.uuid)
