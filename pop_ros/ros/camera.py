"""Camera input: the latest colour frame, a short history of colour frames by stamp, depth (kept over
a time span, stamps.DEPTH_SPAN_S), camera_info.

Subscription callbacks only store what arrived (short, never blocked by queries); the work happens
when a query, holding the models, takes its `capture()` (capture.py: the newest fresh frame with its
depth and camera_info, kept through inference). The last FRAME_HISTORY colour frames are kept (as
received, unconverted) so that a query can take the newest one whose depth has arrived, and a click
naming its frame by stamp (~/teach_click) is applied to that frame, not to a later one.
"""

from __future__ import annotations

import collections
import threading
import time

import numpy as np
import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from pop_ros.messages.capture import Capture, Frame, capture_of, newest_capture, stamp_seconds
from pop_ros.messages.image_conversion import ImageConversionError, compressed_to_rgb8, to_rgb8
from pop_ros.messages.stamps import StampBuffer

# Colour frames kept for clicks that name their frame by stamp: one second of a 30 Hz camera. The
# messages as received, so about 0.9 MB each for 640x480 rgb8 (28 MB in all; 83 MB at 1280x720).
FRAME_HISTORY = 30


class NoFrameError(ImageConversionError):
    """No camera frame to answer about: none received yet, or the latest is older than max_frame_age."""


def is_empty_image(msg) -> bool:
    return msg.height == 0 and msg.width == 0 and len(msg.data) == 0


# Messages each camera subscription keeps until its callback takes them. The callbacks take a
# message in about 0.1 ms, but on 2 cores their thread can wait for the interpreter lock longer than
# a 30 Hz camera's period while a query and the tracker run: with one kept, a frame arriving then
# replaced the one before it (640x480 at 30 Hz: 645-691 of 749 frames reached the callback; 732-740
# with 4). The callbacks only store the frame, so the backlog drains at once and `latest` is still
# the newest frame; continuous tracking gets every frame instead of a gap.
SENSOR_QUEUE_DEPTH = 4


def sensor_qos(reliability: str) -> QoSProfile:
    """KEEP_LAST SENSOR_QUEUE_DEPTH (see above), reliability from `image_reliability`."""
    policy = ReliabilityPolicy.RELIABLE if reliability == "reliable" else ReliabilityPolicy.BEST_EFFORT
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=SENSOR_QUEUE_DEPTH, reliability=policy)


def compressed_topic(node, base: str = "image", transport: str = "compressed") -> str:
    """The transport's topic the way image_transport derives it: the RESOLVED base topic (namespace
    and `-r image:=...` remaps applied) + "/<transport>", so `-r image:=/cam/image_raw` subscribes
    /cam/image_raw/compressed, and `-r depth:=/cam/depth/image_raw` with depth_transport
    compressedDepth subscribes /cam/depth/image_raw/compressedDepth."""
    return node.resolve_topic_name(base).rstrip("/") + "/" + transport


class CameraListener:
    """The node the camera subscriptions live on, `<node>_camera` in the node's namespace, spun by a
    single-threaded executor of its own. In the node's multi-threaded executor every colour, depth and
    camera_info message woke the executor's thread, which rebuilt its wait set over all of the node's
    services, actions and timers in Python: at 30 Hz with tracking that thread took 0.45 s of CPU a
    second, and frames were replaced before their callback ran (about one in three at 640x480). Here
    the wait set holds three subscriptions. No global ROS arguments (`__node:=`, remaps): the topic
    names come resolved from the node."""

    def __init__(self, node):
        self.node = rclpy.create_node(
            f"{node.get_name()}_camera",
            namespace=node.get_namespace(),
            context=node.context,
            use_global_arguments=False,
            start_parameter_services=False,
        )
        self.executor = SingleThreadedExecutor(context=node.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self._spin, name=f"{node.get_name()} camera", daemon=True)
        self.thread.start()

    def _spin(self) -> None:
        try:
            self.executor.spin()
        except ExternalShutdownException:  # the context shut down (Ctrl-C, SIGTERM): the spin's normal end
            pass

    def close(self) -> None:
        self.executor.shutdown()
        self.thread.join(timeout=5.0)
        if not self.thread.is_alive():  # a spin that did not end keeps its node (the process is ending)
            self.node.destroy_node()


class CameraInput:
    """Colour frames (raw and compressed), depth and camera_info of one camera."""

    def __init__(self, node):
        self.node = node
        self.latest: Frame | None = None  # replaced whole by each frame: one read is one snapshot
        self.latest_seq = 0  # frames received; written only by on_image
        self._history: collections.deque[Frame] = collections.deque(maxlen=FRAME_HISTORY)  # oldest first
        self._history_lock = threading.Lock()
        self.depth = StampBuffer()
        self.camera_info: CameraInfo | None = None
        self.subscriptions: list = []
        self._listener: CameraListener | None = None  # made at the first subscribe
        self.on_frame = None  # called for every colour frame (the node's diagnostics count them)
        self.on_colour = None  # called with every colour Frame (continuous tracking, ros/tracking.py)
        self.on_depth_image = None  # called with every depth image's stamp, seconds, once stored
        # Image-callback cost and delivery latency (stamp -> callback), read by pop-bench.
        self.callback_durations_ms: collections.deque = collections.deque(maxlen=100_000)
        self.callback_latency_ms: collections.deque = collections.deque(maxlen=100_000)

    # ---- subscriptions -------------------------------------------------------------------------------
    def subscribe(self, reliability: str, wrap, transport: str = "raw", depth_transport: str = "raw") -> list[str]:
        """Create the subscriptions (each callback passed through `wrap`, the node's guard) on the
        camera listener (below): ONE colour subscription for `transport` (raw | compressed), ONE depth
        subscription for `depth_transport` (raw | compressedDepth: decoded when a query pairs it, not
        in the callback) and camera_info; returns the resolved topic names for the log. The names are
        resolved by the node itself, so its namespace and remaps (`-r image:=...`) apply."""
        qos = sensor_qos(reliability)
        node = self.node
        if self._listener is None:
            self._listener = CameraListener(node)
        listener = self._listener.node
        colour_type, colour_topic = (
            (CompressedImage, compressed_topic(node))
            if transport == "compressed"
            else (Image, node.resolve_topic_name("image"))
        )
        depth_type, depth_topic = (
            (CompressedImage, compressed_topic(node, "depth", "compressedDepth"))
            if depth_transport == "compressedDepth"
            else (Image, node.resolve_topic_name("depth"))
        )
        self.subscriptions = [
            listener.create_subscription(colour_type, colour_topic, wrap(self.on_image), qos),
            listener.create_subscription(depth_type, depth_topic, wrap(self.on_depth), qos),
            listener.create_subscription(
                CameraInfo, node.resolve_topic_name("camera_info"), wrap(self.on_camera_info), qos
            ),
        ]
        return [subscription.topic_name for subscription in self.subscriptions]

    def colour_topic(self) -> str:
        """The colour topic subscribed (raw or compressed), or the raw one while not subscribed."""
        return self.subscriptions[0].topic_name if self.subscriptions else self.node.resolve_topic_name("image")

    def unsubscribe(self) -> None:
        for subscription in self.subscriptions:
            self._listener.node.destroy_subscription(subscription)
        self.subscriptions = []

    def close(self) -> None:
        """Stop the camera listener (the node is destroyed): its executor first, so that no callback
        runs while its subscriptions and node go."""
        listener, self._listener = self._listener, None
        self.subscriptions = []  # destroyed with the listener's node
        if listener is not None:
            listener.close()

    def clear(self) -> None:
        """Forget every frame, depth image and camera_info (cleanup: the next configure may be for
        another camera)."""
        self.latest = None
        with self._history_lock:
            self._history.clear()
        self.depth.clear()
        self.camera_info = None

    # ---- callbacks (short: store and return) ---------------------------------------------------------
    def on_image(self, msg) -> None:
        started = time.perf_counter()
        stamp_s = stamp_seconds(msg.header.stamp)
        self.latest_seq += 1
        frame = Frame(msg, stamp_s, self.latest_seq)
        with self._history_lock:
            self._history.append(frame)
        self.latest = frame
        self.callback_latency_ms.append((self.node.get_clock().now().nanoseconds * 1e-9 - stamp_s) * 1000.0)
        self.callback_durations_ms.append((time.perf_counter() - started) * 1000.0)
        if self.on_frame is not None:
            self.on_frame()
        if self.on_colour is not None:
            self.on_colour(frame)

    def on_depth(self, msg) -> None:  # Image, or CompressedImage (compressedDepth)
        self.depth.add(stamp_seconds(msg.header.stamp), msg)
        if self.on_depth_image is not None:
            self.on_depth_image(stamp_seconds(msg.header.stamp))

    def on_camera_info(self, msg: CameraInfo) -> None:
        self.camera_info = msg

    def check_frames_arrive(self) -> None:
        """Warn when a camera publishes but no frame arrives: the usual cause is large best-effort
        frames from another process dropped by DDS over UDP (see README, DDS tuning)."""
        if self.latest_seq > 0:
            return
        topic = self.colour_topic()
        publishers = self.node.count_publishers(topic)
        if publishers > 0:
            self.node.get_logger().warning(
                f"{publishers} publisher(s) on {topic} but no frame received yet; large frames "
                "over best_effort are often dropped by DDS between processes: raise the socket buffers "
                "(docs/interfaces.md, DDS tuning) or set image_reliability: reliable",
                throttle_duration_sec=30.0,
            )

    # ---- what queries read -----------------------------------------------------------------------------
    def capture(self, max_age_s: float, depth_max_dt: float) -> Capture:
        """The capture a query on the camera takes once it holds the models (capture.newest_capture):
        the newest frame no older than `max_age_s` whose depth has arrived, else the newest. Raises
        NoFrameError when there is no frame or even the newest is too old."""
        with self._history_lock:
            frames = list(self._history)
        now_s = self.node.get_clock().now().nanoseconds * 1e-9
        capture, problem = newest_capture(frames, self.depth, self.camera_info, now_s, max_age_s, depth_max_dt)
        if capture is None:
            where = f" on {self.colour_topic()} (is the node active?)" if not frames else ""
            raise NoFrameError(problem + where)
        return capture

    def request_capture(self, request_image, depth, camera_info, depth_max_dt: float) -> Capture:
        """The capture of an image sent with a request: its own depth and camera_info when it has
        them, else the streams' depth paired by its stamp and the latest camera_info."""
        frame = Frame(request_image, stamp_seconds(request_image.header.stamp), 0)
        if depth is not None:
            return Capture(frame, depth, camera_info)
        return capture_of(frame, self.depth, self.camera_info, depth_max_dt)

    def image_of(self, capture: Capture) -> np.ndarray:
        """The capture's colour image as RGB (ImageConversionError when it cannot be converted)."""
        msg = capture.msg
        return compressed_to_rgb8(msg) if isinstance(msg, CompressedImage) else to_rgb8(msg)

    def target_image(self, request_image, max_age_s: float, frame: Frame | None = None) -> tuple[np.ndarray, object]:
        """(RGB image, header) from the request, else of `frame` (default: the latest camera frame),
        checked for age. Raises NoFrameError when there is no usable camera frame, and
        ImageConversionError when an image cannot be converted."""
        if not is_empty_image(request_image):
            return to_rgb8(request_image), request_image.header
        frame = frame or self.latest
        if frame is None:
            raise NoFrameError(f"no camera frame received yet on {self.colour_topic()} (is the node active?)")
        age = self.node.get_clock().now().nanoseconds * 1e-9 - frame.stamp_s
        if max_age_s > 0 and age > max_age_s:
            raise NoFrameError(f"latest camera frame is stale: {age:.2f} s old > max_frame_age {max_age_s} s")
        image = compressed_to_rgb8(frame.msg) if isinstance(frame.msg, CompressedImage) else to_rgb8(frame.msg)
        return image, frame.msg.header

    def frame_at(self, stamp) -> Frame:
        """The kept colour frame stamped exactly `stamp` (builtin_interfaces/Time), the latest of them
        if several; NoFrameError with the stamps kept when it is not among the last FRAME_HISTORY."""
        with self._history_lock:
            frames = list(self._history)
        for frame in reversed(frames):
            header_stamp = frame.msg.header.stamp
            if header_stamp.sec == stamp.sec and header_stamp.nanosec == stamp.nanosec:
                return frame
        wanted = f"{stamp.sec}.{stamp.nanosec:09d}"
        if not frames:
            raise NoFrameError(f"no frame stamped {wanted}: no camera frame received yet on {self.colour_topic()}")
        first, last = (f"{f.msg.header.stamp.sec}.{f.msg.header.stamp.nanosec:09d}" for f in (frames[0], frames[-1]))
        wanted_s = stamp_seconds(stamp)
        if wanted_s < frames[0].stamp_s:
            why = f"it is older than the last {len(frames)} frames kept (FRAME_HISTORY {FRAME_HISTORY})"
        elif wanted_s > frames[-1].stamp_s:
            why = "it is newer than every frame received"
        else:
            why = "no kept frame has exactly that stamp (a click's header stamp must be its image's)"
        raise NoFrameError(
            f"no frame stamped {wanted}: {why}; frames kept: {first} to {last}. Stamp a click 0 to use the latest frame"
        )

    def source_header(self, request_image, frame: Frame | None = None):
        """The header of the image a query is about: the request's, else `frame`'s or the latest
        frame's (the one `target_image` would use), else the (empty) request's."""
        frame = frame or self.latest
        if not is_empty_image(request_image) or frame is None:
            return request_image.header
        return frame.msg.header

    def depth_near(self, stamp, tolerance_s: float):
        """(depth message or None, stamp gap in seconds) for the colour stamp."""
        return self.depth.nearest(stamp_seconds(stamp), tolerance_s)
