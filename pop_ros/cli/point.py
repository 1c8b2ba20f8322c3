"""pop-point: point at a part in an image file, from a query and example clicks.

examples:
  pop-point --target scene.png --query "handle of the mug" --support ex.png:120,88
  pop-point --target scene.png --library config/supports/library.yaml --support-set mug_handle
  # several parts of one frame, each with its own set (the image's features are computed once):
  pop-point --target scene.png --library config/supports/library.yaml \\
      --query "handle of the mug@mug_handle" --query "neck of the bottle@bottle_neck"
  # the same, pairing repeated --support-set with --query in order:
  pop-point --target scene.png --library lib.yaml --query handle --support-set mug_handle \\
      --query neck --support-set bottle_neck
  # each set's own default query: --support-set alone, or --query @SET
  pop-point --target scene.png --library lib.yaml --support-set mug_handle --support-set bottle_neck
  # every handle (up to 3), only inside a box, with its 3D point, part mask and cloud:
  pop-point --target scene.png --library lib.yaml --support-set mug_handle --max-instances 3 \\
      --roi 100,50,300,200 --depth depth.png --camera-info camera.yaml --out results/

Which set a --query uses: its own QUERY@SET (the last '@' separates), else the --support-set paired
with it in order (when --support-set is repeated as often as --query), else the one --support-set
given, else the --support clicks, else none (0-shot, the text prior alone). Every argument is
checked before any model loads. Output: one line per query and instance (pixel, 3D when known,
score), or --json. --depth (16-bit mm PNG, float TIFF in metres, or .npy metres; aligned to --target)
with --camera-info (camera_calibration YAML or CameraInfo fields) add the 3D point and approach
normal, and the part's cloud (--cloud-out / --out); the part's mask needs no depth (--mask-out / --out).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

from pop_ros.cli.common import (
    CliError,
    add_model_arguments,
    add_query_arguments,
    check_sets,
    model_overrides,
    plan_queries,
    run_cli,
)

IMAGE_OUTPUT_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
# pop_ros.pipeline.MAX_INSTANCES (importing the pipeline would import torch before the arguments are checked).
MAX_INSTANCES = 64


def parse_support(text: str) -> tuple[pathlib.Path, tuple[float, float]]:
    """`IMG:U,V` -> (path, (u, v)); the last ':' separates, so paths may contain ':'."""
    path, sep, click = text.rpartition(":")
    try:
        u_text, v_text = click.split(",")
        if not sep or not path:
            raise ValueError
        return pathlib.Path(path), (float(u_text), float(v_text))
    except ValueError as error:
        raise CliError(f"--support {text!r}: expected IMAGE:U,V (pixels), e.g. mug.png:120,88") from error


def check_image_output(path: pathlib.Path, flag: str) -> None:
    """An image file OpenCV can write: an image extension and an existing folder."""
    import cv2

    if path.suffix.lower() not in IMAGE_OUTPUT_SUFFIXES or not cv2.haveImageWriter(str(path)):
        raise CliError(f"{flag} {path}: needs an image file name ending in {', '.join(IMAGE_OUTPUT_SUFFIXES)}")
    if not path.parent.is_dir():
        raise CliError(f"{flag} folder {path.parent} does not exist")
    if path.is_dir():
        raise CliError(f"{flag} {path} is a folder")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pop-point",
        description=__doc__.split("\n")[0],
        epilog="\n".join(__doc__.split("\n")[2:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--target", required=True, type=pathlib.Path, help="image to point in")
    add_query_arguments(parser, "image")
    parser.add_argument(
        "--save-heatmap", type=pathlib.Path, help="write the overlay image here (several queries: NAME_<i>.png)"
    )
    parser.add_argument(
        "--max-instances", type=int, default=1, metavar="N", help="up to N answers per query (every copy), best first"
    )
    parser.add_argument("--roi", metavar="X,Y,W,H", help="only answer inside this box (pixels); the MLLM sees all")
    parser.add_argument("--depth", type=pathlib.Path, help="depth image aligned to --target (with --camera-info)")
    parser.add_argument("--camera-info", type=pathlib.Path, help="camera_info YAML of --target (with --depth)")
    parser.add_argument(
        "--raw-image", action="store_true", help="--target is a raw (distorted) image: undistort with K, D, R, P"
    )
    parser.add_argument("--mask-out", type=pathlib.Path, help="write the part's mask PNG (several queries: NAME_<i>)")
    parser.add_argument("--cloud-out", type=pathlib.Path, help="write the part's cloud, .ply or .pcd (needs --depth)")
    parser.add_argument(
        "--out",
        type=pathlib.Path,
        help="folder for mask.png and (with --depth) cloud.ply of the answer; mask_<q>.png, cloud_<q>.ply "
        "for query q when there are several",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    add_model_arguments(parser)
    args = parser.parse_args(argv)
    return run_cli(lambda: _run(args), json_output=args.json, plain=plain_lines)


def _prepare(args):
    """Everything but the models: (planned queries, target, supports, library). Raises CliError."""
    from pop_ros.supports import SupportLibrary, read_rgb, validate_click

    planned = plan_queries(args)
    if args.shots is not None and args.shots < 1:
        raise CliError(f"--shots must be >= 1, got {args.shots}")
    if args.save_heatmap is not None:
        check_image_output(args.save_heatmap, "--save-heatmap")
    check_region_arguments(args)
    target = read_rgb(args.target)
    args.roi_box = parse_roi(args.roi, target.shape[:2]) if args.roi else None
    args.depth_m = args.camera = None
    if args.depth is not None:
        args.depth_m, args.camera = read_depth_files(args, target.shape[:2])
    supports = []
    for text in args.support:
        path, click = parse_support(text)
        image = read_rgb(path)
        supports.append((image, validate_click(list(click), image)))
    library = SupportLibrary.load(args.library) if args.library else None
    if library is not None:
        check_sets(planned, library, args.library)
        for problem in library.errors:
            print(f"warning: {problem}", file=sys.stderr)
    if args.out is not None:  # made once everything else passed its checks, still before the models load
        try:
            args.out.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise CliError(f"--out {args.out}: cannot create the folder: {error.strerror}") from error
    return planned, target, supports, library


def check_region_arguments(args) -> None:
    """--max-instances, --depth / --camera-info pairing and the mask / cloud outputs (no file read)."""
    from pop_ros.cli.depth_files import check_cloud_output

    if not 0 <= args.max_instances <= MAX_INSTANCES:
        raise CliError(f"--max-instances must be in [0, {MAX_INSTANCES}], got {args.max_instances}")
    if (args.depth is None) != (args.camera_info is None):
        given, missing = ("--depth", "--camera-info") if args.depth is not None else ("--camera-info", "--depth")
        raise CliError(f"{given} needs {missing} (the camera model that deprojects the depth)")
    if args.mask_out is not None:
        check_image_output(args.mask_out, "--mask-out")
    if args.cloud_out is not None:
        if args.depth is None:
            raise CliError("--cloud-out needs --depth and --camera-info")
        check_cloud_output(args.cloud_out, "--cloud-out")
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise CliError(f"--out {args.out}: is a file, not a folder")


def parse_roi(text: str, image_size) -> tuple[int, int, int, int]:
    """`X,Y,W,H` -> (x, y, w, h), checked against the target (the same reasons the node gives)."""
    try:
        x, y, width, height = (int(part) for part in text.split(","))
    except ValueError as error:
        raise CliError(f"--roi {text!r}: expected X,Y,W,H in whole pixels, e.g. 100,50,300,200") from error
    image_h, image_w = image_size
    if width <= 0 or height <= 0:
        raise CliError(f"--roi {text!r}: the region of interest has zero area (width {width}, height {height})")
    if x < 0 or y < 0 or x >= image_w or y >= image_h:
        raise CliError(f"--roi {text!r}: the region of interest lies outside the {image_w}x{image_h} target")
    return x, y, width, height


def read_depth_files(args, image_size):
    """(depth metres, camera model) from --depth and --camera-info, checked against the target."""
    from pop_ros.cli.depth_files import read_camera_info, read_depth_m
    from pop_ros.spatial.camera_model import CameraModel

    depth_m = read_depth_m(args.depth)
    info = read_camera_info(args.camera_info)
    try:
        model = CameraModel.from_camera_info(info, rectified=not args.raw_image)
        model.image_scale(image_size)
        model.image_scale(depth_m.shape)
    except ValueError as error:
        raise CliError(f"--camera-info {args.camera_info}: {error}") from error
    return depth_m, model


def _run(args) -> dict:
    # Every argument is checked first: a mistake costs no model load.
    planned, target, supports, library = _prepare(args)
    from pop_ros.pipeline import PartPointer, PointRequest

    pointer = PartPointer.from_preset(args.preset, library=library, **model_overrides(args))
    if len(planned) == 1:
        item = planned[0]
        result = pointer.point(
            target,
            item.query,
            support_set=item.support_set,
            supports=supports or None,
            shots=args.shots,
            max_instances=args.max_instances,
            roi=args.roi_box,
        )
        output = result.as_dict()
        add_geometry(output, result, args, pointer.settings.part_threshold, index=None)
        output["preset"] = args.preset
        output["random_weights"] = pointer.model_config.random_weights
        if args.save_heatmap is not None:
            output["heatmap_png"] = _save_overlay(args.save_heatmap, target, result, output["random_weights"])
        return output
    # Several parts of one image: one call, the image's features and MLLM prefix computed once.
    requests = [
        PointRequest(item.query, item.support_set, supports or None, args.shots, args.max_instances, args.roi_box)
        for item in planned
    ]
    results = pointer.point_many(target, requests)
    failed = [f"{item.given_as}: {r}" for item, r in zip(planned, results, strict=True) if isinstance(r, Exception)]
    if failed:
        raise CliError("; ".join(failed))
    output = {
        "results": [result.as_dict() for result in results],
        "shared_timings_ms": results[0].shared_timings_ms,
        "preset": args.preset,
        "random_weights": pointer.model_config.random_weights,
    }
    for index, (result, entry) in enumerate(zip(results, output["results"], strict=True)):
        del entry["shared_timings_ms"]  # once, above
        add_geometry(entry, result, args, pointer.settings.part_threshold, index=index)
    if args.save_heatmap is not None:
        stem, suffix = args.save_heatmap.stem, args.save_heatmap.suffix
        for index, (result, entry) in enumerate(zip(results, output["results"], strict=True)):
            path = args.save_heatmap.with_name(f"{stem}_{index}{suffix}")
            entry["heatmap_png"] = _save_overlay(path, target, result, output["random_weights"])
    return output


def add_geometry(entry: dict, result, args, part_threshold: float, index: int | None) -> None:
    """Into `entry` (a result's dict): each instance's 3D point and normal (with --depth), and the part's
    mask and cloud files of the answer (instance 0) when asked. `index`: the query's (several queries)."""
    from pop_ros.ros.parameters import PARAMETERS
    from pop_ros.spatial import grasp
    from pop_ros.spatial.locate import LocateSettings, locate_with

    image_size = result.heatmap.shape
    placements = []
    if args.depth_m is not None:
        settings = LocateSettings.from_parameters(lambda name: PARAMETERS[name].default)
        for instance in entry["instances"]:
            placement = locate_with(args.camera, args.depth_m, instance["u"], instance["v"], image_size, settings)
            placements.append(placement)
            location = placement.location
            if location is not None and location.has_3d:
                instance["point_m"] = list(location.xyz)
                instance["normal"] = list(location.normal) if location.has_pose else None
            instance["notes"] = placement.notes
        entry.update({k: v for k, v in entry["instances"][0].items() if k in ("point_m", "normal", "notes")})
    wants_files = args.mask_out is not None or args.cloud_out is not None or args.out is not None
    if not wants_files or part_threshold <= 0:
        return
    mask = grasp.part_mask(result.heatmap, result.u, result.v, part_threshold)

    def named(path, default_stem):
        if path is None:
            return args.out / f"{default_stem}{'' if index is None else f'_{index}'}" if args.out else None
        return path if index is None else path.with_name(f"{path.stem}_{index}{path.suffix}")

    mask_path = named(args.mask_out, "mask")
    if mask_path is not None:
        mask_path = mask_path if mask_path.suffix else mask_path.with_suffix(".png")
        import cv2

        if not cv2.imwrite(str(mask_path), mask.astype("uint8") * 255):
            raise CliError(f"could not write {mask_path}")
        entry["mask_png"] = str(mask_path)
    cloud_path = named(args.cloud_out, "cloud") if args.depth_m is not None else None
    if cloud_path is not None:
        from pop_ros.cli.depth_files import write_cloud

        cloud_path = cloud_path if cloud_path.suffix else cloud_path.with_suffix(".ply")
        cloud = grasp.part_cloud(args.camera, args.depth_m, mask, result.heatmap)
        entry["cloud"] = write_cloud(cloud_path, cloud.points, cloud.intensity)
        entry["cloud_points"] = len(cloud.points)
        normal = entry.get("normal")
        if normal:
            frame = grasp.grasp_frame(cloud.points, normal)
            entry["grasp"] = (
                {"orientation_xyzw": list(frame.orientation), "width_m": frame.width_m, "length_m": frame.length_m}
                if frame.ok
                else {"why_not": frame.reason}
            )


def plain_lines(output: dict) -> list[str]:
    """One line per query: `'handle of the mug' [mug_handle, 3 shots]: pixel (412.0, 233.0), score 0.734`,
    3D when the result has it, the overlay file when written; a first line when the weights are random."""
    lines = []
    if output.get("random_weights"):
        lines.append(f"RANDOM WEIGHTS (preset {output.get('preset')}): these points are meaningless")
    for result in output.get("results", [output]):
        shots = result["num_shots"]
        source = f"{shots} shot{'s' if shots != 1 else ''}" if shots else "0-shot"
        if result.get("support_set"):
            source = f"{result['support_set']}, {source}"
        if not result.get("used_text", True):
            source += ", visual only"
        line = f"{result['query']!r} [{source}]: pixel ({result['u']:.1f}, {result['v']:.1f})"
        if result.get("point_m"):
            x, y, z = result["point_m"]
            line += f", 3D ({x:.3f}, {y:.3f}, {z:.3f}) m"
        line += f", score {result['score']:.3f}"
        if result.get("heatmap_png"):
            line += f", overlay {result['heatmap_png']}"
        for key, what in (("mask_png", "mask"), ("cloud", "cloud")):
            if result.get(key):
                line += f", {what} {result[key]}"
        lines.append(line)
        for number, instance in enumerate(result.get("instances", [])[1:], start=2):
            more = f"  instance {number}: pixel ({instance['u']:.1f}, {instance['v']:.1f})"
            if instance.get("point_m"):
                more += ", 3D ({:.3f}, {:.3f}, {:.3f}) m".format(*instance["point_m"])
            lines.append(more + f", score {instance['score']:.3f}")
    return lines


def _save_overlay(path: pathlib.Path, target, result, random_weights: bool) -> str:
    """The heatmap overlay as the node publishes it, labelled like the demo's pictures: the query (and
    set), and the random-weights band when the weights are random."""
    import cv2

    from pop_ros.visualize import heatmap_label, overlay

    picture = overlay(
        target,
        result.heatmap,
        (result.u, result.v),
        label=heatmap_label(result.query, result.support_set),
        random_weights=random_weights,
    )
    if not cv2.imwrite(str(path), picture):
        raise CliError(f"could not write {path}")
    return str(path)


if __name__ == "__main__":
    sys.exit(main())
