"""What the command-line tools share: model flags, logging, one-line errors, --json output."""

from __future__ import annotations

import argparse
import json
import logging
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
