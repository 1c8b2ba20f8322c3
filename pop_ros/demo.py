"""`make demo`: start pop_node, replay the sample scenes as a camera, ask it to point, save the results.

The node runs as it would on a robot (its own process, the shipped params file and support
library). This script plays the camera: the sample scenes at 10 Hz as `bgr8` frames with a
synthetic depth plane (0.8 m) and camera_info, then calls `~/point_to_part` for each support set
on the latest frame and writes `demo_out/heatmap.png` (the node's own heatmap topic),
`demo_out/heatmap_<set>.png` and `demo_out/result.json`.

The real default preset is used when its weights are in the local Hugging Face cache (or are
local folders); otherwise the tiny random preset, and then every point is meaningless.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import threading
import time

import cv2
import numpy as np

BANNER = """
==============================================================================================
  DEMO ON RANDOM WEIGHTS: the weights of preset {wanted!r} are not in the local cache, so this
  demo runs the 'tiny' preset (random models). It shows the plumbing: camera in, service, 3D
  point, heatmap out. The points are meaningless. See README "Real models" for the real thing.
==============================================================================================
"""


def weights_cached(preset: str) -> bool:
    """True when both models of `preset` are local folders or already in the Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    from pop_ros.models.presets import get_preset

    config = get_preset(preset)
    for repo in (config.mllm, config.visual):
        if repo.startswith("tiny:") or os.path.isdir(os.path.expanduser(repo)):
            continue
        if not isinstance(try_to_load_from_cache(repo, "config.json"), str):
            return False
    return True


def main(argv: list[str] | None = None) -> int:
    from pop_ros.models.presets import DEFAULT_PRESET, PRESETS

    parser = argparse.ArgumentParser(prog="pop-demo", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("demo_out"))
    parser.add_argument(
        "--preset", choices=sorted(PRESETS), help="default: the real default preset if cached, else tiny"
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="how long to stream each scene before asking")
    args = parser.parse_args(argv)
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")

    preset = args.preset or (DEFAULT_PRESET if weights_cached(DEFAULT_PRESET) else "tiny")
    if preset.startswith("tiny"):
        print(BANNER.format(wanted=args.preset or DEFAULT_PRESET), file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        results = run_demo(preset, args.out, args.seconds)
    except RuntimeError as error:
        print(f"demo failed: {error}", file=sys.stderr)
        return 1
    print(json.dumps({"preset": preset, "results": results}, indent=2))
    print(f"wrote {args.out / 'heatmap.png'} and {args.out / 'result.json'}", file=sys.stderr)
    return 0


def run_demo(preset: str, out: pathlib.Path, seconds: float) -> list[dict]:
    from sensor_msgs.msg import CameraInfo, Image

    from pop_ros.image_conversion import from_array, to_rgb8
    from pop_ros.paths import SAMPLE_DIR
    from pop_ros.ros_client import LIBRARY, NodeProcess, RosClient
    from pop_ros_interfaces.msg import PartPointResult
    from pop_ros_interfaces.srv import ListSupportSets, PointToPart

    scenes = sorted(SAMPLE_DIR.glob("scene_*.png"))
    if not scenes:
        raise RuntimeError(f"no sample scenes in {SAMPLE_DIR}")
    node = NodeProcess("-p", f"preset:={preset}", "-p", f"support_library:={LIBRARY}", log_path=out / "node.log")
    client = RosClient("pop_demo_camera")
    try:
        try:
            listing = client.call(
                ListSupportSets, "/pop_node/list_support_sets", ListSupportSets.Request(), timeout=600
            )
        except TimeoutError as error:
            raise RuntimeError(f"pop_node did not come up; its log: {out / 'node.log'}") from error
        heatmaps, summaries = (
            client.collect(Image, "/pop_node/heatmap"),
            client.collect(PartPointResult, "/pop_node/result"),
        )
        image_pub = client.publisher(Image, "image")
        depth_pub = client.publisher(Image, "depth")
        info_pub = client.publisher(CameraInfo, "camera_info")
        results = []
        for scene_path in scenes:
            bgr = cv2.imread(str(scene_path))
            height, width = bgr.shape[:2]
            depth = np.full((height, width), 800, np.uint16)  # 16UC1 millimetres: a wall 0.8 m away
            info = CameraInfo(width=width, height=height, distortion_model="plumb_bob")
            info.k = [300.0, 0.0, width / 2, 0.0, 300.0, height / 2, 0.0, 0.0, 1.0]
            stop = threading.Event()

            def stream(bgr=bgr, depth=depth, info=info, stop=stop):
                while not stop.is_set():  # a 10 Hz camera with aligned depth
                    stamp = client.now_stamp()
                    for msg, publisher in ((info, info_pub), (from_array(depth, "16UC1"), depth_pub)):
                        msg.header.stamp, msg.header.frame_id = stamp, "demo_camera_color_optical_frame"
                        publisher.publish(msg)
                    frame = from_array(bgr, "bgr8")
                    frame.header.stamp, frame.header.frame_id = stamp, "demo_camera_color_optical_frame"
                    image_pub.publish(frame)
                    stop.wait(0.1)

            streamer = threading.Thread(target=stream, daemon=True)
            streamer.start()
            time.sleep(seconds)
            for support_set in listing.names:
                response = client.call(
                    PointToPart, "/pop_node/point_to_part", PointToPart.Request(support_set=support_set)
                )
                if not response.success:
                    raise RuntimeError(f"{scene_path.name}, {support_set}: {response.message}")
                time.sleep(0.3)  # the heatmap and result topics follow the answer
                stamp = (response.header.stamp.sec, response.header.stamp.nanosec)
                heatmap = next((m for m in heatmaps if (m.header.stamp.sec, m.header.stamp.nanosec) == stamp), None)
                summary = next((m for m in summaries if (m.header.stamp.sec, m.header.stamp.nanosec) == stamp), None)
                if heatmap is not None:
                    png = out / f"heatmap_{scene_path.stem}_{support_set}.png"
                    cv2.imwrite(str(png), cv2.cvtColor(to_rgb8(heatmap), cv2.COLOR_RGB2BGR))
                results.append(
                    {
                        "scene": scene_path.name,
                        "support_set": support_set,
                        "query": summary.query if summary else "",
                        "u": round(response.u, 1),
                        "v": round(response.v, 1),
                        "score": round(response.score, 4),
                        "has_3d": response.has_3d,
                        "point_m": [
                            round(c, 4)
                            for c in (response.point.point.x, response.point.point.y, response.point.point.z)
                        ],
                        "frame_id": response.header.frame_id,
                        "total_ms": round(summary.total_ms, 1) if summary else None,
                        "message": response.message,
                    }
                )
            stop.set()
            streamer.join()
        first = out / f"heatmap_{scenes[0].stem}_{listing.names[0]}.png"
        if first.exists():
            (out / "heatmap.png").write_bytes(first.read_bytes())
        else:
            raise RuntimeError("no heatmap was received on /pop_node/heatmap")
        report = {"preset": preset, "random_weights": preset.startswith("tiny"), "results": results}
        (out / "result.json").write_text(json.dumps(report, indent=2))
        return results
    finally:
        client.close()
        node.stop()


if __name__ == "__main__":
    sys.exit(main())
