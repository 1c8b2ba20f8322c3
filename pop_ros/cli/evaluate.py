"""pop-eval: the paper's part-pointing protocol on PACO-LVIS, InstructPart and PartImageNet++.

    pop-eval --dataset paco:/data/paco --dataset instructpart:/data/InstructPart --preset molmo2-8b
    pop-eval --dataset paco:/data/paco --ablations --limit 200 --seeds 1

Writes table.md (paper layout), predictions.csv, results.json and accuracy.png to --out; every
prediction is cached in predictions.jsonl, so a rerun resumes where an interrupted one stopped.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

from pop_ros.cli.common import CliError, add_model_arguments, model_overrides, run_cli


def main(argv: list[str] | None = None) -> int:
    from pop_ros.evaluation.runner import ABLATION_METHODS, ALL_METHODS, MAIN_METHODS

    parser = argparse.ArgumentParser(prog="pop-eval", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--dataset", action="append", required=True, help="NAME:ROOT, NAME in paco, instructpart, partimagenetpp"
    )
    parser.add_argument(
        "--split",
        help="paco: train, val or test; instructpart: test, train200..train1800 or all; "
        "default test for both (PartImageNet++ reads all its class files)",
    )
    parser.add_argument("--methods", default=",".join(m.name for m in MAIN_METHODS), help="comma list; see README")
    parser.add_argument(
        "--ablations", action="store_true", help="also run " + ", ".join(m.name for m in ABLATION_METHODS)
    )
    parser.add_argument("--seeds", type=int, default=5, help="support draws 0..N-1 (default 5, as the paper)")
    parser.add_argument("--limit", type=int, help="at most N episodes per dataset and seed (quick runs)")
    parser.add_argument("--cls-pool", type=int, default=10, help="supports CLS retrieval chooses from (default 10)")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("eval_out"))
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_model_arguments(parser)
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.methods.split(",") if n.strip()]
    if args.ablations:
        names += [m.name for m in ABLATION_METHODS if m.name not in names]
    unknown = [n for n in names if n not in ALL_METHODS]
    if unknown:
        parser.error(f"unknown methods {unknown}; known: {sorted(ALL_METHODS)}")
    return run_cli(lambda: _run(args, [ALL_METHODS[n] for n in names]), json_output=args.json)


def _run(args, methods) -> dict:
    from tqdm import tqdm

    from pop_ros.evaluation.datasets import DATASETS, DatasetError, load_dataset, make_episodes
    from pop_ros.evaluation.runner import ResultCache, run_episode, write_reports
    from pop_ros.pipeline import PartPointer

    if args.seeds < 1 or (args.limit is not None and args.limit < 1) or args.cls_pool < 3:
        raise CliError("--seeds and --limit must be >= 1 and --cls-pool >= 3")
    plans = []
    for spec in args.dataset:
        name, sep, root = spec.partition(":")
        if not sep or name not in DATASETS:
            raise CliError(f"--dataset {spec!r}: expected NAME:ROOT with NAME in {DATASETS}")
        try:
            samples = load_dataset(name, pathlib.Path(root), split=args.split)
        except DatasetError as error:
            raise CliError(str(error)) from error
        pool = max(3, args.cls_pool if any(m.cls_retrieval for m in methods) else 3)
        for seed in range(args.seeds):
            episodes = make_episodes(samples, shots=3, seed=seed, limit=args.limit, pool=pool)
            if not episodes:
                raise CliError(f"{name}: no (object, part) has enough images for {pool} supports")
            plans.append((name, seed, episodes))
    args.out.mkdir(parents=True, exist_ok=True)
    cache = ResultCache(args.out / "predictions.jsonl")
    pointer = PartPointer.from_preset(args.preset, **model_overrides(args))
    images: dict = {}
    total = sum(len(episodes) for _, _, episodes in plans) * len(methods)
    rows = []
    with tqdm(total=total, desc="evaluating", unit="prediction") as progress:
        for name, seed, episodes in plans:
            for method in methods:
                for episode in episodes:
                    row = cache.get(name, method.name, episode.episode_id)
                    if row is None:
                        row = {
                            "dataset": name,
                            "seed": seed,
                            "method": method.name,
                            **run_episode(pointer, method, episode, images),
                        }
                        cache.add(row)
                    rows.append(row)
                    progress.update(1)
            images.clear()  # keep memory bounded across seeds
    summary = write_reports(rows, args.out, [m.name for m in methods], pointer.model_config.random_weights, args.preset)
    return {"out": str(args.out), "predictions": len(rows), "summary": summary}


if __name__ == "__main__":
    sys.exit(main())
