"""pop-point: point at a part in an image file, from a query and example clicks.

pop-point --target scene.png --query "handle of the mug" --support ex.png:120,88 --json
pop-point --target scene.png --library config/supports/library.yaml --support-set mug_handle
pop-point --target scene.png --query "handle of the mug" --query "rim of the mug" --json   # one frame, 2 parts
"""

from __future__ import annotations

import argparse
import pathlib
import sys

from pop_ros.cli.common import CliError, add_model_arguments, model_overrides, run_cli

IMAGE_OUTPUT_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


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
    parser = argparse.ArgumentParser(prog="pop-point", description=__doc__.split("\n")[0])
    parser.add_argument("--target", required=True, type=pathlib.Path, help="image to point in")
    parser.add_argument(
        "--query",
        action="append",
        default=[],
        help="the part, in words (default: the support set's query); repeat it for several parts of one image, "
        "which share the image's features and MLLM prefix",
    )
    parser.add_argument(
        "--support",
        action="append",
        default=[],
        help="IMAGE:U,V exemplar click, ROS pixel coordinates (top-left pixel centre = 0,0) (repeatable)",
    )
    parser.add_argument("--support-set", help="a set name from --library")
    parser.add_argument("--library", type=pathlib.Path, help="support library YAML")
    parser.add_argument("--shots", type=int, help="use at most this many supports (K)")
    parser.add_argument("--save-heatmap", type=pathlib.Path, help="write the overlay PNG here")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    add_model_arguments(parser)
    args = parser.parse_args(argv)
    return run_cli(lambda: _run(args), json_output=args.json)


def _run(args) -> dict:
    from pop_ros.pipeline import PartPointer, PointRequest
    from pop_ros.supports import SupportLibrary, read_rgb, validate_click

    # Every argument is checked here, before the slow model load.
    if args.support and args.support_set:
        raise CliError("use --support or --support-set, not both")
    if args.support_set and not args.library:
        raise CliError("--support-set needs --library")
    if args.library and not args.support_set:
        raise CliError("--library needs --support-set NAME (without a set the query would run 0-shot)")
    if args.shots is not None and args.shots < 1:
        raise CliError(f"--shots must be >= 1, got {args.shots}")
    if args.save_heatmap is not None:
        check_image_output(args.save_heatmap, "--save-heatmap")
    target = read_rgb(args.target)
    supports = []
    for text in args.support:
        path, click = parse_support(text)
        image = read_rgb(path)
        supports.append((image, validate_click(list(click), image)))
    library = SupportLibrary.load(args.library) if args.library else None
    if library is not None:
        chosen_set_problems = [p for p in library.errors if f"set {args.support_set!r}" in p]
        if args.support_set not in library.names():
            known = ", ".join(library.names()) or "none"
            why = f": {'; '.join(chosen_set_problems)}" if chosen_set_problems else f" (known: {known})"
            raise CliError(f"support set {args.support_set!r} is not in {args.library}{why}")
        for problem in library.errors:
            print(f"warning: {problem}", file=sys.stderr)
    pointer = PartPointer.from_preset(args.preset, library=library, **model_overrides(args))
    if len(args.query) <= 1:
        query = args.query[0] if args.query else ""
        result = pointer.point(target, query, support_set=args.support_set, supports=supports or None, shots=args.shots)
        output = result.as_dict()
        output["preset"] = args.preset
        output["random_weights"] = pointer.model_config.random_weights
        if args.save_heatmap is not None:
            output["heatmap_png"] = _save_overlay(args.save_heatmap, target, result)
        return output
    # Several parts of one image: one call, the image's features and MLLM prefix computed once.
    requests = [PointRequest(q, args.support_set, supports or None, args.shots) for q in args.query]
    results = pointer.point_many(target, requests)
    failed = [f"--query {q!r}: {r}" for q, r in zip(args.query, results, strict=True) if isinstance(r, Exception)]
    if failed:
        raise CliError("; ".join(failed))
    output = {
        "results": [result.as_dict() for result in results],
        "shared_timings_ms": results[0].shared_timings_ms,
        "preset": args.preset,
        "random_weights": pointer.model_config.random_weights,
    }
    for result in output["results"]:
        del result["shared_timings_ms"]  # once, above
    if args.save_heatmap is not None:
        stem, suffix = args.save_heatmap.stem, args.save_heatmap.suffix
        for index, (result, entry) in enumerate(zip(results, output["results"], strict=True)):
            path = args.save_heatmap.with_name(f"{stem}_{index}{suffix}")
            entry["heatmap_png"] = _save_overlay(path, target, result)
    return output


def _save_overlay(path: pathlib.Path, target, result) -> str:
    import cv2

    from pop_ros.visualize import overlay

    if not cv2.imwrite(str(path), overlay(target, result.heatmap, (result.u, result.v))):
        raise CliError(f"could not write {path}")
    return str(path)


if __name__ == "__main__":
    sys.exit(main())
