"""How many answers keep their 3D point when a query takes as long as a real model's (issue 33).

An in-process pop_node (tiny preset, random weights: this measures plumbing, never pointing) on a
RealSense-like stream published here: 30 Hz colour, aligned depth (a plane at 1.25 m) and
camera_info on the same stamps. Every query is made `--delay` seconds slower inside the models (what
the tiny preset at resolution 1024 takes on a CPU, 0.7 s), then `--queries` ~/point_to_part calls
are made `--concurrent` at a time. Prints how many answered, how many with a 3D point, the reasons of
those without, and how old their frames were when the answer came back.

    python tools/measure_latency_3d.py            # 20 queries, 4 at a time, 0.7 s each, 30 Hz
    python tools/measure_latency_3d.py --delay 1.5 --concurrent 2
    # the issue's setting: a slow tiny preset instead of an injected delay
    python tools/measure_latency_3d.py --delay 0 --param resolution:=1024 --param frame_cache_size:=0

Runs on any checkout (it uses only the node's services and topics), so the same command measures
the code before and after a change."""

from __future__ import annotations

import argparse
import collections
import os
import threading
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--delay", type=float, default=0.7, help="seconds added to every query (default 0.7)")
    parser.add_argument("--queries", type=int, default=20, help="queries in all (default 20)")
    parser.add_argument("--concurrent", type=int, default=4, help="queries sent at once (default 4)")
    parser.add_argument("--rate", type=float, default=30.0, help="camera rate, Hz (default 30)")
    parser.add_argument("--max-frame-age", type=float, default=0.3, help="the node's max_frame_age (default 0.3)")
    parser.add_argument("--param", action="append", default=[], metavar="NAME:=VALUE", help="a node parameter")
    args = parser.parse_args()
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import cv2
    from sensor_msgs.msg import CameraInfo, Image

    from pop_ros.clients.ros_client import LIBRARY
    from pop_ros.clients.testing import node_in_process
    from pop_ros.messages.image_conversion import from_array
    from pop_ros.paths import SAMPLE_DIR
    from pop_ros_interfaces.srv import PointToPart

    overrides = {
        "preset": "tiny",
        "autostart": "false",
        "support_library": str(LIBRARY),
        "max_frame_age": str(args.max_frame_age),
        "busy_timeout": "120.0",
        "max_waiting_queries": str(max(args.concurrent, 1)),
        "min_score": "0.0",
    }
    parameters = [f"{name}:={value}" for name, value in overrides.items()] + list(args.param)
    ros, node = node_in_process("latency", "latency_client", parameters)
    pointer = node.pointer
    for name in ("point", "point_many"):  # the models, slowed: a real model's inference time
        original = getattr(pointer, name)

        def slowed(*a, _original=original, **k):
            time.sleep(args.delay)
            return _original(*a, **k)

        if args.delay > 0:
            setattr(pointer, name, slowed)

    scene = cv2.imread(str(SAMPLE_DIR / "scene_0.png"))  # BGR, 320x240
    height, width = scene.shape[:2]
    colour = from_array(scene, "bgr8")
    depth = from_array(np.full((height, width), 1.25, np.float32), "32FC1")
    info = CameraInfo(width=width, height=height, k=[300.0, 0, 160.0, 0, 300.0, 120.0, 0, 0, 1.0])
    info.distortion_model = "plumb_bob"
    for msg in (colour, depth, info):
        msg.header.frame_id = "camera_color_optical_frame"
    publishers = [
        ros.publisher(Image, "/latency/image"),
        ros.publisher(Image, "/latency/depth"),
        ros.publisher(CameraInfo, "/latency/camera_info"),
    ]
    stop = threading.Event()

    def stream() -> None:
        while not stop.wait(1.0 / args.rate):
            stamp = ros.now_stamp()
            for publisher, msg in zip(publishers, (colour, depth, info), strict=True):
                msg.header.stamp = stamp
                publisher.publish(msg)

    threading.Thread(target=stream, daemon=True).start()
    deadline = time.monotonic() + 30
    while (node.camera.latest is None or node.camera.camera_info is None) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # a second of stream, so the depth buffer is as full as it gets

    responses, ages, started = [], [], time.monotonic()
    service = "/latency/pop_node/point_to_part"
    for start in range(0, args.queries, args.concurrent):
        count = min(args.concurrent, args.queries - start)
        futures = [
            ros.call_async(PointToPart, service, PointToPart.Request(query="handle", support_set="mug_handle"))
            for _ in range(count)
        ]
        for future in futures:
            response = ros.wait(future, 300.0)
            now = node.get_clock().now().nanoseconds * 1e-9
            responses.append(response)
            if response.header.stamp.sec:
                ages.append(now - (response.header.stamp.sec + response.header.stamp.nanosec * 1e-9))
    stop.set()

    elapsed = time.monotonic() - started
    answered = sum(r.success for r in responses)
    with_3d = sum(r.success and r.has_3d for r in responses)
    reasons = collections.Counter(
        r.message.split(" (")[0] if "nearest depth" not in r.message else "no 3D point: nearest depth too far"
        for r in responses
        if not (r.success and r.has_3d)
    )
    print(
        f"{len(responses)} queries, {args.concurrent} at a time, {args.delay} s added to each, "
        f"{args.rate:.0f} Hz stream, "
        f"max_frame_age {args.max_frame_age} s"
    )
    print(f"answered: {answered}/{len(responses)}; with a 3D point: {with_3d}/{len(responses)}")
    # The models serve one query at a time: a query's own time is the run's divided by their number.
    print(f"{elapsed:.1f} s in all: {elapsed / max(len(responses), 1):.2f} s a query")
    for reason, count in reasons.most_common():
        print(f"  {count} x {reason}")
    if ages:
        print(f"frame age when the answer came back: median {np.median(ages):.2f} s, max {max(ages):.2f} s")
    os._exit(0)  # no interpreter teardown of torch objects (as pop_node's stop)


if __name__ == "__main__":
    main()
