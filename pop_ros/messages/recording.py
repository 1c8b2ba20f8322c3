"""ROS 2 recordings on disk: read a bag (folder or .mcap; sqlite3 or MCAP storage) message by
message, find the camera topics in it, and write a results bag (MCAP). No ROS install needed:
`rosbags` reads and writes both storages; an MCAP file cut short (a recorder killed before it wrote
its summary) is read record by record with `mcap` up to the cut.

Messages come out as raw CDR bytes with their log (receive) time; decoding is the caller's."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import sys
from collections.abc import Iterable, Iterator

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
# realsense-ros 4.x names (namespace and camera name both "camera"), then 3.x's; aligned depth needs
# `align_depth.enable:=true` when recording.
REALSENSE_COLOUR = ("/camera/camera/color/image_raw", "/camera/color/image_raw")
REALSENSE_DEPTH = ("/camera/camera/aligned_depth_to_color/image_raw", "/camera/aligned_depth_to_color/image_raw")
REALSENSE_CAMERA_INFO = ("/camera/camera/color/camera_info", "/camera/color/camera_info")
INTERFACE_MESSAGES = ("PartPointResult", "TeachResult")


class RecordingError(ValueError):
    """The recording cannot be used as asked; the message says why (one line)."""


@dataclasses.dataclass
class CameraTopics:
    colour: str
    colour_type: str  # IMAGE or COMPRESSED_IMAGE
    depth: str  # "" = none (2D answers only)
    camera_info: str  # "" = none
    depth_type: str = IMAGE  # or COMPRESSED_IMAGE: image_transport's compressedDepth


class Recording:
    """A bag opened for reading. `topics` maps topic -> message type, `counts` topic -> messages,
    `start_ns`/`end_ns` bound the log times. `cut` says why reading stopped before the end ("" when
    the whole recording was read or nothing was read yet)."""

    def __init__(self, path: pathlib.Path | str):
        self.path = pathlib.Path(path)
        if not self.path.exists():
            raise RecordingError(f"recording {self.path} does not exist")
        self.topics: dict[str, str] = {}
        self.counts: dict[str, int] = {}
        self.start_ns = 0
        self.end_ns = 0
        self.storage = ""
        self.cut = ""
        self._mcap_file: pathlib.Path | None = None  # set when reading a damaged MCAP record by record
        self._open()

    # ---- opening ---------------------------------------------------------------------------------
    def _open(self) -> None:
        from rosbags.rosbag2 import Reader

        try:
            with Reader(self.path) as reader:
                self.topics = {c.topic: c.msgtype for c in reader.connections}
                self.counts = {c.topic: 0 for c in reader.connections}
                for connection in reader.connections:
                    self.counts[connection.topic] += connection.msgcount
                self.start_ns, self.end_ns = reader.start_time, reader.end_time
                self.storage = self._storage_of()
            return
        except Exception as error:  # noqa: BLE001 - rosbags raises several types for a damaged file
            damaged_mcap = self._lone_mcap()
            if damaged_mcap is None:
                raise RecordingError(f"recording {self.path} cannot be read: {_one_line(error)}") from error
            self._mcap_file, self.storage = damaged_mcap, "mcap"
            self._scan_damaged_mcap(error)

    def _storage_of(self) -> str:
        files = [self.path] if self.path.is_file() else [*self.path.glob("*.db3"), *self.path.glob("*.mcap")]
        suffixes = {path.suffix for path in files}
        return "sqlite3" if ".db3" in suffixes else "mcap" if ".mcap" in suffixes else "unknown"

    def _lone_mcap(self) -> pathlib.Path | None:
        """The MCAP file of a .mcap path or of a folder holding exactly one (else None)."""
        if self.path.is_file():
            return self.path if self.path.suffix == ".mcap" else None
        files = sorted(self.path.glob("*.mcap"))
        return files[0] if len(files) == 1 else None

    def _scan_damaged_mcap(self, open_error: Exception) -> None:
        """Topics, counts and times of the messages readable before the damage."""
        counts: dict[str, int] = {}
        times: list[int] = []
        for topic, log_time, _ in self._mcap_records():
            counts[topic] = counts.get(topic, 0) + 1
            times.append(log_time)
        if not times and not self.topics:
            raise RecordingError(
                f"recording {self.path} cannot be read: {_one_line(open_error)}; no message before the damage"
            )
        self.counts = {topic: counts.get(topic, 0) for topic in self.topics}
        self.start_ns, self.end_ns = (min(times), max(times)) if times else (0, 0)
        self.cut = f"{self.cut} (rosbags: {_one_line(open_error)})"

    def _mcap_records(self) -> Iterator[tuple[str, int, bytes]]:
        """Messages of the damaged MCAP file in file order, up to the damage (then `cut` says where)."""
        from mcap.records import Channel, Message, Schema
        from mcap.stream_reader import StreamReader

        channels: dict[int, str] = {}
        schemas: dict[int, str] = {}
        count = 0
        with open(self._mcap_file, "rb") as stream:
            try:
                for record in StreamReader(stream, skip_magic=False).records:
                    if isinstance(record, Schema):
                        schemas[record.id] = record.name
                    elif isinstance(record, Channel):
                        channels[record.id] = record.topic
                        self.topics.setdefault(record.topic, schemas.get(record.schema_id, ""))
                    elif isinstance(record, Message) and record.channel_id in channels:
                        count += 1
                        yield channels[record.channel_id], record.log_time, record.data
            except Exception as error:  # noqa: BLE001 - any damage ends the readable part
                self.cut = f"the recording is cut after {count} readable messages: {_one_line(error)}"
                return
        self.cut = f"the recording has no MCAP summary (recorder stopped early?); all {count} messages were read"

    # ---- reading ---------------------------------------------------------------------------------
    def messages(self, topics: Iterable[str]) -> Iterator[tuple[str, int, bytes]]:
        """(topic, log time ns, CDR bytes) of the chosen topics in log-time order (file order for a
        damaged MCAP). Stops at damage; `cut` then says after how many messages and why."""
        wanted = set(topics)
        if self._mcap_file is not None:
            keep_cut = self.cut
            for topic, log_time, data in self._mcap_records():
                if topic in wanted:
                    yield topic, log_time, data
            self.cut = self.cut or keep_cut
            return
        from rosbags.rosbag2 import Reader

        count, last_ns = 0, self.start_ns
        with Reader(self.path) as reader:
            connections = [c for c in reader.connections if c.topic in wanted]
            iterator = reader.messages(connections=connections)
            while True:
                try:
                    connection, log_time, data = next(iterator)
                except StopIteration:
                    return
                except Exception as error:  # noqa: BLE001 - damage inside the storage ends the readable part
                    self.cut = (
                        f"the recording is cut after {count} readable messages "
                        f"({(last_ns - self.start_ns) * 1e-9:.3f} s from the start): {_one_line(error)}"
                    )
                    return
                count, last_ns = count + 1, log_time
                yield connection.topic, log_time, bytes(data)

    # ---- topics ----------------------------------------------------------------------------------
    def listing(self) -> str:
        """'topic (type), ...' of every topic, for error messages."""
        return ", ".join(f"{topic} ({self.topics[topic]})" for topic in sorted(self.topics)) or "none"

    def find_camera(
        self, colour: str | None = None, depth: str | None = None, camera_info: str | None = None, need_depth=True
    ) -> CameraTopics:
        """The colour (raw or compressed), aligned depth and camera_info topics: the ones given, else
        the RealSense names, else the only topic of the kind with a matching name ending."""
        colour_topic = colour or self._first(
            REALSENSE_COLOUR + tuple(f"{t}/compressed" for t in REALSENSE_COLOUR),
            ("color/image_raw", "color/image_raw/compressed", "color/image_rect_raw"),
            (IMAGE, COMPRESSED_IMAGE),
        )
        if not colour_topic:
            raise RecordingError(
                f"no colour image topic found (looked for {REALSENSE_COLOUR[0]} and .../compressed; choose one with "
                f"--image-topic); topics in {self.path}: {self.listing()}"
            )
        colour_type = self._check(colour_topic, (IMAGE, COMPRESSED_IMAGE), "--image-topic")
        depth_topic, depth_type = "", IMAGE
        if need_depth:
            # Raw depth first, else image_transport's compressedDepth (CompressedImage) of the same topic.
            depth_topic = depth or self._first(
                REALSENSE_DEPTH + tuple(f"{t}/compressedDepth" for t in REALSENSE_DEPTH),
                ("aligned_depth_to_color/image_raw", "aligned_depth_to_color/image_raw/compressedDepth"),
                (IMAGE, COMPRESSED_IMAGE),
            )
            if not depth_topic:
                raise RecordingError(
                    f"no aligned depth topic found (looked for {REALSENSE_DEPTH[0]} and .../compressedDepth; choose "
                    f"one with --depth-topic, or --no-depth for 2D answers); topics in {self.path}: {self.listing()}"
                )
            depth_type = self._check(depth_topic, (IMAGE, COMPRESSED_IMAGE), "--depth-topic")
        info_topic = camera_info or self._first(
            REALSENSE_CAMERA_INFO + (_sibling(colour_topic, "camera_info"),), ("color/camera_info",), (CAMERA_INFO,)
        )
        if need_depth and not info_topic:
            raise RecordingError(
                f"no camera_info topic found (looked for {REALSENSE_CAMERA_INFO[0]} and "
                f"{_sibling(colour_topic, 'camera_info')}; choose one with --camera-info-topic, or --no-depth for 2D "
                f"answers): without it no pixel has a 3D point; topics in {self.path}: {self.listing()}"
            )
        if info_topic:
            self._check(info_topic, (CAMERA_INFO,), "--camera-info-topic")
        return CameraTopics(colour_topic, colour_type, depth_topic, info_topic or "", depth_type)

    def _first(self, names: Iterable[str], endings: Iterable[str], types: tuple[str, ...]) -> str:
        for name in names:
            if self.topics.get(name) in types:
                return name
        for ending in endings:
            matches = sorted(t for t, kind in self.topics.items() if kind in types and t.endswith("/" + ending))
            if len(matches) == 1:
                return matches[0]
        return ""

    def _check(self, topic: str, types: tuple[str, ...], flag: str) -> str:
        if topic not in self.topics:
            raise RecordingError(f"{flag} {topic}: no such topic; topics in {self.path}: {self.listing()}")
        if self.topics[topic] not in types:
            raise RecordingError(f"{flag} {topic} has type {self.topics[topic]}, expected {' or '.join(types)}")
        if self.counts.get(topic, 1) == 0:
            raise RecordingError(f"{flag} {topic} has no messages in {self.path}")
        return self.topics[topic]


def _sibling(topic: str, name: str) -> str:
    """`/a/b/image_raw/compressed` (or `/compressedDepth`) -> `/a/b/<name>` (camera_info lives beside
    the image topic)."""
    parts = topic.rstrip("/").split("/")
    if parts[-1] in ("compressed", "compressedDepth"):
        parts = parts[:-1]
    return "/".join(parts[:-1] + [name])


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


# ---- writing ---------------------------------------------------------------------------------------
def interface_folders() -> list[pathlib.Path]:
    """Where pop_ros_interfaces' .msg files may be: the ament index, the venv's share, the source tree."""
    folders = [
        pathlib.Path(p) / "share/pop_ros_interfaces/msg"
        for p in os.environ.get("AMENT_PREFIX_PATH", "").split(":")
        if p
    ]
    folders.append(pathlib.Path(sys.prefix) / "share/pop_ros_interfaces/msg")
    folders.append(pathlib.Path(__file__).resolve().parents[2] / "pop_ros_interfaces/msg")
    return folders


def typestore():
    """A rosbags typestore of ROS 2 Kilted's messages plus pop_ros_interfaces' (from the .msg files)."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    folder = next((f for f in interface_folders() if (f / "PartPointResult.msg").is_file()), None)
    if folder is None:
        raise RecordingError(
            "pop_ros_interfaces' message files were not found (looked in "
            + ", ".join(str(f) for f in interface_folders())
            + ")"
        )
    types = {}
    for name in INTERFACE_MESSAGES:
        types.update(get_types_from_msg((folder / f"{name}.msg").read_text(), f"pop_ros_interfaces/msg/{name}"))
    store.register(types)
    return store


class ResultsBag:
    """An MCAP bag being written: `write(topic, type, log time, CDR bytes)`; close() (or `with`)
    writes its summary and metadata.yaml, so an interrupted run leaves a readable bag."""

    def __init__(self, path: pathlib.Path):
        from rosbags.rosbag2 import StoragePlugin, Writer

        if path.exists():
            raise RecordingError(f"{path} exists already; choose another --out folder")
        self.path = path
        self._store = typestore()
        self._writer = Writer(path, version=9, storage_plugin=StoragePlugin.MCAP)
        self._writer.open()
        self._connections: dict[str, object] = {}
        self.count = 0

    def write(self, topic: str, msgtype: str, log_time_ns: int, data: bytes) -> None:
        connection = self._connections.get(topic)
        if connection is None:
            connection = self._connections[topic] = self._writer.add_connection(topic, msgtype, typestore=self._store)
        self._writer.write(connection, int(log_time_ns), data)
        self.count += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> ResultsBag:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
