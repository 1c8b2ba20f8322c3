"""py_trees behaviours that ask pop_node for parts without blocking the tree.

`PointToPart` and `PointToParts` send their query as an action goal (`~/point_to_part`,
`~/point_to_parts`): while RUNNING, `feedback_message` shows the node's stage ("waiting (next),
120 ms", "mllm prefix, 340 ms", ...); `terminate(INVALID)` (a higher-priority branch
pre-empted the behaviour) cancels the goal on the node, whose work stops and publishes nothing.
`TeachExemplar` calls the `~/add_exemplar` service. Every behaviour clears its outputs in
`initialise()`; on FAILURE, `feedback_message` is the node's reason. The transport, the timeouts
and the py_trees_ros conventions: `pop_ros.clients.behaviour_requests`.

Someone must spin the node (an executor thread, or the executor that runs the tree's tick timer):
answers arrive through it.
"""

from __future__ import annotations

from collections.abc import Sequence

import py_trees
from geometry_msgs.msg import PointStamped

from pop_ros.clients.behaviour_requests import ActionBehaviour, Refused, ServiceBehaviour, ServiceUnavailableError
from pop_ros_interfaces import action, srv

__all__ = ["PointToPart", "PointToParts", "ServiceUnavailableError", "TeachExemplar"]

Status = py_trees.common.Status
READ, WRITE = py_trees.common.Access.READ, py_trees.common.Access.WRITE


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


class PointToPart(ActionBehaviour):
    """Ask the `~/point_to_part` action for one part on the latest camera frame (`service` names the
    action, which has the service's name).

    SUCCESS: `point_key` holds the `PointStamped` (None when the node found no 3D point: no depth or
    camera_info), `pose_key` the approach `PoseStamped` (None when there is none) and `result_key` the
    whole `PointToPart` result (the fields of the service's response). With `require_3d`, an answer
    without a 3D point is a FAILURE. FAILURE: `feedback_message` is the node's reason; point and pose
    are None, the result is kept. initialise() sets all three to None.
    `query_key` / `support_set_key` (when given) read the query / set from the blackboard at each
    initialise(), so one tree serves many parts. `max_instances` > 1 asks for every copy (the
    response's `instances`, best first); `roi` (x, y, width, height) restricts the answer to a box
    (docs/grasping.md). The response also carries the grasp frame (`has_grasp`, `grasp`)."""

    action_type = action.PointToPart

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
            raise Refused(f"query and support set must be strings, got {query!r} and {support_set!r}")
        goal = action.PointToPart.Goal(query=query, support_set=support_set, max_instances=self.max_instances)
        if self.roi is not None:
            roi = goal.roi
            roi.x_offset, roi.y_offset, roi.width, roi.height = (int(value) for value in self.roi)
        return goal

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

    def _reset_outputs(self) -> None:
        self._clear_outputs()
        self.blackboard.set(self.result_key, None)


class PointToParts(ActionBehaviour):
    """Ask the `~/point_to_parts` action for several parts on one frame (its features are computed once).

    `result_key` gets the list of `PartPointResult`, one per query in order; `point_keys` (optional,
    one key per query) each get that query's `PointStamped` (None when it failed or has no 3D point).
    SUCCESS when every query succeeded (or, with `require_all=False`, when at least one did);
    otherwise FAILURE with the failed queries' reasons. `queries_key` / `support_sets_key` read the
    lists from the blackboard instead."""

    action_type = action.PointToParts

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
            raise Refused(f"queries must be a list of strings, got {queries!r}")
        if isinstance(sets, str) or not all(isinstance(s, str) for s in sets):
            raise Refused(f"support sets must be a list of strings, got {sets!r}")
        if self.point_keys and len(self.point_keys) != len(queries):
            raise Refused(f"{len(self.point_keys)} point_keys for {len(queries)} queries")
        return action.PointToParts.Goal(queries=list(queries), support_sets=list(sets))

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

    def _reset_outputs(self) -> None:
        self._clear_outputs()
        self.blackboard.set(self.result_key, [])


class TeachExemplar(ServiceBehaviour):
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
            raise Refused(f"the clicked pixel must be (u, v), got {pixel!r}") from None
        return srv.AddExemplar.Request(support_set=self.support_set, query=self.query, u=u, v=v)

    def _on_answer(self, response) -> Status:
        self.feedback_message = response.message
        if not response.success:
            return Status.FAILURE
        if self.count_key:
            self.blackboard.set(self.count_key, int(response.num_exemplars))
        return Status.SUCCESS
