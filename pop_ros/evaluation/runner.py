"""Running the methods on the same episodes, grouped by target image; the configuration that
determines each prediction and the key it is cached under; the paper-style table, CSV, JSON and bar
plot (written all at once)."""

from __future__ import annotations

import collections
import csv
import dataclasses
import hashlib
import json
import math
import os
import pathlib
import time

import numpy as np

from pop_ros.evaluation.datasets import DEFAULT_SPLITS, Episode, PartSample
from pop_ros.evaluation.methods import ABLATION_METHODS, ALL_METHODS, MAIN_METHODS, Method  # noqa: F401 (re-exported)
from pop_ros.evaluation.native import (
    NATIVE_MAX_NEW_TOKENS,
    NATIVE_PROMPTS,
    NativePointError,
    parse_molmo_point,
    parse_qwen_point,
    parse_qwen_relative_point,
)
from pop_ros.evaluation.store import replace_files
from pop_ros.pipeline import (
    PartPointer,
    PointerError,
    PointerSettings,
    from_core_pixel,
    heads_file_for,
    resolve_model_config,
)
from pop_ros.supports import SupportError, read_rgb

# Bump when what a prediction means changes: episode drawing, the support click, the metric, the
# row format. Every cached prediction is keyed by it.
PROTOCOL_VERSION = 3  # 3: clicks and hits in ROS pixel coordinates (centre of the top-left pixel is (0, 0))
K_SHOTS = 3  # supports every episode draws for the K-shot methods (the paper's largest K)
# Files whose content (not only size) identifies a dataset: its annotations.
ANNOTATION_SUFFIXES = (".json", ".txt", ".csv", ".yaml", ".yml", ".xml")


def method_spec(method: Method) -> dict:
    """Everything about a method that changes its predictions (its name included, so reports never
    show one method's predictions under another's name)."""
    spec = {"name": method.name, "shots": method.shots, "cls_retrieval": method.cls_retrieval}
    if method.native:
        spec["native_prompts"] = dict(NATIVE_PROMPTS)
        spec["native_max_new_tokens"] = NATIVE_MAX_NEW_TOKENS
    else:
        settings = dataclasses.asdict(dataclasses.replace(PointerSettings(), **dict(method.settings)))
        # Recorded under the field's protocol-3 name: renaming a field must not invalidate cached predictions.
        settings["shots"] = settings.pop("shot_combination")
        spec["settings"] = settings
    return spec


def method_supports(method: Method, episode: Episode) -> list[PartSample]:
    if method.native:
        return []
    return list(episode.supports) if method.cls_retrieval else list(episode.supports[: method.shots])


def digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _file_digest(path: pathlib.Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            hasher.update(block)
    return hasher.hexdigest()


def dataset_record(name: str, root: pathlib.Path, split: str, skip: pathlib.Path | None = None) -> dict:
    """What identifies a dataset in prediction keys. A dataset without splits (PartImageNet++, whose
    loader ignores `split`) records none, so `--split` does not invalidate its predictions."""
    return {
        "name": name,
        "root": str(root.resolve()),
        "split": split if DEFAULT_SPLITS[name] else "",
        "identity": folder_identity(root, skip=skip),
    }


def folder_identity(root: pathlib.Path, skip: pathlib.Path | None = None) -> str:
    """Content identity of a folder tree: every file's relative path and size, and the full content
    of annotation-like files; `skip` (the output folder, if it lies inside) is left out."""
    hasher = hashlib.sha256()
    skip = skip.resolve() if skip is not None else None
    for directory, folders, files in os.walk(root):
        folders[:] = sorted(f for f in folders if skip is None or (pathlib.Path(directory) / f).resolve() != skip)
        for name in sorted(files):
            path = pathlib.Path(directory) / name
            relative = path.relative_to(root).as_posix()
            if path.suffix.lower() in ANNOTATION_SUFFIXES:
                hasher.update(f"{relative}|{_file_digest(path)}\n".encode())
            else:
                hasher.update(f"{relative}|{path.stat().st_size}\n".encode())
    return hasher.hexdigest()


def _model_identity(spec: str) -> str:
    """A local model folder is identified by its content; a hub id or tiny spec by its name alone."""
    path = pathlib.Path(spec)
    return folder_identity(path) if path.exists() else "by name"


def model_configuration(preset: str, overrides: dict, cuda_available: bool) -> dict:
    """The model configuration a pointer built from `preset` + `overrides` would have, resolved
    without loading anything: every field that changes a prediction (not the device: ranks on
    different GPUs of one kind give the same predictions)."""
    config = resolve_model_config(preset, **overrides)
    device = config.device if config.device != "auto" else ("cuda" if cuda_available else "cpu")
    dtype = config.dtype
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    heads_path = heads_file_for(config)
    if heads_path is not None and not heads_path.is_file():
        raise FileNotFoundError(f"head file {heads_path} does not exist")
    # Every ModelConfig field is recorded, so a field added to the config is keyed without a change here;
    # only the device and trimming (equal maps and points, tested) are left out, and the file-valued fields
    # are replaced by their identity. No quantization keeps the key that runs before it existed had.
    fields = {
        name: value
        for name, value in dataclasses.asdict(config).items()
        if name not in ("device", "heads_file", "trim") and not (name == "mllm_quantization" and value == "none")
    }
    return {
        "protocol": PROTOCOL_VERSION,
        "preset": preset,
        **fields,
        "mllm_identity": _model_identity(config.mllm),
        "visual_identity": _model_identity(config.visual),
        "heads": {"file": str(heads_path), "sha256": _file_digest(heads_path)} if heads_path else "fallback",
        "dtype": dtype,
    }


def describe_changes(old: dict, new: dict) -> str:
    """`field 'old' -> 'new'` for every top-level field that differs, comma-separated."""
    fields = sorted(set(old) | set(new))
    changes = [f"{f} {_short(old.get(f))} -> {_short(new.get(f))}" for f in fields if old.get(f) != new.get(f)]
    return ", ".join(changes) or "nothing"


def _short(value) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _stable_int(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def draw_episodes(samples: list[PartSample], seed: int, pool: int, limit: int | None = None) -> list[Episode]:
    """Episodes for targets in key order. Each target draws a random order of the other images of its
    (object, part) from its own generator, seeded by (seed, target key): its first K_SHOTS are the
    K-shot supports, its first `pool` the CLS retrieval pool. So a target's supports depend on
    neither the other targets, nor the methods in the run, nor `pool` (beyond the eligibility every
    method shares: targets with fewer than max(K_SHOTS, pool) other images form no episode)."""
    wanted = max(K_SHOTS, pool)
    ordered = sorted(samples, key=lambda s: s.key)
    by_category: dict[str, list[PartSample]] = {}
    for sample in ordered:
        by_category.setdefault(sample.category, []).append(sample)
    episodes = []
    for sample in ordered:
        candidates = [s for s in by_category[sample.category] if s.image_path != sample.image_path]
        # One candidate per image, the first in key order, so a support image appears once.
        unique = list({s.image_path: s for s in reversed(candidates)}.values())[::-1]
        if len(unique) < wanted:
            continue
        order = np.random.default_rng([seed, _stable_int(sample.key)]).permutation(len(unique))
        episodes.append(Episode(f"{sample.key}|s{seed}", sample, [unique[i] for i in order[:wanted]]))
        if limit is not None and len(episodes) >= limit:
            break
    return episodes


@dataclasses.dataclass
class Work:
    """One prediction to make or reuse."""

    key: str
    dataset: str
    seed: int
    method: Method
    episode: Episode


def prediction_key(model_digest: str, dataset: dict, method: Method, episode: Episode) -> str:
    """Digest of everything that determines one prediction: the model configuration, the method,
    the dataset (name, split, content identity), the episode, its query and the supports used."""
    return digest(
        {
            "model": model_digest,
            "method": method_spec(method),
            "dataset": [dataset["name"], dataset["split"], dataset["identity"]],
            "episode": episode.episode_id,
            "target": episode.target.key,
            "query": episode.query,
            "supports": [s.key for s in method_supports(method, episode)],
        }
    )


def build_work(model_digest: str, plans: list[tuple[dict, int, list[Episode]]], methods: list[Method]) -> list[Work]:
    """Every prediction of the run in report order: dataset, seed, method, episode."""
    return [
        Work(prediction_key(model_digest, dataset, method, episode), dataset["name"], seed, method, episode)
        for dataset, seed, episodes in plans
        for method in methods
        for episode in episodes
    ]


def group_by_image(work: list[Work]) -> list[list[Work]]:
    """The work of each target image together (every seed and method on it), so the image's features
    and prefix are computed once per method; within a group, method by method. Groups are in a
    fixed order (dataset, image path), so ranks can take fixed shares."""
    groups: dict[tuple[str, str], list[Work]] = {}
    for item in work:
        groups.setdefault((item.dataset, str(item.episode.target.image_path)), []).append(item)
    ordered = []
    for key in sorted(groups):
        items = groups[key]
        methods = list(dict.fromkeys(item.method.name for item in items))
        ordered.append(sorted(items, key=lambda item: methods.index(item.method.name)))  # stable
    return ordered


def shard(groups: list[list[Work]], rank: int, world: int) -> list[list[Work]]:
    """Rank `rank`'s share of the image groups, balanced by prediction count (each group goes, in
    order, to the rank with the least work so far): the same shares on every rank, no messages."""
    loads = [0] * world
    owner = []
    for group in groups:  # greedy: the next group goes to the least-loaded rank (ties: lowest rank)
        chosen = loads.index(min(loads))
        loads[chosen] += len(group)
        owner.append(chosen)
    return [group for group, who in zip(groups, owner, strict=True) if who == rank]


class ImageCache:
    """The last `capacity` images read (support images recur across target groups)."""

    def __init__(self, capacity: int = 64):
        self.capacity = capacity
        self._images: collections.OrderedDict = collections.OrderedDict()

    def __call__(self, path) -> np.ndarray:
        if path in self._images:
            self._images.move_to_end(path)
        else:
            self._images[path] = read_rgb(path)
            if len(self._images) > self.capacity:
                self._images.popitem(last=False)
        return self._images[path]


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
    if adapter.family == "qwen3_5":
        return from_core_pixel(parse_qwen_relative_point(answer, image.shape[:2]))
    grid = adapter.prepare(image, query).model_inputs["image_grid_thw"][0].tolist()
    patch = int(adapter.model.config.vision_config.patch_size)
    return from_core_pixel(parse_qwen_point(answer, (grid[1] * patch, grid[2] * patch), image.shape[:2]))


def run_episode(pointer: PartPointer, method: Method, episode: Episode, load: ImageCache) -> dict:
    """One prediction; every failure becomes a miss with its reason."""
    started = time.perf_counter()
    u = v = math.nan
    score, reason = math.nan, ""
    try:
        target = load(episode.target.image_path)
        if method.native:
            u, v = native_point(pointer, target, episode.query)
        else:
            pairs = [(load(s.image_path), s.click) for s in method_supports(method, episode)]
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


def write_reports(
    rows: list[dict],
    out: pathlib.Path,
    methods: list[str],
    random_weights: bool,
    preset: str,
    configuration: dict | None = None,
) -> dict:
    """table.md, predictions.csv, results.json and accuracy.png, each written to a temporary file and
    all renamed into place together; `configuration` (the run's) goes into results.json."""
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
    fields = ["dataset", "seed", "method", "episode_id", "target", "query", "u", "v", "score", "hit", "reason", "ms"]

    def write_csv(path: pathlib.Path) -> None:
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    report = {"preset": preset, "random_weights": random_weights, "summary": summary, "predictions": rows}
    if configuration is not None:
        report["configuration"] = configuration
    replace_files(
        {
            out / "table.md": lambda path: path.write_text("\n".join(lines) + "\n"),
            out / "predictions.csv": write_csv,
            out / "results.json": lambda path: path.write_text(json.dumps(report, indent=1)),
            out / "accuracy.png": lambda path: _bar_plot(summary, methods, path, random_weights),
        }
    )
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
    figure.savefig(path, dpi=120, format="png")
    plt.close(figure)
