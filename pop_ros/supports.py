"""The support library: named sets of example clicks ("exemplars") with a default query.

YAML schema (paths relative to the YAML file):

    sets:
      mug_handle:
        query: handle of the mug
        exemplars:
          - image: images/mug_0.png
            click: [u, v]          # pixel in that image, u right, v down; ROS/OpenCV pixel
                                   # coordinates: the top-left pixel's centre is (0, 0)

Loading never fails as a whole on one bad entry: a malformed set or exemplar (missing file,
unreadable image, click outside its image) is reported with file, set and entry, and the valid
sets still load.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import threading

import cv2
import numpy as np
import yaml


class SupportError(ValueError):
    """A bad support set or exemplar; the message names it."""


@dataclasses.dataclass
class Exemplar:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    click: tuple[float, float]  # (u, v) ROS pixel coordinates (the top-left pixel's centre is (0, 0))
    source: str = ""  # file path or "runtime"


@dataclasses.dataclass
class SupportSet:
    name: str
    query: str
    exemplars: list[Exemplar]
    version: int = 0  # bumped on every change; part of the feature-cache key


def read_rgb(path: pathlib.Path | str) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB, or a SupportError that says why not."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise SupportError(f"image file {path} does not exist")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None or image.size == 0:
        raise SupportError(f"image file {path} could not be read as an image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def validate_click(click, image: np.ndarray) -> tuple[float, float]:
    if not (isinstance(click, (list, tuple)) and len(click) == 2):
        raise SupportError(f"click must be [u, v], got {click!r}")
    try:
        u, v = float(click[0]), float(click[1])
    except (TypeError, ValueError) as error:
        raise SupportError(f"click must be two numbers, got {click!r}") from error
    height, width = image.shape[:2]
    # ROS pixel coordinates: pixel i covers [i - 0.5, i + 0.5).
    if not (math.isfinite(u) and math.isfinite(v) and -0.5 <= u < width - 0.5 and -0.5 <= v < height - 0.5):
        raise SupportError(
            f"click ({u}, {v}) is outside its {width}x{height} image (ROS pixel coordinates: "
            f"-0.5 <= u < {width - 0.5}, -0.5 <= v < {height - 0.5})"
        )
    return u, v


def validate_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        shape = getattr(image, "shape", None)
        raise SupportError(f"an image must be (H, W, 3) uint8 RGB, got {shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise SupportError("an image must not be empty")
    return image


class SupportLibrary:
    """Named support sets; thread-safe for concurrent reads and runtime additions."""

    def __init__(self, sets: dict[str, SupportSet] | None = None, errors: list[str] | None = None):
        self.sets: dict[str, SupportSet] = dict(sets or {})
        self.errors: list[str] = list(errors or [])
        self._lock = threading.Lock()

    @classmethod
    def load(cls, path: pathlib.Path | str) -> SupportLibrary:
        """Load a YAML library; problems go to `.errors`, valid sets load. A missing or unparsable
        file raises SupportError (there is nothing valid to keep)."""
        path = pathlib.Path(path)
        if not path.is_file():
            raise SupportError(f"support library {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as error:
            raise SupportError(f"support library {path} is not valid YAML: {error}") from error
        if not isinstance(data, dict) or not isinstance(data.get("sets"), dict):
            raise SupportError(f"support library {path} must be a mapping with a 'sets' mapping")
        sets, errors = {}, []
        for name, entry in data["sets"].items():
            where = f"{path}: set {name!r}"
            if not isinstance(entry, dict) or not isinstance(entry.get("exemplars"), list):
                errors.append(f"{where}: needs 'query' and an 'exemplars' list")
                continue
            query = entry.get("query", "")
            if not isinstance(query, str):
                errors.append(f"{where}: 'query' must be a string")
                continue
            exemplars = []
            for index, item in enumerate(entry["exemplars"]):
                try:
                    if not isinstance(item, dict) or "image" not in item or "click" not in item:
                        raise SupportError("needs 'image' and 'click'")
                    image_path = (path.parent / str(item["image"])).resolve()
                    image = read_rgb(image_path)
                    exemplars.append(Exemplar(image, validate_click(item["click"], image), str(image_path)))
                except SupportError as error:
                    errors.append(f"{where}, exemplar {index}: {error}")
            if exemplars:
                sets[str(name)] = SupportSet(str(name), query.strip(), exemplars)
            else:
                errors.append(f"{where}: no valid exemplar; set not loaded")
        return cls(sets, errors)

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self.sets)

    def get(self, name: str) -> SupportSet:
        with self._lock:
            if name not in self.sets:
                known = ", ".join(sorted(self.sets)) or "none"
                raise SupportError(f"unknown support set {name!r} (known: {known})")
            return self.sets[name]

    def add_exemplar(self, name: str, image: np.ndarray, click, query: str = "") -> SupportSet:
        """Add one exemplar (creating the set if needed); returns the updated set."""
        if not isinstance(name, str) or not name.strip():
            raise SupportError("support set name must be a non-empty string")
        image = validate_image(image)
        exemplar = Exemplar(image.copy(), validate_click(click, image), "runtime")
        with self._lock:
            current = self.sets.get(name)
            if current is None:
                self.sets[name] = SupportSet(name, query.strip(), [exemplar])
            else:
                # A new object (not in-place) so readers holding the old set see a consistent one.
                self.sets[name] = SupportSet(
                    name, query.strip() or current.query, current.exemplars + [exemplar], current.version + 1
                )
            return self.sets[name]
