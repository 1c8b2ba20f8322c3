"""Localization heads: discovery (Kang et al., CVPR 2025), head files, and the uncalibrated fallback.

Discovery runs once per MLLM, offline, over (image, referring expression) pairs. Per sample, on the
last token's attention over the image tokens of every (layer, head):
1. attention sum s over the image tokens; threshold = the elbow of all heads' s sorted ascending
   (largest perpendicular distance to the chord from first to last point); keep s >= threshold and
   layers > 1;
2. spatial entropy of the map: B = relu(S - 2 mean(S)), components of B > 0.001 with 8-connectivity,
   p_i = mass share of component i, H = -sum p_i log p_i (inf when B is all zero); a head whose
   bottom row exceeds 0.05 is an attention sink and dropped;
3. the sample votes for its `votes_per_sample` lowest-entropy heads.
The `k` most voted heads over all samples win (k = 3 in that paper and in POP).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import pathlib
import re
from collections.abc import Iterable, Sequence

import numpy as np
import scipy.ndimage
import torch
import yaml

LOG = logging.getLogger(__name__)

MIN_LAYER = 2  # "only layers > 1"
SINK_THRESHOLD = 0.05
ACTIVE_THRESHOLD = 0.001


def elbow_threshold(values: Sequence[float]) -> float:
    """Value at the elbow of `values` sorted ascending: the point farthest from the first-last chord."""
    ordered = np.sort(np.asarray(values, dtype=np.float64))
    if ordered.size < 3:
        return float(ordered[0]) if ordered.size else 0.0
    x = np.arange(ordered.size, dtype=np.float64)
    start = np.array([x[0], ordered[0]])
    chord = np.array([x[-1], ordered[-1]]) - start
    length = np.hypot(*chord)
    if length == 0:
        return float(ordered[0])
    points = np.stack([x, ordered], axis=1) - start
    distance = np.abs(chord[0] * points[:, 1] - chord[1] * points[:, 0]) / length
    return float(ordered[int(np.argmax(distance))])


def spatial_entropy(attention_map: np.ndarray) -> float:
    """Entropy of the mass of the connected high-attention regions of a `(H_l, W_l)` map."""
    attention_map = np.asarray(attention_map, dtype=np.float64)
    above = np.maximum(attention_map - 2.0 * attention_map.mean(), 0.0)
    total = above.sum()
    if total <= 0:
        return math.inf
    labels, count = scipy.ndimage.label(above > ACTIVE_THRESHOLD, structure=np.ones((3, 3), dtype=int))
    if count == 0:
        return math.inf
    masses = scipy.ndimage.sum_labels(above, labels, index=np.arange(1, count + 1))
    shares = masses[masses > 0] / total
    return float(-(shares * np.log(shares)).sum())


def sample_votes(
    maps: torch.Tensor, votes_per_sample: int = 10, layers: Sequence[int] | None = None
) -> list[tuple[int, int]]:
    """The heads one sample votes for, best first. `maps (L, H, H_l, W_l)`: every head's map of the
    decoder layers `layers` (default 0..L-1; a hybrid model passes its full-attention layers)."""
    maps_np = maps.detach().float().cpu().numpy()
    num_rows, num_heads = maps_np.shape[:2]
    layers = list(range(num_rows)) if layers is None else [int(layer) for layer in layers]
    if len(layers) != num_rows:
        raise ValueError(f"{num_rows} layers of maps but {len(layers)} layer indices")
    sums = maps_np.reshape(num_rows, num_heads, -1).sum(-1)
    threshold = elbow_threshold(sums.ravel())
    candidates = []
    for row, layer in enumerate(layers):
        if layer < MIN_LAYER:
            continue
        for head in range(num_heads):
            if sums[row, head] < threshold:
                continue
            head_map = maps_np[row, head]
            if head_map[-1].max() > SINK_THRESHOLD:
                continue
            entropy = spatial_entropy(head_map)
            if math.isfinite(entropy):
                candidates.append((entropy, layer, head))
    candidates.sort()
    return [(layer, head) for _, layer, head in candidates[:votes_per_sample]]


@dataclasses.dataclass
class HeadSelection:
    heads: list[tuple[int, int]]
    votes: dict[str, int]
    num_samples: int


def select_heads(per_sample_votes: Iterable[Sequence[tuple[int, int]]], k: int = 3) -> HeadSelection:
    """The `k` most voted heads (ties: lower layer, then lower head)."""
    counter: collections.Counter = collections.Counter()
    num_samples = 0
    for votes in per_sample_votes:
        counter.update((int(layer), int(head)) for layer, head in votes)
        num_samples += 1
    ranked = sorted(counter.items(), key=lambda item: (-item[1], item[0]))
    return HeadSelection(
        heads=[head for head, _ in ranked[:k]],
        votes={f"{layer},{head}": count for (layer, head), count in ranked},
        num_samples=num_samples,
    )


def fallback_heads(num_layers: int, num_heads: int, head_layers: Sequence[int] | None = None) -> list[tuple[int, int]]:
    """Every head of the middle third of the layers: used, with mean aggregation, until calibrated.

    `head_layers`: the layers that can hold heads (a hybrid model's full-attention layers); only
    those of the middle third are used, or the one nearest its centre when none lies in it."""
    first = num_layers // 3
    last = max(first + 1, (2 * num_layers) // 3)
    layers = list(range(first, last))
    if head_layers is not None:
        allowed = sorted(int(layer) for layer in head_layers)
        layers = [layer for layer in layers if layer in allowed]
        if not layers and allowed:
            centre = (first + last - 1) / 2
            layers = [min(allowed, key=lambda layer: (abs(layer - centre), layer))]
    return [(layer, head) for layer in layers for head in range(num_heads)]


# --------------------------------------------------------------------------------------------
# Head files
# --------------------------------------------------------------------------------------------
def head_file_name(model_id: str) -> str:
    """`Qwen/Qwen2.5-VL-7B-Instruct` -> `Qwen__Qwen2.5-VL-7B-Instruct.yaml` (safe on every filesystem)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", model_id.strip("/").replace("/", "__"))
    return safe + ".yaml"


def save_head_file(path: pathlib.Path | str, model_id: str, selection: HeadSelection, source: str) -> None:
    data = {
        "model": model_id,
        "heads": [[int(layer), int(head)] for layer, head in selection.heads],
        "num_samples": selection.num_samples,
        "source": source,
        "votes": selection.votes,
    }
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = f"# Localization heads of {model_id}, found by pop-find-heads on {selection.num_samples} samples.\n"
    path.write_text(header + yaml.safe_dump(data, sort_keys=False))


def load_head_file(
    path: pathlib.Path | str, num_layers: int, num_heads: int, layer_problem=None
) -> list[tuple[int, int]]:
    """Heads from a YAML head file, validated against the model's size. `layer_problem(layer)`:
    None or why that layer cannot hold a head (a hybrid model's linear-attention layers)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"head file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"head file {path} is not valid YAML: {error}") from error
    heads = data.get("heads") if isinstance(data, dict) else None
    if not isinstance(heads, list) or not heads:
        raise ValueError(f"head file {path} needs a non-empty 'heads' list of [layer, head]")
    parsed = []
    for entry in heads:
        if not (isinstance(entry, (list, tuple)) and len(entry) == 2 and all(isinstance(v, int) for v in entry)):
            raise ValueError(f"head file {path}: entry {entry!r} is not [layer, head]")
        layer, head = entry
        if not (0 <= layer < num_layers and 0 <= head < num_heads):
            raise ValueError(f"head file {path}: head {entry} is outside the model's {num_layers} x {num_heads} heads")
        problem = layer_problem(layer) if layer_problem is not None else None
        if problem:
            raise ValueError(f"head file {path}: head {entry} is refused: {problem}")
        parsed.append((layer, head))
    return parsed
