"""pop-find-heads: find an MLLM's localization heads on (image, referring expression) pairs.

Data: a JSONL file, one `{"image": "path", "expression": "the red mug"}` per line (paths relative
to the file), or a folder of images each with a same-named `.txt` holding its expression.
Writes a YAML head file, by default `<model id>.yaml` in the user's data folder
(`$XDG_DATA_HOME/pop_ros/heads`, else `~/.local/share/pop_ros/heads`), where the pipeline, the node
and the tools of the same user find it with `heads_file` empty; elsewhere, name it with `heads_file`.
"""

from __future__ import annotations

import argparse
import json
import logging
import pathlib
import sys

from pop_ros.cli.common import CliError, add_model_arguments, model_overrides, run_cli

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


def read_pairs(data: pathlib.Path) -> list[tuple[pathlib.Path, str]]:
    """(image path, expression) pairs from a JSONL file or a folder of image + .txt files."""
    pairs = []
    if data.is_file():
        for number, line in enumerate(data.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                image, expression = record["image"], record["expression"]
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise CliError(f'{data}:{number}: expected {{"image": ..., "expression": ...}} ({error})') from error
            pairs.append(((data.parent / image).resolve(), str(expression)))
    elif data.is_dir():
        for image in sorted(p for p in data.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            text = image.with_suffix(".txt")
            if text.is_file() and text.read_text().strip():
                pairs.append((image, text.read_text().strip()))
    else:
        raise CliError(f"data {data} is neither a JSONL file nor a folder")
    if not pairs:
        raise CliError(f"no (image, expression) pairs found in {data}")
    return pairs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pop-find-heads", description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, type=pathlib.Path, help="JSONL file or folder of image + .txt pairs")
    parser.add_argument(
        "--out",
        type=pathlib.Path,
        help="head file to write (default: <model id>.yaml in $XDG_DATA_HOME/pop_ros/heads, "
        "else ~/.local/share/pop_ros/heads)",
    )
    parser.add_argument("-k", type=int, default=3, help="number of heads to keep (default 3)")
    parser.add_argument("--votes-per-sample", type=int, default=10, help="heads each sample votes for (default 10)")
    parser.add_argument("--limit", type=int, help="use at most this many pairs")
    add_model_arguments(parser, visual=False, whole_model=True)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    return run_cli(lambda: _run(args), json_output=args.json)


def _run(args) -> dict:
    from tqdm import tqdm

    from pop_ros.models.heads import sample_votes, save_head_file, select_heads
    from pop_ros.models.presets import default_head_file, get_preset, user_head_file
    from pop_ros.supports import SupportError, read_rgb

    if args.k < 1 or args.votes_per_sample < 1:
        raise CliError("-k and --votes-per-sample must be >= 1")
    if args.out is not None and args.out.suffix.lower() not in (".yaml", ".yml"):
        raise CliError(f"--out {args.out}: a head file name ends in .yaml or .yml")
    # Discovery reads every head of every layer: the whole model, never trimmed.
    config = get_preset(args.preset).replace(**{**model_overrides(args), "trim": False})
    pairs = read_pairs(args.data)[: args.limit] if args.limit else read_pairs(args.data)
    adapter = config.load_mllm()
    if adapter.head_layer_note:
        logging.getLogger("pop-find-heads").info("searching %s", adapter.head_layer_note)
    votes, skipped = [], []
    for image_path, expression in tqdm(pairs, desc="finding heads", unit="sample"):
        try:
            image = read_rgb(image_path)
        except SupportError as error:
            skipped.append(str(error))
            continue
        maps = adapter.all_head_maps(image, expression)  # (L, H, H_l, W_l) over adapter.head_layers
        votes.append(sample_votes(maps, votes_per_sample=args.votes_per_sample, layers=adapter.head_layers))
    if not votes:
        raise CliError(f"no readable sample; first problem: {skipped[0]}")
    selection = select_heads(votes, k=args.k)
    if not selection.heads:
        raise CliError(
            f"no head passed the attention-sum and entropy criteria on any of {len(votes)} samples; "
            "nothing written (random weights give flat attention; real checkpoints do not)"
        )
    out = args.out or user_head_file(config.mllm)
    save_head_file(out, config.mllm, selection, source=str(args.data))
    if pathlib.Path(out).resolve() == default_head_file(config.mllm).resolve():
        use = "pop_node, pop-point and pop-eval of this user load it while heads_file is empty"
    else:
        use = f"load it with the node parameter heads_file:={pathlib.Path(out).resolve()} (tools: --heads-file)"
    logging.getLogger("pop-find-heads").info("wrote %s: %s", out, use)
    for problem in skipped:
        logging.getLogger("pop-find-heads").warning("skipped: %s", problem)
    return {
        "model": config.mllm,
        "heads": [list(h) for h in selection.heads],
        "samples": selection.num_samples,
        "skipped": len(skipped),
        "head_file": str(out),
        "searched_layers": list(adapter.head_layers),
    }


if __name__ == "__main__":
    sys.exit(main())
