"""pop-bag: part queries over a ROS 2 recording; pop-teach: teach a part from one of its frames.

pop-bag rec/ --query "handle of the mug" --support-set mug_handle --library lib.yaml --out results/
pop-bag rec.mcap --query "handle of the mug" --query "rim of the mug" --support mug.png:120,88 --rate 2 --out r/
pop-teach rec/ --time 3.5 --click 320,240 --set mug_handle --library my_library.yaml --query "handle of the mug"
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

from pop_ros.cli.common import CliError, add_model_arguments, model_overrides, run_cli
from pop_ros.locate import LocateSettings

DEFAULTS = LocateSettings()


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def _times(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    if not values or any(not value >= 0 for value in values):
        raise argparse.ArgumentTypeError(f"expected seconds from the start, e.g. 1.5,3,10; got {text!r}")
    return values


def _click(text: str) -> tuple[float, float]:
    try:
        u_text, v_text = text.split(",")
        return float(u_text), float(v_text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected U,V pixels, e.g. 320,240; got {text!r}") from error


def add_topic_arguments(parser: argparse.ArgumentParser, depth: bool = True) -> None:
    group = parser.add_argument_group("topics (default: the RealSense names, else the only matching topic)")
    group.add_argument("--image-topic", help="colour topic, sensor_msgs/Image or CompressedImage")
    if depth:
        group.add_argument("--depth-topic", help="depth aligned to colour (16UC1 mm or 32FC1 m)")
        group.add_argument("--camera-info-topic", help="the colour camera's camera_info")
        group.add_argument("--no-depth", action="store_true", help="2D answers only (no depth, no camera_info)")


def add_locate_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("3D point and pose (pop_node's parameters of the same names)")
    group.add_argument("--depth-max-dt", type=float, default=DEFAULTS.depth_max_dt, help="seconds")
    group.add_argument("--depth-window", type=int, default=DEFAULTS.depth_window, help="pixels")
    group.add_argument("--pose-window", type=int, default=DEFAULTS.pose_window, help="pixels, 0 = no pose")
    group.add_argument("--pose-inlier-distance", type=float, default=DEFAULTS.pose_inlier_distance, help="metres")
    group.add_argument("--pose-min-inlier-ratio", type=float, default=DEFAULTS.pose_min_inlier_ratio)
    group.add_argument(
        "--raw-images", action="store_true", help="colour is not rectified (image_is_rectified false): undistort"
    )
    group.add_argument("--min-score", type=float, default=0.0, help="answers below it are rejected")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pop-bag", description=__doc__.split("\n")[0])
    parser.add_argument("recording", type=pathlib.Path, help="bag folder (sqlite3 or MCAP) or .mcap file")
    parser.add_argument("--query", action="append", default=[], help="a part in words (repeatable: one frame, many)")
    parser.add_argument("--support", action="append", default=[], help="IMAGE:U,V exemplar click (repeatable)")
    parser.add_argument("--support-set", help="a set name from --library")
    parser.add_argument("--library", type=pathlib.Path, help="support library YAML")
    parser.add_argument("--shots", type=int, help="use at most this many supports (K)")
    parser.add_argument("--out", type=pathlib.Path, required=True, help="folder for bag/, results.jsonl, heatmaps.mp4")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--every", type=_positive_int, help="every N-th colour frame (default 1: all)")
    which.add_argument("--at", type=_times, help="T1,T2,...: the first frame at or after each time (s from start)")
    which.add_argument("--rate", type=float, help="frames at this rate, Hz (recording time)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_topic_arguments(parser)
    add_locate_arguments(parser)
    add_model_arguments(parser)
    args = parser.parse_args(argv)
    if args.rate is not None and not args.rate > 0:
        parser.error(f"--rate must be > 0, got {args.rate}")
    interrupted: list[bool] = []
    code = run_cli(lambda: _run_bag(args, interrupted), json_output=args.json)
    return 130 if interrupted and code == 0 else code


def _requests(args) -> list:
    """PointRequests for the queries (one per query; none given: the support set's default query)."""
    from pop_ros.cli.point import parse_support
    from pop_ros.pipeline import PointRequest
    from pop_ros.supports import read_rgb, validate_click

    if args.support and args.support_set:
        raise CliError("use --support or --support-set, not both")
    if bool(args.support_set) != bool(args.library):
        raise CliError("--support-set and --library go together")
    if not args.query and not args.support_set:
        raise CliError("give --query (repeatable), or --support-set with a default query")
    if args.shots is not None and args.shots < 1:
        raise CliError(f"--shots must be >= 1, got {args.shots}")
    supports = []
    for text in args.support:
        path, click = parse_support(text)
        image = read_rgb(path)
        supports.append((image, validate_click(list(click), image)))
    return [PointRequest(q, args.support_set, supports or None, args.shots) for q in (args.query or [""])]


def _library(args):
    from pop_ros.supports import SupportLibrary

    if not args.library:
        return None
    library = SupportLibrary.load(args.library)
    if args.support_set not in library.names():
        raise CliError(
            f"support set {args.support_set!r} is not in {args.library} (known: {', '.join(library.names())})"
        )
    for problem in library.errors:
        print(f"warning: {problem}", file=sys.stderr)
    return library


def _run_bag(args, interrupted: list) -> dict:
    from tqdm import tqdm

    from pop_ros.bag_answers import AnswerOptions, Outputs, Replay, Sampling, answer_frame, check_camera, decode_colour
    from pop_ros.image_conversion import ImageConversionError
    from pop_ros.pipeline import PartPointer
    from pop_ros.recording import Recording

    # Everything is checked before the models load.
    requests = _requests(args)
    library = _library(args)
    recording = Recording(args.recording)
    need_depth = not args.no_depth
    topics = recording.find_camera(args.image_topic, args.depth_topic, args.camera_info_topic, need_depth=need_depth)
    check_camera(recording, topics)
    sampling = Sampling(every=args.every or 1, at_s=args.at or (), rate_hz=args.rate or 0.0)
    duration_s = (recording.end_ns - recording.start_ns) * 1e-9
    late = [t for t in sampling.at_s if t > duration_s]
    if late:
        raise CliError(f"--at {','.join(map(str, late))}: after the recording's end ({duration_s:.3f} s)")
    if (args.out / "bag").exists():
        raise CliError(f"--out {args.out} holds results already (bag/); choose another folder")
    args.out.mkdir(parents=True, exist_ok=True)
    options = AnswerOptions(
        LocateSettings(
            args.depth_max_dt,
            args.depth_window,
            args.pose_window,
            args.pose_inlier_distance,
            args.pose_min_inlier_ratio,
            not args.raw_images,
        ),
        args.min_score,
        topics.camera_info or "camera_info",
    )
    pointer = PartPointer.from_preset(args.preset, library=library, **model_overrides(args))
    colour_count = recording.counts.get(topics.colour, 0)
    expected = sampling.expected(colour_count, duration_s)
    fps = args.rate or (colour_count / duration_s / sampling.every if duration_s > 0 else 1.0)
    outputs = Outputs(args.out, video_fps=max(1.0, min(30.0, fps)))
    replay = Replay(recording, topics, sampling, args.depth_max_dt if need_depth else 0.0)
    frames, started, model_s = 0, time.perf_counter(), 0.0
    try:
        with tqdm(total=expected, unit="frame", desc="pop-bag", file=sys.stderr) as progress:
            for frame in replay.frames():
                try:
                    image = decode_colour(frame.msg)
                except ImageConversionError as error:
                    print(f"warning: frame {frame.index}: {error}", file=sys.stderr)
                    continue
                model_started = time.perf_counter()
                answers = answer_frame(pointer, frame, image, requests, replay, options)
                model_s += time.perf_counter() - model_started
                for answer, result in answers:
                    outputs.write(answer, result, image, recording, frame.log_ns)
                frames += 1
                progress.update(1)
    except KeyboardInterrupt:
        interrupted.append(True)
        print(f"interrupted: kept the {outputs.answers} answers written so far in {args.out}", file=sys.stderr)
    finally:
        outputs.close()
    elapsed = time.perf_counter() - started
    if recording.cut:
        print(f"warning: {recording.cut}; answered the frames before it", file=sys.stderr)
    return {
        "recording": str(args.recording),
        "storage": recording.storage,
        "topics": {"colour": topics.colour, "depth": topics.depth, "camera_info": topics.camera_info},
        "frames": frames,
        "answers": outputs.answers,
        "answered_3d": _count_3d(args.out / "results.jsonl"),
        "out": str(args.out),
        "bag": str(outputs.bag.path),
        "video_frames": outputs.video_frames,
        "seconds": round(elapsed, 3),
        "frames_per_second": round(frames / elapsed, 3) if elapsed > 0 else 0.0,
        "model_seconds": round(model_s, 3),
        "cut": recording.cut,
        "interrupted": bool(interrupted),
        "preset": args.preset,
        "random_weights": pointer.model_config.random_weights,
    }


def _count_3d(path: pathlib.Path) -> int:
    import json

    with path.open(encoding="utf-8") as handle:
        return sum(json.loads(line)["xyz"] is not None for line in handle if line.strip())


# ---- pop-teach ---------------------------------------------------------------------------------------
def teach_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pop-teach", description="teach a part from a frame of a ROS 2 recording")
    parser.add_argument("recording", type=pathlib.Path, help="bag folder (sqlite3 or MCAP) or .mcap file")
    parser.add_argument("--time", type=float, required=True, help="seconds from the start: the first frame at or after")
    parser.add_argument("--click", type=_click, required=True, help="U,V pixel on the part (ROS pixel coordinates)")
    parser.add_argument("--set", required=True, dest="set_name", help="support set to add to (created if new)")
    parser.add_argument("--library", type=pathlib.Path, required=True, help="support library YAML (written)")
    parser.add_argument("--query", default="", help="default query of a new set")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    add_topic_arguments(parser, depth=False)
    add_model_arguments(parser)
    args = parser.parse_args(argv)
    return run_cli(lambda: _run_teach(args), json_output=args.json)


def _run_teach(args) -> dict:
    from pop_ros.bag_answers import Replay, Sampling, decode_colour
    from pop_ros.pipeline import PartPointer
    from pop_ros.recording import Recording
    from pop_ros.supports import SupportLibrary

    if not args.time >= 0:
        raise CliError(f"--time must be >= 0 seconds, got {args.time}")
    recording = Recording(args.recording)
    topics = recording.find_camera(args.image_topic, need_depth=False)
    duration_s = (recording.end_ns - recording.start_ns) * 1e-9
    if args.time > duration_s:
        raise CliError(f"--time {args.time}: after the recording's end ({duration_s:.3f} s)")
    topics.camera_info = ""
    frame = next(iter(Replay(recording, topics, Sampling(at_s=[args.time]), 0.0).frames()), None)
    if frame is None:
        raise CliError(f"no colour frame at or after {args.time} s on {topics.colour} ({recording.cut or 'none'})")
    image = decode_colour(frame.msg)
    library = SupportLibrary.load(args.library, writable=True)
    pointer = PartPointer.from_preset(args.preset, library=library, **model_overrides(args))
    # What the node's ~/teach_click does with the latest frame (features checked, then an atomic write).
    updated = pointer.add_exemplar(args.set_name, image, args.click, args.query)
    stamp = frame.msg.header.stamp
    return {
        "support_set": args.set_name,
        "num_exemplars": len(updated.exemplars),
        "library": str(library.path),
        "image": updated.exemplars[-1].source,
        "click": list(args.click),
        "frame_time_from_start": (frame.log_ns - recording.start_ns) * 1e-9,
        "stamp": stamp.sec + stamp.nanosec * 1e-9,
        "image_size": [image.shape[1], image.shape[0]],
        "topic": topics.colour,
    }


if __name__ == "__main__":
    sys.exit(main())
