"""pop-bag: part queries over a ROS 2 recording; pop-teach: teach a part from one of its frames.

pop-bag rec/ --query "handle of the mug" --support-set mug_handle --library lib.yaml --out results/
pop-bag rec.mcap --query "handle of the mug" --query "rim of the mug" --support mug.png:120,88 --rate 2 --out r/
pop-bag rec/ --library lib.yaml --query "handle of the mug@mug_handle" --query "neck of the bottle@bottle_neck" --out r/
pop-teach rec/ --time 3.5 --click 320,240 --set mug_handle --library my_library.yaml --query "handle of the mug"
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys
import time

from pop_ros.cli.common import (
    QUERY_PAIRING_HELP,
    CliError,
    add_model_arguments,
    add_query_arguments,
    check_sets,
    model_overrides,
    plan_queries,
    run_cli,
)
from pop_ros.spatial.locate import LocateSettings


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
        group.add_argument(
            "--depth-topic", help="depth aligned to colour: Image 16UC1 mm or 32FC1 m, or its compressedDepth"
        )
        group.add_argument("--camera-info-topic", help="the colour camera's camera_info")
        group.add_argument("--no-depth", action="store_true", help="2D answers only (no depth, no camera_info)")


LOCATE_PARAMETERS = (
    "depth_max_dt",
    "depth_window",
    "pose_window",
    "pose_inlier_distance",
    "pose_min_inlier_ratio",
    "image_is_rectified",
    "min_score",
)


def add_locate_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "3D point and pose: pop_node's parameters of the same names (flag, else --params-file, else the node's default)"
    )
    group.add_argument("--params-file", type=pathlib.Path, help="pop_node's parameters YAML (e.g. config/pop_ros.yaml)")
    group.add_argument("--depth-max-dt", type=float, help="seconds")
    group.add_argument("--depth-window", type=int, help="pixels")
    group.add_argument("--pose-window", type=int, help="pixels, 0 = no pose")
    group.add_argument("--pose-inlier-distance", type=float, help="metres")
    group.add_argument("--pose-min-inlier-ratio", type=float)
    group.add_argument(
        "--raw-images",
        dest="image_is_rectified",
        action="store_false",
        default=None,
        help="colour is not rectified (image_is_rectified false): pixels are undistorted with K, D, R, P",
    )
    group.add_argument("--min-score", type=float, help="answers with a lower score are rejected")


def _params_file(args) -> dict:
    """The `ros__parameters` of --params-file ({} without one)."""
    import yaml

    from_file: dict = {}
    if getattr(args, "params_file", None) is not None:
        try:
            document = yaml.safe_load(args.params_file.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as error:
            raise CliError(f"--params-file {args.params_file}: {error}") from error
        for section in document.values() if isinstance(document, dict) else ():
            if isinstance(section, dict) and isinstance(section.get("ros__parameters"), dict):
                from_file.update(section["ros__parameters"])
    return from_file


def _checked(name: str, value):
    from pop_ros.ros.parameters import check_parameter, check_type

    problem = check_type(name, value) or check_parameter(name, value)
    if problem:
        raise CliError(problem)
    return value


def pipeline_settings(args):
    """The pipeline's settings as pop_node would make them from --params-file (else the node's
    defaults), each value checked by the node's own rules."""
    from pop_ros.pipeline import PointerError
    from pop_ros.ros.parameters import PARAMETERS, pointer_settings

    from_file = _params_file(args)
    try:
        return pointer_settings(lambda name: _checked(name, from_file.get(name, PARAMETERS[name].default)))
    except (ValueError, PointerError) as error:
        raise CliError(f"--params-file {args.params_file}: {error}") from error


def grasp_settings(args, part_threshold: float):
    """The part's region and grasp settings as pop_node would make them: `part_threshold` from the
    pipeline's settings, the gripper's from --params-file (else the node's defaults), checked by the
    node's own rules."""
    from pop_ros.ros.parameters import PARAMETERS
    from pop_ros.spatial.grasp import GraspSettings

    from_file = _params_file(args)
    values = {"part_threshold": part_threshold}
    return GraspSettings.from_parameters(
        lambda name: values[name] if name in values else _checked(name, from_file.get(name, PARAMETERS[name].default))
    )


def locate_parameters(args) -> dict:
    """The node's parameters that place an answer: from the flags, else --params-file, else the node's
    defaults; checked by the node's own rules."""
    from pop_ros.ros.parameters import PARAMETERS

    from_file = _params_file(args)
    values = {}
    for name in LOCATE_PARAMETERS:
        value = getattr(args, name, None)
        values[name] = _checked(name, value if value is not None else from_file.get(name, PARAMETERS[name].default))
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pop-bag", description=__doc__.split("\n")[0], epilog=QUERY_PAIRING_HELP + " As pop-point."
    )
    parser.add_argument("recording", type=pathlib.Path, help="bag folder (sqlite3 or MCAP) or .mcap file")
    add_query_arguments(parser, "frame")
    parser.add_argument("--out", type=pathlib.Path, required=True, help="folder for bag/, results.jsonl, heatmaps.mp4")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--every", type=_positive_int, help="every N-th colour frame (default 1: all)")
    which.add_argument("--at", type=_times, help="T1,T2,...: the first frame at or after each time (s from start)")
    which.add_argument("--rate", type=float, help="frames at this rate, Hz (recording time)")
    parser.add_argument(
        "--track",
        action="store_true",
        help="continuous tracking: the chosen frames (--every/--rate/--at) get full answers, every frame between "
        "them a tracked answer followed from the last one (one query)",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_topic_arguments(parser)
    add_locate_arguments(parser)
    add_model_arguments(parser)
    args = parser.parse_args(argv)
    if args.rate is not None and not args.rate > 0:
        parser.error(f"--rate must be > 0, got {args.rate}")
    if args.track and not (args.every or args.rate or args.at):
        parser.error("--track needs --every, --rate or --at: the frames that get full answers")
    if args.track and len(args.query) > 1:
        parser.error("--track follows one part: give one --query")
    interrupted: list[bool] = []
    try:
        code = run_cli(lambda: _run_bag(args, interrupted), json_output=args.json)
    except KeyboardInterrupt:  # before the first frame (loading, checking): nothing was written
        print("interrupted", file=sys.stderr)
        return 130
    return 130 if interrupted and code == 0 else code


def _requests(args) -> list:
    """PointRequests for the queries, each with its set, paired as pop-point pairs them (one per
    query; --support-set alone: the set's default query)."""
    from pop_ros.cli.point import parse_support
    from pop_ros.pipeline import PointRequest
    from pop_ros.supports import read_rgb, validate_click

    planned = plan_queries(args)
    if args.shots is not None and args.shots < 1:
        raise CliError(f"--shots must be >= 1, got {args.shots}")
    supports = []
    for text in args.support:
        path, click = parse_support(text)
        image = read_rgb(path)
        supports.append((image, validate_click(list(click), image)))
    requests = [PointRequest(item.query, item.support_set, supports or None, args.shots) for item in planned]
    return planned, requests


def _library(args, planned):
    """The support library, every set the queries name checked in it (no model loaded)."""
    from pop_ros.supports import SupportLibrary

    if not args.library:
        return None
    library = SupportLibrary.load(args.library)
    check_sets(planned, library, args.library)
    for problem in library.errors:
        print(f"warning: {problem}", file=sys.stderr)
    return library


def _run_bag(args, interrupted: list) -> dict:
    from pop_ros.cli.bag_answers import AnswerOptions, Replay, ResultFiles
    from pop_ros.pipeline import PartPointer

    # Everything is checked before the models load.
    planned, requests = _requests(args)
    library = _library(args, planned)
    parameters = locate_parameters(args)
    recording, topics, sampling = _recording(args)
    min_score = parameters.pop("min_score")
    settings = pipeline_settings(args)  # the node's similarity, max_shots, upsample, ... as the params file says
    region = grasp_settings(args, settings.part_threshold)
    options = AnswerOptions(LocateSettings(**parameters), min_score, topics.camera_info or "camera_info", region)
    if (args.out / "bag").exists():
        raise CliError(f"--out {args.out} holds results already (bag/); choose another folder")
    args.out.mkdir(parents=True, exist_ok=True)
    pointer = PartPointer.from_preset(args.preset, settings=settings, library=library, **model_overrides(args))
    duration_s = (recording.end_ns - recording.start_ns) * 1e-9
    colour_count = recording.counts.get(topics.colour, 0)
    fps = args.rate or (colour_count / duration_s / sampling.every if duration_s > 0 else 1.0)
    outputs = ResultFiles(args.out, video_fps=max(1.0, min(30.0, fps)))
    replay = Replay(
        recording, topics, sampling, options.locate.depth_max_dt if topics.depth else 0.0, every_frame=args.track
    )
    expected = colour_count if args.track else sampling.expected(colour_count, duration_s)
    follower = None
    if args.track:
        from pop_ros.tracking.following import PartFollower

        follower = PartFollower()
    started = time.perf_counter()
    try:
        counts = _answer_frames(pointer, replay, requests, options, outputs, expected, follower)
    except KeyboardInterrupt:
        interrupted.append(True)
        counts = outputs.counts
        print(f"interrupted: kept the {outputs.answers} answers written so far in {args.out}", file=sys.stderr)
    finally:
        outputs.close()
    elapsed = time.perf_counter() - started
    if recording.cut:
        print(f"warning: {recording.cut}", file=sys.stderr)
    return {
        "recording": str(args.recording),
        "storage": recording.storage,
        "topics": {"colour": topics.colour, "depth": topics.depth, "camera_info": topics.camera_info},
        "frames": counts["frames"],
        "answers": outputs.answers,
        "answered_3d": outputs.answered_3d,
        "tracked": counts.get("tracked", 0),
        "tracks_lost": counts.get("tracks_lost", 0),
        "out": str(args.out),
        "bag": str(outputs.bag.path),
        "video_frames": outputs.video_frames,
        "seconds": round(elapsed, 3),
        "frames_per_second": round(counts["frames"] / elapsed, 3) if elapsed > 0 else 0.0,
        # The models' share: the pipeline's own timings of every frame (shared stages once) and query.
        "pipeline_seconds": round(counts["pipeline_ms"] / 1000.0, 3),
        "cut": recording.cut,
        "interrupted": bool(interrupted),
        "parameters": {**parameters, "min_score": min_score, **dataclasses.asdict(region)},
        "preset": args.preset,
        "random_weights": pointer.model_config.random_weights,
    }


def _recording(args):
    """(Recording, CameraTopics, Sampling), checked: topics there, decodable, aligned, times inside."""
    from pop_ros.cli.bag_answers import Sampling, check_camera
    from pop_ros.messages.recording import Recording

    recording = Recording(args.recording)
    topics = recording.find_camera(
        args.image_topic, args.depth_topic, args.camera_info_topic, need_depth=not args.no_depth
    )
    check_camera(recording, topics)
    sampling = Sampling(every=args.every or 1, at_s=args.at or (), rate_hz=args.rate or 0.0)
    duration_s = (recording.end_ns - recording.start_ns) * 1e-9
    late = [t for t in sampling.at_s if t > duration_s]
    if late:
        raise CliError(f"--at {','.join(map(str, late))}: after the recording's end ({duration_s:.3f} s)")
    return recording, topics, sampling


def _answer_frames(pointer, replay, requests, options, outputs, expected: int, follower=None) -> dict:
    """Answer every chosen frame, writing each answer as it comes; progress on stderr. With a
    `follower` (--track) the frames between the chosen ones get tracked answers."""
    from tqdm import tqdm

    from pop_ros.cli import bag_answers
    from pop_ros.messages.image_conversion import ImageConversionError

    counts = outputs.counts
    with tqdm(total=expected, unit="frame", desc="pop-bag", file=sys.stderr) as progress:
        for frame in replay.frames():
            try:
                image = bag_answers.decode_colour(frame.msg)
            except ImageConversionError as error:
                print(f"warning: colour frame {frame.index}: {error}", file=sys.stderr)
                continue
            if not frame.chosen:
                _track(follower, frame, image, replay, options, outputs)
                progress.update(1)
                continue
            answers = bag_answers.answer_frame(pointer, frame, image, requests, replay, options)
            results = [result for _, result in answers if result is not None]
            if results:
                counts["pipeline_ms"] += results[0].shared_timings_ms.get("total", 0.0)
                counts["pipeline_ms"] += sum(result.timings_ms.get("total", 0.0) for result in results)
            for answer, result in answers:
                outputs.write(answer, result, image, replay.recording, frame.log_ns)
            outputs.write_markers([answer for answer, _ in answers], frame.log_ns)
            if follower is not None:
                bag_answers.anchor_track(follower, answers[0][0], image, frame)
            counts["frames"] += 1
            progress.update(1)
    return counts


def _track(follower, frame, image, replay, options, outputs) -> None:
    """A frame between two chosen ones (--track): its tracked answer, written like the node publishes it."""
    from pop_ros.cli import bag_answers

    answer = bag_answers.track_frame(follower, frame, image, replay, options)
    if answer is None:
        return
    outputs.write(answer, None, image, replay.recording, frame.log_ns)
    outputs.write_markers([answer], frame.log_ns)
    key = "tracked" if answer.success else "tracks_lost"
    outputs.counts[key] = outputs.counts.get(key, 0) + 1


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


def _teach_library(args):
    """The library to teach into, opened writable: never the shipped example (a copy of it is fine)."""
    from pop_ros.paths import shipped_library_refusal
    from pop_ros.supports import SupportLibrary, validate_set_name

    validate_set_name(args.set_name)
    refusal = shipped_library_refusal(args.library)
    if refusal:
        raise CliError(f"--library {refusal}")
    return SupportLibrary.load(args.library, writable=True)


def _teach_frame(args):
    """(Recording, CameraTopics, the frame at --time, its RGB image), the click checked against it."""
    from pop_ros.cli.bag_answers import Replay, Sampling, decode_colour
    from pop_ros.messages.recording import Recording
    from pop_ros.supports import validate_click

    if not args.time >= 0:
        raise CliError(f"--time must be >= 0 seconds, got {args.time}")
    recording = Recording(args.recording)
    topics = recording.find_camera(args.image_topic, need_depth=False)
    duration_s = (recording.end_ns - recording.start_ns) * 1e-9
    if args.time > duration_s:
        raise CliError(f"--time {args.time}: after the recording's end ({duration_s:.3f} s)")
    topics.camera_info = ""
    frames = Replay(recording, topics, Sampling(at_s=[args.time]), 0.0).frames()
    frame = next(frames, None)
    frames.close()  # the recording is not read further
    if frame is None:
        raise CliError(f"no colour frame at or after {args.time} s on {topics.colour} ({recording.cut or 'none'})")
    image = decode_colour(frame.msg)
    validate_click(list(args.click), image)
    return recording, topics, frame, image


def _run_teach(args) -> dict:
    from pop_ros.pipeline import PartPointer

    # Every argument is checked before the models load (seconds to minutes).
    library, settings = _teach_library(args), pipeline_settings(args)
    recording, topics, frame, image = _teach_frame(args)
    pointer = PartPointer.from_preset(args.preset, settings=settings, library=library, **model_overrides(args))
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
