"""pop_node: camera in; 3D part point, heatmap and a part-query service out.

A lifecycle node: `configure` loads the models and the support library (timed, in the log),
`activate` subscribes to the camera. `autostart: true` does both for `ros2 run`. All work happens in
a PartPointer; callbacks only store frames, answer services and publish.

Wiring only: parameters live in `parameters.py`, camera input in `camera.py`, publishers in
`outputs.py`. Every callback goes through `PopNode.guarded`, so no exception ends the process.

Run: `ros2 run pop_ros pop_node --ros-args --params-file config/pop_ros.yaml`
 or: `python -m pop_ros.ros.node --ros-args --params-file config/pop_ros.yaml`
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import logging
import math
import pathlib
import threading
import time
import traceback

import rclpy
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from sensor_msgs.msg import Image

from pop_ros import geometry
from pop_ros.camera_model import CameraModel
from pop_ros.image_conversion import ImageConversionError, to_depth_m
from pop_ros.ros.camera import CameraInput, is_empty_image, stamp_seconds
from pop_ros.ros.diagnostics import ERROR, OK, WARN, DiagnosticsPublisher, NodeHealth
from pop_ros.ros.outputs import Outputs
from pop_ros.ros.parameters import (
    MAX_WAITING_QUERIES_LIMIT,
    PARAMETERS,
    RESERVED_THREADS,
    check_all,
    check_parameter,
    check_type,
)
from pop_ros.ros.teaching import Teaching
from pop_ros_interfaces.srv import AddExemplar, ListSupportSets, PointToPart, PointToParts


class RosLogHandler(logging.Handler):
    """Sends the pipeline's Python log records (model loading, head fallback) to the ROS logger."""

    def __init__(self, ros_logger):
        super().__init__(level=logging.INFO)
        self.ros_logger = ros_logger

    def emit(self, record: logging.LogRecord) -> None:
        text = f"[{record.name}] {record.getMessage()}"
        if record.levelno >= logging.ERROR:
            self.ros_logger.error(text)
        elif record.levelno >= logging.WARNING:
            self.ros_logger.warning(text)
        else:
            self.ros_logger.info(text)


def route_python_logging(ros_logger) -> None:
    package_logger = logging.getLogger("pop_ros")
    for handler in list(package_logger.handlers):
        if isinstance(handler, RosLogHandler):
            package_logger.removeHandler(handler)
    package_logger.addHandler(RosLogHandler(ros_logger))
    package_logger.setLevel(logging.INFO)
    package_logger.propagate = False


# Threads of the node's executor: every query that may run or wait, plus the reserved ones.
EXECUTOR_THREADS = MAX_WAITING_QUERIES_LIMIT + 1 + RESERVED_THREADS
# A colour/depth stamp gap larger than this is not a late frame but two different clocks.
IMPOSSIBLE_STAMP_GAP_S = 60.0


@dataclasses.dataclass
class Answer:
    success: bool
    message: str
    header: object
    u: float = 0.0
    v: float = 0.0
    score: float = 0.0
    has_3d: bool = False
    xyz: tuple[float, float, float] = (0.0, 0.0, 0.0)
    query: str = ""
    support_set: str = ""
    total_ms: float = 0.0
    # Approach pose (see geometry.locate): z axis along the surface normal, towards the camera.
    has_pose: bool = False
    normal: tuple[float, float, float] = (0.0, 0.0, 0.0)
    orientation: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 1.0)
    fit_rms_m: float = 0.0
    fit_inlier_ratio: float = 0.0


class PopNode(LifecycleNode):
    def __init__(self, **kwargs):
        super().__init__("pop_node", **kwargs)
        route_python_logging(self.get_logger())
        for name, (default, description, when) in PARAMETERS.items():
            # dynamic_typing: rclpy would refuse `ros2 param set ... min_score 0` (an integer for a
            # float) before our callback runs; check_type accepts it and refuses real mismatches.
            descriptor = ParameterDescriptor(description=f"{description} [{when}]", dynamic_typing=True)
            self.declare_parameter(name, default, descriptor)
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self.pointer = None
        self.configure_error = ""
        self._work_lock = threading.Lock()
        self._slots_lock = threading.Lock()
        self._queries_in_flight = 0  # running or waiting for the work lock
        self.active = False
        self.health = NodeHealth()
        self._continuous_done_seq = 0
        self._continuous_timer = None
        self._frames_check = None
        # Exceptions caught by the guard, by callback name (for the log and diagnostics).
        self.internal_errors: collections.Counter = collections.Counter()
        self.camera = CameraInput(self)
        self.camera.on_frame = self.health.frame

        self._sensor_group = MutuallyExclusiveCallbackGroup()
        self._query_group = ReentrantCallbackGroup()
        self._continuous_group = MutuallyExclusiveCallbackGroup()
        self._diagnostics_group = MutuallyExclusiveCallbackGroup()
        services = {
            "~/point_to_part": (PointToPart, self._on_point_to_part),
            "~/point_to_parts": (PointToParts, self._on_point_to_parts),
            "~/add_exemplar": (AddExemplar, self._on_add_exemplar),
            "~/list_support_sets": (ListSupportSets, self._on_list_support_sets),
        }
        for name, (srv_type, callback) in services.items():
            self.create_service(srv_type, name, self.guarded(callback), callback_group=self._query_group)
        self.outputs = Outputs(self)
        self.teaching = Teaching(self, self._query_group)
        self.diagnostics = DiagnosticsPublisher(
            self,
            self.health,
            self._model_state,
            camera_expected=lambda: self.active,
            period_s=self._float_param("diagnostics_period", 1.0),
            hardware_id=self.get_fully_qualified_name(),
            callback_group=self._diagnostics_group,
            wrap=self.guarded,
        )

    # ---- the guard ------------------------------------------------------------------------------------
    def guarded(self, callback):
        """`callback` that never raises: an exception that escaped a callback would end
        `executor.spin()` and the process. The traceback is logged (throttled), counted, and a
        service answers `success: false` with the reason."""

        @functools.wraps(callback)
        def guarded_callback(*args):
            try:
                return callback(*args)
            except Exception as error:  # noqa: BLE001 - the whole point: nothing leaves a callback
                name = getattr(callback, "__name__", "callback")
                self.internal_errors[name] += 1
                self.health.error("internal error")
                self.get_logger().error(
                    f"internal error in {name}: {type(error).__name__}: {error}\n{traceback.format_exc()}",
                    throttle_duration_sec=5.0,
                )
                if len(args) == 2 and hasattr(args[1], "success"):  # a service: (request, response)
                    response = args[1]
                    response.success = False
                    response.message = f"internal error: {type(error).__name__}: {' '.join(str(error).split())}"
                    return response
                return args[1] if len(args) == 2 else None

        return guarded_callback

    def param(self, name: str):
        return self.get_parameter(name).value

    def _float_param(self, name: str, fallback: float) -> float:
        """A number parameter as float, or `fallback` when its value is unusable (refused at configure)."""
        value = self.param(name)
        return float(value) if check_type(name, value) is None and check_parameter(name, value) is None else fallback

    # ---- parameters -------------------------------------------------------------------------------
    def _on_set_parameters(self, parameters) -> SetParametersResult:
        try:
            return self._check_and_apply_parameters(parameters)
        except Exception as error:  # noqa: BLE001 - an exception here would end the process
            self.internal_errors["_on_set_parameters"] += 1
            self.health.error("internal error")
            self.get_logger().error(f"internal error setting parameters: {traceback.format_exc()}")
            return SetParametersResult(successful=False, reason=f"internal error: {type(error).__name__}: {error}")

    def _check_and_apply_parameters(self, parameters) -> SetParametersResult:
        configured = self.pointer is not None
        for parameter in parameters:
            if parameter.name not in PARAMETERS:
                continue
            value = parameter.value
            reason = check_type(parameter.name, value) or check_parameter(parameter.name, value)
            if reason:
                return SetParametersResult(successful=False, reason=reason)
            if parameter.name == "continuous_support_set" and configured:
                reason = self._unknown_set(value)
                if reason:
                    return SetParametersResult(successful=False, reason=f"continuous_support_set: {reason}")
            if configured and PARAMETERS[parameter.name][2] == "configure":
                return SetParametersResult(
                    successful=False,
                    reason=f"{parameter.name} is read at configure: deactivate and clean up the node, set it, "
                    "then configure again",
                )
        if configured:
            proposed = {p.name: p.value for p in parameters}
            try:
                self.pointer.settings = self._settings(proposed)
            except ValueError as error:
                return SetParametersResult(successful=False, reason=str(error))
            if "continuous_rate" in proposed and self.camera.subscriptions:
                self._restart_continuous_timer(float(proposed["continuous_rate"]))
        if "diagnostics_period" in {p.name for p in parameters}:
            period = next(p.value for p in parameters if p.name == "diagnostics_period")
            self.diagnostics.set_period(float(period), self.guarded)
        return SetParametersResult(successful=True)

    def _unknown_set(self, name: str) -> str | None:
        """None if `name` is empty or a set of the loaded library, else why not (with the known names)."""
        if not name or self.pointer is None or name in self.pointer.library.names():
            return None
        return f"unknown support set {name!r} (known: {', '.join(self.pointer.library.names()) or 'none'})"

    def _settings(self, proposed: dict | None = None):
        from pop_ros.pipeline import PointerSettings

        proposed = proposed or {}

        def value(name):
            return proposed.get(name, self.param(name))

        return PointerSettings(
            similarity=value("similarity"),
            aggregation=value("aggregation"),
            head_set=value("head_set"),
            sigma=float(value("sigma")),
            shot_combination=value("shots_combination"),
            upsample=int(value("upsample")),
            max_shots=int(value("max_shots")),
            retrieval=value("retrieval"),
            use_text=bool(value("use_text")),
            frame_cache_size=int(value("frame_cache_size")),
        ).validate()

    # ---- lifecycle ------------------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        from pop_ros.models.loading import ModelLoadError
        from pop_ros.pipeline import PartPointer
        from pop_ros.supports import SupportError, SupportLibrary

        started = time.perf_counter()
        # Values from a params file or the command line never went through the on-set callback.
        invalid = check_all({name: self.param(name) for name in PARAMETERS})
        if invalid:
            self.configure_error = f"invalid parameter: {invalid}"
            self.get_logger().error(f"configure failed: {self.configure_error}")
            return TransitionCallbackReturn.FAILURE
        overrides = {
            "mllm": self.param("mllm") or None,
            "visual": self.param("visual_model") or None,
            "heads_file": self.param("heads_file") or None,
            "device": self.param("device") or None,
            "dtype": self.param("dtype") or None,
            "resolution": self.param("resolution") or None,
            "prompt_template": self.param("prompt_template") or None,
            "mllm_max_pixels": None if self.param("mllm_max_pixels") < 0 else self.param("mllm_max_pixels"),
            "system_prompt": self.param("system_prompt") or None,
            "trust_remote_code": True if self.param("trust_remote_code") else None,
        }
        try:
            library = SupportLibrary()
            library_path = self.param("support_library")
            if self.param("library_writable") and not library_path:
                raise SupportError("library_writable needs support_library: the YAML to keep taught sets in")
            if library_path:
                library = SupportLibrary.load(
                    pathlib.Path(library_path).expanduser(), writable=self.param("library_writable")
                )
                for problem in library.errors:
                    self.get_logger().error(f"support library: {problem}")
            pointer = PartPointer.from_preset(
                self.param("preset"),
                settings=self._settings(),
                library=library,
                feature_cache_dir=self.param("feature_cache_dir") or None,
                **overrides,
            )
            load_s = time.perf_counter() - started
            warm_started = time.perf_counter()
            for name in library.names():
                pointer.warm_support_set(name)
            warm_s = time.perf_counter() - warm_started
        except (ModelLoadError, SupportError, ValueError, OSError) as error:
            self.configure_error = str(error)
            self.get_logger().error(f"configure failed: {error}")
            return TransitionCallbackReturn.FAILURE
        except Exception as error:  # noqa: BLE001 - rclpy would turn it into a silent ERROR transition
            self.configure_error = f"internal error: {type(error).__name__}: {error}"
            self.get_logger().error(f"configure failed: {self.configure_error}\n{traceback.format_exc()}")
            return TransitionCallbackReturn.FAILURE
        continuous_set = self.param("continuous_support_set")
        if continuous_set and continuous_set not in library.names():
            known = ", ".join(library.names()) or "none"
            self.configure_error = f"continuous_support_set: unknown support set {continuous_set!r} (known: {known})"
            self.get_logger().error(f"configure failed: {self.configure_error}")
            return TransitionCallbackReturn.FAILURE
        self.pointer = pointer
        self.configure_error = ""
        if pointer.model_config.random_weights:
            self.get_logger().warning(
                f"preset {self.param('preset')!r} has RANDOM WEIGHTS: every point it gives is meaningless"
            )
        self.get_logger().info(
            f"configured in {time.perf_counter() - started:.1f} s: models {load_s:.1f} s "
            f"(visual {pointer.load_timings_s['visual']:.1f} s, MLLM {pointer.load_timings_s['mllm']:.1f} s), "
            f"support features {warm_s:.2f} s for sets {library.names()}; heads: {pointer.heads_source}"
        )
        if library.writable:
            self.get_logger().info(
                f"support library {library.path} is writable: taught images go to {library.images_dir}"
            )
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        topics = self.camera.subscribe(
            self.param("image_reliability"), self._sensor_group, self.guarded, self.param("image_transport")
        )
        self._restart_continuous_timer(float(self.param("continuous_rate")))
        self._frames_check = self.create_timer(
            5.0, self.guarded(self.camera.check_frames_arrive), callback_group=self._sensor_group
        )
        self.get_logger().info(f"active: listening on {', '.join(topics)}")
        self.active = True
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.active = False
        self.camera.unsubscribe()
        self._restart_continuous_timer(0.0)
        if self._frames_check is not None:
            self.destroy_timer(self._frames_check)
            self._frames_check = None
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        with self._work_lock:  # a query in flight finishes with the models it started with
            self.pointer = None
        self.camera.clear()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.active = False
        self._restart_continuous_timer(0.0)
        with self._work_lock:
            self.pointer = None
        return TransitionCallbackReturn.SUCCESS

    # ---- services -------------------------------------------------------------------------------------
    def _not_ready(self) -> str:
        """'' when the node is active, else its state and how to leave it."""
        name = self.get_fully_qualified_name()
        if self.pointer is None:
            if self.configure_error:
                return f"node is not configured: configure failed: {self.configure_error}"
            return (
                f"node is not configured (unconfigured): `ros2 lifecycle set {name} configure`, "
                f"then `ros2 lifecycle set {name} activate`"
            )
        if not self.active:
            return f"inactive: activate the node (`ros2 lifecycle set {name} activate`)"
        return ""

    @contextlib.contextmanager
    def work_slot(self):
        """Hold the models for one query: yields '' once this caller holds the work lock, else the
        busy reason. At most max_waiting_queries callers wait (each holds an executor thread);
        more are answered busy at once, so waiting queries never take the camera's threads."""
        limit = int(self.param("max_waiting_queries")) + 1
        with self._slots_lock:
            if self._queries_in_flight >= limit:
                yield (
                    f"busy: {self._queries_in_flight} queries running or waiting "
                    f"(max_waiting_queries {limit - 1}); try again"
                )
                return
            self._queries_in_flight += 1
        try:
            timeout = float(self.param("busy_timeout")) if self.param("busy_policy") == "wait" else 0.0
            if not self._work_lock.acquire(timeout=timeout):
                yield "busy: another query is running; try again"
                return
            try:
                yield ""
            finally:
                self._work_lock.release()
        finally:
            with self._slots_lock:
                self._queries_in_flight -= 1

    def _model_state(self) -> tuple[bytes, str, dict]:
        """(diagnostic level, message, key/values) of the model for /diagnostics."""
        pointer = self.pointer
        if pointer is None:
            if self.configure_error:
                return ERROR, f"configure failed: {self.configure_error}", {}
            return WARN, "unconfigured: waiting for configure", {}
        config = pointer.model_config
        values = {
            "preset": self.param("preset"),
            "mllm": config.mllm,
            "visual": config.visual,
            "device": str(pointer.visual.device),
            "heads": pointer.heads_source,
            "random weights": config.random_weights,
            "support sets": len(pointer.library.names()),
        }
        state = "active" if self.active else "inactive"
        if config.random_weights:
            return WARN, f"{state}; RANDOM WEIGHTS: points are meaningless", values
        return OK, state, values

    def _on_point_to_part(self, request, response):
        answer = self._answer(request.query, request.support_set, request.image, publish=True)
        response.success, response.message, response.header = answer.success, answer.message, answer.header
        response.u, response.v, response.score, response.has_3d = answer.u, answer.v, answer.score, answer.has_3d
        response.point.header = answer.header
        response.point.point.x, response.point.point.y, response.point.point.z = answer.xyz
        self.outputs.fill_pose(response, answer)
        return response

    def _on_add_exemplar(self, request, response):
        from pop_ros.supports import SupportError

        response.num_exemplars = 0
        problem = self._not_ready()
        if not problem:
            try:
                image, _ = self.camera.target_image(request.image, float(self.param("max_frame_age")))
                with self.work_slot() as busy:
                    if busy:
                        raise SupportError(busy)
                    pointer = self.pointer  # read once under the slot: a cleanup may clear it meanwhile
                    if pointer is None:
                        raise SupportError(self._not_ready() or "node is not configured")
                    # Features are computed now, once; the exemplar is added only if that succeeds.
                    updated = pointer.add_exemplar(request.support_set, image, (request.u, request.v), request.query)
                response.num_exemplars = len(updated.exemplars)
            except (SupportError, ImageConversionError, ValueError) as error:
                problem = str(error)
        response.success = not problem
        response.message = problem or f"added to {request.support_set!r}"
        return response

    def _on_list_support_sets(self, request, response):
        if self.pointer is None:
            return response
        from pop_ros.supports import SupportError

        library = self.pointer.library
        for name in library.names():
            try:
                support_set, storage = library.get(name), library.storage(name)
            except SupportError:  # removed since names() was read
                continue
            response.names.append(name)
            response.default_queries.append(support_set.query)
            response.num_exemplars.append(len(support_set.exemplars))
            response.storage.append(storage)
            response.writable.append(library.writable)
        return response

    # ---- the work ---------------------------------------------------------------------------------------
    def _answer(self, query: str, support_set: str, request_image, publish: bool) -> Answer:
        answer = self._compute_answer(query, support_set, request_image, publish)
        self._record(answer)
        return answer

    def _record(self, answer: Answer) -> None:
        """Count one query's outcome and latency for /diagnostics."""
        if answer.success:
            outcome = "ok"
        elif answer.message.startswith("busy"):
            outcome = "busy"
        elif answer.message.startswith("part not visible"):
            outcome = "rejected"
        elif answer.message.startswith(("node is not configured", "inactive")):
            outcome = "not active"
        else:
            outcome = "refused"
            self.health.error("refused input")
        self.health.query(outcome, answer.total_ms if answer.total_ms > 0 else None)

    def _publish(self, answer: Answer, image, heatmap) -> None:
        self.outputs.publish(
            answer,
            image,
            heatmap,
            bool(self.param("publish_heatmap")),
            publish_rejected_heatmap=bool(self.param("publish_rejected_heatmap")),
        )

    def _compute_answer(self, query: str, support_set: str, request_image, publish: bool) -> Answer:
        from pop_ros.pipeline import PointerError

        started = time.perf_counter()
        # The source image's header whenever it is known, failures included.
        header = self.camera.source_header(request_image)
        problem = self._not_ready()
        if problem:
            return Answer(False, problem, header)
        try:
            image, header = self.camera.target_image(request_image, float(self.param("max_frame_age")))
        except ImageConversionError as error:
            return Answer(False, str(error), header)
        with self.work_slot() as busy:
            if busy:
                return Answer(False, busy, header)
            pointer = self.pointer  # read once under the slot: a cleanup may clear it meanwhile
            if pointer is None:
                return Answer(False, self._not_ready() or "node is not configured", header)
            try:
                frame_key = self._frame_key(request_image, header)
                result = pointer.point(image, query, support_set=support_set or None, frame_key=frame_key)
            except PointerError as error:
                return Answer(False, str(error), header)
        answer = self._result_answer(result, image, header)
        answer.total_ms = (time.perf_counter() - started) * 1000.0
        if publish:
            self._publish(answer, image, result.heatmap)
        return answer

    @staticmethod
    def _frame_key(request_image, header) -> str | None:
        """A camera frame is named by its stamp + frame_id (no hashing of the pixels); an image sent
        with the request, or an unstamped frame, by its content (the pipeline hashes it)."""
        if not is_empty_image(request_image) or (header.stamp.sec == 0 and header.stamp.nanosec == 0):
            return None
        return f"{header.frame_id}@{header.stamp.sec}.{header.stamp.nanosec:09d}"

    # ---- several parts on one frame ----------------------------------------------------------------
    def _on_point_to_parts(self, request, response):
        """Every query of the request on one frame: its features and MLLM prefix are computed once.
        `success` is false only when nothing could run; each query's own outcome is in its result."""
        from pop_ros.pipeline import PointerError

        started = time.perf_counter()
        response.header = self.camera.source_header(request.image)
        queries, sets = list(request.queries), list(request.support_sets)
        problem = self._not_ready()
        if not problem and not queries:
            problem = "queries is empty: give at least one query"
        if not problem and sets and len(sets) != len(queries):
            problem = f"support_sets has {len(sets)} entries for {len(queries)} queries: give none or one per query"
        image = None
        if not problem:
            try:
                image, response.header = self.camera.target_image(request.image, float(self.param("max_frame_age")))
            except ImageConversionError as error:
                problem = str(error)
        if problem:
            response.success, response.message = False, problem
            self._record(Answer(False, problem, response.header))
            return response
        header = response.header
        sets = sets or [""] * len(queries)
        with self.work_slot() as busy:
            pointer = self.pointer  # read once under the slot: a cleanup may clear it meanwhile
            problem = busy or ("" if pointer is not None else self._not_ready() or "node is not configured")
            if problem:
                response.success, response.message = False, problem
                self._record(Answer(False, problem, header))
                return response
            try:
                frame_key = self._frame_key(request.image, header)
                requests = [(query, name or None) for query, name in zip(queries, sets, strict=True)]
                results = pointer.point_many(image, requests, frame_key=frame_key)
            except PointerError as error:
                response.success, response.message = False, str(error)
                self._record(Answer(False, str(error), header))
                return response
        shared_ms = next(
            (r.shared_timings_ms.get("total", 0.0) for r in results if not isinstance(r, PointerError)), 0.0
        )
        for query, name, result in zip(queries, sets, results, strict=True):
            if isinstance(result, PointerError):
                answer = Answer(False, str(result), header, query=query, support_set=name)
            else:
                answer = self._result_answer(result, image, header)
                answer.total_ms = result.timings_ms.get("total", 0.0)
                self._publish(answer, image, result.heatmap)
            self._record(answer)
            response.results.append(self.outputs.result_message(answer))
        failed = sum(not r.success for r in response.results)
        response.success = True
        response.shared_ms = float(shared_ms)
        response.message = (
            f"{len(queries) - failed}/{len(queries)} queries answered in "
            f"{(time.perf_counter() - started) * 1000.0:.0f} ms (shared {shared_ms:.0f} ms)"
        )
        return response

    def _result_answer(self, result, image, header) -> Answer:
        """A pipeline result as an Answer: its 3D point and approach pose, and the min_score check."""
        answer = Answer(
            True,
            "",
            header,
            u=result.u,
            v=result.v,
            score=result.score,
            query=result.query,
            support_set=result.support_set,
        )
        notes = self._locate(answer, image.shape[:2], header)
        min_score = float(self.param("min_score"))
        if result.score < min_score:
            answer.success = False
            notes.insert(0, f"part not visible: score {result.score:.3f} < min_score {min_score}")
        answer.message = "; ".join(notes) or "ok"
        return answer

    def _locate(self, answer: Answer, image_size, header) -> list[str]:
        """Fill `answer`'s 3D point and approach pose for its (u, v); returns the notes on what is missing."""
        info = self.camera.camera_info
        if info is None:
            return [f"no 3D point: no camera_info received on {self.resolve_topic_name('camera_info')}"]
        if stamp_seconds(header.stamp) == 0:
            self.health.depth_lookup(False)
            return ["no 3D point: the image has stamp 0, so no depth can be paired by time (set header.stamp)"]
        depth_msg, gap = self.camera.depth_near(header.stamp, float(self.param("depth_max_dt")))
        self.health.depth_lookup(depth_msg is not None)
        if depth_msg is None:
            if math.isinf(gap):
                detail = "no depth received"
            elif gap > IMPOSSIBLE_STAMP_GAP_S:
                detail = (
                    f"impossible stamp difference: the nearest depth is {gap:.0f} s away, so colour and depth "
                    "stamps come from different clocks (check the drivers and use_sim_time)"
                )
            else:
                detail = f"nearest depth is {gap:.3f} s away"
            return [f"no 3D point: {detail} (depth_max_dt {self.param('depth_max_dt')} s)"]
        try:
            depth_m = to_depth_m(depth_msg)
        except ImageConversionError as error:
            return [f"no 3D point: depth image: {error}"]
        location = geometry.locate(
            CameraModel.from_camera_info(info, rectified=bool(self.param("image_is_rectified"))),
            depth_m,
            answer.u,
            answer.v,
            image_size,
            int(self.param("depth_window")),
            int(self.param("pose_window")),
            float(self.param("pose_inlier_distance")),
            float(self.param("pose_min_inlier_ratio")),
        )
        if not location.has_3d:
            return [f"no 3D point: {location.why_not_3d}"]
        answer.has_3d, answer.xyz = True, location.xyz
        answer.has_pose, answer.normal, answer.orientation = location.has_pose, location.normal, location.orientation
        answer.fit_rms_m, answer.fit_inlier_ratio = location.fit_rms_m, location.fit_inlier_ratio
        return [] if location.has_pose else [f"no pose: {location.why_no_pose}"]

    # ---- continuous mode --------------------------------------------------------------------------------
    def _restart_continuous_timer(self, rate_hz: float) -> None:
        if self._continuous_timer is not None:
            self.destroy_timer(self._continuous_timer)
            self._continuous_timer = None
        if rate_hz > 0:
            self._continuous_timer = self.create_timer(
                1.0 / rate_hz, self.guarded(self._on_continuous_tick), callback_group=self._continuous_group
            )

    def _on_continuous_tick(self) -> None:
        # Only the newest frame, only once, and never queued behind a running query: no backlog.
        if self.pointer is None or self.camera.latest_seq == self._continuous_done_seq:
            return
        support_set = self.param("continuous_support_set")
        if self._work_lock.locked() or not self.active:
            return
        self._continuous_done_seq = self.camera.latest_seq
        empty = Image()
        answer = self._answer(self.param("continuous_query"), support_set, empty, publish=True)
        if not answer.success:
            self.get_logger().warning(f"continuous query: {answer.message}", throttle_duration_sec=5.0)


def main(args=None) -> None:
    rclpy.init(args=args)
    node = PopNode()
    executor = MultiThreadedExecutor(num_threads=EXECUTOR_THREADS)
    executor.add_node(node)
    try:
        if node.param("autostart") is True:
            if node.trigger_configure() == TransitionCallbackReturn.SUCCESS:
                node.trigger_activate()
            else:
                node.get_logger().error("autostart: configure failed; services answer with the reason")
        else:
            name = node.get_fully_qualified_name()
            node.get_logger().info(
                f"autostart is false: {name} waits unconfigured; drive it with `ros2 lifecycle set {name} configure` "
                f"then `ros2 lifecycle set {name} activate` (services answer with the state until then)"
            )
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
