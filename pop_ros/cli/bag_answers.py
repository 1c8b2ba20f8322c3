"""Part queries over a recording: replay its camera messages in log order the way pop_node receives
them (latest camera_info, recent depth in a StampBuffer), take each chosen frame's capture (capture.py:
the frame with the depth paired to it by stamp and the camera_info, as the node's queries do), answer
it with `PartPointer.point_many`, and write what the node would publish.

An answer is located with `pop_ros.spatial.locate.locate_capture`, its part's mask, cloud and grasp frame built
with `pop_ros.spatial.locate.add_region`, and turned into messages with the node's own `Outputs` builders, so
a recording answered here and the same frames answered live by the node give the same 3D points,
poses, regions, grasp frames and messages."""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from collections.abc import Callable, Iterator, Sequence

import cv2
import numpy as np

from pop_ros.messages import capture as captures
from pop_ros.messages.capture import stamp_seconds
from pop_ros.messages.image_conversion import ImageConversionError, compressed_to_rgb8, to_depth_m, to_rgb8
from pop_ros.messages.recording import COMPRESSED_IMAGE, CameraTopics, Recording, RecordingError
from pop_ros.messages.stamps import StampBuffer
from pop_ros.spatial.grasp import GraspSettings
from pop_ros.spatial.locate import LocateSettings, add_region, locate_capture, score_note

# A chosen colour frame waits for later depth this long (log time) before it is answered: a depth image
# stamped like the frame is often received just after it. Answering happens as soon as a depth stamped
# past the pairing window arrives, so this only matters around gaps in the depth stream.
DEPTH_WAIT_S = 1.0
OUTPUT_TOPICS = {
    "/pop/result": "pop_ros_interfaces/msg/PartPointResult",
    "/pop/point": "geometry_msgs/msg/PointStamped",
    "/pop/pose": "geometry_msgs/msg/PoseStamped",
    "/pop/markers": "visualization_msgs/msg/MarkerArray",
    "/pop/heatmap": "sensor_msgs/msg/Image",
    "/pop/part_mask": "sensor_msgs/msg/Image",
    "/pop/part_cloud": "sensor_msgs/msg/PointCloud2",
    "/pop/grasp": "geometry_msgs/msg/PoseStamped",
}


# ---- which frames ------------------------------------------------------------------------------------
@dataclasses.dataclass
class Sampling:
    """Which colour frames to answer: every `every`-th, the first at or after each of `at_s` (seconds
    from the recording's start, log time), or at `rate_hz` (log time)."""

    every: int = 1
    at_s: Sequence[float] = ()
    rate_hz: float = 0.0

    def chooser(self, start_ns: int) -> Callable[[int, int], bool]:
        """f(index, log time ns) -> answer this colour frame?"""
        if self.at_s:
            targets = sorted(start_ns + int(round(t * 1e9)) for t in self.at_s)

            def at(_index: int, log_ns: int) -> bool:
                taken = False
                while targets and log_ns >= targets[0]:
                    targets.pop(0)
                    taken = True
                return taken

            return at
        if self.rate_hz > 0:
            period_ns = 1e9 / self.rate_hz
            next_ns = [float(start_ns)]

            def rate(_index: int, log_ns: int) -> bool:
                if log_ns < next_ns[0]:
                    return False
                while next_ns[0] <= log_ns:
                    next_ns[0] += period_ns
                return True

            return rate
        return lambda index, _log_ns: index % self.every == 0

    def expected(self, colour_count: int, duration_s: float) -> int:
        if self.at_s:
            return len(self.at_s)
        if self.rate_hz > 0:
            return max(1, min(colour_count, int(duration_s * self.rate_hz) + 1))
        return math.ceil(colour_count / self.every)


@dataclasses.dataclass
class Frame:
    """A chosen colour frame: its message (sensor_msgs Image or CompressedImage), log time, index."""

    msg: object
    log_ns: int
    index: int
    chosen: bool = True  # False: a frame between two chosen ones, replayed for tracking (--track)


def message_classes():
    from sensor_msgs.msg import CameraInfo, CompressedImage, Image

    return Image, CompressedImage, CameraInfo


def decode_colour(msg) -> np.ndarray:
    from sensor_msgs.msg import CompressedImage

    return compressed_to_rgb8(msg) if isinstance(msg, CompressedImage) else to_rgb8(msg)


class Replay:
    """The camera as the node holds it while a recording plays: `camera_info` (latest), `depth`
    (StampBuffer of the recent images, as the node's), and the chosen colour frames, each released
    once the depth that could pair with it has been read."""

    def __init__(
        self, recording: Recording, topics: CameraTopics, sampling: Sampling, depth_max_dt: float, every_frame=False
    ):
        """`every_frame`: release every colour frame, the ones not chosen with `chosen` False (--track)."""
        self.recording, self.topics = recording, topics
        self.every_frame = every_frame
        self.choose = sampling.chooser(recording.start_ns)
        self.depth = StampBuffer()
        self.camera_info = None
        self.depth_max_dt = depth_max_dt
        self.colour_count = 0

    def frames(self) -> Iterator[Frame]:
        from rclpy.serialization import deserialize_message

        image_type, compressed_type, info_type = message_classes()
        colour_type = compressed_type if self.topics.colour_type == COMPRESSED_IMAGE else image_type
        depth_type = compressed_type if self.topics.depth_type == COMPRESSED_IMAGE else image_type  # compressedDepth
        wanted = [t for t in (self.topics.colour, self.topics.depth, self.topics.camera_info) if t]
        pending: list[Frame] = []
        for topic, log_ns, data in self.recording.messages(wanted):
            if topic == self.topics.camera_info:
                self.camera_info = deserialize_message(data, info_type)
            elif topic == self.topics.depth:
                msg = deserialize_message(data, depth_type)  # decoded when a frame pairs it, as in the node
                self.depth.add(stamp_seconds(msg.header.stamp), msg)
                newest = stamp_seconds(msg.header.stamp)
                while pending and newest > stamp_seconds(pending[0].msg.header.stamp) + self.depth_max_dt:
                    yield pending.pop(0)
            if topic == self.topics.colour:
                chosen = self.choose(self.colour_count, log_ns)
                if chosen or self.every_frame:
                    msg = deserialize_message(data, colour_type)
                    pending.append(Frame(msg, log_ns, self.colour_count, chosen))
                self.colour_count += 1
            while pending and (not self.topics.depth or log_ns - pending[0].log_ns > DEPTH_WAIT_S * 1e9):
                yield pending.pop(0)
        yield from pending


def first_messages(recording: Recording, topics: CameraTopics) -> dict[str, object]:
    """The first message of each camera topic (decoded), to check encodings and sizes up front."""
    from rclpy.serialization import deserialize_message

    image_type, compressed_type, info_type = message_classes()
    types = {topics.colour: compressed_type if topics.colour_type == COMPRESSED_IMAGE else image_type}
    if topics.depth:
        types[topics.depth] = compressed_type if topics.depth_type == COMPRESSED_IMAGE else image_type
    if topics.camera_info:
        types[topics.camera_info] = info_type
    found: dict[str, object] = {}
    messages = recording.messages(types)
    for topic, _, data in messages:
        if topic not in found:
            found[topic] = deserialize_message(data, types[topic])
        if len(found) == len(types):
            break
    messages.close()
    recording.cut = ""  # a cut met here is met again, and reported, by the real pass
    return found


def check_camera(recording: Recording, topics: CameraTopics) -> tuple[int, int]:
    """RecordingError (one line) for what would make every answer fail: undecodable colour, depth of
    an unsupported encoding or a size that is not the colour's (nor an exact resize of it), no
    camera_info message. Returns the colour image size (H, W)."""
    first = first_messages(recording, topics)
    colour_msg = first.get(topics.colour)
    if colour_msg is None:
        raise RecordingError(f"{topics.colour}: no readable colour message ({recording.cut or 'none recorded'})")
    try:
        height, width = decode_colour(colour_msg).shape[:2]
    except ImageConversionError as error:
        raise RecordingError(f"{topics.colour}: {error}") from error
    if topics.depth:
        depth_msg = first.get(topics.depth)
        if depth_msg is None:
            raise RecordingError(f"{topics.depth}: no readable depth message ({recording.cut or 'none recorded'})")
        try:
            depth_h, depth_w = to_depth_m(depth_msg).shape
        except ImageConversionError as error:
            raise RecordingError(f"{topics.depth}: {error}") from error
        scale_x, scale_y = depth_w / width, depth_h / height
        if (depth_h, depth_w) != (height, width) and not (
            round(width * scale_y) == depth_w and round(height * scale_x) == depth_h
        ):
            raise RecordingError(
                f"depth {topics.depth} is {depth_w}x{depth_h} but colour {topics.colour} is {width}x{height}: depth "
                "must be aligned to colour (RealSense: record aligned_depth_to_color with align_depth.enable:=true)"
            )
    if topics.camera_info and topics.camera_info not in first:
        raise RecordingError(f"{topics.camera_info}: no readable camera_info message")
    return height, width


# ---- answers -----------------------------------------------------------------------------------------
@dataclasses.dataclass
class AnswerOptions:
    locate: LocateSettings
    min_score: float = 0.0
    camera_info_topic: str = "camera_info"
    region: GraspSettings = dataclasses.field(default_factory=GraspSettings)  # mask, cloud, grasp frame


def take_capture(frame: Frame, replay: Replay, depth_max_dt: float) -> captures.Capture:
    """The frame's capture: its depth paired by stamp and the camera_info, as the node's queries take it."""
    stamp_s = stamp_seconds(frame.msg.header.stamp)
    return captures.capture_of(
        captures.Frame(frame.msg, stamp_s, frame.index + 1), replay.depth, replay.camera_info, depth_max_dt
    )


def answer_frame(pointer, frame: Frame, image_rgb, requests, replay: Replay, options: AnswerOptions) -> list:
    """The node's Answers for every request on one frame (`point_many`: the frame's work is shared),
    each with its result (None for a failed request)."""
    from pop_ros.pipeline import PointerError
    from pop_ros.ros.answers import Answer, Outcome

    header = frame.msg.header
    capture = take_capture(frame, replay, options.locate.depth_max_dt)
    try:
        results = pointer.point_many(image_rgb, requests, frame_key=capture.frame_key())
    except PointerError as error:
        results = [error] * len(requests)
    answers = []
    for request, result in zip(requests, results, strict=True):
        if isinstance(result, PointerError):
            failed = Answer(
                Outcome.BAD_REQUEST, str(result), header, query=request.query, support_set=request.support_set or ""
            )
            answers.append((failed, None))
            continue
        answer = Answer(Outcome.OK, "", header, u=result.u, v=result.v, score=result.score, query=result.query)
        answer.support_set = result.support_set
        answer.capture = capture
        placement = locate_capture(
            capture, result.u, result.v, image_rgb.shape[:2], options.locate, options.camera_info_topic
        )
        notes = placement.apply(answer)
        rejection = score_note(result.score, options.min_score)
        if rejection:
            answer.outcome = Outcome.REJECTED
            notes.insert(0, rejection)
        notes += add_region(answer, result.heatmap, placement, options.region)  # the node's own
        answer.message = "; ".join(notes) or "ok"
        answer.total_ms = result.timings_ms.get("total", 0.0) + result.shared_timings_ms.get("total", 0.0)
        answers.append((answer, result))
    return answers


def anchor_track(follower, answer, image_rgb, frame: Frame) -> None:
    """`pop-bag --track`: a chosen frame's full answer starts the track again (following.py, as the
    node's continuous tracking), with the part's region the answer has (add_region, as the node's)."""
    stamp_s = stamp_seconds(frame.msg.header.stamp)
    follower.remember(image_rgb, stamp_s)
    follower.anchor(answer, image_rgb, stamp_s, answer.mask)


def track_frame(follower, frame: Frame, image_rgb, replay: Replay, options: AnswerOptions):
    """`pop-bag --track`: a frame between two chosen ones, answered by the tracker as the node's
    continuous tracking answers it (following.tracked_answer), or None when there is no track."""
    from pop_ros.tracking.following import tracked_answer

    step = follower.track(image_rgb, stamp_seconds(frame.msg.header.stamp))
    if step is None:
        return None
    capture = take_capture(frame, replay, options.locate.depth_max_dt)  # as the node takes a tracked frame's
    answer, _ = tracked_answer(
        step, capture, image_rgb.shape[:2], options.locate, options.region, options.camera_info_topic
    )
    return answer


def answer_record(answer, recording: Recording, log_ns: int) -> dict:
    """One line of results.jsonl."""
    stamp = answer.header.stamp
    return {
        "stamp": stamp_seconds(stamp),
        "stamp_sec": int(stamp.sec),
        "stamp_nanosec": int(stamp.nanosec),
        "frame_id": answer.header.frame_id,
        "time_from_start": (log_ns - recording.start_ns) * 1e-9,
        "query": answer.query,
        "support_set": answer.support_set,
        "success": bool(answer.success),
        "reason": answer.message,
        "u": answer.u,
        "v": answer.v,
        "score": answer.score,
        "xyz": list(answer.xyz) if answer.has_3d else None,
        "normal": list(answer.normal) if answer.has_pose else None,
        "pose_orientation_xyzw": list(answer.orientation) if answer.has_pose else None,
        "mask_pixels": int(np.count_nonzero(answer.mask)) if answer.mask is not None else None,
        "cloud_points": len(answer.cloud.points) if answer.cloud is not None else None,
        "has_grasp": bool(answer.has_grasp),
        "grasp_xyz": list(answer.grasp_xyz) if answer.has_grasp else None,
        "grasp_orientation_xyzw": list(answer.grasp_orientation) if answer.has_grasp else None,
        "grasp_width_m": answer.grasp_width_m if answer.has_grasp else None,
        "part_length_m": answer.part_length_m if answer.has_grasp else None,
        "tracked": bool(answer.tracked),
        "track_age_s": answer.track_age_s,
    }


class ResultFiles:
    """What one run writes into its folder: the results bag (the node's messages, its publish rules),
    results.jsonl and heatmaps.mp4. Every answer is flushed as it is written."""

    def __init__(self, folder: pathlib.Path, video_fps: float):
        from pop_ros.messages.recording import ResultsBag

        self.folder = folder
        self.bag = ResultsBag(folder / "bag")
        self.jsonl = (folder / "results.jsonl").open("w", encoding="utf-8")
        self.video_path = folder / "heatmaps.mp4"
        self.video = None
        self.video_codec = ""  # the fourcc the video is written with, once it is opened
        self.video_size: tuple[int, int] | None = None
        self.video_fps = video_fps
        self.answers = 0
        self.answered_3d = 0
        self.video_frames = 0
        self.counts = {"frames": 0, "pipeline_ms": 0.0}  # kept by the caller's loop, here to survive Ctrl-C

    def write(self, answer, result, image_rgb, recording: Recording, log_ns: int) -> None:
        from rclpy.serialization import serialize_message

        from pop_ros.messages.image_conversion import from_array
        from pop_ros.ros.outputs import Outputs as NodeOutputs
        from pop_ros.visualize import heatmap_label, overlay

        def put(topic, msg):
            self.bag.write(topic, OUTPUT_TOPICS[topic], log_ns, serialize_message(msg))

        # The node's rules: result always; point, pose, mask, cloud and grasp only for an accepted
        # answer; the frame's markers once for all its answers (write_markers).
        put("/pop/result", NodeOutputs.result_message(answer))
        if answer.success and answer.has_3d:
            from geometry_msgs.msg import PointStamped

            point = PointStamped(header=answer.header)
            point.point.x, point.point.y, point.point.z = answer.xyz
            put("/pop/point", point)
        if answer.success and answer.has_pose:
            put("/pop/pose", NodeOutputs.pose_message(answer))
        if answer.success:
            for name, message in NodeOutputs.region_messages(answer).items():
                put(f"/pop/{name}", message)
        if result is not None:
            picture = overlay(
                image_rgb, result.heatmap, (answer.u, answer.v), label=heatmap_label(answer.query, answer.support_set)
            )
            if answer.success:
                put("/pop/heatmap", from_array(picture, "bgr8", answer.header))
            self._video_frame(picture, answer, (log_ns - recording.start_ns) * 1e-9)
        self.jsonl.write(json.dumps(answer_record(answer, recording, log_ns)) + "\n")
        self.jsonl.flush()
        self.answers += 1
        self.answered_3d += int(answer.has_3d)

    def write_markers(self, answers, log_ns: int) -> None:
        """One MarkerArray for every answer of a frame, as the node publishes ~/point_to_parts' answers
        (one DELETEALL, then each answer's markers under its own ids)."""
        from rclpy.serialization import serialize_message

        from pop_ros.ros.outputs import Outputs as NodeOutputs

        self.bag.write(
            "/pop/markers",
            OUTPUT_TOPICS["/pop/markers"],
            log_ns,
            serialize_message(NodeOutputs.markers_message(answers)),
        )

    def _video_frame(self, picture_bgr: np.ndarray, answer, time_s: float) -> None:
        import logging

        from pop_ros.visualize import label_box, video_writer

        height, width = picture_bgr.shape[:2]
        if self.video is None:
            self.video_size = (width - width % 2, height - height % 2)  # even sizes: what codecs take
            # The first codec this OpenCV encodes of H.264, VP9, mp4v (visualize.VIDEO_CODECS says why).
            self.video, self.video_codec, description = video_writer(self.video_path, self.video_fps, self.video_size)
            if self.video is None:
                raise RecordingError(f"could not open {self.video_path} for writing (OpenCV without an MP4 encoder?)")
            logging.getLogger(__name__).info(f"{self.video_path.name}: codec {self.video_codec} ({description})")
        if (width, height) != self.video_size:
            picture_bgr = cv2.resize(picture_bgr, self.video_size, interpolation=cv2.INTER_AREA)
        picture_bgr = np.ascontiguousarray(picture_bgr)  # the query is on the overlay; time and score below
        verdict = "" if answer.success else "  (rejected)"
        label_box(picture_bgr, f"{time_s:.2f} s  score {answer.score:.2f}{verdict}", (0, -1))
        self.video.write(picture_bgr)
        self.video_frames += 1

    def close(self) -> None:
        self.bag.close()
        self.jsonl.close()
        if self.video is not None:
            self.video.release()
