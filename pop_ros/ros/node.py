"""pop_node: camera in; 3D part point, heatmap and a part-query service out.

A lifecycle node: `configure` loads the models and the support library (timed, in the log),
`activate` subscribes to the camera. `autostart: true` does both for `ros2 run`. All work happens in
a PartPointer; callbacks only store frames, answer services and publish.

Wiring and lifecycle only: parameters live in `parameters.py`, camera input in `camera.py`, the
query services in `queries.py` (the same queries as cancellable actions: `actions.py`), continuous
mode in `continuous.py`, publishers in `outputs.py`, teaching in `teaching.py`, /diagnostics in
`diagnostics.py`. They use the node through its public
methods (`param`, `guarded`, `not_ready_reason`, `work_slot`, `models`, `model_state`). Every
callback goes through `PopNode.guarded`, so no exception ends the process.

Run: `ros2 run pop_ros pop_node --ros-args --params-file config/pop_ros.yaml`
 or: `python -m pop_ros.ros.node --ros-args --params-file config/pop_ros.yaml`
(`--help` prints the parameters and exits, before rclpy or torch is imported: `usage.py`.)
"""

from __future__ import annotations

import sys

if __name__ == "__main__":  # `python -m pop_ros.ros.node --help`: answered before the imports below
    from pop_ros.ros.usage import exit_if_help

    exit_if_help(sys.argv[1:])

import collections
import contextlib
import dataclasses
import faulthandler
import functools
import gc
import logging
import os
import signal
import time
import traceback
from collections.abc import Iterator

import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn

from pop_ros.ros.actions import QueryActions
from pop_ros.ros.answers import CONFIGURING, Outcome
from pop_ros.ros.camera import CameraInput
from pop_ros.ros.continuous import ContinuousMode
from pop_ros.ros.diagnostics import ERROR, OK, WARN, DiagnosticsPublisher, NodeHealth
from pop_ros.ros.lifecycle_teardown import TransitionGuard
from pop_ros.ros.loading import load_library, load_pointer
from pop_ros.ros.outputs import Outputs
from pop_ros.ros.parameter_changes import ParameterChanges, unknown_set
from pop_ros.ros.parameters import (
    MAX_WAITING_QUERIES_LIMIT,
    PARAMETERS,
    RESERVED_THREADS,
    check_all,
    check_parameter,
    check_type,
    pointer_settings,
)
from pop_ros.ros.queries import Queries
from pop_ros.ros.teaching import Teaching
from pop_ros.ros.tracking import ContinuousTracking
from pop_ros.ros.work_slots import WorkSlots


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


def route_python_logging(ros_logger) -> RosLogHandler:
    """The package's Python log records go to `ros_logger` (the newest node's), not to the root logger."""
    package_logger = logging.getLogger("pop_ros")
    for handler in list(package_logger.handlers):
        if isinstance(handler, RosLogHandler):
            package_logger.removeHandler(handler)
    handler = RosLogHandler(ros_logger)
    package_logger.addHandler(handler)
    package_logger.setLevel(logging.INFO)
    package_logger.propagate = False
    return handler


def unroute_python_logging(handler: RosLogHandler) -> None:
    """Undo `route_python_logging` when its node is destroyed: the records reach the root logger again
    (a process that made a node in-process, a test or a tool, would otherwise lose them)."""
    package_logger = logging.getLogger("pop_ros")
    if handler not in package_logger.handlers:
        return  # a newer node routes them now
    package_logger.removeHandler(handler)
    package_logger.setLevel(logging.NOTSET)
    package_logger.propagate = True


# Threads of the node's executor: every query that may run or wait, plus the reserved ones.
EXECUTOR_THREADS = MAX_WAITING_QUERIES_LIMIT + 1 + RESERVED_THREADS
# Cleanup and shutdown wait at most this long for a running query; it then finishes with the
# models it holds, which are freed when it ends.
CLEANUP_WAIT_S = 5.0
# Seconds stop() waits, after a signal, for rclpy's signal thread to finish (it shuts the context down last).
SIGNAL_HANDLING_WAIT_S = 2.0


@dataclasses.dataclass(frozen=True)
class HeldModels:
    """What `PopNode.models()` yields: the pointer while this caller holds the work slot, else None
    with the outcome (BUSY or NOT_READY) and the reason."""

    pointer: object | None  # PartPointer
    outcome: Outcome
    reason: str


class PopNode(LifecycleNode):
    @property
    def default_callback_group(self):
        """The group of the lifecycle and parameter services (rclpy puts them in the node's default
        group; every other callback of this node names its own): reentrant, so get_state (what
        lifecycle managers poll) and `ros2 param` answer while a configure loads models for minutes."""
        group = self.__dict__.get("_service_group")
        if group is None:
            group = self._service_group = ReentrantCallbackGroup()
        return group

    def __init__(self, **kwargs):
        self._transitions = TransitionGuard()  # before rclpy's constructor, which may run a transition
        self.configuring = False  # read by the parameter check, which may run during a configure
        self.autostarting = False  # from autostart_later until its configure and activate have run
        self._autostart = None  # autostart_later's one-shot timer
        super().__init__("pop_node", **kwargs)
        self._log_handler = route_python_logging(self.get_logger())
        for spec in PARAMETERS.values():
            # dynamic_typing: rclpy would refuse `ros2 param set ... min_score 0` (an integer for a
            # float) before our callback runs; check_type accepts it and refuses real mismatches.
            descriptor = ParameterDescriptor(description=f"{spec.described()} [{spec.when}]", dynamic_typing=True)
            self.declare_parameter(spec.name, spec.default, descriptor)
        self.add_on_set_parameters_callback(ParameterChanges(self).on_set)

        self.pointer = None  # PartPointer once configured; read it once per use (cleanup clears it)
        self.configure_error = ""
        self.active = False
        self.health = NodeHealth()
        self.slots = WorkSlots()
        # Exceptions caught by the guard, by callback name (for the log and diagnostics).
        self.internal_errors: collections.Counter = collections.Counter()
        self.camera = CameraInput(self)
        self.camera.on_frame = self.health.frame
        self._frames_check = None

        self._sensor_group = MutuallyExclusiveCallbackGroup()
        query_group = ReentrantCallbackGroup()
        self.outputs = Outputs(self)
        self.queries = Queries(self, query_group)
        self.actions = QueryActions(self, self.queries, query_group)
        self.teaching = Teaching(self, query_group)
        self.continuous = ContinuousMode(self, self.queries, MutuallyExclusiveCallbackGroup())
        self.tracking = ContinuousTracking(self, self.continuous)
        self.diagnostics = DiagnosticsPublisher(
            self,
            self.health,
            self.model_state,
            camera_expected=lambda: self.active,
            period_s=self._float_param("diagnostics_period", 1.0),
            hardware_id=self.get_fully_qualified_name(),
            callback_group=MutuallyExclusiveCallbackGroup(),
            wrap=self.guarded,
            extra_statuses=self.tracking.diagnostic,
        )

    # ---- the guard ------------------------------------------------------------------------------------
    def guarded(self, callback, query: bool = False):
        """`callback` that never raises: an exception that escaped a callback would end
        `executor.spin()` and the process. The traceback is logged (throttled), counted (for a
        `query` service also as its outcome), and a service answers `success: false` with the reason."""

        @functools.wraps(callback)
        def guarded_callback(*args):
            try:
                return callback(*args)
            except Exception as error:  # noqa: BLE001 - the whole point: nothing leaves a callback
                name = getattr(callback, "__name__", "callback")
                self.internal_errors[name] += 1
                self.health.error("internal error")
                if query:
                    self.health.query(Outcome.INTERNAL)
                self.get_logger().error(
                    f"internal error in {name}: {type(error).__name__}: {error}\n{traceback.format_exc()}",
                    throttle_duration_sec=5.0,
                )
                # A service (request, response), or an action goal's query (goal, result, progress).
                if len(args) >= 2 and hasattr(args[1], "success"):
                    response = args[1]
                    response.success = False
                    response.message = f"internal error: {type(error).__name__}: {' '.join(str(error).split())}"
                    return response
                return args[1] if len(args) >= 2 else None

        return guarded_callback

    def param(self, name: str):
        return self.get_parameter(name).value

    def _float_param(self, name: str, fallback: float) -> float:
        """A number parameter as float, or `fallback` when its value is unusable (refused at configure)."""
        value = self.param(name)
        return float(value) if check_type(name, value) is None and check_parameter(name, value) is None else fallback

    # ---- state and the models, for the parts of the node ----------------------------------------------
    def not_ready_reason(self) -> str:
        """'' when the node is active, else its state and how to leave it."""
        name = self.get_fully_qualified_name()
        if self.pointer is None and (self.configuring or self.autostarting):
            return f"{CONFIGURING}: loading the models and support features (it answers once active)"
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

    def autostart_later(self) -> None:
        """Configure and activate once the executor spins (autostart): the models load in a callback
        of their own, so the lifecycle and parameter services, and the queries' "configuring" answer,
        are served meanwhile (lifecycle managers poll get_state during a load of minutes)."""
        self.autostarting = True
        self._autostart = self.create_timer(
            0.0, self.guarded(self._autostart_now), callback_group=MutuallyExclusiveCallbackGroup()
        )

    def _autostart_now(self) -> None:
        timer, self._autostart = self._autostart, None
        if timer is None:  # a second tick queued before the first destroyed the timer
            return
        self.destroy_timer(timer)
        try:
            if self.trigger_configure() == TransitionCallbackReturn.SUCCESS:
                self.trigger_activate()
            else:
                self.get_logger().error("autostart: configure failed; services answer with the reason")
        finally:
            self.autostarting = False

    def work_slot(self, wait: bool = True, progress=None):
        """A context holding the models for one query: yields '' while this caller holds them, else
        the busy reason. With `wait` (and busy_policy wait) a caller waits up to busy_timeout, at most
        max_waiting_queries of them; `wait` False tries once. `progress` (a QueryProgress, for a
        query that can be cancelled): told its place in the queue; its cancel ends the wait."""
        waits = wait and self.param("busy_policy") == "wait"
        timeout = float(self.param("busy_timeout")) if waits else 0.0
        return self.slots.hold(int(self.param("max_waiting_queries")), timeout, progress)

    @contextlib.contextmanager
    def models(self, wait: bool = True, progress=None) -> Iterator[HeldModels]:
        """The work slot and the pointer, read once inside it: a cleanup meanwhile gives None and
        the node's state, never a pointer that disappears half-way."""
        with self.work_slot(wait, progress) as busy:
            if busy:
                yield HeldModels(None, Outcome.BUSY, busy)
                return
            pointer = self.pointer
            if pointer is None:
                yield HeldModels(None, Outcome.NOT_READY, self.not_ready_reason() or "node is not configured")
                return
            yield HeldModels(pointer, Outcome.OK, "")

    def model_state(self) -> tuple[bytes, str, dict]:
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

    def pointer_settings(self, proposed: dict | None = None):
        """The pipeline's settings from the parameters, `proposed` values first."""
        proposed = proposed or {}
        return pointer_settings(lambda name: proposed.get(name, self.param(name)))

    # ---- lifecycle ------------------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        from pop_ros.models.loading import ModelLoadError
        from pop_ros.supports import SupportError

        started = time.perf_counter()
        self.configuring = True
        try:
            # Values from a params file or the command line never went through the on-set callback.
            invalid = check_all({name: self.param(name) for name in PARAMETERS})
            if invalid:
                raise ValueError(f"invalid parameter: {invalid}")
            library = load_library(self.param, self.get_logger())
            # Checked before the models load: a typo costs no minutes of loading.
            unknown = unknown_set(self.param("continuous_support_set"), library.names())
            if unknown:
                raise ValueError(f"continuous_support_set: {unknown}")
            pointer = load_pointer(self.param, self.get_logger(), self.pointer_settings(), library)
            # Runtime parameters may have been set while the models loaded (the parameter services answer
            # during a configure): the pipeline gets their values as they are now.
            pointer.settings = self.pointer_settings()
        except (ModelLoadError, SupportError, ValueError, OSError) as error:
            return self._configure_failed(str(error))
        except Exception as error:  # noqa: BLE001 - rclpy would turn it into a silent ERROR transition
            return self._configure_failed(f"internal error: {type(error).__name__}: {error}", traceback.format_exc())
        finally:
            self.configuring = False
        self.pointer = pointer
        self.configure_error = ""
        self.get_logger().info(f"configured in {time.perf_counter() - started:.1f} s")
        return TransitionCallbackReturn.SUCCESS

    def _configure_failed(self, reason: str, details: str = "") -> TransitionCallbackReturn:
        self.configure_error = reason
        self.get_logger().error(f"configure failed: {reason}" + (f"\n{details}" if details else ""))
        return TransitionCallbackReturn.FAILURE

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        topics = self.camera.subscribe(
            self.param("image_reliability"), self.guarded, self.param("image_transport"), self.param("depth_transport")
        )
        self.continuous.restart(float(self.param("continuous_rate")))
        self._frames_check = self.create_timer(
            5.0, self.guarded(self.camera.check_frames_arrive), callback_group=self._sensor_group
        )
        self.get_logger().info(f"active: listening on {', '.join(topics)}")
        self.active = True
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_listening()
        return super().on_deactivate(state)

    def _stop_listening(self) -> None:
        """Unsubscribe and stop continuous mode and the frames check (deactivate, shutdown)."""
        self.active = False
        self.camera.unsubscribe()
        self.continuous.restart(0.0)
        self.tracking.reset()
        if self._frames_check is not None:
            self.destroy_timer(self._frames_check)
            self._frames_check = None

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Back to unconfigured: no models, and nothing of the camera (frames, depth, camera_info):
        the next configure may be for another camera."""
        self._release_models()
        self.camera.clear()
        self.outputs.forget_order()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """From any state: subscriptions and timers stopped, models released, the camera forgotten."""
        self._stop_listening()
        self._release_models()
        self.camera.clear()
        return TransitionCallbackReturn.SUCCESS

    def destroy_node(self) -> None:
        self.tracking.close()  # its thread publishes: ended before anything it uses goes
        self.camera.close()
        self.actions.destroy()  # waitables: rclpy's destroy_node leaves them (and so the node) alive
        super().destroy_node()
        if not self._transitions.destroy(self, CLEANUP_WAIT_S):  # ros/lifecycle_teardown.py says why
            self.get_logger().warning(
                f"a lifecycle transition still runs after {CLEANUP_WAIT_S:.0f} s: its state machine is left "
                "(the node stays in the ROS graph until the process ends)"
            )
        unroute_python_logging(self._log_handler)

    def _LifecycleNodeMixin__change_state(self, transition_id: int) -> TransitionCallbackReturn:
        # rclpy's private method behind every transition (trigger_* and the change_state service):
        # run under the guard, so the destroy never frees the state machine in the middle of one.
        return self._transitions.run(super()._LifecycleNodeMixin__change_state, transition_id)

    def _release_models(self) -> None:
        """Drop the models and free their memory. A query in flight keeps the models it holds; it is
        waited for at most CLEANUP_WAIT_S, and its models are freed when it ends."""
        with self.slots.idle(CLEANUP_WAIT_S) as idle:
            if not idle:
                self.get_logger().warning(
                    f"a query still runs after {CLEANUP_WAIT_S:.0f} s: cleaning up; it finishes with the models "
                    "it holds, freed when it ends"
                )
            self.pointer = None
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def main(args=None) -> None:
    """Run pop_node until SIGINT (Ctrl-C) or an external shutdown; `args` as `rclpy.init` takes them."""
    from pop_ros.ros.usage import exit_if_help

    exit_if_help((sys.argv if args is None else args)[1:])
    faulthandler.enable()  # a crash in rcl or DDS prints every thread's Python stack to stderr
    # rclpy's own handler (installed by init, on top of this one) shuts the context down, which ends
    # spin(); it then calls this one, which names the signal for the log and raises KeyboardInterrupt
    # so that a signal during a long model load ends it too.
    received: list[str] = []

    def interrupted(number, _frame):
        received.append(signal.Signals(number).name)
        raise KeyboardInterrupt

    for signal_number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signal_number, interrupted)
    rclpy.init(args=args)
    node = PopNode()
    executor = MultiThreadedExecutor(num_threads=EXECUTOR_THREADS)
    executor.add_node(node)
    reason = "the executor stopped"
    try:
        if node.param("autostart") is True:
            node.autostart_later()
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
        stop(node, executor, " and ".join(received) or reason, signalled=bool(received))


def stop(node: PopNode, executor, reason: str, signalled: bool = False) -> None:
    """Stop the node and end the process at once, with a log line. A query still running is not
    waited for (a support-library write is atomic: a process ended mid-write leaves the old or the
    new library). The interpreter's own teardown of torch and transformers objects took ~4 s of
    garbage collection at exit; the process exits without it (os._exit), after flushing the logs."""
    started = time.perf_counter()
    for signal_number in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not interrupt this
        signal.signal(signal_number, signal.SIG_IGN)
    if signalled:
        # rclpy handles a signal on a thread of its own: it triggers every executor's signal guard
        # condition, then shuts the context down. An executor shut down meanwhile frees its guard
        # condition under that thread's loop (a SIGSEGV at exit, seen with two executors): wait for it.
        deadline = time.monotonic() + SIGNAL_HANDLING_WAIT_S
        while node.context.ok() and time.monotonic() < deadline:
            time.sleep(0.01)
    # Not the node's own logger: after SIGINT its /rosout publisher is gone with the context.
    logger = rclpy.logging.get_logger(f"{node.get_name()}.shutdown")
    logger.info(f"stopping: {reason}")
    node.active = False
    executor.shutdown(timeout_sec=0.5)
    node.destroy_node()
    rclpy.try_shutdown()
    logger.info(f"stopped in {time.perf_counter() - started:.2f} s")
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
