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
import dataclasses
import datetime
import logging
import os
import pathlib
import shlex
import sys

from pop_ros.cli.common import CliError, add_model_arguments, model_overrides, run_cli

LOG = logging.getLogger("pop_eval")


@dataclasses.dataclass
class _Progress:
    """What a Ctrl-C message needs to say."""

    log_path: pathlib.Path | None = None
    written: int = 0  # new predictions appended by this process
    done: int = 0  # predictions of the run that are saved (reused + new)
    total: int = 0


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
    parser.add_argument(
        "--add-config",
        action="store_true",
        help="let --out keep predictions of another model configuration beside this one's (reports show this run's)",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_model_arguments(parser)
    arguments = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(arguments)
    names = [n.strip() for n in args.methods.split(",") if n.strip()]
    if args.ablations:
        names += [m.name for m in ABLATION_METHODS if m.name not in names]
    unknown = [n for n in names if n not in ALL_METHODS]
    if unknown:
        parser.error(f"unknown methods {unknown}; known: {sorted(ALL_METHODS)}")
    rank = int(os.environ.get("RANK", "0"))
    progress = _Progress()
    try:
        # Only rank 0 prints the result: the other ranks' work is in its merged table.
        methods = [ALL_METHODS[n] for n in names]
        return run_cli(lambda: _run(args, methods, progress), json_output=args.json and rank == 0)
    except KeyboardInterrupt:
        launcher = "the same torchrun command" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else "pop-eval"
        where = progress.log_path or args.out
        print(
            f"interrupted: {progress.written} new predictions saved in {where} ({progress.done} of "
            f"{progress.total or '?'} done); resume with: {launcher} {shlex.join(arguments)}",
            file=sys.stderr,
        )
        return 130


def _run(args, methods, progress: _Progress) -> dict:
    from pop_ros.evaluation import store

    if args.seeds < 1 or (args.limit is not None and args.limit < 1) or args.cls_pool < 3:
        raise CliError("--seeds and --limit must be >= 1 and --cls-pool >= 3")
    rank, world, local_rank = _init_distributed()
    lock = store.FolderLock(args.out)
    try:
        return _evaluate(args, methods, progress, rank, world, local_rank, lock)
    except OSError as error:  # a full disk, a folder that vanished: one line, and how to go on
        raise CliError(
            f"I/O error: {error}; {progress.written} new predictions of this run are saved in {args.out}; "
            "fix the cause and rerun the same command to resume"
        ) from error
    finally:
        lock.release()
        if world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()


def _evaluate(args, methods, progress, rank, world, local_rank, lock) -> dict:
    import torch
    from tqdm import tqdm

    from pop_ros.evaluation import store
    from pop_ros.evaluation.datasets import DATASETS, DEFAULT_SPLITS, DatasetError, load_dataset
    from pop_ros.evaluation.runner import (
        PROTOCOL_VERSION,
        ImageCache,
        build_work,
        dataset_record,
        describe_changes,
        digest,
        draw_episodes,
        group_by_image,
        model_configuration,
        run_episode,
        shard,
        write_reports,
    )
    from pop_ros.pipeline import PartPointer

    # Everything that can refuse the run happens before any model loads, on every rank; the ranks
    # agree on the first error so none of them waits for a rank that has given up.
    error = None
    try:
        store.prepare_output(args.out)
        if rank == 0:
            lock.acquire()
        overrides = model_overrides(args)
        if any(method.native or ("head_set", "all") in method.settings for method in methods):
            overrides["trim"] = False  # native pointing generates; every-head ablations read every layer
        if world > 1 and torch.cuda.is_available() and overrides.get("device", "auto") in ("auto", "cuda"):
            overrides["device"] = f"cuda:{local_rank}"  # one GPU per rank
        model = model_configuration(args.preset, overrides, torch.cuda.is_available())
        model_digest = digest(model)
        datasets, plans = [], []
        for spec in args.dataset:
            name, sep, root = spec.partition(":")
            if not sep or name not in DATASETS:
                raise CliError(f"--dataset {spec!r}: expected NAME:ROOT with NAME in {DATASETS}")
            split = DEFAULT_SPLITS[name] if args.split is None else args.split
            samples = load_dataset(name, pathlib.Path(root), split=split)
            dataset = dataset_record(name, pathlib.Path(root), split, skip=args.out)
            datasets.append(dataset)
            for seed in range(args.seeds):
                episodes = draw_episodes(samples, seed, pool=max(3, args.cls_pool), limit=args.limit)
                if not episodes:
                    raise CliError(f"{name}: no (object, part) has enough images for {max(3, args.cls_pool)} supports")
                plans.append((dataset, seed, episodes))
        run = {"datasets": datasets, "seeds": args.seeds, "limit": args.limit, "cls_pool": args.cls_pool}
        run["methods"] = [m.name for m in methods]
        header = {"pop_eval": PROTOCOL_VERSION, "config_digest": model_digest, "model": model, "run": run}
        headers, rows, unreadable = [], [], 0
        for path in [args.out / store.MAIN_LOG, *store.rank_logs(args.out)]:
            more_headers, more_rows, torn, bad = store.read_log(path)
            headers += more_headers
            rows += more_rows
            unreadable += bad
        known = [h for h in headers if h.get("config_digest") == model_digest]
        if (headers or rows or unreadable) and not known and not args.add_config:
            if headers:
                what = describe_changes(headers[-1].get("model", {}), model)
                raise CliError(
                    f"{args.out} holds predictions of another model configuration ({what}); use a new --out "
                    "for this one, or add --add-config to keep both there (reports show only this run's)"
                )
            raise CliError(
                f"{args.out}/{store.MAIN_LOG} holds lines written without a recorded configuration; use a new "
                "--out, or add --add-config to leave them aside and compute afresh"
            )
    except (CliError, store.StoreError, DatasetError, ValueError, OSError) as failure:
        error = str(failure)
    error = _first_error(error, world)
    if error:
        raise CliError(error)

    if unreadable:
        LOG.warning("%d unreadable lines in %s are ignored", unreadable, args.out)
    if known and known[-1]["run"] != run:
        LOG.info("run settings changed since the last run in %s: %s", args.out, describe_changes(known[-1]["run"], run))
    cached = {row["key"]: row for row in rows}
    work = build_work(model_digest, plans, methods)
    mine = [item for group in shard(group_by_image(work), rank, world) for item in group]
    todo = [item for item in mine if item.key not in cached]
    reused = sum(item.key in cached for item in work)
    progress.total, progress.done = len(work), reused
    LOG.info(
        "%d predictions: %d already in %s (still valid for this configuration), %d to compute%s",
        len(work),
        reused,
        args.out,
        len(work) - reused,
        f" ({len(todo)} on rank {rank} of {world})" if world > 1 else "",
    )

    log_path = args.out / (store.MAIN_LOG if world == 1 else store.RANK_LOG.format(rank=rank))
    log = store.AppendLog(log_path)  # cuts a torn last line first (logged with its size)
    progress.log_path = log_path
    try:
        if not any(h["config_digest"] == model_digest and h.get("run") == run for h in headers):
            log.append({**header, "started": datetime.datetime.now(datetime.timezone.utc).isoformat()})
        if todo:
            pointer = PartPointer.from_preset(args.preset, **overrides)
            load = ImageCache()
            with tqdm(total=len(todo), desc="evaluating", unit="prediction", disable=None) as bar:
                for item in todo:  # image by image: each target's features serve every method and seed on it
                    row = {
                        "key": item.key,
                        "config": model_digest[:16],
                        "dataset": item.dataset,
                        "seed": item.seed,
                        "method": item.method.name,
                        **run_episode(pointer, item.method, item.episode, load),
                    }
                    log.append(row)
                    progress.written, progress.done = log.written, progress.done + 1
                    bar.update(1)
    finally:
        log.close()

    if world > 1:
        import torch.distributed as dist

        dist.barrier()  # every rank's predictions are in its log
        if rank != 0:
            return {}
    store.merge(args.out)
    _, rows, _, _ = store.read_log(args.out / store.MAIN_LOG)
    saved = {row["key"]: row for row in rows}
    missing = [item for item in work if item.key not in saved]
    if missing:
        raise CliError(f"{len(missing)} predictions are missing after the merge; rerun the same command")
    report_rows = [saved[item.key] for item in work]  # report order, whatever order they were computed in
    summary = write_reports(
        report_rows, args.out, [m.name for m in methods], model["random_weights"], args.preset, configuration=header
    )
    return {
        "out": str(args.out),
        "predictions": len(report_rows),
        "computed": len(work) - reused,
        "reused": reused,
        "summary": summary,
    }


def _init_distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank) from a launcher's environment (torchrun sets RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR, MASTER_PORT); a process group only when there are several ranks."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    import torch.distributed as dist

    # gloo carries only a few small messages (errors, one barrier); the GPUs are left to the models.
    # A long timeout: ranks finish their shares hours apart on a real run.
    dist.init_process_group("gloo", timeout=datetime.timedelta(days=7))
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))


def _first_error(error: str | None, world: int) -> str | None:
    if world <= 1:
        return error
    import torch.distributed as dist

    errors: list = [None] * world
    dist.all_gather_object(errors, error)
    return next((e for e in errors if e), None)


if __name__ == "__main__":
    sys.exit(main())
