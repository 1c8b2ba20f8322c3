"""pop-bag and pop-teach on recordings written here with rosbags (both storages, raw and compressed
colour, 16UC1 mm and 32FC1 m depth, a distorted raw camera). Tiny preset, random weights: the pixel
an answer picks is arbitrary; what is checked is the geometry, the pairing, the stamps and the
files for whatever pixel it picks. One pointer for the whole module (pop-bag's model load is
replaced by it)."""

from __future__ import annotations

import json
import pathlib
import shutil
import time

import cv2
import numpy as np
import pytest

from pop_ros.clients.ros_client import LIBRARY, PARAMS_FILE
from pop_ros.paths import SAMPLE_DIR
from test.test_image_conversion import encode_compressed_depth

WIDTH, HEIGHT = 320, 240
COLOUR = "/camera/camera/color/image_raw"
DEPTH = "/camera/camera/aligned_depth_to_color/image_raw"
INFO = "/camera/camera/color/camera_info"
START_S = 1_700_000_000  # stamps and log times: seconds since the epoch, like a real recording
MS = 1_000_000  # nanoseconds
QUERY = "handle of the mug"
SCENE = cv2.resize(cv2.imread(str(SAMPLE_DIR / "scene_0.png")), (WIDTH + 16, HEIGHT), interpolation=cv2.INTER_AREA)

# A raw wide-lens camera (image_is_rectified false: pixels are undistorted with K, D, R, P) ...
DISTORTED = {
    "k": [215.0, 0, 160.2, 0, 215.6, 119.55, 0, 0, 1],
    "p": [147.75, 0, 159.1, 0, 0, 147.75, 121.05, 0, 0, 0, 1, 0],
    "d": [-0.28, 0.07, 0.0005, -0.0003, -0.008],
}
# ... and a rectified one (RealSense colour: K == P, no distortion).
RECTIFIED = {
    "k": [300.0, 0, 159.5, 0, 301.0, 119.5, 0, 0, 1],
    "p": [300.0, 0, 159.5, 0, 0, 301.0, 119.5, 0, 0, 0, 1, 0],
}


def depth_of_frame(index: int) -> float:
    """Frame i's scene is a wall facing the camera at this depth (metres; whole millimetres)."""
    return 0.8 + 0.05 * index


def recorded_depth(index: int, depth: str) -> float:
    """Frame i's wall as the depth topic carries it: 32FC1 through compressedDepth is quantized (the
    plugin's defaults: q = trunc(10100 / z - 1009) as float32, read back as 10100 / (q + 1009))."""
    if depth != "32FC1;compressedDepth":
        return depth_of_frame(index)
    quantized = np.trunc(np.float32(10100.0) / np.float32(depth_of_frame(index)) + np.float32(-1009.0))
    return float(np.float32(10100.0) / (np.float32(quantized) - np.float32(-1009.0)))


def frame_stamp_ns(index: int, period_ms: int = 100) -> int:
    """Frame i's colour stamp (and log time), nanoseconds."""
    return START_S * 10**9 + index * period_ms * MS


def colour_bgr(index: int) -> np.ndarray:
    return np.ascontiguousarray(SCENE[:, index * 2 : index * 2 + WIDTH])


def write_bag(
    path: pathlib.Path,
    storage: str = "mcap",
    frames: int = 3,
    colour: str = "bgr8",  # bgr8 | rgb8 | jpeg | any other encoding (written as bgr8 bytes)
    depth: str | None = "16UC1",  # 16UC1 (mm) | 32FC1 (m), either + ";compressedDepth" | None (no depth topic)
    camera: dict | None = RECTIFIED,  # None: no camera_info topic
    depth_size: tuple[int, int] = (HEIGHT, WIDTH),
    depth_late_ms: int | None = None,
    period_ms: int = 100,  # 33: a RealSense's 30 Hz
) -> pathlib.Path:
    """A recording as realsense-ros + `ros2 bag record` make it: camera_info, colour, then its depth
    stamped 3 ms later and received 5 ms later, then a decoy depth 60 ms after the colour (5 m away:
    a wrong pairing shows). `depth_late_ms`: instead, each frame's depth carries the colour's own stamp
    and is received this much later (after later frames' colour, as a driver or a network delivers
    it), without a decoy."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    types = store.types
    time_type, header_type = types["builtin_interfaces/msg/Time"], types["std_msgs/msg/Header"]
    image_type, info_type = types["sensor_msgs/msg/Image"], types["sensor_msgs/msg/CameraInfo"]
    compressed_type, roi_type = types["sensor_msgs/msg/CompressedImage"], types["sensor_msgs/msg/RegionOfInterest"]

    def header(nanoseconds: int, frame_id: str):
        return header_type(stamp=time_type(sec=nanoseconds // 10**9, nanosec=nanoseconds % 10**9), frame_id=frame_id)

    def image(nanoseconds, array, encoding, frame_id="camera_color_optical_frame"):
        data = np.ascontiguousarray(array).view(np.uint8).reshape(-1)
        step = array.shape[1] * array.itemsize * (array.shape[2] if array.ndim == 3 else 1)
        return image_type(
            header=header(nanoseconds, frame_id),
            height=array.shape[0],
            width=array.shape[1],
            encoding=encoding,
            is_bigendian=0,
            step=step,
            data=data,
        )

    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    written = []  # (log time, order, connection, msg): written in log-time order at the end
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        colour_topic = COLOUR + "/compressed" if colour == "jpeg" else COLOUR
        colour_msgtype = compressed_type.__msgtype__ if colour == "jpeg" else image_type.__msgtype__
        connections = {"colour": writer.add_connection(colour_topic, colour_msgtype, typestore=store)}
        compressed_depth = bool(depth) and depth.endswith(";compressedDepth")
        if compressed_depth:  # image_transport's compressedDepth: a CompressedImage on <depth>/compressedDepth
            connections["depth"] = writer.add_connection(
                DEPTH + "/compressedDepth", compressed_type.__msgtype__, typestore=store
            )
        elif depth:
            connections["depth"] = writer.add_connection(DEPTH, image_type.__msgtype__, typestore=store)
        if camera:
            connections["info"] = writer.add_connection(INFO, info_type.__msgtype__, typestore=store)

        def put(name, nanoseconds, msg):
            written.append((nanoseconds, len(written), connections[name], msg))

        for index in range(frames):
            stamp = frame_stamp_ns(index, period_ms)
            if camera:
                info = info_type(
                    header=header(stamp, "camera_color_optical_frame"),
                    height=HEIGHT,
                    width=WIDTH,
                    distortion_model="plumb_bob",
                    d=np.array(camera.get("d", [0.0] * 5), dtype=np.float64),
                    k=np.array(camera["k"], dtype=np.float64),
                    r=np.eye(3).reshape(-1),
                    p=np.array(camera["p"], dtype=np.float64),
                    binning_x=0,
                    binning_y=0,
                    roi=roi_type(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False),
                )
                put("info", stamp - MS, info)
            bgr = colour_bgr(index)
            if colour == "jpeg":
                ok, encoded = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])
                assert ok
                msg = compressed_type(header=header(stamp, "camera_color_optical_frame"), format="jpeg", data=encoded)
            elif colour == "rgb8":
                msg = image(stamp, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), "rgb8")
            else:
                msg = image(stamp, bgr, colour)
            put("colour", stamp, msg)
            if depth:
                encoding = depth.split(";")[0]
                # (stamp offset, receive offset, metres) of each depth image of the frame
                sent = [(3 * MS, 5 * MS, depth_of_frame(index)), (60 * MS, 62 * MS, 5.0)]
                if depth_late_ms is not None:
                    sent = [(0, depth_late_ms * MS, depth_of_frame(index))]
                for offset, received, metres in sent:
                    if encoding == "16UC1":
                        array = np.full(depth_size, round(metres * 1000), dtype=np.uint16)
                    else:
                        array = np.full(depth_size, metres, dtype=np.float32)
                    if compressed_depth:
                        encoded = encode_compressed_depth(array, encoding)
                        msg = compressed_type(
                            header=header(stamp + offset, "camera_color_optical_frame"),
                            format=encoded.format,
                            data=np.frombuffer(bytes(encoded.data), np.uint8),
                        )
                    else:
                        msg = image(stamp + offset, array, encoding)
                    put("depth", stamp + received, msg)
        for nanoseconds, _, connection, msg in sorted(written, key=lambda item: item[:2]):
            writer.write(connection, nanoseconds, store.serialize_cdr(msg, msg.__msgtype__))
    return path


def expected_point(u: float, v: float, z: float, camera: dict, raw: bool) -> np.ndarray:
    """Independent of pop_ros and OpenCV: the plumb_bob model inverted by fixed-point iteration (raw
    images; R is the identity), then P's pinhole."""
    p = np.array(camera["p"], dtype=np.float64).reshape(3, 4)[:, :3]
    if raw:
        k = np.array(camera["k"], dtype=np.float64).reshape(3, 3)
        k1, k2, p1, p2, k3 = camera["d"]
        xd, yd = (u - k[0, 2]) / k[0, 0], (v - k[1, 2]) / k[1, 1]

        def distort(x, y):
            r2 = x * x + y * y
            radial = 1 + k1 * r2 + k2 * r2 * r2 + k3 * r2**3
            return x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x), y * radial + p1 * (
                r2 + 2 * y * y
            ) + 2 * p2 * x * y

        x, y = xd, yd
        for _ in range(500):
            dx, dy = distort(x, y)
            x, y = x + (xd - dx), y + (yd - dy)
        assert np.allclose(distort(x, y), (xd, yd), atol=1e-13, rtol=0)  # converged
        u, v = p[0, 0] * x + p[0, 2], p[1, 1] * y + p[1, 2]
    return np.array([(u - p[0, 2]) / p[0, 0] * z, (v - p[1, 2]) / p[1, 1] * z, z])


@pytest.fixture(scope="module")
def pointer():
    from pop_ros.pipeline import PartPointer

    return PartPointer.from_preset("tiny")


@pytest.fixture
def run(pointer, monkeypatch, capsys):
    """Run a CLI (pop_ros.cli.bag's `main` or `teach_main`) in-process on the module's pointer;
    returns (exit code, stdout, stderr)."""
    from pop_ros.cli import bag
    from pop_ros.pipeline import PartPointer

    def shared(preset, library=None, settings=None, **_overrides):
        assert preset == "tiny"
        from pop_ros.pipeline import PointerSettings
        from pop_ros.supports import SupportLibrary

        pointer.library = library if library is not None else SupportLibrary()
        monkeypatch.setattr(pointer, "settings", settings or PointerSettings())  # --params-file's, for this test
        pointer.clear_frame_cache()
        return pointer

    monkeypatch.setattr(PartPointer, "from_preset", staticmethod(shared))

    def invoke(entry, *argv):
        code = getattr(bag, entry)([*map(str, argv), "--preset", "tiny"])
        out, err = capsys.readouterr()
        return code, out, err

    return invoke


def read_lines(folder: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]


def read_bag(path: pathlib.Path) -> dict[str, list]:
    """topic -> [(log time ns, message)] of a results bag, read back with rosbags alone."""
    from rosbags.rosbag2 import Reader

    from pop_ros.messages.recording import typestore

    store = typestore()
    topics: dict[str, list] = {}
    with Reader(path) as reader:
        for connection, log_ns, data in reader.messages():
            topics.setdefault(connection.topic, []).append((log_ns, store.deserialize_cdr(data, connection.msgtype)))
    return topics


def documented_jsonl_fields() -> set[str]:
    """The fields docs/recordings.md's results.jsonl table names (first column, `a`, `b` rows too)."""
    import re

    from pop_ros.paths import SOURCE_ROOT

    page = (SOURCE_ROOT / "docs" / "recordings.md").read_text()
    section = page.split("### results.jsonl", 1)[1].split("\n\n## ", 1)[0]
    rows = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]
    return {name for cell in rows for name in re.findall(r"`([a-z_]+)`", cell)}


def stamp_ns(stamp) -> int:
    return stamp.sec * 1_000_000_000 + stamp.nanosec


CASES = {
    # storage, colour, depth, camera, raw images, queries
    "mcap-bgr8-16UC1-distorted-raw": ("mcap", "bgr8", "16UC1", DISTORTED, True, [QUERY, "rim of the mug"]),
    "sqlite3-jpeg-32FC1-rectified": ("sqlite3", "jpeg", "32FC1", RECTIFIED, False, [QUERY]),
    "sqlite3-rgb8-16UC1-distorted-raw": ("sqlite3", "rgb8", "16UC1", DISTORTED, True, [QUERY]),
    "mcap-bgr8-compressedDepth32FC1-rectified": ("mcap", "bgr8", "32FC1;compressedDepth", RECTIFIED, False, [QUERY]),
    "sqlite3-jpeg-compressedDepth16UC1-raw": ("sqlite3", "jpeg", "16UC1;compressedDepth", DISTORTED, True, [QUERY]),
}


@pytest.mark.parametrize("case", CASES)
def test_every_answer_is_located_in_its_own_depth_and_written_with_its_source_stamp(case, run, tmp_path):
    storage, colour, depth, camera, raw, queries = CASES[case]
    frames = 3
    recording = write_bag(tmp_path / "rec", storage, frames, colour, depth, camera)
    out = tmp_path / "out"
    args = [recording, "--out", out, "--support-set", "mug_handle", "--library", LIBRARY, "--json"]
    args += [a for q in queries for a in ("--query", q)] + (["--raw-images"] if raw else [])
    code, stdout, stderr = run("main", *args)
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["storage"] == storage and summary["frames"] == frames
    assert summary["topics"]["colour"] == (COLOUR + "/compressed" if colour == "jpeg" else COLOUR)
    assert summary["topics"]["depth"] == (DEPTH + "/compressedDepth" if "compressedDepth" in depth else DEPTH)

    lines = read_lines(out)
    assert len(lines) == frames * len(queries)
    assert set(lines[0]) == documented_jsonl_fields()  # docs/recordings.md names every field, and no other
    for number, line in enumerate(lines):
        index = number // len(queries)
        assert line["query"] == queries[number % len(queries)]
        assert line["stamp_sec"] * 10**9 + line["stamp_nanosec"] == frame_stamp_ns(index)
        assert line["success"], line["reason"]
        # Paired with its own depth (not the decoy 5 m wall, not a neighbour's), deprojected correctly.
        want = expected_point(line["u"], line["v"], recorded_depth(index, depth), camera, raw)
        np.testing.assert_allclose(line["xyz"], want, atol=2e-6)
        # A wall facing the camera: the approach normal points straight back at it.
        np.testing.assert_allclose(line["normal"], [0.0, 0.0, -1.0], atol=1e-6)

    topics = read_bag(out / "bag")
    every_answer = {"/pop/result", "/pop/point", "/pop/pose", "/pop/heatmap", "/pop/part_mask", "/pop/part_cloud"}
    assert set(topics) - {"/pop/grasp"} == every_answer | {"/pop/markers"}
    source_stamps = [frame_stamp_ns(n // len(queries)) for n in range(len(lines))]
    frame_stamps = [frame_stamp_ns(index) for index in range(frames)]
    grasp_stamps = [stamp for stamp, line in zip(source_stamps, lines, strict=True) if line["has_grasp"]]
    for topic, messages in topics.items():
        # Markers: one MarkerArray per frame holding every query's markers (as ~/point_to_parts
        # publishes them), so RViz shows all parts of a frame; a grasp frame where the part has one;
        # the other topics: one per answer.
        stamps = {"/pop/markers": frame_stamps, "/pop/grasp": grasp_stamps}.get(topic, source_stamps)
        assert len(messages) == len(stamps), topic
        for (log_ns, msg), source_ns in zip(messages, stamps, strict=True):
            header = msg.markers[0].header if topic == "/pop/markers" else msg.header
            assert stamp_ns(header.stamp) == source_ns, topic  # the source image's stamp ...
            assert header.frame_id == "camera_color_optical_frame", topic  # ... and frame
            assert log_ns == source_ns, topic  # logged when the source frame was received
    for _, markers in topics["/pop/markers"]:
        spheres = [marker for marker in markers.markers if marker.action == 0 and marker.type == 2]
        ids = [(marker.ns, marker.id) for marker in markers.markers if marker.action == 0]
        assert markers.markers[0].action == 3 and len(spheres) == len(queries)  # one DELETEALL, each query's point
        assert len(ids) == len(set(ids))  # no query's marker replaces another's
    for (_, result), line in zip(topics["/pop/result"], lines, strict=True):
        assert result.query == line["query"] and result.has_3d and result.has_pose
        np.testing.assert_allclose([result.point.x, result.point.y, result.point.z], line["xyz"], atol=1e-12)
    for (_, point), line in zip(topics["/pop/point"], lines, strict=True):
        np.testing.assert_allclose([point.point.x, point.point.y, point.point.z], line["xyz"], atol=1e-12)
    heatmap = topics["/pop/heatmap"][0][1]
    assert (heatmap.encoding, heatmap.width, heatmap.height) == ("bgr8", WIDTH, HEIGHT)
    # The part's region, as the node builds it: its mask holds the answer's pixel, and every mask pixel
    # has depth on the wall, so the cloud is the mask's pixels, each on the frame's own wall.
    regions = zip(topics["/pop/part_mask"], topics["/pop/part_cloud"], lines, strict=True)
    for number, ((_, mask), (_, cloud), line) in enumerate(regions):
        pixels = np.frombuffer(bytes(mask.data), np.uint8).reshape(mask.height, mask.step)[:, : mask.width]
        assert (mask.encoding, pixels.shape) == ("mono8", (HEIGHT, WIDTH))
        assert pixels[round(line["v"]), round(line["u"])] == 255
        assert line["mask_pixels"] == int((pixels == 255).sum()) == line["cloud_points"] == cloud.width
        points = np.frombuffer(bytes(cloud.data), np.float32).reshape(-1, 4)
        np.testing.assert_allclose(points[:, 2], recorded_depth(number // len(queries), depth), atol=1e-6)

    video = cv2.VideoCapture(str(out / "heatmaps.mp4"))
    assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == len(lines)
    assert (int(video.get(cv2.CAP_PROP_FRAME_WIDTH)), int(video.get(cv2.CAP_PROP_FRAME_HEIGHT))) == (WIDTH, HEIGHT)
    video.release()


def test_sampling_every_at_and_rate(run, tmp_path):
    recording = write_bag(tmp_path / "rec", "mcap", frames=6, depth=None, camera=None)
    expected = {("--every", "2"): [0, 2, 4], ("--at", "0.05,0.3"): [1, 3], ("--rate", "4"): [0, 3, 5]}
    for (flag, value), indices in expected.items():
        out = tmp_path / f"out{flag}"
        code, _, stderr = run("main", recording, "--out", out, "--query", QUERY, "--no-depth", flag, value)
        assert code == 0, stderr
        stamps = [line["stamp"] for line in read_lines(out)]
        np.testing.assert_allclose(stamps, [frame_stamp_ns(i) * 1e-9 for i in indices], atol=1e-6, err_msg=flag)


def test_the_node_gives_the_same_point_for_a_frame_of_the_recording(run, tmp_path):
    """A real pop_node (in-process, tiny preset) fed this frame's camera_info and depth answers the
    same pixel and the same 3D point as pop-bag for the same frame."""
    import rclpy  # noqa: F401 - the node needs it
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import CameraInfo, Image

    from pop_ros.clients.ros_client import RosClient
    from pop_ros.messages.recording import Recording
    from pop_ros.ros.node import PopNode
    from pop_ros_interfaces.srv import PointToPart

    recording_path = write_bag(tmp_path / "rec", "mcap", 2, "bgr8", "16UC1", DISTORTED)
    out = tmp_path / "out"
    code, _, stderr = run(
        "main", recording_path, "--out", out, "--query", QUERY, "--support-set", "mug_handle", "--library", LIBRARY,
        "--raw-images", "--at", "0.1",
    )  # fmt: skip
    assert code == 0, stderr
    [line] = read_lines(out)

    # The recording's own messages of frame 1, as the node would receive them.
    messages: dict[str, list] = {}
    types = {COLOUR: Image, DEPTH: Image, INFO: CameraInfo}
    for topic, _, data in Recording(recording_path).messages(types):
        messages.setdefault(topic, []).append(deserialize_message(data, types[topic]))
    colour, info, depth = messages[COLOUR][1], messages[INFO][1], messages[DEPTH][2]
    assert depth.header.stamp.nanosec - colour.header.stamp.nanosec == pytest.approx(3_000_000, abs=2)

    args = ["--ros-args", "--params-file", str(PARAMS_FILE), "-p", "preset:=tiny", "-p", "autostart:=false"]
    args += ["-p", f"support_library:={LIBRARY}", "-p", "image_reliability:=reliable"]
    args += ["-p", "image_is_rectified:=false", "-p", "max_frame_age:=0.0"]
    ros = RosClient("bag_compare_client", args=args)
    node = PopNode(context=ros.context, namespace="bag_compare")
    try:
        ros.add_node(node)
        node.trigger_configure()
        assert node.pointer is not None, node.configure_error
        node.trigger_activate()

        def holds_them() -> bool:
            camera = node.camera
            if camera.camera_info is None or camera.camera_info.header.stamp != info.header.stamp:
                return False
            return camera.depth_near(depth.header.stamp, 0.0)[0] is not None

        deadline = time.monotonic() + 30
        while not holds_them() and time.monotonic() < deadline:  # a message right after discovery can be lost
            ros.publisher(CameraInfo, "/bag_compare/camera_info").publish(info)
            ros.publisher(Image, "/bag_compare/depth").publish(depth)
            time.sleep(0.05)
        assert holds_them(), "the node did not receive the frame's camera_info and depth"
        request = PointToPart.Request(query=QUERY, support_set="mug_handle", image=colour, return_region=True)
        response = ros.call(PointToPart, "/bag_compare/pop_node/point_to_part", request)
    finally:
        ros.executor.remove_node(node)
        node.destroy_node()
        ros.close()
    assert response.success, response.message
    assert (response.u, response.v) == pytest.approx((line["u"], line["v"]), abs=1e-4)
    assert response.has_3d and response.has_pose
    node_xyz = [response.point.point.x, response.point.point.y, response.point.point.z]
    np.testing.assert_allclose(line["xyz"], node_xyz, rtol=0, atol=1e-9)
    np.testing.assert_allclose(line["normal"], [response.normal.x, response.normal.y, response.normal.z], atol=1e-9)
    assert response.point.header.stamp == colour.header.stamp
    # The part's mask, cloud and grasp frame: the node's, byte for byte, and the same notes.
    assert line["reason"] == response.message
    topics = read_bag(out / "bag")
    [(_, mask)], [(_, cloud)] = topics["/pop/part_mask"], topics["/pop/part_cloud"]
    assert response.part_mask.data and bytes(mask.data) == bytes(response.part_mask.data)
    assert cloud.width == response.part_cloud.width == line["cloud_points"] > 0
    assert bytes(cloud.data) == bytes(response.part_cloud.data)
    assert line["has_grasp"] == response.has_grasp
    if response.has_grasp:
        [(_, grasp)] = topics["/pop/grasp"]
        orientation = response.grasp.pose.orientation
        assert line["grasp_orientation_xyzw"] == [orientation.x, orientation.y, orientation.z, orientation.w]
        assert grasp.pose.orientation.w == orientation.w
        assert line["grasp_width_m"] == pytest.approx(response.grasp_width_m, rel=1e-6)  # float32 in the response


def test_depth_received_late_is_paired_by_its_stamp_within_the_wait(run, tmp_path):
    """Each frame's depth carries its colour's stamp but is received 230 ms later (more than depth_max_dt,
    0.05 s), after the next two frames' colour: paired by stamp (not by log time) and waited for (up to
    1 s of log time), every answer has its own frame's depth."""
    frames = 5
    recording = write_bag(tmp_path / "rec", "mcap", frames, depth_late_ms=230)
    out = tmp_path / "out"
    code, _, stderr = run(
        "main", recording, "--out", out, "--query", QUERY, "--support-set", "mug_handle", "--library", LIBRARY,
        "--depth-max-dt", "0.05",
    )  # fmt: skip
    assert code == 0, stderr
    lines = read_lines(out)
    assert [line["stamp_sec"] * 10**9 + line["stamp_nanosec"] for line in lines] == [
        frame_stamp_ns(index) for index in range(frames)
    ]
    for index, line in enumerate(lines):
        assert line["success"] and line["xyz"] is not None, (index, line["reason"])
        want = expected_point(line["u"], line["v"], depth_of_frame(index), RECTIFIED, raw=False)
        np.testing.assert_allclose(line["xyz"], want, atol=2e-6, err_msg=f"frame {index}")


def test_an_answer_without_a_pose_writes_null_normal_and_orientation(run, tmp_path):
    recording = write_bag(tmp_path / "rec", "mcap", 1)
    out = tmp_path / "out"
    code, _, stderr = run(
        "main", recording, "--out", out, "--query", QUERY, "--support-set", "mug_handle", "--library", LIBRARY,
        "--pose-window", "0",
    )  # fmt: skip
    assert code == 0, stderr
    [line] = read_lines(out)
    assert line["success"] and "pose_window is 0" in line["reason"], line["reason"]
    np.testing.assert_allclose(line["xyz"], expected_point(line["u"], line["v"], depth_of_frame(0), RECTIFIED, False))
    assert line["normal"] is None and line["pose_orientation_xyzw"] is None  # a 3D point, no pose
    flat = tmp_path / "flat"
    code, _, stderr = run("main", recording, "--out", flat, "--query", QUERY, "--no-depth")
    assert code == 0, stderr
    [line] = read_lines(flat)
    assert line["xyz"] is None and line["normal"] is None and line["pose_orientation_xyzw"] is None  # 2D only


def test_camera_info_is_found_beside_a_non_realsense_compressed_colour_topic(tmp_path):
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    from pop_ros.messages.recording import Recording

    store = get_typestore(Stores.ROS2_KILTED)
    types = store.types
    header = types["std_msgs/msg/Header"](
        stamp=types["builtin_interfaces/msg/Time"](sec=START_S, nanosec=0), frame_id="front_rgb_optical_frame"
    )
    info = types["sensor_msgs/msg/CameraInfo"](
        header=header, height=HEIGHT, width=WIDTH, distortion_model="plumb_bob", d=np.zeros(5),
        k=np.array(RECTIFIED["k"], float), r=np.eye(3).reshape(-1), p=np.array(RECTIFIED["p"], float),
        binning_x=0, binning_y=0,
        roi=types["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False),
    )  # fmt: skip
    messages = {
        "/front/rgb/image_rect/compressed": types["sensor_msgs/msg/CompressedImage"](
            header=header, format="jpeg", data=np.zeros(4, np.uint8)
        ),
        "/front/rgb/camera_info": info,
        "/rear/rgb/camera_info": info,  # another camera's: never beside the chosen colour
        "/front/depth/image_rect": types["sensor_msgs/msg/Image"](
            header=header, height=1, width=1, encoding="16UC1", is_bigendian=0, step=2, data=np.zeros(2, np.uint8)
        ),
    }
    path = tmp_path / "rec"
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        for topic, msg in messages.items():
            connection = writer.add_connection(topic, msg.__msgtype__, typestore=store)
            writer.write(connection, START_S * 10**9, store.serialize_cdr(msg, msg.__msgtype__))
    found = Recording(path).find_camera(colour="/front/rgb/image_rect/compressed", depth="/front/depth/image_rect")
    assert (found.colour, found.camera_info, found.depth) == (
        "/front/rgb/image_rect/compressed",
        "/front/rgb/camera_info",
        "/front/depth/image_rect",
    )
    uncompressed = Recording(path).find_camera(colour="/front/rgb/image_rect/compressed", need_depth=False)
    assert uncompressed.camera_info == "/front/rgb/camera_info"


@pytest.mark.parametrize("given", ["mcap file", "bag folder"])
def test_a_truncated_recording_is_answered_up_to_the_cut(run, tmp_path, given):
    frames = 8  # ~0.5 MB each: rosbags closes a 1 MiB chunk every two frames or so
    recording = write_bag(tmp_path / "rec", "mcap", frames, "bgr8", "16UC1", RECTIFIED)
    [mcap_file] = recording.glob("*.mcap")
    data = mcap_file.read_bytes()
    mcap_file.write_bytes(data[: len(data) * 6 // 10])  # a recorder killed mid-write: no summary, a torn chunk
    cut = mcap_file if given == "mcap file" else recording  # the folder still has its metadata.yaml
    out = tmp_path / "out"
    code, stdout, stderr = run("main", cut, "--out", out, "--query", QUERY, "--json")
    assert code == 0, stderr
    assert "the recording is cut after" in stderr and "readable messages" in stderr
    lines = read_lines(out)
    assert 1 <= len(lines) < frames
    for index, line in enumerate(lines):  # the first frames, in order, each in its own depth
        assert line["stamp"] == pytest.approx(frame_stamp_ns(index) * 1e-9, abs=1e-6)
        assert line["xyz"][2] == pytest.approx(depth_of_frame(index), abs=1e-6)  # 16UC1 mm as float32 m
    assert json.loads(stdout)["cut"].startswith("the recording is cut after")
    assert len(read_bag(out / "bag")["/pop/result"]) == len(lines)


def test_a_recording_without_depth_names_the_topics_it_has(run, tmp_path):
    recording = write_bag(tmp_path / "rec", "sqlite3", 2, depth=None)
    code, _, stderr = run("main", recording, "--out", tmp_path / "out", "--query", QUERY)
    assert code == 2
    [message] = stderr.strip().splitlines()
    assert message.startswith("error: no aligned depth topic found")
    assert f"{COLOUR} (sensor_msgs/msg/Image)" in message and f"{INFO} (sensor_msgs/msg/CameraInfo)" in message
    assert not (tmp_path / "out").exists()  # refused before anything was written
    # Asked for 2D answers, it gives them, each saying why there is no 3D point.
    code, _, stderr = run("main", recording, "--out", tmp_path / "out2d", "--query", QUERY, "--no-depth")
    assert code == 0, stderr
    lines = read_lines(tmp_path / "out2d")
    assert len(lines) == 2 and all(line["xyz"] is None for line in lines)
    assert all(line["reason"] == "no 3D point: no depth received (depth_max_dt 0.05 s)" for line in lines)


@pytest.mark.parametrize(
    "bag_options, flags, error",
    [
        ({"camera": None}, [], "no camera_info topic found"),
        ({"depth_size": (120, 200)}, [], "depth must be aligned to colour"),
        ({"colour": "bayer_rggb8"}, [], "unsupported colour encoding 'bayer_rggb8'"),  # yuv422 is supported now
        ({}, ["--image-topic", "/nope"], "--image-topic /nope: no such topic; topics in"),
        # The node's parameters, checked by the node's rules, from a flag or from its params file.
        ({}, ["--depth-window", "4"], "depth_window must be odd"),
        ({}, ["--params-file", "{tmp}/params.yaml"], "pose_window must be 0 (no pose) or an odd number >= 3, got 4"),
        ({}, ["--params-file", "{tmp}/gripper.yaml"], "gripper_max_width_m must be >= 0.0, got -0.1"),
        ({"depth": "32FC1;compressedDepth"}, ["--depth-topic", DEPTH], f"--depth-topic {DEPTH}: no such topic"),
    ],
)
def test_bad_recordings_get_one_line_errors(run, tmp_path, bag_options, flags, error):
    (tmp_path / "params.yaml").write_text("/**:\n  ros__parameters:\n    pose_window: 4\n")
    (tmp_path / "gripper.yaml").write_text("/**:\n  ros__parameters:\n    gripper_max_width_m: -0.1\n")
    flags = [flag.format(tmp=tmp_path) for flag in flags]
    recording = write_bag(tmp_path / "rec", "mcap", 1, **bag_options)
    code, _, stderr = run("main", recording, "--out", tmp_path / "out", "--query", QUERY, *flags)
    assert code == 2
    [message] = stderr.strip().splitlines()
    assert message.startswith("error: ") and error in message


def test_ctrl_c_keeps_what_was_written(run, tmp_path, monkeypatch):
    from pop_ros.cli import bag_answers

    recording = write_bag(tmp_path / "rec", "mcap", 3, "bgr8", "16UC1", RECTIFIED)
    answer_frame = bag_answers.answer_frame
    calls = []

    def interrupted_on_the_second_frame(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return answer_frame(*args)

    monkeypatch.setattr(bag_answers, "answer_frame", interrupted_on_the_second_frame)
    out = tmp_path / "out"
    code, _, stderr = run("main", recording, "--out", out, "--query", QUERY)
    assert code == 130
    assert "interrupted: kept the 1 answers written so far" in stderr
    assert len(read_lines(out)) == 1
    assert len(read_bag(out / "bag")["/pop/result"]) == 1  # the bag was closed properly: it reads back


def test_pop_teach_adds_the_frame_to_a_writable_library(run, tmp_path):
    from pop_ros.supports import SupportLibrary

    recording = write_bag(tmp_path / "rec", "sqlite3", 3, "jpeg", depth=None, camera=None)
    library_path = tmp_path / "lib" / "taught.yaml"
    library_path.parent.mkdir()
    shutil.copy(LIBRARY, library_path)
    shutil.copytree(LIBRARY.parent / "images", library_path.parent / "images")  # the example's images
    args = [recording, "--time", "0.15", "--click", "100.5,60", "--set", "wall", "--library", library_path]
    code, stdout, stderr = run("teach_main", *args, "--query", "corner of the wall", "--json")
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["num_exemplars"] == 1 and summary["stamp"] == pytest.approx(frame_stamp_ns(2) * 1e-9, abs=1e-6)

    library = SupportLibrary.load(library_path)
    assert library.errors == []
    taught = library.get("wall")
    assert taught.query == "corner of the wall" and len(taught.exemplars) == 1
    assert taught.exemplars[0].click == (100.5, 60.0)
    encoded = cv2.imencode(".jpg", colour_bgr(2), [cv2.IMWRITE_JPEG_QUALITY, 95])[1]
    frame_rgb = cv2.cvtColor(cv2.imdecode(encoded, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(taught.exemplars[0].image, frame_rgb)  # the frame itself, stored losslessly
    assert "mug_handle" in library.names()  # the rest of the library is kept
    # A click outside the frame is refused with the reason, and nothing is written.
    before = library_path.read_text()
    code, _, stderr = run("teach_main", *args[:4], "400,10", *args[5:])
    assert code == 2 and "outside its 320x240 image" in stderr
    assert library_path.read_text() == before


def test_unstamped_frames_are_not_taken_for_one_another(pointer):
    """Two different frames with stamp 0 cannot be told apart by stamp + frame_id: the frame cache must
    key them by content (the node's rule), not give the second the first one's features."""
    from types import SimpleNamespace

    from sensor_msgs.msg import Image

    from pop_ros.cli import bag_answers
    from pop_ros.messages.stamps import StampBuffer
    from pop_ros.pipeline import PointRequest
    from pop_ros.spatial.locate import LocateSettings

    pointer.clear_frame_cache()
    replay = SimpleNamespace(camera_info=None, depth=StampBuffer())
    options = bag_answers.AnswerOptions(LocateSettings(0.05, 5, 15, 0.01, 0.5, True))
    reused = []
    for index in (0, 1):
        msg = Image()
        msg.header.frame_id = "cam"  # stamp 0: unstamped
        image_rgb = np.ascontiguousarray(colour_bgr(index)[:, :, ::-1])
        [(_, result)] = bag_answers.answer_frame(
            pointer, bag_answers.Frame(msg, 0, index), image_rgb, [PointRequest("lid")], replay, options
        )
        reused.append(result.frame_reused)
    assert reused == [False, False]


def test_the_pipeline_settings_come_from_the_params_file_as_the_node_makes_them(tmp_path):
    import argparse

    import yaml

    from pop_ros.cli.bag import pipeline_settings
    from pop_ros.cli.common import CliError

    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"/**": {"ros__parameters": {"max_shots": 1, "upsample": 4,
                                                                 "shots_combination": "product"}}}))  # fmt: skip
    settings = pipeline_settings(argparse.Namespace(params_file=path))
    assert (settings.max_shots, settings.upsample, settings.shot_combination) == (1, 4, "product")
    assert settings.similarity == "bidirectional"  # not in the file: the node's default
    assert pipeline_settings(argparse.Namespace(params_file=None)).max_shots == 3  # no file: the defaults
    path.write_text(yaml.safe_dump({"/**": {"ros__parameters": {"similarity": "sideways"}}}))
    with pytest.raises(CliError, match="similarity must be one of"):
        pipeline_settings(argparse.Namespace(params_file=path))


NECK = "neck of the bottle"


@pytest.mark.parametrize(
    "queries",
    [
        ["--query", QUERY, "--support-set", "mug_handle", "--query", NECK, "--support-set", "bottle_neck"],
        ["--query", f"{QUERY}@mug_handle", "--query", f"{NECK}@bottle_neck"],
    ],
    ids=["paired flags", "QUERY@SET"],
)
def test_each_query_is_answered_with_its_own_support_set(run, tmp_path, queries):
    recording = write_bag(tmp_path / "rec", "mcap", 2, depth=None, camera=None)
    out = tmp_path / "out"
    code, _, stderr = run("main", recording, "--out", out, "--library", LIBRARY, "--no-depth", *queries)
    assert code == 0, stderr
    asked = [(QUERY, "mug_handle"), (NECK, "bottle_neck")]
    assert [(line["query"], line["support_set"]) for line in read_lines(out)] == asked * 2
    results = [msg for _, msg in read_bag(out / "bag")["/pop/result"]]
    assert [(result.query, result.support_set) for result in results] == asked * 2


BAD_PAIRINGS = {
    "more sets than queries": (
        ["--query", "a", "--query", "b", *("--support-set", "mug_handle") * 3, "--library", LIBRARY],
        "2 --query and 3 --support-set: give one --support-set for all queries, one per --query",
    ),
    "@ without a set": (["--query", "a@", "--library", LIBRARY], "--query 'a@': no support set name after '@'"),
    "QUERY@SET without a library": (["--query", "a@mug_handle"], "QUERY@SET needs --library"),
    "QUERY@SET against its pair": (
        ["--query", "a@mug_handle", "--query", "b", *("--support-set", "bottle_neck") * 2, "--library", LIBRARY],
        "--query 'a@mug_handle' names set 'mug_handle' but is paired with --support-set bottle_neck",
    ),
    "a library without a set": (["--query", "a", "--library", LIBRARY], "--library needs --support-set NAME"),
    "an unknown set": (["--query", "a@nope", "--library", LIBRARY], "support set 'nope' is not in"),
    "clicks and a set": (
        ["--query", "a@mug_handle", "--support", "x.png:1,2", "--library", LIBRARY],
        "use --support or a support set (--support-set, QUERY@SET), not both",
    ),
}


@pytest.mark.parametrize("case", BAD_PAIRINGS)
def test_pop_bag_refuses_query_pairings_as_pop_point_does(run, tmp_path, capsys, case):
    """One parser pairs queries with sets for both tools: the same mistake, the same one-line error, before
    any model loads and before pop-bag writes anything."""
    from pop_ros.cli import point

    flags, error = BAD_PAIRINGS[case]
    recording = write_bag(tmp_path / "rec", "mcap", 1, depth=None, camera=None)
    code, _, bag_stderr = run("main", recording, "--out", tmp_path / "out", "--no-depth", *flags)
    assert code == 2 and not (tmp_path / "out").exists()
    assert point.main(["--target", str(SAMPLE_DIR / "scene_0.png"), *map(str, flags), "--preset", "tiny"]) == 2
    point_stderr = capsys.readouterr().err
    [bag_line], [point_line] = bag_stderr.strip().splitlines(), point_stderr.strip().splitlines()
    assert bag_line.startswith("error: ") and error in bag_line
    assert bag_line.replace(str(recording), "TARGET") == point_line.replace(
        f"--target {SAMPLE_DIR / 'scene_0.png'}", "TARGET"
    )


def test_grasp_frame_offset_and_gripper_limit_come_from_the_params_file(run, tmp_path, constructed_visual_map):
    """The node's grasp parameters, from --params-file: the frame's origin moved along its approach
    (grasp_tool_offset_m), and no frame for a part wider than the gripper opens (gripper_max_width_m).
    A known fused map (visual-only, constructed): a horizontal bar, so the gripper closes along the
    camera's y, on the wall 0.8 m away."""
    import yaml

    from test.test_node_geometry import z_axis
    from test.test_node_regions import angle_to_axis_degrees, x_axis

    constructed_visual_map({(6, col): 1.0 for col in range(6, 12)})
    recording = write_bag(tmp_path / "rec", "mcap", 1, "bgr8", "16UC1", RECTIFIED)

    def answer(folder: str, **parameters):
        params = tmp_path / f"{folder}.yaml"
        params.write_text(yaml.safe_dump({"/**": {"ros__parameters": {"use_text": False, **parameters}}}))
        flags = ["--support-set", "mug_handle", "--library", LIBRARY, "--params-file", params, "--json"]
        code, stdout, stderr = run("main", recording, "--out", tmp_path / folder, *flags)
        assert code == 0, stderr
        assert {k: json.loads(stdout)["parameters"][k] for k in parameters} == parameters
        [line] = read_lines(tmp_path / folder)
        return line, read_bag(tmp_path / folder / "bag")

    line, topics = answer("offset", grasp_tool_offset_m=0.02)
    assert line["success"] and line["has_grasp"], line["reason"]
    assert 0 < line["grasp_width_m"] < line["part_length_m"]
    np.testing.assert_allclose(line["grasp_xyz"], np.add(line["xyz"], [0.0, 0.0, 0.02]), atol=1e-9)  # into the wall
    [(_, grasp)] = topics["/pop/grasp"]
    position, orientation = grasp.pose.position, grasp.pose.orientation
    np.testing.assert_allclose([position.x, position.y, position.z], line["grasp_xyz"], atol=1e-12)
    assert [orientation.x, orientation.y, orientation.z, orientation.w] == line["grasp_orientation_xyzw"]
    assert angle_to_axis_degrees(x_axis(orientation), [0, 1, 0]) < 5.0  # closing across the bar
    assert angle_to_axis_degrees(z_axis(orientation), [0, 0, 1]) < 1.0  # approaching into the wall

    limit = round(line["grasp_width_m"] / 2, 4)
    narrow, topics = answer("narrow", gripper_max_width_m=limit)
    assert narrow["success"] and not narrow["has_grasp"] and narrow["grasp_xyz"] is None
    assert narrow["reason"] == (
        f"no grasp frame: the part is {line['grasp_width_m']:.3f} m wide, more than the gripper opens "
        f"(gripper_max_width_m {limit} m)"
    )
    assert "/pop/grasp" not in topics and "/pop/part_cloud" in topics  # the region is still given
    wide, _ = answer("wide", gripper_max_width_m=round(line["grasp_width_m"] * 2, 4))
    assert wide["has_grasp"] and wide["grasp_xyz"] == line["xyz"]  # no offset: at the point


def test_a_30_hz_recording_answered_by_a_slow_model_keeps_every_frame_s_own_depth(run, pointer, tmp_path):
    """Queries slower than the depth stream's period (each frame's queries take 0.1 s > 33 ms): every
    answer still has its own frame's depth (not the 5 m decoy 60 ms later, nor a neighbour's)."""
    import time

    frames, period_ms = 9, 33  # colour_bgr shifts the scene: 9 frames at most
    recording = write_bag(tmp_path / "rec", "mcap", frames, "bgr8", "32FC1", RECTIFIED, period_ms=period_ms)
    point_many = pointer.point_many

    def slow(*args, **kwargs):
        time.sleep(0.1)
        return point_many(*args, **kwargs)

    pointer.point_many = slow
    try:
        out = tmp_path / "out"
        code, _, stderr = run(
            "main", recording, "--out", out, "--support-set", "mug_handle", "--library", LIBRARY, "--query", QUERY
        )
    finally:
        pointer.point_many = point_many
    assert code == 0, stderr
    lines = read_lines(out)
    assert len(lines) == frames
    for index, line in enumerate(lines):
        assert line["stamp_sec"] * 10**9 + line["stamp_nanosec"] == frame_stamp_ns(index, period_ms)
        assert line["success"] and line["xyz"] is not None, line["reason"]
        assert abs(line["xyz"][2] - depth_of_frame(index)) < 1e-6


def _frame_and_replay(stamp_s: float, depth_frame_id: str, image_rgb):
    """A colour frame stamped `stamp_s` and a replay holding its depth (frame `depth_frame_id`) and camera_info."""
    from types import SimpleNamespace

    from sensor_msgs.msg import CameraInfo

    from pop_ros.cli import bag_answers
    from pop_ros.messages.image_conversion import from_array
    from pop_ros.messages.stamps import StampBuffer

    msg = from_array(np.ascontiguousarray(image_rgb), "rgb8")
    msg.header.stamp.sec, msg.header.frame_id = int(stamp_s), "camera_color_optical_frame"
    depth = from_array(np.full((HEIGHT, WIDTH), 1.0, np.float32), "32FC1")
    depth.header.stamp, depth.header.frame_id = msg.header.stamp, depth_frame_id
    info = CameraInfo(width=WIDTH, height=HEIGHT, k=RECTIFIED["k"], p=RECTIFIED["p"], distortion_model="plumb_bob")
    info.header.frame_id = "camera_color_optical_frame"
    replay = SimpleNamespace(camera_info=info, depth=StampBuffer())
    replay.depth.add(float(int(stamp_s)), depth)
    return bag_answers.Frame(msg, 0, 0), replay


def test_depth_of_another_frame_in_a_recording_answers_2d_with_the_reason(pointer):
    from pop_ros.cli import bag_answers
    from pop_ros.pipeline import PointRequest
    from pop_ros.spatial.locate import LocateSettings

    image_rgb = np.ascontiguousarray(colour_bgr(0)[:, :, ::-1])
    frame, replay = _frame_and_replay(START_S, "camera_depth_optical_frame", image_rgb)
    options = bag_answers.AnswerOptions(LocateSettings(0.05, 5, 15, 0.01, 0.5, True))
    [(answer, _)] = bag_answers.answer_frame(pointer, frame, image_rgb, [PointRequest("lid")], replay, options)
    assert answer.success and not answer.has_3d
    assert "frame_ids differ" in answer.message and "camera_depth_optical_frame" in answer.message
    frame, replay = _frame_and_replay(START_S, "camera_color_optical_frame", image_rgb)  # aligned: 3D
    [(answer, _)] = bag_answers.answer_frame(pointer, frame, image_rgb, [PointRequest("lid")], replay, options)
    assert answer.has_3d, answer.message


def test_a_repeated_stamp_with_new_pixels_is_a_new_frame_in_a_recording(pointer):
    """A simulator paused while its scene changes records two frames with one stamp: the second must
    not get the first one's features from the frame cache."""
    from pop_ros.cli import bag_answers
    from pop_ros.pipeline import PointRequest
    from pop_ros.spatial.locate import LocateSettings

    pointer.clear_frame_cache()
    options = bag_answers.AnswerOptions(LocateSettings(0.05, 5, 15, 0.01, 0.5, True))
    reused = []
    for index in (0, 1, 1):
        image_rgb = np.ascontiguousarray(colour_bgr(index)[:, :, ::-1])
        frame, replay = _frame_and_replay(START_S, "camera_color_optical_frame", image_rgb)
        [(_, result)] = bag_answers.answer_frame(pointer, frame, image_rgb, [PointRequest("lid")], replay, options)
        reused.append(result.frame_reused)
    assert reused == [False, False, True]


def test_track_gives_tracked_answers_between_the_full_ones(run, tmp_path):
    """--track --every 4: frames 0 and 4 get full answers, the others tracked ones. The recorded scene
    moves 2 px left a frame (colour_bgr), so a tracked pixel is its full answer's minus 2 px a frame;
    its 3D point comes from its own frame's depth (each frame's differs; a decoy lies 60 ms later)."""
    bag = write_bag(tmp_path / "rec", frames=8, depth="32FC1")
    code, out, err = run("main", bag, "--query", QUERY, "--track", "--every", "4", "--out", tmp_path / "out", "--json")
    assert code == 0, err
    summary = json.loads(out)
    lines = read_lines(tmp_path / "out")
    index_of = {frame_stamp_ns(i) / 1e9: i for i in range(8)}
    full = {index_of[line["stamp"]]: line for line in lines if not line["tracked"]}
    tracked = [line for line in lines if line["tracked"]]
    assert sorted(full) == [0, 4]
    assert [index_of[line["stamp"]] for line in tracked] == [1, 2, 3, 5, 6, 7]
    assert summary["tracked"] + summary["tracks_lost"] == 6
    for line in tracked:
        index = index_of[line["stamp"]]
        anchor_index = 0 if index < 4 else 4
        anchor = full[anchor_index]
        assert line["track_age_s"] == pytest.approx((index - anchor_index) * 0.1, abs=1e-6)
        if not line["success"]:
            assert line["reason"].startswith("track lost: ")
            continue
        assert line["u"] == pytest.approx(anchor["u"] - 2 * (index - anchor_index), abs=1.5)
        assert line["v"] == pytest.approx(anchor["v"], abs=1.5)
        assert line["xyz"] is not None and line["xyz"][2] == pytest.approx(depth_of_frame(index), abs=1e-6)
    assert summary["tracked"] == 6, [line["reason"] for line in tracked]  # the scene is textured enough everywhere
    messages = read_bag(tmp_path / "out" / "bag")
    assert sum(m.tracked for _, m in messages["/pop/result"]) == 6
