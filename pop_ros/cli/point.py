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

Which set a --query uses: its own QUERY@SET (the last '@' separates), else the --support-set paired
with it in order (when --support-set is repeated as often as --query), else the one --support-set
given, else the --support clicks, else none (0-shot, the text prior alone). Every argument is
checked before any model loads. Output: one line per query (pixel, 3D when known, score), or
--json.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys

from pop_ros.cli.common import CliError, add_model_arguments, model_overrides, run_cli

IMAGE_OUTPUT_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


@dataclasses.dataclass
class PlannedQuery:
    """One query as the arguments ask it: `query` "" = the set's default query."""

    query: str
    support_set: str | None
    given_as: str  # the argument it came from, for messages


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


def split_query(text: str) -> tuple[str, str | None]:
    """`QUERY@SET` -> (query, set); text without '@' -> (text, None). The last '@' separates."""
    if "@" not in text:
        return text, None
    query, _, name = text.rpartition("@")
    if not name.strip():
        raise CliError(f"--query {text!r}: no support set name after '@' (QUERY@SET, e.g. 'handle@mug_handle')")
    return query, name.strip()


def given_arguments(args) -> str:
    """What the command line gave, for messages: `--target scene.png --library lib.yaml`."""
    parts = [f"--target {args.target}"]
    parts += [f"--query {q!r}" for q in args.query]
    parts += [f"--support-set {s}" for s in args.support_set]
    parts += [f"--support {s}" for s in args.support]
    if args.library:
        parts.append(f"--library {args.library}")
    return " ".join(parts)


def plan_queries(args) -> list[PlannedQuery]:
    """The queries the arguments ask for, each with its set; every mistake in their combination is a
    CliError naming what was given (no file is read, no model loaded)."""
    queries = [(text, *split_query(text)) for text in args.query]
    sets = list(args.support_set)
    named_anywhere = bool(sets) or any(name for _, _, name in queries)
    if not queries and not sets:
        if args.support:
            raise CliError(
                f"--support gives exemplar clicks but no part name: add --query TEXT (given: {given_arguments(args)})"
            )
        raise CliError(
            "nothing to point at: give --query TEXT (0-shot, or with --support IMAGE:U,V) and/or "
            f"--support-set NAME with --library (given only: {given_arguments(args)})"
        )
    if args.support and named_anywhere:
        raise CliError("use --support or a support set (--support-set, QUERY@SET), not both")
    if named_anywhere and not args.library:
        raise CliError("--support-set needs --library" if sets else "QUERY@SET needs --library (the YAML with the set)")
    if args.library and not named_anywhere:
        raise CliError(
            "--library needs --support-set NAME or --query QUERY@SET (without a set the query would run 0-shot)"
        )
    if not queries:  # --support-set alone: each set's default query
        return [PlannedQuery("", name, f"--support-set {name}") for name in sets]
    if len(sets) > 1 and len(sets) != len(queries):
        raise CliError(
            f"{len(queries)} --query and {len(sets)} --support-set: give one --support-set for all queries, one per "
            "--query (paired in order), or name each query's set as QUERY@SET"
        )
    planned = []
    for index, (text, query, own_set) in enumerate(queries):
        paired = sets[index] if len(sets) > 1 else (sets[0] if sets else None)
        if own_set and len(sets) > 1 and paired != own_set:
            raise CliError(f"--query {text!r} names set {own_set!r} but is paired with --support-set {paired}")
        name = own_set or paired
        if not query.strip() and not name:
            raise CliError(
                f"--query {text!r}: request {index}: the query is empty and no support set gives a default query"
            )
        planned.append(PlannedQuery(query.strip(), name, f"--query {text!r}"))
    return planned


def check_sets(planned: list[PlannedQuery], library, library_path: pathlib.Path) -> None:
    """Every named set is in the library (loaded from YAML, no model) and has a query to ask."""
    for item in planned:
        if item.support_set is None:
            continue
        if item.support_set not in library.names():
            problems = [p for p in library.errors if f"set {item.support_set!r}" in p]
            known = ", ".join(library.names()) or "none"
            why = f": {'; '.join(problems)}" if problems else f" (known: {known})"
            raise CliError(f"support set {item.support_set!r} is not in {library_path}{why}")
        if not item.query and not library.get(item.support_set).query:
            raise CliError(
                f"{item.given_as}: support set {item.support_set!r} has no default query; "
                f"give --query 'TEXT@{item.support_set}'"
            )


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
    parser.add_argument(
        "--query",
        action="append",
        default=[],
        metavar="QUERY[@SET]",
        help="the part, in words; QUERY@SET names the support set for this query ('@SET' alone: the set's "
        "default query). Repeat it for several parts of one image (the image's features and MLLM prefix are "
        "computed once)",
    )
    parser.add_argument(
        "--support",
        action="append",
        default=[],
        metavar="IMAGE:U,V",
        help="exemplar click, ROS pixel coordinates (top-left pixel centre = 0,0) (repeatable; for every query)",
    )
    parser.add_argument(
        "--support-set",
        action="append",
        default=[],
        metavar="NAME",
        help="a set name from --library: once for every query, or once per --query (paired in order)",
    )
    parser.add_argument("--library", type=pathlib.Path, help="support library YAML")
    parser.add_argument("--shots", type=int, help="use at most this many supports (K)")
    parser.add_argument(
        "--save-heatmap", type=pathlib.Path, help="write the overlay image here (several queries: NAME_<i>.png)"
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
    target = read_rgb(args.target)
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
    return planned, target, supports, library


def _run(args) -> dict:
    # Every argument is checked first: a mistake costs no model load.
    planned, target, supports, library = _prepare(args)
    from pop_ros.pipeline import PartPointer, PointRequest

    pointer = PartPointer.from_preset(args.preset, library=library, **model_overrides(args))
    if len(planned) == 1:
        item = planned[0]
        result = pointer.point(
            target, item.query, support_set=item.support_set, supports=supports or None, shots=args.shots
        )
        output = result.as_dict()
        output["preset"] = args.preset
        output["random_weights"] = pointer.model_config.random_weights
        if args.save_heatmap is not None:
            output["heatmap_png"] = _save_overlay(args.save_heatmap, target, result)
        return output
    # Several parts of one image: one call, the image's features and MLLM prefix computed once.
    requests = [PointRequest(item.query, item.support_set, supports or None, args.shots) for item in planned]
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
    for result in output["results"]:
        del result["shared_timings_ms"]  # once, above
    if args.save_heatmap is not None:
        stem, suffix = args.save_heatmap.stem, args.save_heatmap.suffix
        for index, (result, entry) in enumerate(zip(results, output["results"], strict=True)):
            path = args.save_heatmap.with_name(f"{stem}_{index}{suffix}")
            entry["heatmap_png"] = _save_overlay(path, target, result)
    return output


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
        lines.append(line)
    return lines


def _save_overlay(path: pathlib.Path, target, result) -> str:
    import cv2

    from pop_ros.visualize import overlay

    if not cv2.imwrite(str(path), overlay(target, result.heatmap, (result.u, result.v))):
        raise CliError(f"could not write {path}")
    return str(path)


if __name__ == "__main__":
    sys.exit(main())
