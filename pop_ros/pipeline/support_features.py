"""SupportFeatures: the DINO features of support images, computed once.

Per image they are kept in memory and, when a folder is given, on disk, keyed by the image content
and the visual model. A library set's features are also kept by (name, version): a query on a set
never re-hashes its images, and an edited set (every edit makes a new version, see
`supports.SupportSet.version`) is looked up afresh; only the newest version of each set is kept."""

from __future__ import annotations

import hashlib
import logging
import pathlib
from collections.abc import Collection, Sequence

import numpy as np
import torch

from pop_ros.models.presets import ModelConfig
from pop_ros.models.visual import VisualEncoder, VisualFeatures
from pop_ros.supports import SupportSet

LOG = logging.getLogger(__name__)


class SupportFeatures:
    """Not thread-safe: the pointer's lock guards it."""

    def __init__(self, visual: VisualEncoder, model_config: ModelConfig, cache_dir: str | pathlib.Path | None = None):
        self.visual = visual
        self.model_config = model_config
        self.cache_dir = pathlib.Path(cache_dir) if cache_dir else None
        self._by_image: dict[str, VisualFeatures] = {}  # image key -> features
        self._by_set: dict[tuple[str, int], list[VisualFeatures]] = {}  # (set name, version) -> features

    def image_key(self, image: np.ndarray) -> str:
        """The content of `image` and everything about the visual model that changes its features."""
        digest = hashlib.sha256()
        config = self.model_config
        digest.update(f"{config.visual}|{config.resolution}|{config.dtype}|{image.shape}".encode())
        digest.update(np.ascontiguousarray(image).data)
        return digest.hexdigest()

    def for_images(self, images: Sequence[np.ndarray]) -> list[VisualFeatures]:
        """Features of support images: from memory, then the disk cache, else one batched forward."""
        keys = [self.image_key(image) for image in images]
        missing = []
        for index, key in enumerate(keys):
            if key in self._by_image:
                continue
            cached = self._load(key)
            if cached is not None:
                self._by_image[key] = cached
            else:
                missing.append(index)
        if missing:
            computed = self.visual.encode([images[i] for i in missing])
            for index, features in zip(missing, computed, strict=True):
                self._by_image[keys[index]] = features
                self._store(keys[index], features)
        return [self._by_image[key] for key in keys]

    def for_set(self, support_set: SupportSet, live_names: Collection[str] = ()) -> list[VisualFeatures]:
        """Features of a library set's exemplars, in order. On a new version the older versions of
        this set, and the entries of sets no longer in `live_names` (removed), are dropped."""
        key = (support_set.name, support_set.version)
        features = self._by_set.get(key)
        if features is None:
            features = self.for_images([exemplar.image for exemplar in support_set.exemplars])
            self._by_set = {
                kept: value for kept, value in self._by_set.items() if kept[0] != key[0] and kept[0] in live_names
            }
            self._by_set[key] = features
        return features

    def cached_sets(self) -> list[tuple[str, int]]:
        """(name, version) of every set whose features are kept."""
        return list(self._by_set)

    def _load(self, key: str) -> VisualFeatures | None:
        if self.cache_dir is None:
            return None
        path = self.cache_dir / f"{key}.pt"
        if not path.is_file():
            return None
        try:
            data = torch.load(path, map_location=self.visual.device, weights_only=True)
            return VisualFeatures(data["grid"], data["cls"], tuple(data["image_size"]))
        except Exception as error:  # noqa: BLE001 - a corrupt cache entry is recomputed, not fatal
            LOG.warning("ignoring unreadable feature cache entry %s: %s", path, error)
            return None

    def _store(self, key: str, features: VisualFeatures) -> None:
        if self.cache_dir is None:
            return
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        temporary = self.cache_dir / f"{key}.pt.tmp"
        torch.save(
            {"grid": features.grid.cpu(), "cls": features.cls.cpu(), "image_size": list(features.image_size)}, temporary
        )
        temporary.replace(self.cache_dir / f"{key}.pt")  # atomic: no half-written entries
