"""pop-eval: the paper's part-pointing protocol on PACO-LVIS, InstructPart and PartImageNet++.

    pop-eval --dataset paco:/data/paco --dataset instructpart:/data/InstructPart --preset molmo2-8b
    pop-eval --dataset paco:/data/paco --ablations --limit 200 --seeds 1
    torchrun --nproc_per_node 4 -m pop_ros.cli.evaluate --dataset paco:/data/paco --out eval_out

Writes table.md (paper layout), predictions.csv, results.json and accuracy.png to --out; every
prediction is cached in predictions.jsonl under a key of everything that determines it, so a rerun
resumes where an interrupted one stopped and a changed configuration never reuses a stale one.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shlex
import sys

from pop_ros.cli.common import CliError, add_model_arguments, model_overrides, run_cli


def main(argv: list[str] | None = None) -> int:
    from pop_ros.evaluation.methods import ABLATION_METHODS, ALL_METHODS, MAIN_METHODS

    parser = argparse.ArgumentParser(prog="pop-eval", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--dataset", action="append", required=True, help="NAME:ROOT, NAME in paco, instructpart, partimagenetpp"
    )
    parser.add_argument(
        "--split",
        help="paco: train, val or test; instructpart: test, train200..train1800 or all; "
        "default test for both (PartImageNet++ reads all its class files)",
    )
    parser.add_argument(
        "--methods", default=",".join(m.name for m in MAIN_METHODS), help="comma list (docs/evaluation.md)"
    )
    parser.add_argument(
        "--ablations", action="store_true", help="also run " + ", ".join(m.name for m in ABLATION_METHODS)
    )
    parser.add_argument("--seeds", type=int, default=5, help="support draws 0..N-1 (default 5, as the paper)")
    parser.add_argument("--limit", type=int, help="at most N episodes per dataset and seed (quick runs)")
    parser.add_argument("--cls-pool", type=int, default=10, help="supports CLS retrieval chooses from (default 10)")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("eval_out"))
    parser.add_argument(
        "--add-config",
        action="store_true",
        help="let --out keep predictions of another model configuration beside this one's (reports show this run's)",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_model_arguments(parser)
    arguments = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(arguments)
    from pop_ros.evaluation.evaluate import EvaluationProgress  # after --help: it imports torch

    names = [n.strip() for n in args.methods.split(",") if n.strip()]
    if args.ablations:
        names += [m.name for m in ABLATION_METHODS if m.name not in names]
    unknown = [n for n in names if n not in ALL_METHODS]
    if unknown:
        parser.error(f"unknown methods {unknown}; known: {sorted(ALL_METHODS)}")
    rank = int(os.environ.get("RANK", "0"))
    progress = EvaluationProgress()
    try:
        # Only rank 0 prints the result: the other ranks' work is in its merged table.
        return run_cli(lambda: _evaluate(args, names, progress), json_output=args.json and rank == 0)
    except KeyboardInterrupt:
        launcher = "the same torchrun command" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else "pop-eval"
        where = progress.log_path or args.out
        print(
            f"interrupted: {progress.written} new predictions saved in {where} ({progress.done} of "
            f"{progress.total or '?'} done); resume with: {launcher} {shlex.join(arguments)}",
            file=sys.stderr,
        )
        return 130


def _evaluate(args, names: list[str], progress) -> dict:
    from pop_ros.evaluation.evaluate import EvaluationError, evaluate

    try:
        return evaluate(
            args.dataset,
            out=args.out,
            methods=names,
            preset=args.preset,
            overrides=model_overrides(args),
            split=args.split,
            seeds=args.seeds,
            limit=args.limit,
            cls_pool=args.cls_pool,
            add_config=args.add_config,
            progress=progress,
        )
    except EvaluationError as error:
        raise CliError(str(error)) from error


if __name__ == "__main__":
    sys.exit(main())
