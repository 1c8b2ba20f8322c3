"""pop_node: camera in; 3D part point, heatmap and a part-query service out.

A lifecycle node: `configure` loads the models and the support library (timed, in the log),
`activate` subscribes to the camera. `autostart: true` does both for `ros2 run`. All work happens in
a PartPointer; callbacks only store frames, answer services and publish.

Run: `ros2 run pop_ros pop_node --ros-args --params-file config/pop_ros.yaml`
 or: `python -m pop_ros.node --ros-args --params-file config/pop_ros.yaml`
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import pathlib
import threading
import time

import numpy as np
import rclpy
from geometry_msgs.msg import PointStamped
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from pop_ros import geometry
from pop_ros.image_conversion import ImageConversionError, compressed_to_rgb8, from_array, to_depth_m, to_rgb8
from pop_ros.visualize import overlay
from pop_ros_interfaces.msg import PartPointResult
from pop_ros_interfaces.srv import AddExemplar, ListSupportSets, PointToPart

# name: (default, description, when it takes effect). "runtime": at once (ros2 param set);
# "configure": read at configure; refused while configured, with that reason.
PARAMETERS = {
    "autostart": (
        True,
        "configure and activate at start (for ros2 run); false = drive the lifecycle yourself",
        "configure",
    ),
    "preset": (
        "qwen2.5-vl-7b",
        "model preset: qwen2.5-vl-3b, qwen2.5-vl-7b, qwen2.5-vl-7b-dinov2, molmo2-8b, internvl3-8b; "
        "tiny, tiny-molmo2, tiny-internvl (random weights)",
        "configure",
    ),
    "mllm": ("", "override the preset's MLLM (hub id or local folder); empty = preset's", "configure"),
    "visual_model": (
        "",
        "override the preset's visual encoder (hub id or local folder); empty = preset's",
        "configure",
    ),
    "heads_file": (
        "",
        "localization-head YAML from pop-find-heads; empty = config/heads/<model>.yaml if present, else the fallback",
        "configure",
    ),
    "device": ("", "auto | cpu | cuda | cuda:N; empty = preset's", "configure"),
    "dtype": ("", "auto | float32 | bfloat16 | float16; empty = preset's", "configure"),
    "resolution": (0, "longer image side for the visual encoder, pixels; 0 = preset's", "configure"),
    "prompt_template": ("", "MLLM prompt containing {query}; empty = preset's ('Point to the {query}.')", "configure"),
    "trust_remote_code": (False, "let hub model code run; only for repositories you trust", "configure"),
    "support_library": ("", "support library YAML (see README); empty = none", "configure"),
    "feature_cache_dir": ("", "folder for the support-feature disk cache; empty = memory only", "configure"),
    "image_reliability": ("best_effort", "camera subscriptions' QoS reliability: best_effort | reliable", "configure"),
    "similarity": ("bidirectional", "visual correspondence: bidirectional | forward | backward", "runtime"),
    "aggregation": ("sum", "how head maps combine: sum | mean | max", "runtime"),
    "head_set": ("selected", "selected (calibrated heads or fallback) | all (every head; ablation)", "runtime"),
    "sigma": (1.0, "Gaussian smoothing of each head map, LLM-token units (>= 0)", "runtime"),
    "shots_combination": ("mean", "how K visual maps combine: mean | product", "runtime"),
    "upsample": (2, "upsampling of the fused map before the argmax (integer >= 1)", "runtime"),
    "max_shots": (3, "K: at most this many exemplars per query (>= 1)", "runtime"),
    "retrieval": ("cls", "which K exemplars: cls (closest by DINO [CLS]) | first", "runtime"),
    "use_text": (True, "false = visual-only ablation (needs a support set)", "runtime"),
    "min_score": (0.0, "answers with a lower score fail with 'part not visible' (0 = never)", "runtime"),
    "max_frame_age": (1.0, "refuse camera frames older than this, seconds (0 = no limit)", "runtime"),
    "depth_max_dt": (0.05, "pair depth with colour when stamps differ by at most this, seconds", "runtime"),
    "depth_window": (5, "median of valid depths in this box around the point, pixels (odd, >= 1)", "runtime"),
    "busy_policy": ("wait", "a query arriving during another: wait (up to busy_timeout) | reject", "runtime"),
    "busy_timeout": (10.0, "seconds a query waits for a running one before answering busy", "runtime"),
    "publish_heatmap": (True, "publish ~/heatmap (bgr8 overlay) and ~/heatmap_raw (32FC1)", "runtime"),
    "continuous_query": ("", "standing query for continuous mode (empty = the set's default query)", "runtime"),
    "continuous_support_set": ("", "standing support set for continuous mode", "runtime"),
    "continuous_rate": (0.0, "continuous mode: process the latest frame at most this often, Hz (0 = off)", "runtime"),
}
_CHOICES = {
    "image_reliability": ("best_effort", "reliable"),
    "similarity": ("bidirectional", "forward", "backward"),
    "aggregation": ("sum", "mean", "max"),
    "head_set": ("selected", "all"),
    "shots_combination": ("mean", "product"),
    "retrieval": ("cls", "first"),
    "busy_policy": ("wait", "reject"),
    "dtype": ("", "auto", "float32", "bfloat16", "float16"),
}
_MINIMUM = {
    "sigma": 0.0,
    "upsample": 1,
    "max_shots": 1,
    "min_score": 0.0,
    "max_frame_age": 0.0,
    "depth_max_dt": 0.0,
    "depth_window": 1,
    "busy_timeout": 0.0,
    "continuous_rate": 0.0,
    "resolution": 0,
}


def check_parameter(name: str, value) -> str | None:
    """None if `value` is acceptable for `name`, else the reason."""
    if name in _CHOICES and value not in _CHOICES[name]:
        return f"{name} must be one of {[c for c in _CHOICES[name] if c]}, got {value!r}"
    if name in _MINIMUM and value < _MINIMUM[name]:
        return f"{name} must be >= {_MINIMUM[name]}, got {value}"
    if name == "prompt_template" and value and "{query}" not in value:
        return "prompt_template must contain {query}"
    if name == "preset":
        from pop_ros.models.presets import PRESETS

        if value not in PRESETS:
            return f"preset must be one of {sorted(PRESETS)}, got {value!r}"
    for path_name in ("support_library", "heads_file"):
        if name == path_name and value and not pathlib.Path(value).expanduser().is_file():
            return f"{name} {value!r} is not a file"
    return None


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


@dataclasses.dataclass
class Frame:
    msg: object  # sensor_msgs/Image or CompressedImage
    stamp_s: float


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


def stamp_seconds(stamp) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def is_empty_image(msg) -> bool:
    return msg.height == 0 and msg.width == 0 and len(msg.data) == 0


class PopNode(LifecycleNode):
    def __init__(self, **kwargs):
        super().__init__("pop_node", **kwargs)
        route_python_logging(self.get_logger())
        for name, (default, description, when) in PARAMETERS.items():
            self.declare_parameter(name, default, ParameterDescriptor(description=f"{description} [{when}]"))
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self.pointer = None
        self.configure_error = ""
        self._work_lock = threading.Lock()
        self._latest: Frame | None = None
        self._latest_seq = 0
        self._continuous_done_seq = 0
        self._depth = geometry.StampBuffer()
        self._camera_info: CameraInfo | None = None
        self._subscriptions = []
        self._continuous_timer = None
        self._frames_check = None
        # Image-callback cost and delivery latency (stamp -> callback), read by pop-bench.
        self.callback_durations_ms: collections.deque = collections.deque(maxlen=100_000)
        self.callback_latency_ms: collections.deque = collections.deque(maxlen=100_000)

        self._sensor_group = MutuallyExclusiveCallbackGroup()
        self._query_group = ReentrantCallbackGroup()
        self._continuous_group = MutuallyExclusiveCallbackGroup()
        self.create_service(PointToPart, "~/point_to_part", self._on_point_to_part, callback_group=self._query_group)
        self.create_service(AddExemplar, "~/add_exemplar", self._on_add_exemplar, callback_group=self._query_group)
        self.create_service(
            ListSupportSets, "~/list_support_sets", self._on_list_support_sets, callback_group=self._query_group
        )
        self._point_pub = self.create_publisher(PointStamped, "~/point", 10)
        self._heatmap_pub = self.create_publisher(Image, "~/heatmap", 1)
        self._heatmap_raw_pub = self.create_publisher(Image, "~/heatmap_raw", 1)
        self._result_pub = self.create_publisher(PartPointResult, "~/result", 10)

    def param(self, name: str):
        return self.get_parameter(name).value

    # ---- parameters -------------------------------------------------------------------------------
    def _on_set_parameters(self, parameters) -> SetParametersResult:
        configured = self.pointer is not None
        for parameter in parameters:
            if parameter.name not in PARAMETERS:
                continue
            default = PARAMETERS[parameter.name][0]
            value = parameter.value
            if type(value) is not type(default) and not (isinstance(default, float) and isinstance(value, int)):
                return SetParametersResult(
                    successful=False, reason=f"{parameter.name} must be a {type(default).__name__}, got {value!r}"
                )
            reason = check_parameter(parameter.name, value)
            if reason:
                return SetParametersResult(successful=False, reason=reason)
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
            if "continuous_rate" in proposed and self._subscriptions:
                self._restart_continuous_timer(float(proposed["continuous_rate"]))
        return SetParametersResult(successful=True)

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
            shots=value("shots_combination"),
            upsample=int(value("upsample")),
            max_shots=int(value("max_shots")),
            retrieval=value("retrieval"),
            use_text=bool(value("use_text")),
        ).validate()

    # ---- lifecycle ------------------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        from pop_ros.models.loading import ModelLoadError
        from pop_ros.pipeline import PartPointer
        from pop_ros.supports import SupportError, SupportLibrary

        started = time.perf_counter()
        overrides = {
            "mllm": self.param("mllm") or None,
            "visual": self.param("visual_model") or None,
            "heads_file": self.param("heads_file") or None,
            "device": self.param("device") or None,
            "dtype": self.param("dtype") or None,
            "resolution": self.param("resolution") or None,
            "prompt_template": self.param("prompt_template") or None,
            "trust_remote_code": True if self.param("trust_remote_code") else None,
        }
        try:
            library = SupportLibrary()
            library_path = self.param("support_library")
            if library_path:
                library = SupportLibrary.load(pathlib.Path(library_path).expanduser())
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
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        reliability = (
            ReliabilityPolicy.RELIABLE
            if self.param("image_reliability") == "reliable"
            else ReliabilityPolicy.BEST_EFFORT
        )
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=reliability)
        group = self._sensor_group
        self._subscriptions = [
            self.create_subscription(Image, "image", self._on_image, qos, callback_group=group),
            self.create_subscription(CompressedImage, "image/compressed", self._on_image, qos, callback_group=group),
            self.create_subscription(Image, "depth", self._on_depth, qos, callback_group=group),
            self.create_subscription(CameraInfo, "camera_info", self._on_camera_info, qos, callback_group=group),
        ]
        self._restart_continuous_timer(float(self.param("continuous_rate")))
        self._frames_check = self.create_timer(5.0, self._check_frames_arrive, callback_group=self._sensor_group)
        self.get_logger().info(
            f"active: listening on {self.resolve_topic_name('image')} (+/compressed), "
            f"{self.resolve_topic_name('depth')}, {self.resolve_topic_name('camera_info')}"
        )
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        for subscription in self._subscriptions:
            self.destroy_subscription(subscription)
        self._subscriptions = []
        self._restart_continuous_timer(0.0)
        if self._frames_check is not None:
            self.destroy_timer(self._frames_check)
            self._frames_check = None
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.pointer = None
        self._latest = None
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._restart_continuous_timer(0.0)
        self.pointer = None
        return TransitionCallbackReturn.SUCCESS

    # ---- sensor callbacks (short: store and return) --------------------------------------------------
    def _on_image(self, msg) -> None:
        started = time.perf_counter()
        stamp_s = stamp_seconds(msg.header.stamp)
        self._latest = Frame(msg, stamp_s)
        self._latest_seq += 1
        self.callback_latency_ms.append((self.get_clock().now().nanoseconds * 1e-9 - stamp_s) * 1000.0)
        self.callback_durations_ms.append((time.perf_counter() - started) * 1000.0)

    def _check_frames_arrive(self) -> None:
        """Warn when a camera publishes but no frame arrives: the usual cause is large best-effort
        frames from another process dropped by DDS over UDP (see README, DDS tuning)."""
        if self._latest_seq > 0:
            return
        topic = self.resolve_topic_name("image")
        if self.count_publishers(topic) > 0:
            self.get_logger().warning(
                f"{self.count_publishers(topic)} publisher(s) on {topic} but no frame received yet; large frames "
                "over best_effort are often dropped by DDS between processes: raise the socket buffers "
                "(README: DDS tuning) or set image_reliability: reliable",
                throttle_duration_sec=30.0,
            )

    def _on_depth(self, msg: Image) -> None:
        self._depth.add(stamp_seconds(msg.header.stamp), msg)

    def _on_camera_info(self, msg: CameraInfo) -> None:
        self._camera_info = msg

    # ---- services -------------------------------------------------------------------------------------
    def _not_ready(self) -> str:
        if self.pointer is None:
            reason = f": configure failed: {self.configure_error}" if self.configure_error else ""
            return f"node is not configured{reason}"
        return ""

    def _on_point_to_part(self, request, response):
        answer = self._answer(request.query, request.support_set, request.image, publish=True)
        response.success, response.message, response.header = answer.success, answer.message, answer.header
        response.u, response.v, response.score, response.has_3d = answer.u, answer.v, answer.score, answer.has_3d
        response.point.header = answer.header
        response.point.point.x, response.point.point.y, response.point.point.z = answer.xyz
        return response

    def _on_add_exemplar(self, request, response):
        from pop_ros.supports import SupportError

        response.num_exemplars = 0
        problem = self._not_ready()
        if not problem:
            try:
                image, _ = self._target_image(request.image)
                if not self._work_lock.acquire(timeout=float(self.param("busy_timeout"))):
                    raise SupportError("busy: another query is running")
                try:
                    # Features are computed now, once; the exemplar is added only if that succeeds.
                    updated = self.pointer.add_exemplar(
                        request.support_set, image, (request.u, request.v), request.query
                    )
                finally:
                    self._work_lock.release()
                response.num_exemplars = len(updated.exemplars)
            except (SupportError, ImageConversionError, ValueError) as error:
                problem = str(error)
        response.success = not problem
        response.message = problem or f"added to {request.support_set!r}"
        return response

    def _on_list_support_sets(self, request, response):
        if self.pointer is None:
            return response
        for name in self.pointer.library.names():
            support_set = self.pointer.library.get(name)
            response.names.append(name)
            response.default_queries.append(support_set.query)
            response.num_exemplars.append(len(support_set.exemplars))
        return response

    # ---- the work ---------------------------------------------------------------------------------------
    def _target_image(self, request_image):
        """(RGB image, header) from the request, or the latest camera frame (checked for age)."""
        if not is_empty_image(request_image):
            return to_rgb8(request_image), request_image.header
        frame = self._latest
        if frame is None:
            raise ImageConversionError(
                f"no camera frame received yet on {self.resolve_topic_name('image')} (is the node active?)"
            )
        max_age = float(self.param("max_frame_age"))
        age = self.get_clock().now().nanoseconds * 1e-9 - frame.stamp_s
        if max_age > 0 and age > max_age:
            raise ImageConversionError(f"latest camera frame is stale: {age:.2f} s old > max_frame_age {max_age} s")
        image = compressed_to_rgb8(frame.msg) if isinstance(frame.msg, CompressedImage) else to_rgb8(frame.msg)
        return image, frame.msg.header

    def _answer(self, query: str, support_set: str, request_image, publish: bool) -> Answer:
        from pop_ros.pipeline import PointerError

        started = time.perf_counter()
        header = request_image.header
        problem = self._not_ready()
        if problem:
            return Answer(False, problem, header)
        try:
            image, header = self._target_image(request_image)
        except ImageConversionError as error:
            return Answer(False, str(error), header)
        timeout = float(self.param("busy_timeout")) if self.param("busy_policy") == "wait" else 0.0
        if not self._work_lock.acquire(timeout=timeout):
            return Answer(False, "busy: another query is running; try again", header)
        try:
            result = self.pointer.point(image, query, support_set=support_set or None)
        except PointerError as error:
            return Answer(False, str(error), header)
        finally:
            self._work_lock.release()
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
        answer.has_3d, answer.xyz, why_not_3d = self._point_3d(result.u, result.v, image.shape[:2], header)
        notes = [] if answer.has_3d else [f"no 3D point: {why_not_3d}"]
        min_score = float(self.param("min_score"))
        if result.score < min_score:
            answer.success = False
            notes.insert(0, f"part not visible: score {result.score:.3f} < min_score {min_score}")
        answer.message = "; ".join(notes) or "ok"
        answer.total_ms = (time.perf_counter() - started) * 1000.0
        if publish:
            self._publish(answer, image, result.heatmap)
        return answer

    def _point_3d(self, u: float, v: float, image_size, header) -> tuple[bool, tuple[float, float, float], str]:
        info = self._camera_info
        if info is None:
            return False, (0.0, 0.0, 0.0), f"no camera_info received on {self.resolve_topic_name('camera_info')}"
        depth_msg, gap = self._depth.nearest(stamp_seconds(header.stamp), float(self.param("depth_max_dt")))
        if depth_msg is None:
            detail = "no depth received" if math.isinf(gap) else f"nearest depth is {gap:.3f} s away"
            return False, (0.0, 0.0, 0.0), f"{detail} (depth_max_dt {self.param('depth_max_dt')} s)"
        try:
            depth_m = to_depth_m(depth_msg)
        except ImageConversionError as error:
            return False, (0.0, 0.0, 0.0), f"depth image: {error}"
        depth = geometry.robust_depth(depth_m, u, v, image_size, int(self.param("depth_window")))
        if not math.isfinite(depth):
            return False, (0.0, 0.0, 0.0), "depth is missing (0 or NaN) around the point"
        k = np.asarray(info.k, dtype=np.float64)
        if info.height and info.width and (info.height, info.width) != tuple(image_size):
            k = geometry.scale_intrinsics(k, (info.height, info.width), image_size)
        try:
            return True, geometry.deproject(u, v, depth, k), ""
        except ValueError as error:
            return False, (0.0, 0.0, 0.0), f"camera_info: {error}"

    def _publish(self, answer: Answer, image: np.ndarray, heatmap: np.ndarray) -> None:
        result = PartPointResult()
        result.header, result.query, result.support_set = answer.header, answer.query, answer.support_set
        result.u, result.v, result.score, result.has_3d = answer.u, answer.v, answer.score, answer.has_3d
        result.point.x, result.point.y, result.point.z = answer.xyz
        result.message, result.total_ms = answer.message, answer.total_ms
        self._result_pub.publish(result)
        if answer.has_3d:
            point = PointStamped()
            point.header = answer.header
            point.point.x, point.point.y, point.point.z = answer.xyz
            self._point_pub.publish(point)
        if self.param("publish_heatmap"):
            self._heatmap_pub.publish(from_array(overlay(image, heatmap, (answer.u, answer.v)), "bgr8", answer.header))
            self._heatmap_raw_pub.publish(from_array(heatmap, "32FC1", answer.header))

    # ---- continuous mode --------------------------------------------------------------------------------
    def _restart_continuous_timer(self, rate_hz: float) -> None:
        if self._continuous_timer is not None:
            self.destroy_timer(self._continuous_timer)
            self._continuous_timer = None
        if rate_hz > 0:
            self._continuous_timer = self.create_timer(
                1.0 / rate_hz, self._on_continuous_tick, callback_group=self._continuous_group
            )

    def _on_continuous_tick(self) -> None:
        # Only the newest frame, only once, and never queued behind a running query: no backlog.
        if self.pointer is None or self._latest_seq == self._continuous_done_seq:
            return
        support_set = self.param("continuous_support_set")
        if self._work_lock.locked():
            return
        self._continuous_done_seq = self._latest_seq
        empty = Image()
        answer = self._answer(self.param("continuous_query"), support_set, empty, publish=True)
        if not answer.success:
            self.get_logger().warning(f"continuous query: {answer.message}", throttle_duration_sec=5.0)


def main(args=None) -> None:
    rclpy.init(args=args)
    node = PopNode()
    executor = MultiThreadedExecutor(num_threads=4)
    executor.add_node(node)
    try:
        if node.param("autostart"):
            if node.trigger_configure() == TransitionCallbackReturn.SUCCESS:
                node.trigger_activate()
            else:
                node.get_logger().error("autostart: configure failed; services answer with the reason")
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
