"""pop-bench's continuous-tracking figures (kept apart from benchmarks.py, which calls in here once per
section):

- `ratio_track_vs_query` (model section): one tracked update, everything the node does for a tracked
  frame but publishing (colour conversion, Lucas-Kanade, its 3D point, pose and grasp frame from
  the frame's depth), over a full POP query on the same frame;
- tracked answers per second (streaming section): pop_node with `continuous_tracking` on, a camera in
  another process publishing colour, aligned depth and camera_info on the same stamps (a textured
  scene panning back and forth), for each camera size and rate of TRACKING_CAMERAS.

`python -m pop_ros.bench.tracking --serve-camera NAMESPACE WIDTH HEIGHT RATE SECONDS` is that camera.
"""

from __future__ import annotations

import collections
import json
import os
import statistics
import subprocess
import sys
import time
import types

import cv2
import numpy as np

# (width, height, rate Hz) of the streaming runs, and the share of the camera's rate that tracked
# answers must reach on each (the targets).
TRACKING_CAMERAS = ((320, 240, 15.0, 0.9), (640, 480, 30.0, 0.8))
PAN_FRAMES = 60  # the camera's scene pans over this many frames, then back
PAN_STEP_PX = 1.5


def _camera_info(width: int, height: int):
    """A pinhole camera_info for a `width` x `height` image (f = 0.9 x width)."""
    focal = 0.9 * width
    k = [focal, 0.0, (width - 1) / 2, 0.0, focal, (height - 1) / 2, 0.0, 0.0, 1.0]
    return types.SimpleNamespace(
        width=width,
        height=height,
        k=k,
        p=[k[0], 0.0, k[2], 0.0, 0.0, k[4], k[5], 0.0, 0.0, 0.0, 1.0, 0.0],
        d=[0.0] * 5,
        r=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
        distortion_model="plumb_bob",
        binning_x=0,
        binning_y=0,
        roi=types.SimpleNamespace(x_offset=0, y_offset=0, width=0, height=0, do_rectify=False),
    )


def _pan(image: np.ndarray, step_px: float) -> np.ndarray:
    shift = np.float32([[1, 0, step_px], [0, 1, step_px / 2]])
    return cv2.warpAffine(image, shift, (image.shape[1], image.shape[0]), borderMode=cv2.BORDER_REFLECT)


# ---- model section ------------------------------------------------------------------------------------
def run_track_ratio(target: np.ndarray, query_ms: list[float], repeats: int, progress) -> dict:
    """A tracked update on `target` (moved by 1.5 px), over the full query's median `query_ms` on it."""
    from pop_ros.messages.capture import Frame, capture_of
    from pop_ros.messages.image_conversion import from_array
    from pop_ros.messages.stamps import StampBuffer
    from pop_ros.ros.answers import Answer, Outcome
    from pop_ros.spatial.grasp import GraspSettings
    from pop_ros.spatial.locate import LocateSettings
    from pop_ros.tracking.following import PartFollower, tracked_answer

    height, width = target.shape[:2]
    moved = _pan(target, PAN_STEP_PX)
    depth = StampBuffer()
    depth.add(1.0, from_array(np.full((height, width), 0.8, np.float32), "32FC1"))
    header = types.SimpleNamespace(stamp=types.SimpleNamespace(sec=1, nanosec=0), frame_id="bench")
    settings = LocateSettings(
        depth_max_dt=0.01,
        depth_window=5,
        pose_window=15,
        pose_inlier_distance=0.005,
        pose_min_inlier_ratio=0.6,
        image_is_rectified=True,
    )
    mask = np.zeros((height, width), bool)
    mask[height // 3 : 2 * height // 3, width // 3 : 2 * width // 3] = True
    anchor = Answer(Outcome.OK, "ok", header, u=width / 2, v=height / 2, score=1.0, query="bench")
    info = _camera_info(width, height)

    def update():
        follower = PartFollower()
        follower.anchor(anchor, target, 0.0, mask)
        follower.track(target, 0.5)  # seeds (once per full answer, not per frame); not timed
        started = time.perf_counter()
        step = follower.track(moved, 1.0)
        capture = capture_of(Frame(types.SimpleNamespace(header=header), 1.0, 2), depth, info, settings.depth_max_dt)
        answer, _ = tracked_answer(step, capture, (height, width), settings, GraspSettings())
        elapsed = (time.perf_counter() - started) * 1000.0
        assert answer.success and answer.has_3d, answer.message
        return elapsed

    update()  # warm-up
    times = [update() for _ in range(max(repeats, 10))]
    ratio = statistics.median(times) / statistics.median(query_ms)
    progress(f"tracked update {statistics.median(times):.2f} ms, {ratio:.4f} x a full query")
    return {"track_update_ms": {"median": statistics.median(times), "n": len(times)}, "ratio_track_vs_query": ratio}


# ---- streaming section -------------------------------------------------------------------------------
def publish_at_rate(publish_frame, rate_hz: float, seconds: float) -> int:
    """A camera's pace: `publish_frame(index)` every 1 / `rate_hz` s for `seconds` (no drift: each
    period counts from the start), then one JSON line of how many frames went out (the benchmark's
    camera processes report through it)."""
    published, started = 0, time.monotonic()
    next_frame = started
    while time.monotonic() - started < seconds:
        publish_frame(published)
        published += 1
        next_frame += 1.0 / rate_hz
        time.sleep(max(0.0, next_frame - time.monotonic()))
    print(json.dumps({"published": published, "seconds": time.monotonic() - started}), flush=True)
    return published


def serve_streaming_camera(topic: str, seconds: float, rate_hz: float = 30.0) -> int:
    """Publish a 640x480 bgr8 frame on `topic` at `rate_hz` for `seconds` (run as its own process, as
    a camera driver is); prints how many frames it published. Here, not in benchmarks.py: the camera
    process then starts without importing torch (seconds per streaming run)."""
    from sensor_msgs.msg import Image

    from pop_ros.clients.ros_client import RosClient
    from pop_ros.messages.image_conversion import from_array
    from pop_ros.paths import SAMPLE_DIR

    bgr = cv2.resize(cv2.imread(str(SAMPLE_DIR / "scene_0.png")), (640, 480))
    ros = RosClient("pop_bench_camera")
    try:
        publisher = ros.publisher(Image, topic)

        def publish_frame(_index: int) -> None:
            msg = from_array(bgr, "bgr8")
            msg.header.stamp, msg.header.frame_id = ros.now_stamp(), "bench_optical"
            publisher.publish(msg)

        publish_at_rate(publish_frame, rate_hz, seconds)
    finally:
        ros.close()
    return 0


def serve_camera(namespace: str, width: int, height: int, rate_hz: float, seconds: float) -> int:
    """Publish colour (bgr8), depth (32FC1) and camera_info, all stamped alike, under /NAMESPACE at
    `rate_hz` for `seconds`; prints how many frames it published."""
    from sensor_msgs.msg import CameraInfo, Image

    from pop_ros.clients.ros_client import RosClient
    from pop_ros.messages.image_conversion import from_array
    from pop_ros.tracking.scenes import texture

    scene = texture(np.random.default_rng(5), height, width, blur=2.0)
    frames = [cv2.cvtColor(_pan(scene, PAN_STEP_PX * i), cv2.COLOR_RGB2BGR) for i in range(PAN_FRAMES)]
    frames += frames[::-1]
    depth = np.full((height, width), 0.8, np.float32)
    fields = vars(_camera_info(width, height))
    info_msg = CameraInfo(width=width, height=height, k=fields["k"], p=fields["p"], d=fields["d"], r=fields["r"])
    info_msg.distortion_model = "plumb_bob"
    ros = RosClient("pop_bench_tracking_camera")
    try:
        colour_pub = ros.publisher(Image, f"/{namespace}/image")
        depth_pub = ros.publisher(Image, f"/{namespace}/depth")
        info_pub = ros.publisher(CameraInfo, f"/{namespace}/camera_info")

        def publish_frame(index: int) -> None:
            stamp = ros.now_stamp()
            colour = from_array(frames[index % len(frames)], "bgr8")
            depth_msg = from_array(depth, "32FC1")
            for msg in (colour, depth_msg, info_msg):
                msg.header.stamp, msg.header.frame_id = stamp, "bench_optical"
            info_pub.publish(info_msg)
            colour_pub.publish(colour)
            depth_pub.publish(depth_msg)

        publish_at_rate(publish_frame, rate_hz, seconds)
    finally:
        ros.close()
    return 0


def camera_environment() -> dict:
    """The camera process's environment: the user's Fast DDS profile if one is set, else the one
    pop_ros ships for large images (config/fastdds_large_images.xml). With Fast DDS's built-in
    512 KiB shared-memory segment about two colour frames in three of a 640x480, 30 Hz camera with
    depth never reach the node; that would be measuring the transport, not the node."""
    from pop_ros.paths import large_images_dds_environment

    return dict(os.environ) | large_images_dds_environment(os.environ)


def dds_profile(environment: dict) -> str:
    """The Fast DDS profile a process with `environment` loads ('' for none)."""
    from pop_ros.paths import FASTDDS_PROFILE_VARIABLES

    return next((environment[v] for v in FASTDDS_PROFILE_VARIABLES if environment.get(v)), "")


def run_tracking_stream(preset: str, seconds: float, query_rate_hz: float, camera: tuple, progress) -> dict:
    """pop_node (in this process) with continuous_tracking on, the standing query at `query_rate_hz`,
    the camera `(width, height, rate, target share)` in another process; measured after a warm-up."""
    from pop_ros.clients.ros_client import LIBRARY
    from pop_ros.clients.testing import node_beside_client
    from pop_ros_interfaces.msg import PartPointResult

    width, height, rate_hz, share = camera
    namespace = f"track{width}"
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    parameters = [f"preset:={preset}", "autostart:=false", f"support_library:={LIBRARY}",
                  "continuous_support_set:=mug_handle", f"continuous_rate:={query_rate_hz}",
                  "continuous_tracking:=true", "image_reliability:=reliable", "max_frame_age:=0.0"]  # fmt: skip
    with node_beside_client(namespace, "pop_bench_tracking_listener", parameters) as (ros, node):
        process = None
        try:
            results = ros.collect(PartPointResult, f"/{namespace}/pop_node/result", qos=1000)
            warmup = min(5.0, seconds / 5)
            progress(f"tracking: {width}x{height} camera at {rate_hz:.0f} Hz (own process) for {seconds:.0f} s")
            command = [sys.executable, "-m", "pop_ros.bench.tracking", "--serve-camera", namespace]
            command += [str(width), str(height), str(rate_hz), str(seconds)]
            process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=camera_environment())
            skipped = []
            first, last, camera_report = camera_window(
                node,
                process,
                warmup,
                seconds,
                on_start=lambda: (results.clear(), skipped.append(node.tracking.skipped_total)),
            )
            window = (first.stamp_s, last.stamp_s)
            frames = (last.seq - first.seq, node.tracking.skipped_total - skipped[0])
            return stream_report(list(results), camera_report, frames, window, camera)
        finally:
            if process is not None and process.poll() is None:
                process.kill()


def camera_window(node, process, warmup: float, seconds: float, on_start) -> tuple:
    """The window a streaming run measures: from the newest frame the node has `warmup` s after its
    first one (the camera process's start-up is not in it; `on_start()` is called there, to clear
    what is counted) to the last frame received once the camera process has ended. Returns (first
    Frame, last Frame, the camera's report: frames published, seconds)."""
    deadline = time.monotonic() + 120.0
    while node.camera.latest is None and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    time.sleep(warmup)
    first = node.camera.latest
    on_start()
    output, _ = process.communicate(timeout=seconds + 120)
    time.sleep(0.5)  # the last frames' answers
    last = node.camera.latest
    if first is None or last is None or last.seq <= first.seq:
        raise RuntimeError(f"the camera's frames did not reach the node: {output[-500:]}")
    return first, last, json.loads(output.strip().splitlines()[-1])


def in_window(results: list, window: tuple[float, float]) -> list:
    """The results about frames stamped within `window` (first, last], seconds."""
    from pop_ros.messages.capture import stamp_seconds

    return [r for r in results if window[0] < stamp_seconds(r.header.stamp) <= window[1]]


def stream_report(received: list, camera_report: dict, frames: tuple[int, int], window: tuple, camera: tuple) -> dict:
    """One streaming run's figures: the ~/result messages `received` about frames stamped within
    `window` (first, last frame stamp, seconds), the camera process's report (frames published,
    seconds) and the node's `frames` in the window (received by the colour callback, skipped by the
    tracking thread because they came while it was busy)."""
    width, height, rate_hz, share = camera
    frames_received, frames_skipped = frames
    measured = window[1] - window[0]
    received = in_window(received, window)
    reasons = collections.Counter(
        r.message.removeprefix("track lost: ").split(":")[0] for r in received if r.tracked and not r.success
    )
    tracked = [r for r in received if r.tracked and r.success]
    lost = [r for r in received if r.tracked and not r.success]
    rate = len(tracked) / measured
    published = camera_report["published"] * measured / camera_report["seconds"]  # at the rate it kept
    return {
        "camera": f"{width}x{height} at {rate_hz:g} Hz",
        "seconds_measured": measured,
        # What the camera process managed on this machine, and what reached the node's callback.
        "frames_published": round(published),
        "frames_received": frames_received,
        "frames_skipped_by_the_tracker": frames_skipped,
        "tracked_answers": len(tracked),
        "tracked_with_3d": sum(r.has_3d for r in tracked),
        "tracks_lost": len(lost),
        # why, by the reason's first words ("too few features left", "the point left the image", ...)
        "lost_reasons": dict(reasons),
        "full_answers": sum(not r.tracked for r in received),
        "tracked_per_second": rate,
        "share_of_camera_rate": rate / rate_hz,
        "share_of_frames_published": rate * measured / published if published else 0.0,
        "target_share": share,
        # the camera process's Fast DDS profile: its shared-memory segment decides what arrives
        "camera_dds_profile": dds_profile(camera_environment()),
        "load_average": os.getloadavg()[0],
        "cpus": os.cpu_count(),
    }


def run_tracking_streams(preset: str, seconds: float, query_rate_hz: float, progress) -> list[dict]:
    return [run_tracking_stream(preset, seconds, query_rate_hz, camera, progress) for camera in TRACKING_CAMERAS]


def table_lines(streams: list[dict]) -> list[str]:
    """The streaming section's tracking lines."""
    return [
        f"tracking, {s['camera']}: {s['tracked_per_second']:.1f} tracked answers/s "
        f"({s['share_of_camera_rate']:.2f} x the camera's rate, target >= {s['target_share']}: "
        f"{'met' if s['share_of_camera_rate'] >= s['target_share'] else 'NOT met'}; the camera published "
        f"{s['frames_published']} frames, the node received {s['frames_received']}, the tracker skipped "
        f"{s['frames_skipped_by_the_tracker']}), {s['tracked_with_3d']} of "
        f"{s['tracked_answers']} with 3D, {s['tracks_lost']} lost, {s['full_answers']} full answers; "
        f"load average {s['load_average']:.1f} on {s['cpus']} CPUs"
        for s in streams
    ]


if __name__ == "__main__":
    if len(sys.argv) == 7 and sys.argv[1] == "--serve-camera":
        name, w, h, hz, secs = sys.argv[2:]
        sys.exit(serve_camera(name, int(w), int(h), float(hz), float(secs)))
    print("usage: python -m pop_ros.bench.tracking --serve-camera NAMESPACE WIDTH HEIGHT RATE SECONDS", file=sys.stderr)
    sys.exit(2)
