"""The paper's three part datasets, read in their published formats, turned into pointing episodes.

- PACO-LVIS: one LVIS-style JSON (`paco_lvis_v1_{split}.json`): `images`, `categories` (objects
  like "mug", parts like "mug:handle"), `annotations` with polygon or RLE `segmentation`; a part
  annotation points at its object through `obj_ann_id` (objects have `id == obj_ann_id`).
- InstructPart: `{split}/data_{split}.json`, a list of `{"image_path", "part_list": [{"object",
  "part", ...}]}`, with masks in `{split}/masks/{image stem}-{object}-{part}.png` (spaces -> `_`).
- PartImageNet++: `json/*.json`, one COCO-format file per object class whose categories are its
  parts, images under `images/<file stem>/`; `category_name.json` maps a file stem to the object
  name (the file stem is used when it is missing).

An episode: a target part instance, the query "<part> of the <object>", and K supports drawn with
a seed from other images of the same (object, part). A support's click is the interior point of
its part mask farthest from the mask boundary (the most unambiguous pixel of the part).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Callable

import cv2
import numpy as np

DATASETS = ("paco", "instructpart", "partimagenetpp")


class DatasetError(ValueError):
    """The annotation files are missing or not in the expected format; the message says where."""


@dataclasses.dataclass
class PartSample:
    """One annotated part instance in one image."""

    key: str  # unique id within the dataset
    image_path: pathlib.Path
    object_name: str
    part_name: str
    mask_loader: Callable[[], np.ndarray] = dataclasses.field(repr=False)  # -> (H, W) bool

    @property
    def category(self) -> str:
        return f"{self.object_name}:{self.part_name}"

    @property
    def query(self) -> str:
        return f"{self.part_name.replace('_', ' ')} of the {self.object_name.replace('_', ' ')}"

    def mask(self) -> np.ndarray:
        mask = self.mask_loader()
        if mask.ndim != 2 or not mask.any():
            raise DatasetError(f"{self.key}: empty or malformed part mask")
        return mask


@dataclasses.dataclass
class Episode:
    episode_id: str
    target: PartSample
    supports: list[PartSample]

    @property
    def query(self) -> str:
        return self.target.query


def coco_segmentation_mask(segmentation, height: int, width: int) -> np.ndarray:
    """COCO/LVIS `segmentation` (polygons, RLE or compressed RLE) -> (H, W) bool."""
    from pycocotools import mask as coco_mask

    if isinstance(segmentation, list):
        if not segmentation:
            return np.zeros((height, width), bool)
        rles = coco_mask.frPyObjects(segmentation, height, width)
        rle = coco_mask.merge(rles)
    elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
        rle = coco_mask.frPyObjects(segmentation, height, width)
    elif isinstance(segmentation, dict):
        rle = segmentation
    else:
        raise DatasetError(f"unknown segmentation format {type(segmentation).__name__}")
    return coco_mask.decode(rle).astype(bool)


def interior_click(mask: np.ndarray) -> tuple[float, float]:
    """(u, v) of the mask pixel farthest from the mask boundary (ROS pixel coordinates: its centre)."""
    padded = np.pad(mask.astype(np.uint8), 1)  # the image border counts as boundary
    distance = cv2.distanceTransform(padded, cv2.DIST_L2, 5)[1:-1, 1:-1]
    row, col = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return float(col), float(row)


def _read_json(path: pathlib.Path):
    if not path.is_file():
        raise DatasetError(f"annotation file {path} does not exist")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DatasetError(f"{path} is not valid JSON: {error}") from error


def load_paco(annotation_file: pathlib.Path, image_root: pathlib.Path) -> list[PartSample]:
    data = _read_json(annotation_file)
    try:
        images = {image["id"]: image for image in data["images"]}
        categories = {category["id"]: category["name"] for category in data["categories"]}
        annotations = data["annotations"]
    except (KeyError, TypeError) as error:
        raise DatasetError(f"{annotation_file}: not LVIS/COCO-style (missing {error})") from error
    samples = []
    for annotation in annotations:
        name = categories.get(annotation.get("category_id"), "")
        if ":" not in name or annotation.get("id") == annotation.get("obj_ann_id"):
            continue  # an object, not a part
        object_name, part_name = name.split(":", 1)
        image = images[annotation["image_id"]]
        file_name = image.get("file_name") or pathlib.Path(image.get("coco_url", "")).name

        def loader(segmentation=annotation["segmentation"], height=image["height"], width=image["width"]):
            return coco_segmentation_mask(segmentation, height, width)

        samples.append(PartSample(f"paco:{annotation['id']}", image_root / file_name, object_name, part_name, loader))
    return samples


def load_instructpart(split_dir: pathlib.Path) -> list[PartSample]:
    entries = _read_json(split_dir / f"data_{split_dir.name}.json")
    if not isinstance(entries, list):
        raise DatasetError(f"{split_dir}: data_{split_dir.name}.json must be a list")
    samples = []
    for entry in entries:
        try:
            image_path = split_dir / "images" / entry["image_path"]
            parts = entry["part_list"]
        except (KeyError, TypeError) as error:
            raise DatasetError(f"{split_dir}: entry without {error}: {entry!r:.120}") from error
        stem = pathlib.Path(entry["image_path"]).stem
        for item in parts:
            object_name, part_name = item["object"], item["part"]
            base = f"{stem}-{object_name.replace(' ', '_')}-{part_name.replace(' ', '_')}"
            mask_path = next(
                (p for p in (split_dir / "masks" / f"{base}{ext}" for ext in (".png", ".jpg")) if p.is_file()),
                split_dir / "masks" / f"{base}.png",
            )

            def loader(path=mask_path):
                mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
                if mask is None:
                    raise DatasetError(f"mask {path} is missing or unreadable")
                return mask > 127

            samples.append(
                PartSample(
                    f"instructpart:{base}",
                    image_path,
                    object_name.replace(" ", "_"),
                    part_name.replace(" ", "_"),
                    loader,
                )
            )
    return samples


def _partimagenetpp_object_names(root: pathlib.Path) -> dict[str, str]:
    path = root / "category_name.json"
    if not path.is_file():
        return {}
    data = _read_json(path)
    names = {}
    items = data.items() if isinstance(data, dict) else ((e.get("file_name"), e) for e in data)
    for stem, value in items:
        if isinstance(value, dict):
            value = value.get("object_name") or value.get("object")
        if stem and isinstance(value, str):
            names[pathlib.Path(stem).stem] = value
    return names


def load_partimagenetpp(root: pathlib.Path) -> list[PartSample]:
    files = sorted((root / "json").glob("*.json"))
    if not files:
        raise DatasetError(f"{root}/json holds no per-class JSON files")
    object_names = _partimagenetpp_object_names(root)
    samples = []
    for path in files:
        data = _read_json(path)
        object_name = object_names.get(path.stem, path.stem).replace(" ", "_")
        images = {image["id"]: image for image in data.get("images", [])}
        categories = {category["id"]: category["name"] for category in data.get("categories", [])}
        for annotation in data.get("annotations", []):
            image = images.get(annotation.get("image_id"))
            part_name = categories.get(annotation.get("category_id"))
            if image is None or part_name is None:
                continue

            def loader(segmentation=annotation["segmentation"], height=image["height"], width=image["width"]):
                return coco_segmentation_mask(segmentation, height, width)

            samples.append(
                PartSample(
                    f"partimagenetpp:{path.stem}:{annotation['id']}",
                    root / "images" / path.stem / image["file_name"],
                    object_name,
                    part_name.replace(" ", "_"),
                    loader,
                )
            )
    return samples


def load_dataset(name: str, root: pathlib.Path, split: str = "val") -> list[PartSample]:
    root = pathlib.Path(root)
    if name == "paco":
        return load_paco(root / "annotations" / f"paco_lvis_v1_{split}.json", root / "images")
    if name == "instructpart":
        return load_instructpart(root / split)
    if name == "partimagenetpp":
        return load_partimagenetpp(root)
    raise DatasetError(f"unknown dataset {name!r}; choose one of {DATASETS}")


def make_episodes(
    samples: list[PartSample], shots: int, seed: int, limit: int | None = None, pool: int = 0
) -> list[Episode]:
    """Episodes for targets in a fixed order; each gets `max(shots, pool)` supports drawn with `seed`
    from other images of its (object, part). Categories with too few images are skipped."""
    by_category: dict[str, list[PartSample]] = {}
    for sample in sorted(samples, key=lambda s: s.key):
        by_category.setdefault(sample.category, []).append(sample)
    rng = np.random.default_rng(seed)
    wanted = max(shots, pool)
    episodes = []
    for sample in sorted(samples, key=lambda s: s.key):
        candidates = [s for s in by_category[sample.category] if s.image_path != sample.image_path]
        # One candidate per image, the first in key order, so a support image appears once.
        unique = list({s.image_path: s for s in reversed(candidates)}.values())[::-1]
        if len(unique) < max(1, wanted):
            continue
        chosen = [unique[i] for i in rng.choice(len(unique), size=wanted, replace=False)] if wanted else []
        episodes.append(Episode(f"{sample.key}|s{seed}", sample, chosen))
    if limit is not None:
        episodes = episodes[:limit]
    return episodes
