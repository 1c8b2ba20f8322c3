"""`make demo`: start pop_node, replay the sample scenes as a camera, ask it to point, save the results.

The node runs as it would on a robot (its own process, the shipped params file and support
library). This script plays the camera: the sample scenes at 10 Hz as `bgr8` frames with a
synthetic depth plane (0.8 m) and camera_info, then calls `~/point_to_part` for each support set
on the latest frame and writes, in `demo_out/`: one picture per scene and query,
`<scene>_<set>.png` (the query, the pixel, the 3D point and the score above the node's own heatmap
overlay, the set's exemplars with their clicks beside it, and the random-weights warning when it
applies), `index.html` and `contact_sheet.png` showing all of them, and `result.json`.

The real default preset is used when its weights are in the local Hugging Face cache (or are
local folders); otherwise the tiny random preset, and then every point is meaningless.
"""

from __future__ import annotations

import argparse
import contextlib
import html
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
    for stale in (*args.out.glob("heatmap*.png"), *args.out.glob("scene_*.png"), args.out / CONTACT_SHEET):
        stale.unlink(missing_ok=True)  # a rerun (or an older demo's heatmap copies) leaves no stale picture
    try:
        results = run_demo(preset, args.out, args.seconds)
    except RuntimeError as error:
        print(f"demo failed: {error}", file=sys.stderr)
        return 1
    print(json.dumps({"preset": preset, "results": results}, indent=2))
    print(
        f"wrote {len(results)} pictures, {args.out / 'index.html'}, {args.out / CONTACT_SHEET} and "
        f"{args.out / 'result.json'}",
        file=sys.stderr,
    )
    return 0


def run_demo(preset: str, out: pathlib.Path, seconds: float) -> list[dict]:
    from pop_ros.clients.ros_client import LIBRARY, RosClient
    from pop_ros.clients.testing import NodeProcess
    from pop_ros.paths import SAMPLE_DIR
    from pop_ros.supports import SupportLibrary
    from pop_ros.visualize import contact_sheet

    scenes = sorted(SAMPLE_DIR.glob("scene_*.png"))
    if not scenes:
        raise RuntimeError(f"no sample scenes in {SAMPLE_DIR}")
    # Raw frames above the host's UDP receive buffer are lost best-effort between processes on an
    # untuned machine (docs/interfaces.md: DDS tuning); this camera publishes reliably, so the node listens so.
    node = NodeProcess(
        "-p", f"preset:={preset}", "-p", f"support_library:={LIBRARY}", "-p", "image_reliability:=reliable",
        log_path=out / "node.log",
    )  # fmt: skip
    client = RosClient("pop_demo_camera")
    try:
        try:
            listing = client.wait_for_node(timeout=600)
        except TimeoutError as error:
            raise RuntimeError(f"pop_node did not come up; its log: {out / 'node.log'}") from error
        camera = DemoCamera(client)
        library = SupportLibrary.load(LIBRARY)  # the node's library: its exemplars go beside each target
        random_weights = preset.startswith("tiny")
        results, pictures = [], []
        for scene_path in scenes:
            with camera.streaming(cv2.imread(str(scene_path))):
                time.sleep(seconds)
                for support_set in listing.names:
                    result, panel = ask(client, camera, scene_path, support_set)
                    picture = result_picture(result, panel, library, preset, random_weights)
                    result["picture"] = write_picture(out / f"{scene_path.stem}_{support_set}.png", picture)
                    results.append(result)
                    pictures.append(picture)
        write_picture(out / CONTACT_SHEET, contact_sheet(pictures))
        (out / "index.html").write_text(index_html(results, preset, random_weights))
        report = {"preset": preset, "random_weights": random_weights, "results": results}
        (out / "result.json").write_text(json.dumps(report, indent=2))
        return results
    finally:
        client.close()
        node.stop()


class DemoCamera:
    """A 10 Hz camera with aligned 16UC1 depth (a wall 0.8 m away) and camera_info, in a thread."""

    FRAME_ID = "camera_color_optical_frame"  # what realsense-ros names it; config/pop_ros.rviz shows it

    def __init__(self, client):
        from sensor_msgs.msg import CameraInfo, Image

        from pop_ros_interfaces.msg import PartPointResult

        self.client = client
        self.image_pub = client.publisher(Image, "image")
        self.depth_pub = client.publisher(Image, "depth")
        self.info_pub = client.publisher(CameraInfo, "camera_info")
        self.heatmaps = client.collect(Image, "/pop_node/heatmap")
        self.summaries = client.collect(PartPointResult, "/pop_node/result")

    @contextlib.contextmanager
    def streaming(self, bgr: np.ndarray):
        from sensor_msgs.msg import CameraInfo

        from pop_ros.messages.image_conversion import from_array

        height, width = bgr.shape[:2]
        depth = np.full((height, width), 800, np.uint16)
        info = CameraInfo(width=width, height=height, distortion_model="plumb_bob")
        info.k = [300.0, 0.0, width / 2, 0.0, 300.0, height / 2, 0.0, 0.0, 1.0]
        stop = threading.Event()

        def stream():
            while not stop.is_set():
                stamp = self.client.now_stamp()
                frame = from_array(bgr, "bgr8")
                for msg, publisher in (
                    (info, self.info_pub),
                    (from_array(depth, "16UC1"), self.depth_pub),
                    (frame, self.image_pub),
                ):
                    msg.header.stamp, msg.header.frame_id = stamp, self.FRAME_ID
                    publisher.publish(msg)
                stop.wait(0.1)

        streamer = threading.Thread(target=stream, daemon=True)
        streamer.start()
        try:
            yield
        finally:  # stop publishing before anything is torn down
            stop.set()
            streamer.join()

    def published_for(self, stamp):
        """The node's heatmap and result messages for the answer with this stamp."""
        key = (stamp.sec, stamp.nanosec)
        heatmap = next((m for m in self.heatmaps if (m.header.stamp.sec, m.header.stamp.nanosec) == key), None)
        summary = next((m for m in self.summaries if (m.header.stamp.sec, m.header.stamp.nanosec) == key), None)
        return heatmap, summary

    def wait_published_for(self, stamp, timeout: float):
        """`published_for`, waiting up to `timeout` seconds for both (the topics follow the answer)."""
        deadline = time.monotonic() + timeout
        heatmap, summary = self.published_for(stamp)
        while (heatmap is None or summary is None) and time.monotonic() < deadline:
            time.sleep(0.05)
            heatmap, summary = self.published_for(stamp)
        return heatmap, summary


def ask(client, camera: DemoCamera, scene_path: pathlib.Path, support_set: str) -> tuple[dict, np.ndarray]:
    """Ask for `support_set`'s part in the latest frame (one retry if that frame was late or missing):
    the answer as a dict, and the node's heatmap overlay of it (BGR)."""
    from pop_ros.messages.image_conversion import to_rgb8
    from pop_ros_interfaces.srv import PointToPart

    for attempt in range(2):
        response = client.call(PointToPart, "/pop_node/point_to_part", PointToPart.Request(support_set=support_set))
        transient = "stale" in response.message or "no camera frame" in response.message
        if response.success or not transient or attempt:
            break
        time.sleep(0.5)
    if not response.success:
        raise RuntimeError(f"{scene_path.name}, {support_set}: {response.message}")
    heatmap, summary = camera.wait_published_for(response.header.stamp, timeout=5.0)
    if heatmap is None:
        raise RuntimeError(f"{scene_path.name}, {support_set}: no heatmap was received on /pop_node/heatmap")
    point = response.point.point
    return {
        "scene": scene_path.name,
        "support_set": support_set,
        "query": summary.query if summary else "",
        "u": round(response.u, 1),
        "v": round(response.v, 1),
        "score": round(response.score, 4),
        "has_3d": response.has_3d,
        "point_m": [round(c, 4) for c in (point.x, point.y, point.z)],
        "frame_id": response.header.frame_id,
        "total_ms": round(summary.total_ms, 1) if summary else None,
        "message": response.message,
    }, cv2.cvtColor(to_rgb8(heatmap), cv2.COLOR_RGB2BGR)


CONTACT_SHEET = "contact_sheet.png"


def result_picture(result: dict, panel_bgr: np.ndarray, library, preset: str, random_weights: bool) -> np.ndarray:
    """The explained picture of one answer: its query, pixel, 3D point and score over the node's
    overlay, beside the exemplars of its set (all of them: the shipped sets hold max_shots = 3)."""
    from pop_ros.visualize import explained_picture

    exemplars = library.get(result["support_set"]).exemplars
    return explained_picture(
        panel_bgr,
        query=result["query"],
        score=result["score"],
        point_uv=(result["u"], result["v"]),
        supports=[(exemplar.image, exemplar.click) for exemplar in exemplars],
        support_set=result["support_set"],
        point_m=tuple(result["point_m"]) if result["has_3d"] else None,
        random_weights=random_weights,
        caption=f"{result['scene']}, preset {preset}, frame {result['frame_id']}",
    )


def write_picture(path: pathlib.Path, picture: np.ndarray) -> str:
    if not cv2.imwrite(str(path), picture):
        raise RuntimeError(f"could not write {path}")
    return path.name


def index_html(results: list[dict], preset: str, random_weights: bool) -> str:
    """A page showing every picture with its scene, query and score (relative links: the folder moves)."""
    warning = (
        "<p style='color:#c00;font-weight:bold'>RANDOM WEIGHTS: the models are random; every point is "
        "meaningless. The pictures show the plumbing only.</p>"
        if random_weights
        else ""
    )
    figures = "\n".join(
        f"<figure><a href='{html.escape(r['picture'])}'><img src='{html.escape(r['picture'])}' width='560'></a>"
        f"<figcaption>{html.escape(r['scene'])}: &ldquo;{html.escape(r['query'])}&rdquo; (set "
        f"{html.escape(r['support_set'])}), score {r['score']:.3f}</figcaption></figure>"
        for r in results
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>pop_ros demo ({html.escape(preset)})</title>"
        "<style>figure{display:inline-block;margin:8px}</style></head><body>"
        f"<h1>pop_ros demo: preset {html.escape(preset)}</h1>{warning}"
        f"<p>All pictures on one sheet: <a href='{CONTACT_SHEET}'>{CONTACT_SHEET}</a>.</p>\n{figures}\n</body></html>\n"
    )


if __name__ == "__main__":
    sys.exit(main())
