"""What the command-line tools share: model flags, logging, one-line errors, --json output."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import pathlib
import sys
from collections.abc import Callable


class CliError(Exception):
    """Bad input to a command: printed as one line, exit status 2."""


def add_model_arguments(parser: argparse.ArgumentParser, visual: bool = True, whole_model: bool = False) -> None:
    """The model flags of the tools. `whole_model`: the tool always loads the whole MLLM in float
    (pop-find-heads reads every layer), so --no-trim and --mllm-quantization are not offered."""
    from pop_ros.models.presets import DEFAULT_PRESET, PRESETS

    group = parser.add_argument_group("model")
    group.add_argument("--preset", default=DEFAULT_PRESET, choices=sorted(PRESETS), help=f"default {DEFAULT_PRESET}")
    group.add_argument("--mllm", help="override the preset's MLLM (hub id or local folder)")
    if visual:
        group.add_argument("--visual", help="override the preset's visual encoder (hub id or local folder)")
        group.add_argument("--heads-file", help="YAML head file from pop-find-heads")
        group.add_argument("--resolution", type=int, help="longer image side for the visual encoder, pixels")
    group.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    group.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"])
    group.add_argument("--prompt", help="prompt template containing {query}")
    group.add_argument(
        "--mllm-max-pixels",
        type=_non_negative_int,
        help="cap on the MLLM's input pixels (aspect kept), independent of --resolution; 0 = the checkpoint's own",
    )
    group.add_argument(
        "--system-prompt",
        help="system turn: empty = the chat template's default, internvl-original = InternVL3's own, or a text",
    )
    group.add_argument(
        "--trust-remote-code", action="store_true", help="allow model code from the hub to run (off by default)"
    )
    if whole_model:
        return
    group.add_argument(
        "--no-trim",
        action="store_true",
        help="load the whole MLLM (default: only the decoder layers up to the deepest localization head, no lm_head)",
    )
    group.add_argument(
        "--mllm-quantization", choices=["none", "int8"], help="MLLM weight quantization (torchao); default none"
    )


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def model_overrides(args) -> dict:
    names = {
        "mllm": "mllm",
        "visual": "visual",
        "heads_file": "heads_file",
        "resolution": "resolution",
        "device": "device",
        "dtype": "dtype",
        "prompt": "prompt_template",
        "mllm_max_pixels": "mllm_max_pixels",
        "system_prompt": "system_prompt",
        "mllm_quantization": "mllm_quantization",
    }
    overrides = {field: getattr(args, arg) for arg, field in names.items() if getattr(args, arg, None) is not None}
    if getattr(args, "trust_remote_code", False):
        overrides["trust_remote_code"] = True
    if getattr(args, "no_trim", False):
        overrides["trim"] = False
    return overrides


def one_line(error: BaseException) -> str:
    """An error's text on one line (YAML and OpenCV errors span several)."""
    return " ".join(str(error).split()) or type(error).__name__


# Errors that mean bad input, by module: looked up only in modules already imported (an exception of a
# module never imported cannot have been raised), so that checking arguments imports no torch.
_USER_ERRORS = (
    ("pop_ros.models.loading", "ModelLoadError"),
    ("pop_ros.pipeline", "PointerError"),
    ("pop_ros.supports", "SupportError"),
)


def _user_error_types() -> tuple[type[BaseException], ...]:
    found = [getattr(sys.modules[module], name) for module, name in _USER_ERRORS if module in sys.modules]
    return (CliError, OSError, ValueError, *found)


def run_cli(work: Callable[[], dict], json_output: bool, plain: Callable[[dict], list[str]] | None = None) -> int:
    """Run `work`; print its result (JSON, the tool's `plain` lines, else key: value lines); bad input ->
    one line on stderr, exit 2."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        result = work()
    except _user_error_types() as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2
    if json_output:
        print(json.dumps(result, indent=2))
    elif plain is not None:
        print("\n".join(plain(result)))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")
    return 0


# ---- queries and their support sets ----------------------------------------------------------------
# pop-point and pop-bag take the same --query QUERY[@SET], --support-set (repeatable, paired in order
# with --query), --support and --library arguments and pair them here, with the same early errors.
QUERY_PAIRING_HELP = (
    "Which set a --query uses: its own QUERY@SET (the last '@' separates), else the --support-set paired "
    "with it in order (when --support-set is repeated as often as --query), else the one --support-set "
    "given, else the --support clicks, else none (0-shot, the text prior alone)."
)


def add_query_arguments(parser: argparse.ArgumentParser, one_image: str) -> None:
    """--query, --support, --support-set, --library and --shots, as pop-point and pop-bag take them.
    `one_image`: what one set of features is computed for ("image", "frame")."""
    parser.add_argument(
        "--query",
        action="append",
        default=[],
        metavar="QUERY[@SET]",
        help="the part, in words; QUERY@SET names the support set for this query ('@SET' alone: the set's "
        f"default query). Repeat it for several parts of one {one_image} (the {one_image}'s features and MLLM "
        "prefix are computed once)",
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


@dataclasses.dataclass
class PlannedQuery:
    """One query as the arguments ask it: `query` "" = the set's default query."""

    query: str
    support_set: str | None
    given_as: str  # the argument it came from, for messages


def split_query(text: str) -> tuple[str, str | None]:
    """`QUERY@SET` -> (query, set); text without '@' -> (text, None). The last '@' separates."""
    if "@" not in text:
        return text, None
    query, _, name = text.rpartition("@")
    if not name.strip():
        raise CliError(f"--query {text!r}: no support set name after '@' (QUERY@SET, e.g. 'handle@mug_handle')")
    return query, name.strip()


def given_arguments(args) -> str:
    """What the command line gave, for messages: `--target scene.png --library lib.yaml` (pop-point),
    `rec/ --query ...` (pop-bag)."""
    parts = [f"--target {args.target}"] if getattr(args, "target", None) else [str(args.recording)]
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
