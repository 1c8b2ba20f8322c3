"""The whole evaluation, callable from Python: plan the episodes, check that the output folder's
predictions belong to this model configuration, resume (compute only what is not cached), merge the
ranks' logs and write the reports.

    from pop_ros.evaluation.evaluate import evaluate
    summary = evaluate(["paco:/data/paco"], out="eval_out", preset="tiny", seeds=1, limit=20)

Under torchrun each rank computes its share of the target images; rank 0 merges and reports.
`pop-eval` (pop_ros.cli.evaluate) only parses its arguments into this call.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import pathlib
from collections.abc import Sequence

from pop_ros.evaluation import store
from pop_ros.evaluation.datasets import DATASETS, DEFAULT_SPLITS, DatasetError, load_dataset
from pop_ros.evaluation.runner import (
    ALL_METHODS,
    MAIN_METHODS,
    PROTOCOL_VERSION,
    ImageCache,
    Work,
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

LOG = logging.getLogger("pop_eval")


class EvaluationError(ValueError):
    """An evaluation that cannot run (bad arguments, data or output folder); the message says why."""


@dataclasses.dataclass
class EvaluationProgress:
    """How far a run got: what an interruption message needs to say."""

    log_path: pathlib.Path | None = None
    written: int = 0  # new predictions appended by this process
    done: int = 0  # predictions of the run that are saved (reused + new)
    total: int = 0


@dataclasses.dataclass
class _Plan:
    """What this run evaluates and everything that keys its predictions."""

    model: dict  # the resolved model configuration (see runner.model_configuration)
    model_digest: str
    overrides: dict  # model overrides as given, plus this rank's GPU
    run: dict  # datasets, seeds, limit, pool, methods: logged with each run
    work: list[Work]


@dataclasses.dataclass
class _Output:
    """What the output folder holds already."""

    headers: list[dict]
    cached: dict[str, dict]  # prediction key -> row
    known: list[dict]  # headers of this model configuration


def evaluate(
    datasets: Sequence[str],
    out: str | pathlib.Path = "eval_out",
    methods: Sequence[str] | None = None,
    preset: str = "tiny",
    overrides: dict | None = None,
    split: str | None = None,
    seeds: int = 5,
    limit: int | None = None,
    cls_pool: int = 10,
    add_config: bool = False,
    progress: EvaluationProgress | None = None,
) -> dict:
    """Evaluate `methods` (names, default the main ones; see runner.ALL_METHODS) on `datasets`
    ("NAME:ROOT" each, NAME in DATASETS) with the `preset` model and its `overrides` (ModelConfig
    fields). Predictions are cached in `out` and reused by a rerun; `add_config` lets `out` keep
    another configuration's predictions beside these. Returns {out, predictions, computed, reused,
    summary}; {} on ranks other than 0. EvaluationError when it cannot run."""
    out = pathlib.Path(out)
    names = [method.name for method in MAIN_METHODS] if methods is None else list(methods)
    unknown = [name for name in names if name not in ALL_METHODS]
    if unknown:
        raise EvaluationError(f"unknown methods {unknown}; known: {sorted(ALL_METHODS)}")
    if seeds < 1 or (limit is not None and limit < 1) or cls_pool < 3:
        raise EvaluationError("--seeds and --limit must be >= 1 and --cls-pool >= 3")
    progress = progress if progress is not None else EvaluationProgress()
    chosen = [ALL_METHODS[name] for name in names]
    options = dict(split=split, seeds=seeds, limit=limit, cls_pool=cls_pool, add_config=add_config)
    rank, world, local_rank = _init_distributed()
    lock = store.FolderLock(out)
    try:
        return _evaluate_on_rank(list(datasets), out, chosen, preset, dict(overrides or {}), options, progress,
                                 (rank, world, local_rank), lock)  # fmt: skip
    except OSError as error:  # a full disk, a folder that vanished: one line, and how to go on
        raise EvaluationError(
            f"I/O error: {error}; {progress.written} new predictions of this run are saved in {out}; "
            "fix the cause and rerun the same command to resume"
        ) from error
    finally:
        lock.release()
        if world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()


def _evaluate_on_rank(datasets, out, methods, preset, overrides, options, progress, ranks, lock) -> dict:
    rank, world, local_rank = ranks
    # Everything that can refuse the run happens before any model loads, on every rank; the ranks
    # agree on the first error so none of them waits for a rank that has given up.
    error = None
    try:
        store.prepare_output(out)
        if rank == 0:
            lock.acquire()
        plan = _plan(datasets, out, methods, preset, overrides, options, world, local_rank)
        existing = _read_output(out, plan, options["add_config"])
    except (store.StoreError, DatasetError, ValueError, OSError) as failure:
        error = str(failure)
    error = _first_error(error, world)
    if error:
        raise EvaluationError(error)
    if existing.known and existing.known[-1]["run"] != plan.run:
        LOG.info(
            "run settings changed since the last run in %s: %s",
            out,
            describe_changes(existing.known[-1]["run"], plan.run),
        )
    mine = [item for group in shard(group_by_image(plan.work), rank, world) for item in group]
    todo = [item for item in mine if item.key not in existing.cached]
    reused = sum(item.key in existing.cached for item in plan.work)
    progress.total, progress.done = len(plan.work), reused
    LOG.info(
        "%d predictions: %d already in %s (still valid for this configuration), %d to compute%s",
        len(plan.work),
        reused,
        out,
        len(plan.work) - reused,
        f" ({len(todo)} on rank {rank} of {world})" if world > 1 else "",
    )
    log_path = out / (store.MAIN_LOG if world == 1 else store.RANK_LOG.format(rank=rank))
    _compute(todo, log_path, plan, existing.headers, preset, progress)
    if world > 1:
        import torch.distributed as dist

        dist.barrier()  # every rank's predictions are in its log
        if rank != 0:
            return {}
    summary = _merge_and_report(out, plan, preset, [m.name for m in methods])
    return {"out": str(out), "predictions": len(plan.work), "computed": len(plan.work) - reused,
            "reused": reused, "summary": summary}  # fmt: skip


def _plan(datasets, out, methods, preset, overrides, options, world, local_rank) -> _Plan:
    """The model configuration and the episodes of every dataset and seed (ValueError if impossible)."""
    import torch

    if any(method.native or ("head_set", "all") in method.settings for method in methods):
        overrides["trim"] = False  # native pointing generates; every-head ablations read every layer
    if world > 1 and torch.cuda.is_available() and overrides.get("device", "auto") in ("auto", "cuda"):
        overrides["device"] = f"cuda:{local_rank}"  # one GPU per rank
    model = model_configuration(preset, overrides, torch.cuda.is_available())
    model_digest = digest(model)
    records, plans = [], []
    seeds, pool, limit = options["seeds"], options["cls_pool"], options["limit"]
    for spec in datasets:
        name, sep, root = spec.partition(":")
        if not sep or name not in DATASETS:
            raise EvaluationError(f"--dataset {spec!r}: expected NAME:ROOT with NAME in {DATASETS}")
        split = DEFAULT_SPLITS[name] if options["split"] is None else options["split"]
        samples = load_dataset(name, pathlib.Path(root), split=split)
        record = dataset_record(name, pathlib.Path(root), split, skip=out)
        records.append(record)
        for seed in range(seeds):
            episodes = draw_episodes(samples, seed, pool=max(3, pool), limit=limit)
            if not episodes:
                raise EvaluationError(f"{name}: no (object, part) has enough images for {max(3, pool)} supports")
            plans.append((record, seed, episodes))
    run = {"datasets": records, "seeds": seeds, "limit": limit, "cls_pool": pool, "methods": [m.name for m in methods]}
    return _Plan(model, model_digest, overrides, run, build_work(model_digest, plans, methods))


def _read_output(out: pathlib.Path, plan: _Plan, add_config: bool) -> _Output:
    """The predictions already in `out`; EvaluationError when they are another configuration's."""
    headers, rows, unreadable = [], [], 0
    for path in [out / store.MAIN_LOG, *store.rank_logs(out)]:
        more_headers, more_rows, _torn, bad = store.read_log(path)
        headers += more_headers
        rows += more_rows
        unreadable += bad
    known = [h for h in headers if h.get("config_digest") == plan.model_digest]
    if (headers or rows or unreadable) and not known and not add_config:
        if headers:
            what = describe_changes(headers[-1].get("model", {}), plan.model)
            raise EvaluationError(
                f"{out} holds predictions of another model configuration ({what}); use a new --out "
                "for this one, or add --add-config to keep both there (reports show only this run's)"
            )
        raise EvaluationError(
            f"{out}/{store.MAIN_LOG} holds lines written without a recorded configuration; use a new "
            "--out, or add --add-config to leave them aside and compute afresh"
        )
    if unreadable:
        LOG.warning("%d unreadable lines in %s are ignored", unreadable, out)
    return _Output(headers, {row["key"]: row for row in rows}, known)


def _compute(todo: list[Work], log_path: pathlib.Path, plan: _Plan, headers, preset, progress) -> None:
    """Run each prediction of `todo` and append it to this rank's log (a header first, once per run)."""
    from tqdm import tqdm

    from pop_ros.pipeline import PartPointer

    log = store.AppendLog(log_path)  # cuts a torn last line first (logged with its size)
    progress.log_path = log_path
    header = _header(plan)
    try:
        if not any(h["config_digest"] == plan.model_digest and h.get("run") == plan.run for h in headers):
            log.append({**header, "started": datetime.datetime.now(datetime.timezone.utc).isoformat()})
        if not todo:
            return
        pointer = PartPointer.from_preset(preset, **plan.overrides)
        load = ImageCache()
        with tqdm(total=len(todo), desc="evaluating", unit="prediction", disable=None) as bar:
            for item in todo:  # image by image: each target's features serve every method and seed on it
                row = {"key": item.key, "config": plan.model_digest[:16], "dataset": item.dataset, "seed": item.seed,
                       "method": item.method.name, **run_episode(pointer, item.method, item.episode, load)}  # fmt: skip
                log.append(row)
                progress.written, progress.done = log.written, progress.done + 1
                bar.update(1)
    finally:
        log.close()


def _header(plan: _Plan) -> dict:
    return {"pop_eval": PROTOCOL_VERSION, "config_digest": plan.model_digest, "model": plan.model, "run": plan.run}


def _merge_and_report(out: pathlib.Path, plan: _Plan, preset: str, method_names: list[str]) -> dict:
    """Merge the ranks' logs into the main one and write the reports of this run's predictions."""
    store.merge(out)
    _, rows, _, _ = store.read_log(out / store.MAIN_LOG)
    saved = {row["key"]: row for row in rows}
    missing = [item for item in plan.work if item.key not in saved]
    if missing:
        raise EvaluationError(f"{len(missing)} predictions are missing after the merge; rerun the same command")
    report_rows = [saved[item.key] for item in plan.work]  # report order, whatever order they were computed in
    return write_reports(
        report_rows, out, method_names, plan.model["random_weights"], preset, configuration=_header(plan)
    )


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


__all__ = ["EvaluationError", "EvaluationProgress", "evaluate"]
