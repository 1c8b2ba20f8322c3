"""The paper's three part datasets, read in their published formats, turned into pointing episodes.

Checked against each release's own description (docs/evaluation.md has the folder layouts):
- PACO-LVIS: one LVIS-style JSON (`annotations/paco_lvis_v1_{split}.json`, splits train/val/test):
  `images` (with `file_name` such as `val2017/000000012345.jpg`, relative to `images/`),
  `categories` (objects like "mug", parts like "mug:handle"; LVIS names carry a sense suffix such as
  `car_(automobile)`, dropped from the query), `annotations` with polygon or RLE `segmentation`; a
  part points at its object through `obj_ann_id` (objects have `id == obj_ann_id`). Annotations
  with an empty `segmentation` are skipped (PACO's own loader drops them), with a count in the log.
- InstructPart: `test/data_test.json`, `train/train{200,600,1200,1800}/data_train.json`,
  `all/data_all.json`: a list of `{"image_path", "part_list": [{"object", "part", ...}]}`. Each
  part has its own image and mask, `images/{stem}-{object}-{part}.jpg` and
  `masks/{stem}-{object}-{part}.png` (stem: `image_path` without extension; spaces -> `_`); any
  non-zero mask pixel is the part, as in the release's scripts.
- PartImageNet++: `json/*.json`, one COCO-format file per object class whose categories are its
  parts, images under `images/<file stem>/`; `category_name.json` maps a file stem to the object
  name (the file stem is used when it is missing).

An episode: a target part instance, the query "<part> of the <object>", and K supports drawn with
a seed from other images of the same (object, part). A support's click is the interior point of
its part mask farthest from the mask boundary (the most unambiguous pixel of the part).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import pathlib
import re
from collections.abc import Callable

import cv2
import numpy as np

LOG = logging.getLogger(__name__)

DATASETS = ("paco", "instructpart", "partimagenetpp")
# The split each dataset is evaluated on when none is named (the paper reports held-out data).
DEFAULT_SPLITS = {"paco": "test", "instructpart": "test", "partimagenetpp": ""}
PACO_SPLITS = ("train", "val", "test")
# InstructPart's release: split name -> its folder under ROOT and its annotation file.
INSTRUCTPART_SPLITS = {
    "test": ("test", "data_test.json"),
    "all": ("all", "data_all.json"),
    **{f"train{n}": (f"train/train{n}", "data_train.json") for n in (200, 600, 1200, 1800)},
    "train": ("train/train1800", "data_train.json"),  # the full training set
}
# LVIS disambiguates names with a sense in brackets: "car_(automobile)", "glass_(drink_container)".
LVIS_SENSE_SUFFIX = re.compile(r"_?\([^)]*\)$")


def readable_name(name: str) -> str:
    """A dataset's category name as words for the query: LVIS sense suffix dropped, `_` -> space."""
    return LVIS_SENSE_SUFFIX.sub("", name.strip()).replace("_", " ").strip()


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
        return f"{readable_name(self.part_name)} of the {readable_name(self.object_name)}"

    def mask(self) -> np.ndarray:
        mask = self.mask_loader()
        if mask.ndim != 2 or not mask.any():
            raise DatasetError(f"{self.key}: empty or malformed part mask")
        return mask

    @functools.cached_property
    def click(self) -> tuple[float, float]:
        """The support click the evaluation gives for this part (`interior_click` of its mask), computed
        once per loaded sample: a dataset loaded again (its annotations changed) computes it again."""
        return interior_click(self.mask())


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
    try:
        return coco_mask.decode(rle).astype(bool)
    except TypeError as error:
        # numpy 2 calls pycocotools' old-style Masks.__array__ again without `copy`, after a
        # DeprecationWarning; a Ctrl-C that lands there surfaces as this TypeError and the
        # KeyboardInterrupt is lost (24 of 40 SIGINTs during a decode loop). Without an interrupt
        # the retry succeeds, so this message means the user pressed Ctrl-C.
        if "unexpected keyword argument 'copy'" in str(error):
            raise KeyboardInterrupt from error
        raise


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
    empty = 0
    for annotation in annotations:
        name = categories.get(annotation.get("category_id"), "")
        if ":" not in name or annotation.get("id") == annotation.get("obj_ann_id"):
            continue  # an object, not a part
        if _empty_segmentation(annotation.get("segmentation")):
            empty += 1
            continue
        object_name, part_name = name.split(":", 1)
        image = images.get(annotation.get("image_id"))
        if image is None:
            raise DatasetError(f"{annotation_file}: annotation {annotation.get('id')} names unknown image")
        file_name = image.get("file_name") or pathlib.Path(image.get("coco_url", "")).name

        def loader(segmentation=annotation["segmentation"], height=image["height"], width=image["width"]):
            return coco_segmentation_mask(segmentation, height, width)

        samples.append(PartSample(f"paco:{annotation['id']}", image_root / file_name, object_name, part_name, loader))
    if empty:
        LOG.info("%s: skipped %d part annotations with an empty segmentation", annotation_file.name, empty)
    return samples


def _empty_segmentation(segmentation) -> bool:
    """No polygon with at least 3 points and no RLE: nothing to draw a mask from."""
    if isinstance(segmentation, dict):
        return not segmentation.get("counts")
    if isinstance(segmentation, list):
        return not any(isinstance(poly, list) and len(poly) >= 6 for poly in segmentation)
    return True


def load_instructpart(split_dir: pathlib.Path, annotation_name: str | None = None) -> list[PartSample]:
    """One InstructPart split folder (`images/`, `masks/`, its `data_*.json`)."""
    annotation_file = split_dir / (annotation_name or f"data_{split_dir.name}.json")
    entries = _read_json(annotation_file)
    if not isinstance(entries, list):
        raise DatasetError(f"{annotation_file} must be a list of images")
    samples = []
    for entry in entries:
        try:
            image_name = entry["image_path"]
            parts = entry["part_list"]
            items = [(item["object"], item["part"]) for item in parts]
        except (KeyError, TypeError) as error:
            raise DatasetError(f"{annotation_file}: entry without {error}: {entry!r:.120}") from error
        stem = pathlib.Path(image_name).stem
        for object_name, part_name in items:
            base = f"{stem}-{object_name.replace(' ', '_')}-{part_name.replace(' ', '_')}"
            # The release keeps one image per part, named like its mask.
            image_path = _first_file(split_dir / "images", base, (".jpg", ".png", ".jpeg"))
            if image_path is None:
                image_path = split_dir / "images" / image_name  # a repackaged copy with one image per photo
                if not image_path.is_file():
                    image_path = split_dir / "images" / f"{base}.jpg"  # reported missing at load
            mask_path = _first_file(split_dir / "masks", base, (".png", ".jpg")) or split_dir / "masks" / f"{base}.png"

            def loader(path=mask_path):
                mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
                if mask is None:
                    raise DatasetError(f"mask {path} is missing or unreadable")
                return mask > 0  # 0/255 and 0/1 masks alike: any non-zero pixel is the part

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


def _first_file(folder: pathlib.Path, stem: str, extensions) -> pathlib.Path | None:
    return next((p for p in (folder / f"{stem}{ext}" for ext in extensions) if p.is_file()), None)


def _partimagenetpp_object_names(root: pathlib.Path) -> dict[str, str]:
    """`category_name.json`: `{file stem: name}` or `{file stem: {"object_name": name}}`, or a list of
    `{"file_name", "object_name"}`; anything else is a DatasetError."""
    path = root / "category_name.json"
    if not path.is_file():
        return {}
    data = _read_json(path)
    if isinstance(data, dict):
        items = list(data.items())
    elif isinstance(data, list) and all(isinstance(e, dict) for e in data):
        items = [(e.get("file_name"), e) for e in data]
    else:
        raise DatasetError(f"{path} must map class file stems to object names, got a {type(data).__name__}")
    names = {}
    for stem, value in items:
        if isinstance(value, dict):
            value = value.get("object_name") or value.get("object") or value.get("name")
        if not isinstance(stem, str) or not stem or not isinstance(value, str) or not value:
            raise DatasetError(f"{path}: entry {stem!r} gives no object name")
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
        try:
            images = {image["id"]: image for image in data.get("images", [])}
            categories = {category["id"]: category["name"] for category in data.get("categories", [])}
            annotations = list(data.get("annotations", []))
        except (AttributeError, KeyError, TypeError) as error:
            raise DatasetError(f"{path}: not a COCO-format file ({type(error).__name__}: {error})") from error
        for annotation in annotations:
            if not isinstance(annotation, dict):
                raise DatasetError(f"{path}: annotation {annotation!r:.80} is not an object")
            image = images.get(annotation.get("image_id"))
            part_name = categories.get(annotation.get("category_id"))
            if image is None or part_name is None or _empty_segmentation(annotation.get("segmentation")):
                continue
            try:
                file_name, height, width = image["file_name"], image["height"], image["width"]
            except (KeyError, TypeError) as error:
                raise DatasetError(f"{path}: image {image.get('id')} without {error}") from error

            def loader(segmentation=annotation["segmentation"], height=height, width=width):
                return coco_segmentation_mask(segmentation, height, width)

            samples.append(
                PartSample(
                    f"partimagenetpp:{path.stem}:{annotation.get('id')}",
                    root / "images" / path.stem / file_name,
                    object_name,
                    str(part_name).replace(" ", "_"),
                    loader,
                )
            )
    return samples


def available_splits(name: str, root: pathlib.Path) -> list[str]:
    """The splits of dataset `name` whose annotation files exist under `root`."""
    root = pathlib.Path(root)
    if name == "paco":
        return [split for split in PACO_SPLITS if (root / "annotations" / f"paco_lvis_v1_{split}.json").is_file()]
    if name == "instructpart":
        return [split for split, (folder, file) in INSTRUCTPART_SPLITS.items() if (root / folder / file).is_file()]
    return []  # PartImageNet++: the classes' files are the split


def load_dataset(name: str, root: pathlib.Path, split: str | None = None) -> list[PartSample]:
    """Samples of dataset `name` under `root`; `split` None = the dataset's default (DEFAULT_SPLITS)."""
    root = pathlib.Path(root)
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; choose one of {DATASETS}")
    split = DEFAULT_SPLITS[name] if split is None else split
    if name == "partimagenetpp":
        if split:
            LOG.info("partimagenetpp has no split files: all classes under json/ are read (split %r ignored)", split)
        return load_partimagenetpp(root)
    if not root.is_dir():
        raise DatasetError(f"{name} root {root} does not exist")
    known = PACO_SPLITS if name == "paco" else tuple(INSTRUCTPART_SPLITS)
    if split not in known:
        raise DatasetError(f"{name} has no split {split!r}; its release has {', '.join(known)}")
    present = available_splits(name, root)
    if split not in present:
        expected = (
            root / "annotations" / f"paco_lvis_v1_{split}.json"
            if name == "paco"
            else root.joinpath(*INSTRUCTPART_SPLITS[split])
        )
        raise DatasetError(
            f"{name} split {split!r}: {expected} does not exist; splits present under {root}: "
            f"{', '.join(present) or 'none'}"
        )
    if name == "paco":
        return load_paco(root / "annotations" / f"paco_lvis_v1_{split}.json", root / "images")
    folder, file = INSTRUCTPART_SPLITS[split]
    return load_instructpart(root / folder, file)
