"""Running the methods on the same episodes; caching each prediction so an interrupted run resumes;
the paper-style table, CSV, JSON and bar plot."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import pathlib
import time

import numpy as np

from pop_ros.evaluation.datasets import Episode
from pop_ros.evaluation.native import (
    NATIVE_MAX_NEW_TOKENS,
    NATIVE_PROMPTS,
    NativePointError,
    parse_molmo_point,
    parse_qwen_point,
)
from pop_ros.pipeline import PartPointer, PointerError, PointerSettings, from_core_pixel
from pop_ros.supports import SupportError, read_rgb


@dataclasses.dataclass(frozen=True)
class Method:
    name: str
    shots: int  # K supports (0 = the text prior alone)
    settings: tuple = ()  # PointerSettings overrides as (field, value) pairs
    cls_retrieval: bool = False  # give the whole support pool and let DINO [CLS] choose K
    native: bool = False  # the MLLM's own generated point


MAIN_METHODS = (
    Method("native", 0, native=True),
    Method("attention-0shot", 0),
    Method("visual-1shot", 1, (("use_text", False),)),
    Method("pop-1shot", 1),
    Method("pop-3shot", 3),
    Method("pop-3shot-cls", 3, (("retrieval", "cls"),), cls_retrieval=True),
)
# The paper's ablations (its Tab. 5 and 6 are 1-shot): head aggregation, similarity direction;
# plus our K-shot combination.
ABLATION_METHODS = (
    Method("abl-heads-all-mean", 1, (("head_set", "all"), ("aggregation", "mean"))),
    Method("abl-heads-all-max", 1, (("head_set", "all"), ("aggregation", "max"))),
    Method("abl-heads-selected-mean", 1, (("aggregation", "mean"),)),
    Method("abl-heads-selected-max", 1, (("aggregation", "max"),)),
    Method("abl-sim-forward", 1, (("similarity", "forward"),)),
    Method("abl-sim-backward", 1, (("similarity", "backward"),)),
    Method("abl-shots-product-3", 3, (("shots", "product"),)),
)
ALL_METHODS = {method.name: method for method in MAIN_METHODS + ABLATION_METHODS}


def hit(mask: np.ndarray, u: float, v: float) -> bool:
    """The paper's metric: 1 if the predicted pixel lies inside the ground-truth part mask."""
    height, width = mask.shape
    # ROS pixel coordinates (the pipeline's): pixel i covers [i - 0.5, i + 0.5).
    if not (math.isfinite(u) and math.isfinite(v) and -0.5 <= u < width - 0.5 and -0.5 <= v < height - 0.5):
        return False
    return bool(mask[math.floor(v + 0.5), math.floor(u + 0.5)])


def native_point(pointer: PartPointer, image: np.ndarray, query: str) -> tuple[float, float]:
    """The MLLM's own point for `query`, parsed from its generated answer."""
    adapter = pointer.mllm
    if adapter.family not in NATIVE_PROMPTS:
        raise NativePointError(f"{adapter.family} has no native pointing format")
    prompt = NATIVE_PROMPTS[adapter.family].format(query=query)
    answer = adapter.generate_text(image, prompt, max_new_tokens=NATIVE_MAX_NEW_TOKENS, fixed_length=False)
    # The parsers give continuous image coordinates (fraction of the image size x the size, edge
    # origin); the pipeline's and the metric's are ROS pixel coordinates.
    if adapter.family == "molmo2":
        return from_core_pixel(parse_molmo_point(answer, image.shape[:2]))
    grid = adapter.prepare(image, query).model_inputs["image_grid_thw"][0].tolist()
    patch = int(adapter.model.config.vision_config.patch_size)
    return from_core_pixel(parse_qwen_point(answer, (grid[1] * patch, grid[2] * patch), image.shape[:2]))


class ResultCache:
    """One JSON line per (dataset, method, episode): append-only, so a killed run loses nothing."""

    def __init__(self, path: pathlib.Path):
        self.path = path
        self.rows: dict[tuple[str, str, str], dict] = {}
        if path.is_file():
            for line in path.read_text().splitlines():
                try:
                    row = json.loads(line)
                    self.rows[(row["dataset"], row["method"], row["episode_id"])] = row
                except (json.JSONDecodeError, KeyError):
                    continue  # a line cut by the interruption
        path.parent.mkdir(parents=True, exist_ok=True)

    def get(self, dataset: str, method: str, episode_id: str) -> dict | None:
        return self.rows.get((dataset, method, episode_id))

    def add(self, row: dict) -> None:
        self.rows[(row["dataset"], row["method"], row["episode_id"])] = row
        with self.path.open("a") as handle:
            handle.write(json.dumps(row) + "\n")


def run_episode(pointer: PartPointer, method: Method, episode: Episode, images: dict) -> dict:
    """One prediction; every failure becomes a miss with its reason."""

    def load(path):
        if path not in images:
            images[path] = read_rgb(path)
        return images[path]

    started = time.perf_counter()
    u = v = math.nan
    score, reason = math.nan, ""
    try:
        target = load(episode.target.image_path)
        if method.native:
            u, v = native_point(pointer, target, episode.query)
        else:
            supports = episode.supports if method.cls_retrieval else episode.supports[: method.shots]
            pairs = [(load(s.image_path), _click(s)) for s in supports]
            pointer.settings = dataclasses.replace(PointerSettings(), **dict(method.settings)).validate()
            result = pointer.point(target, episode.query, supports=pairs or None, shots=max(1, method.shots))
            u, v, score = result.u, result.v, result.score
        success = hit(episode.target.mask(), u, v)
    except (NativePointError, PointerError, SupportError, ValueError) as error:
        success, reason = False, str(error)
    return {
        "episode_id": episode.episode_id,
        "target": episode.target.key,
        "query": episode.query,
        "u": None if math.isnan(u) else round(u, 2),
        "v": None if math.isnan(v) else round(v, 2),
        "score": None if math.isnan(score) else round(score, 4),
        "hit": int(success),
        "reason": reason,
        "ms": round((time.perf_counter() - started) * 1000.0, 1),
    }


_CLICKS: dict[str, tuple[float, float]] = {}


def _click(sample) -> tuple[float, float]:
    from pop_ros.evaluation.datasets import interior_click

    if sample.key not in _CLICKS:
        _CLICKS[sample.key] = interior_click(sample.mask())
    return _CLICKS[sample.key]


def summarise(rows: list[dict]) -> dict:
    """{dataset: {method: {"mean", "std", "seeds", "episodes"}}}: mean over episodes per seed, then
    mean and std over seeds, in percent."""
    per_seed: dict = {}
    for row in rows:
        per_seed.setdefault((row["dataset"], row["method"]), {}).setdefault(row["seed"], []).append(row["hit"])
    summary: dict = {}
    for (dataset, method), seeds in per_seed.items():
        accuracies = [100.0 * float(np.mean(hits)) for hits in seeds.values()]
        summary.setdefault(dataset, {})[method] = {
            "mean": float(np.mean(accuracies)),
            "std": float(np.std(accuracies)),
            "seeds": len(accuracies),
            "episodes": int(sum(len(h) for h in seeds.values())),
        }
    return summary


def write_reports(rows: list[dict], out: pathlib.Path, methods: list[str], random_weights: bool, preset: str) -> dict:
    summary = summarise(rows)
    datasets = sorted(summary)
    header = "| Method | " + " | ".join(datasets) + " |"
    lines = []
    if random_weights:
        lines.append(
            f"> RANDOM WEIGHTS (preset `{preset}`): these numbers test the harness, they are not accuracies.\n"
        )
    lines += [
        f"Part-pointing accuracy (%), mean ± std over seeds; preset `{preset}`.\n",
        header,
        "|---" * (len(datasets) + 1) + "|",
    ]
    for method in methods:
        cells = []
        for dataset in datasets:
            entry = summary[dataset].get(method)
            cells.append(f"{entry['mean']:.1f} ± {entry['std']:.1f}" if entry else "n/a")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    with (out / "predictions.csv").open("w", newline="") as handle:
        fields = [
            "dataset",
            "seed",
            "method",
            "episode_id",
            "target",
            "query",
            "u",
            "v",
            "score",
            "hit",
            "reason",
            "ms",
        ]
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    report = {"preset": preset, "random_weights": random_weights, "summary": summary, "predictions": rows}
    (out / "results.json").write_text(json.dumps(report, indent=1))
    _bar_plot(summary, methods, out / "accuracy.png", random_weights)
    return summary


def _bar_plot(summary: dict, methods: list[str], path: pathlib.Path, random_weights: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted(summary)
    figure, axis = plt.subplots(figsize=(max(6, 1.2 * len(methods) * len(datasets)), 4))
    width = 0.8 / max(1, len(methods))
    for index, method in enumerate(methods):
        means = [summary[d].get(method, {}).get("mean", 0.0) for d in datasets]
        stds = [summary[d].get(method, {}).get("std", 0.0) for d in datasets]
        axis.bar(np.arange(len(datasets)) + index * width, means, width, yerr=stds, label=method, capsize=2)
    axis.set_xticks(np.arange(len(datasets)) + width * (len(methods) - 1) / 2, datasets)
    axis.set_ylabel("part-pointing accuracy (%)")
    axis.set_ylim(0, 100)
    axis.set_title("RANDOM WEIGHTS: harness check, not accuracy" if random_weights else "POP part pointing")
    axis.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
