"""py_trees behaviours that ask pop_node for parts without blocking the tree.

The py_trees_ros conventions: the tree's ROS node comes in `setup(node=...)` (which waits up to
`timeout_s` for the service and raises `ServiceUnavailableError` if it is absent), `initialise()`
sends the request asynchronously, `update()` only looks at the pending answer (RUNNING until it is
there, never waiting), results go to the blackboard, and `terminate(INVALID)` (a higher-priority
branch pre-empted the behaviour) drops the pending request: its late answer is ignored and the next
tick sends a fresh one. On FAILURE, `feedback_message` is the node's reason.

Someone must spin the node (an executor thread, or the executor that runs the tree's tick timer):
answers arrive through it. Timeouts are wall-clock (`time.monotonic`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import py_trees
from geometry_msgs.msg import PointStamped
from rclpy.callback_groups import ReentrantCallbackGroup

from pop_ros_interfaces import srv

Status = py_trees.common.Status
READ, WRITE = py_trees.common.Access.READ, py_trees.common.Access.WRITE


class ServiceUnavailableError(RuntimeError):
    """setup() found no node to talk to, or the node's service did not appear within the timeout."""


class _Refused(Exception):
    """The request cannot be built (a blackboard input is missing or malformed): one line."""


class _ServiceBehaviour(py_trees.behaviour.Behaviour):
    """One request to one pop_node service per run of the behaviour (initialise -> terminate).

    Subclasses say what to ask (`_request`) and what the answer means (`_on_answer`)."""

    srv_type: type = None

    def __init__(self, name: str, service: str, timeout_s: float):
        super().__init__(name)
        if not (isinstance(timeout_s, (int, float)) and math.isfinite(timeout_s) and timeout_s > 0):
            raise ValueError(f"{name}: timeout_s must be a positive number of seconds, got {timeout_s!r}")
        self.service = service
        self.timeout_s = float(timeout_s)
        self.blackboard = self.attach_blackboard_client(name=name)
        self.node = None
        self.client = None
        self._future = None  # the pending request of this run; None: not sent (yet) or dropped
        self._request_msg = None  # built in initialise(), sent as soon as the service is there
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
        if self.client is None:
            self.client = node.create_client(self.srv_type, self.service, callback_group=ReentrantCallbackGroup())
        if not self.client.wait_for_service(timeout_sec=self.timeout_s):
            node.destroy_client(self.client)
            self.client = None
            raise ServiceUnavailableError(
                f"{self.name}: service {self.service} is not available after {self.timeout_s:g} s "
                "(is pop_node running, in this ROS_DOMAIN_ID and namespace?)"
            )

    def initialise(self) -> None:
        self._drop_pending()
        self._started_at = time.monotonic()
        self._refusal = ""
        self.feedback_message = ""
        self._request_msg = None
        if self.client is None:
            self._refusal = f"{self.name}: setup(node=...) was not called or failed"
            return
        try:
            self._request_msg = self._request()
        except _Refused as refusal:
            self._refusal = str(refusal)
            return
        self._send_if_ready()

    def update(self) -> Status:
        if self._refusal:
            self.feedback_message = self._refusal
            self._clear_outputs()
            return Status.FAILURE
        if self._future is None:  # the service was not there at initialise(): keep looking, no waiting
            if not self._send_if_ready():
                if time.monotonic() - self._started_at > self.timeout_s:
                    self.feedback_message = f"service {self.service} is not available after {self.timeout_s:g} s"
                    self._clear_outputs()
                    return Status.FAILURE
                self.feedback_message = f"waiting for service {self.service}"
                return Status.RUNNING
        if not self._future.done():
            if time.monotonic() - self._sent_at > self.timeout_s:
                self._drop_pending()
                self.feedback_message = f"no answer from {self.service} within {self.timeout_s:g} s"
                self._clear_outputs()
                return Status.FAILURE
            self.feedback_message = f"waiting for {self.service}"
            return Status.RUNNING
        future, self._future = self._future, None
        if future.cancelled() or future.exception() is not None:
            self.feedback_message = f"{self.service} failed: {future.exception() or 'request cancelled'}"
            self._clear_outputs()
            return Status.FAILURE
        return self._on_answer(future.result())

    def terminate(self, new_status: Status) -> None:
        # INVALID: pre-empted by a higher-priority branch (or the tree stopped). Drop the request so
        # its late answer reaches no one; the next tick's initialise() sends a fresh one.
        if new_status == Status.INVALID and self._drop_pending():
            self.feedback_message = "pre-empted: pending request dropped"

    def shutdown(self) -> None:
        self._drop_pending()
        if self.client is not None and self.node is not None:
            self.node.destroy_client(self.client)
        self.client = None

    # ---- helpers -----------------------------------------------------------------------------------
    @property
    def pending(self) -> bool:
        """Whether a request of this behaviour awaits its answer."""
        return self._future is not None

    def _send_if_ready(self) -> bool:
        if self._request_msg is None or not self.client.service_is_ready():
            return False
        self._future = self.client.call_async(self._request_msg)
        self._sent_at = time.monotonic()
        return True

    def _drop_pending(self) -> bool:
        future, self._future = self._future, None
        if future is None or future.done():
            return False
        self.client.remove_pending_request(future)  # the answer, when it comes, finds no one waiting
        future.cancel()
        return True

    def _read(self, key: str, what: str):
        try:
            return self.blackboard.get(key)
        except KeyError:
            raise _Refused(f"blackboard key {key!r} ({what}) is not set") from None

    def _request(self):
        raise NotImplementedError

    def _on_answer(self, response) -> Status:
        raise NotImplementedError

    def _clear_outputs(self) -> None:
        """Outputs that must not outlive a failure (a stale point must never be grasped)."""


def _checked_instances_and_roi(name: str, max_instances, roi) -> tuple[int, tuple[int, int, int, int] | None]:
    """The request fields as the messages take them (uint32): refused when the tree is built, not in
    a tick, where the message constructor's error would escape the tree."""
    if isinstance(max_instances, bool) or not isinstance(max_instances, int) or not 0 <= max_instances < 2**32:
        raise ValueError(f"{name}: max_instances must be an integer >= 0, got {max_instances!r}")
    if roi is None:
        return max_instances, None
    values = tuple(roi)
    if len(values) != 4 or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**32 for v in values):
        raise ValueError(f"{name}: roi must be (x, y, width, height) in whole pixels >= 0, got {roi!r}")
    return max_instances, values


class PointToPart(_ServiceBehaviour):
    """Ask `~/point_to_part` for one part on the latest camera frame.

    SUCCESS: `point_key` holds the `PointStamped` (None when the node found no 3D point: no depth or
    camera_info), `pose_key` the approach `PoseStamped` (None when there is none) and `result_key` the
    whole `PointToPart.Response`. With `require_3d`, an answer without a 3D point is a FAILURE.
    FAILURE: `feedback_message` is the node's reason; point and pose are None, the result is kept.
    `query_key` / `support_set_key` (when given) read the query / set from the blackboard at each
    initialise(), so one tree serves many parts. `max_instances` > 1 asks for every copy (the
    response's `instances`, best first); `roi` (x, y, width, height) restricts the answer to a box
    (docs/grasping.md). The response also carries the grasp frame (`has_grasp`, `grasp`)."""

    srv_type = srv.PointToPart

    def __init__(
        self,
        name: str,
        query: str = "",
        support_set: str = "",
        point_key: str = "point",
        pose_key: str = "pose",
        result_key: str = "result",
        service: str = "/pop_node/point_to_part",
        timeout_s: float = 30.0,
        query_key: str | None = None,
        support_set_key: str | None = None,
        require_3d: bool = False,
        max_instances: int = 0,
        roi: tuple[int, int, int, int] | None = None,
    ):
        super().__init__(name, service, timeout_s)
        self.query, self.support_set = query, support_set
        self.max_instances, self.roi = _checked_instances_and_roi(name, max_instances, roi)
        self.point_key, self.pose_key, self.result_key = point_key, pose_key, result_key
        self.query_key, self.support_set_key = query_key, support_set_key
        self.require_3d = require_3d
        for key in (point_key, pose_key, result_key):
            self.blackboard.register_key(key=key, access=WRITE)
        for key in (query_key, support_set_key):
            if key:
                self.blackboard.register_key(key=key, access=READ)

    def _request(self):
        query = self._read(self.query_key, "query") if self.query_key else self.query
        support_set = self._read(self.support_set_key, "support set") if self.support_set_key else self.support_set
        if not isinstance(query, str) or not isinstance(support_set, str):
            raise _Refused(f"query and support set must be strings, got {query!r} and {support_set!r}")
        request = srv.PointToPart.Request(query=query, support_set=support_set, max_instances=self.max_instances)
        if self.roi is not None:
            roi = request.roi
            roi.x_offset, roi.y_offset, roi.width, roi.height = (int(value) for value in self.roi)
        return request

    def _on_answer(self, response) -> Status:
        self.blackboard.set(self.result_key, response)
        if not response.success:
            self.feedback_message = response.message
            self._clear_outputs()
            return Status.FAILURE
        if self.require_3d and not response.has_3d:
            self.feedback_message = f"no 3D point: {response.message}"
            self._clear_outputs()
            return Status.FAILURE
        self.blackboard.set(self.point_key, response.point if response.has_3d else None)
        self.blackboard.set(self.pose_key, response.pose if response.has_pose else None)
        self.feedback_message = (
            f"({response.u:.1f}, {response.v:.1f}) px, score {response.score:.2f}: {response.message}"
        )
        return Status.SUCCESS

    def _clear_outputs(self) -> None:
        self.blackboard.set(self.point_key, None)
        self.blackboard.set(self.pose_key, None)


class PointToParts(_ServiceBehaviour):
    """Ask `~/point_to_parts` for several parts on one frame (its features are computed once).

    `result_key` gets the list of `PartPointResult`, one per query in order; `point_keys` (optional,
    one key per query) each get that query's `PointStamped` (None when it failed or has no 3D point).
    SUCCESS when every query succeeded (or, with `require_all=False`, when at least one did);
    otherwise FAILURE with the failed queries' reasons. `queries_key` / `support_sets_key` read the
    lists from the blackboard instead."""

    srv_type = srv.PointToParts

    def __init__(
        self,
        name: str,
        queries: Sequence[str] = (),
        support_sets: Sequence[str] = (),
        result_key: str = "results",
        point_keys: Sequence[str] | None = None,
        service: str = "/pop_node/point_to_parts",
        timeout_s: float = 30.0,
        queries_key: str | None = None,
        support_sets_key: str | None = None,
        require_all: bool = True,
    ):
        super().__init__(name, service, timeout_s)
        self.queries, self.support_sets = list(queries), list(support_sets)
        self.result_key, self.point_keys = result_key, list(point_keys or [])
        self.queries_key, self.support_sets_key = queries_key, support_sets_key
        self.require_all = require_all
        if not queries_key and not self.queries:
            raise ValueError(f"{name}: give queries or queries_key")
        if self.point_keys and not queries_key and len(self.point_keys) != len(self.queries):
            raise ValueError(f"{name}: {len(self.point_keys)} point_keys for {len(self.queries)} queries")
        for key in [result_key, *self.point_keys]:
            self.blackboard.register_key(key=key, access=WRITE)
        for key in (queries_key, support_sets_key):
            if key:
                self.blackboard.register_key(key=key, access=READ)

    def _request(self):
        queries = self._read(self.queries_key, "queries") if self.queries_key else self.queries
        sets = self._read(self.support_sets_key, "support sets") if self.support_sets_key else self.support_sets
        if isinstance(queries, str) or not all(isinstance(q, str) for q in queries):
            raise _Refused(f"queries must be a list of strings, got {queries!r}")
        if isinstance(sets, str) or not all(isinstance(s, str) for s in sets):
            raise _Refused(f"support sets must be a list of strings, got {sets!r}")
        if self.point_keys and len(self.point_keys) != len(queries):
            raise _Refused(f"{len(self.point_keys)} point_keys for {len(queries)} queries")
        return srv.PointToParts.Request(queries=list(queries), support_sets=list(sets))

    def _on_answer(self, response) -> Status:
        if not response.success:
            self.blackboard.set(self.result_key, [])
            self.feedback_message = response.message
            self._clear_outputs()
            return Status.FAILURE
        results = list(response.results)
        self.blackboard.set(self.result_key, results)
        for key, result in zip(self.point_keys, results, strict=False):
            point = None
            if result.success and result.has_3d:
                point = PointStamped(header=result.header, point=result.point)
            self.blackboard.set(key, point)
        failed = [f"{r.query!r}: {r.message}" for r in results if not r.success]
        if failed and (self.require_all or len(failed) == len(results)):
            self.feedback_message = "; ".join(failed)
            return Status.FAILURE
        self.feedback_message = response.message
        return Status.SUCCESS

    def _clear_outputs(self) -> None:
        for key in self.point_keys:
            self.blackboard.set(key, None)


class TeachExemplar(_ServiceBehaviour):
    """Add an exemplar to a support set through `~/add_exemplar`: the clicked pixel (u, v) (ROS pixel
    coordinates) of the latest camera frame. The pixel is `pixel` or, when `pixel_key` is given, the
    blackboard value there: (u, v), or a Point / PointStamped whose x, y are the pixel (as RViz-style
    click tools publish). SUCCESS writes the set's exemplar count to `count_key` (when given);
    FAILURE carries the node's reason (no frame, stale frame, busy, read-only library...)."""

    srv_type = srv.AddExemplar

    def __init__(
        self,
        name: str,
        support_set: str,
        pixel: tuple[float, float] | None = None,
        query: str = "",
        pixel_key: str | None = None,
        count_key: str | None = None,
        service: str = "/pop_node/add_exemplar",
        timeout_s: float = 30.0,
    ):
        super().__init__(name, service, timeout_s)
        if pixel is None and not pixel_key:
            raise ValueError(f"{name}: give pixel or pixel_key")
        self.support_set, self.query, self.pixel = support_set, query, pixel
        self.pixel_key, self.count_key = pixel_key, count_key
        if pixel_key:
            self.blackboard.register_key(key=pixel_key, access=READ)
        if count_key:
            self.blackboard.register_key(key=count_key, access=WRITE)

    def _request(self):
        pixel = self._read(self.pixel_key, "clicked pixel") if self.pixel_key else self.pixel
        point = getattr(pixel, "point", pixel)  # PointStamped -> Point
        if hasattr(point, "x") and hasattr(point, "y"):
            pixel = (point.x, point.y)
        try:
            u, v = (float(c) for c in pixel)
        except (TypeError, ValueError):
            raise _Refused(f"the clicked pixel must be (u, v), got {pixel!r}") from None
        return srv.AddExemplar.Request(support_set=self.support_set, query=self.query, u=u, v=v)

    def _on_answer(self, response) -> Status:
        self.feedback_message = response.message
        if not response.success:
            return Status.FAILURE
        if self.count_key:
            self.blackboard.set(self.count_key, int(response.num_exemplars))
        return Status.SUCCESS
