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

A library opened writable persists every change (teaching and editing) so that a process killed at
any moment leaves a YAML that loads with either the old or the new content:

1. a taught image is written as a lossless PNG under `<yaml stem>_images/<set folder>/` beside the
   YAML (temporary file, fsync, then a hard link to its final name, which never replaces an
   existing file), before any YAML refers to it. Images are stored once per content: an image
   whose pixels equal one already stored under `<yaml stem>_images/` (found by the SHA-256 of its
   pixels) is not written again, its exemplar refers to that file (three clicks on one frame: one
   file, also across sets). Libraries written before, with one file per click, load as they are;
2. the new YAML is written to a temporary file in the same folder and fsynced;
3. the current YAML is copied to `<yaml>.bak` (itself written atomically): the previous version;
4. `os.replace` puts the new YAML in place, and the folder is fsynced.

The YAML is rewritten from the document as loaded, changed only where the edit applies, so sets
and entries that failed to load are kept as they were (comments are not kept; `.bak` has the
previous version). Images of removed exemplars stay on disk: the backup (or another exemplar
sharing the image) may still refer to them.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import errno
import hashlib
import itertools
import math
import os
import pathlib
import re
import signal
import threading
import unicodedata

import cv2
import numpy as np
import yaml

# Test hook for the kill-during-write tests: the writer SIGKILLs itself right after its N-th step
# (counted from 1 within one change). Unset in normal use.
KILL_AFTER_STEP_ENV = "POP_ROS_TEST_KILL_AFTER_WRITE_STEP"
MAX_SET_NAME_CHARS = 200

# Every SupportSet object gets a version never used before in this process, so a cache keyed by
# (name, version) cannot confuse a changed, removed-and-retaught or re-queried set with an old one.
_VERSIONS = itertools.count()


class SupportError(ValueError):
    """A bad support set or exemplar; the message names it."""


@dataclasses.dataclass
class Exemplar:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    click: tuple[float, float]  # (u, v) ROS pixel coordinates (the top-left pixel's centre is (0, 0))
    source: str = ""  # file path or "runtime"
    entry: int | None = None  # index of this exemplar's entry in its set's YAML list; None = in memory only


@dataclasses.dataclass
class SupportSet:
    name: str
    query: str
    exemplars: list[Exemplar]
    version: int = dataclasses.field(default_factory=lambda: next(_VERSIONS))  # part of the feature-cache key


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


def validate_set_name(name) -> str:
    """A set name as given (spaces, unicode and '/' are fine: it is never used as a path)."""
    if not isinstance(name, str) or not name.strip():
        raise SupportError("support set name must be a non-empty string")
    if len(name) > MAX_SET_NAME_CHARS:
        raise SupportError(f"support set name is {len(name)} characters long; at most {MAX_SET_NAME_CHARS}")
    if any(unicodedata.category(character) == "Cc" for character in name):
        raise SupportError(f"support set name {name!r} contains control characters")
    return name


def pixel_digest(image: np.ndarray) -> str:
    """SHA-256 of an image's shape and pixels: equal for equal images, whatever file they came from."""
    digest = hashlib.sha256(repr(image.shape).encode("ascii"))
    digest.update(np.ascontiguousarray(image).tobytes())
    return digest.hexdigest()


def set_folder_name(name: str) -> str:
    """The folder of a set's images: a readable ASCII slug plus a hash of the exact name, so that no
    name can leave the images folder ('../', '/', '.') and different names (also differing only in
    case, accents or punctuation) never share a folder."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", ascii_name).strip("_-")[:40] or "set"
    return f"{slug}-{hashlib.sha256(name.encode('utf-8')).hexdigest()[:16]}"


class _WriteSteps:
    """Counts the steps of one change; the test hook kills the process after the chosen one."""

    def __init__(self):
        self.count = 0
        self._kill_after = int(os.environ.get(KILL_AFTER_STEP_ENV, "0") or 0)

    def done(self, name: str) -> None:
        self.count += 1
        if self.count == self._kill_after:
            os.kill(os.getpid(), signal.SIGKILL)


def _fsync_folder(folder: pathlib.Path) -> None:
    """Make a rename or link in `folder` durable (not available on every platform)."""
    with contextlib.suppress(OSError):
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def _write_synced(path: pathlib.Path, data: bytes, steps: _WriteSteps, what: str) -> None:
    """Write a new file (failing if it exists) in two halves, each fsynced, so the tests can kill the
    writer with the file half written."""
    half = len(data) // 2
    with open(path, "xb") as handle:
        handle.write(data[:half])
        handle.flush()
        os.fsync(handle.fileno())
        steps.done(f"{what} half written")
        handle.write(data[half:])
        handle.flush()
        os.fsync(handle.fileno())
    steps.done(f"{what} written")


def _temporary_name(path: pathlib.Path) -> pathlib.Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{os.urandom(4).hex()}")


def parse_sets(entries: dict, path: pathlib.Path) -> tuple[dict[str, SupportSet], list[str]]:
    """The valid sets of a library document's `sets` mapping (images relative to `path`'s folder),
    and what was wrong with the others: a bad exemplar is skipped, a set left without one too."""
    sets, errors = {}, []
    for name, entry in entries.items():
        where = f"{path}: set {name!r}"
        if not isinstance(entry, dict) or not isinstance(entry.get("exemplars"), list):
            errors.append(f"{where}: needs 'query' and an 'exemplars' list")
            continue
        query = entry.get("query", "")
        if query is None:
            query = ""
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
                click = validate_click(item["click"], image)
                exemplars.append(Exemplar(image, click, str(image_path), entry=index))
            except SupportError as error:
                errors.append(f"{where}, exemplar {index}: {error}")
        if exemplars:
            sets[str(name)] = SupportSet(str(name), query.strip(), exemplars)
        else:
            errors.append(f"{where}: no valid exemplar; set not loaded")
    return sets, errors


class SupportLibrary:
    """Named support sets; thread-safe for concurrent reads, runtime additions and edits.

    `path` is the YAML the library was loaded from (None: memory only); `writable` says whether
    changes are persisted there. Changes are serialised by one lock; readers never wait for disk."""

    def __init__(
        self,
        sets: dict[str, SupportSet] | None = None,
        errors: list[str] | None = None,
        path: pathlib.Path | str | None = None,
        writable: bool = False,
        document: dict | None = None,
    ):
        self.sets: dict[str, SupportSet] = dict(sets or {})
        self.errors: list[str] = list(errors or [])
        self.path = pathlib.Path(path).absolute() if path else None
        self.writable = bool(writable)
        if self.writable and self.path is None:
            raise SupportError("a writable support library needs a YAML path")
        self._document = document if document is not None else {"sets": {}}  # the YAML as on disk
        self._lock = threading.Lock()  # guards `sets` (short holds)
        self._write_lock = threading.Lock()  # one change at a time, held through its disk writes
        # Stored images by pixel digest (see `_stored_image`); built at the first addition.
        self._images_by_digest: dict[str, pathlib.Path] | None = None

    @classmethod
    def load(cls, path: pathlib.Path | str, writable: bool = False) -> SupportLibrary:
        """Load a YAML library; problems go to `.errors`, valid sets load. A missing or unparsable
        file raises SupportError (there is nothing valid to keep), except that a writable library
        may start from a missing or empty file in a writable folder (created at the first change)."""
        path = pathlib.Path(path).absolute()
        if writable:
            folder = path.parent
            if not folder.is_dir():
                raise SupportError(f"support library folder {folder} does not exist")
            if not os.access(folder, os.W_OK | os.X_OK):
                raise SupportError(f"support library folder {folder} is not writable (library_writable is true)")
            if path.exists() and not path.is_file():
                raise SupportError(f"support library {path} is not a file")
            if not path.exists():
                return cls(path=path, writable=True)
        if not path.is_file():
            raise SupportError(f"support library {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as error:
            raise SupportError(f"support library {path} is not valid YAML: {error}") from error
        if data is None and writable:
            data = {"sets": {}}
        if not isinstance(data, dict) or not isinstance(data.get("sets"), dict):
            raise SupportError(f"support library {path} must be a mapping with a 'sets' mapping")
        sets, errors = parse_sets(data["sets"], path)
        return cls(sets, errors, path=path, writable=writable, document=data)

    # ---- reading --------------------------------------------------------------------------------
    def names(self) -> list[str]:
        with self._lock:
            return sorted(self.sets)

    def get(self, name: str) -> SupportSet:
        with self._lock:
            if name not in self.sets:
                known = ", ".join(sorted(self.sets)) or "none"
                raise SupportError(f"unknown support set {name!r} (known: {known})")
            return self.sets[name]

    def storage(self, name: str) -> str:
        """The YAML a set is stored in; empty when the set lives only in memory."""
        support_set = self.get(name)
        if self.path is not None and any(exemplar.entry is not None for exemplar in support_set.exemplars):
            return str(self.path)
        return ""

    @property
    def images_dir(self) -> pathlib.Path | None:
        """Where taught images go: `<yaml stem>_images/` beside the YAML."""
        return None if self.path is None else self.path.parent / f"{self.path.stem}_images"

    # ---- changing -------------------------------------------------------------------------------
    def add_exemplar(self, name: str, image: np.ndarray, click, query: str = "") -> SupportSet:
        """Add one exemplar (creating the set if needed), persisted when writable; returns the set."""
        validate_set_name(name)
        image = validate_image(image)
        click = validate_click(click, image)
        if not isinstance(query, str):
            raise SupportError(f"query must be a string, got {query!r}")
        query = query.strip()
        with self._write_lock:
            current = self.sets.get(name)
            exemplar = Exemplar(image.copy(), click, "runtime")
            if self.writable:
                document = copy.deepcopy(self._document)
                key = self._document_key(document, name)
                entry = document["sets"].get(key)
                if not isinstance(entry, dict) or not isinstance(entry.get("exemplars"), list):
                    entry = document["sets"][key] = {"query": query, "exemplars": []}
                elif query or current is None:
                    entry["query"] = query or (entry.get("query") if isinstance(entry.get("query"), str) else "")
                steps = _WriteSteps()
                image_path = self._stored_image(image) or self._write_image(name, image, steps)
                relative = image_path.relative_to(self.path.parent).as_posix()
                entry["exemplars"].append({"image": relative, "click": [click[0], click[1]]})
                exemplar = Exemplar(image.copy(), click, str(image_path), entry=len(entry["exemplars"]) - 1)
                if current is None:
                    query = entry["query"].strip()
                self._write_document(document, steps)
                self._document = document
            if current is None:
                updated = SupportSet(name, query, [exemplar])
            else:
                # A new object (not in-place) so readers holding the old set see a consistent one.
                updated = SupportSet(name, query or current.query, current.exemplars + [exemplar])
            with self._lock:
                self.sets[name] = updated
            return updated

    def remove_exemplar(self, name: str, index: int) -> SupportSet:
        """Remove exemplar `index` (as listed, from 0) of a set; returns the set. The last exemplar
        of a set is refused: remove the set instead (a set needs an exemplar to load)."""
        self._require_writable("remove an exemplar")
        with self._write_lock:
            current = self.get(name)
            count = len(current.exemplars)
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count:
                raise SupportError(f"set {name!r} has exemplars 0..{count - 1}; there is no exemplar {index!r}")
            if count == 1:
                raise SupportError(
                    f"exemplar 0 is the only one of set {name!r}; teach a replacement first or remove the set"
                )
            removed = current.exemplars[index]
            document = copy.deepcopy(self._document)
            if removed.entry is not None:
                entry = document["sets"][self._document_key(document, name)]
                del entry["exemplars"][removed.entry]
            remaining = []
            for exemplar in current.exemplars[:index] + current.exemplars[index + 1 :]:
                shifted = exemplar.entry
                if shifted is not None and removed.entry is not None and shifted > removed.entry:
                    shifted -= 1  # its YAML entry moved up by one
                remaining.append(dataclasses.replace(exemplar, entry=shifted))
            self._write_document(document, _WriteSteps())
            self._document = document
            updated = SupportSet(name, current.query, remaining)
            with self._lock:
                self.sets[name] = updated
            return updated

    def remove_support_set(self, name: str) -> None:
        """Remove a set (also one that is in the YAML but failed to load)."""
        self._require_writable("remove a support set")
        with self._write_lock:
            document = copy.deepcopy(self._document)
            key = self._document_key(document, name)
            if name not in self.sets and key not in document["sets"]:
                self.get(name)  # raises: unknown set, naming the known ones
            document["sets"].pop(key, None)
            self._write_document(document, _WriteSteps())
            self._document = document
            with self._lock:
                self.sets.pop(name, None)

    def set_default_query(self, name: str, query: str) -> SupportSet:
        """Change a set's default query (empty clears it: queries must then name the part)."""
        self._require_writable("change a default query")
        if not isinstance(query, str):
            raise SupportError(f"query must be a string, got {query!r}")
        with self._write_lock:
            current = self.get(name)
            document = copy.deepcopy(self._document)
            key = self._document_key(document, name)
            if isinstance(document["sets"].get(key), dict):
                document["sets"][key]["query"] = query.strip()
            self._write_document(document, _WriteSteps())
            self._document = document
            updated = SupportSet(name, query.strip(), list(current.exemplars))
            with self._lock:
                self.sets[name] = updated
            return updated

    # ---- persistence ----------------------------------------------------------------------------
    def _require_writable(self, action: str) -> None:
        if not self.writable:
            where = f"{self.path}" if self.path else "the in-memory library"
            raise SupportError(f"cannot {action}: {where} is read-only (set library_writable to true to edit it)")

    @staticmethod
    def _document_key(document: dict, name: str):
        """The YAML key of set `name` (keys that YAML read as numbers are matched by their text)."""
        for key in document["sets"]:
            if str(key) == name:
                return key
        return name

    def _stored_image(self, image: np.ndarray) -> pathlib.Path | None:
        """The file under `images_dir` that already holds exactly `image`'s pixels, else None.
        Called with the write lock held. Only files this library's writer made (under `images_dir`,
        never replaced once written) are reused; the index starts from the loaded exemplars."""
        if self._images_by_digest is None:
            self._images_by_digest = {}
            images_dir = self.images_dir.resolve()
            for support_set in self.sets.values():
                for exemplar in support_set.exemplars:
                    source = pathlib.Path(exemplar.source)
                    if exemplar.entry is not None and images_dir in source.parents:
                        self._images_by_digest.setdefault(pixel_digest(exemplar.image), source)
        path = self._images_by_digest.get(pixel_digest(image))
        return path if path is not None and path.is_file() else None

    def _write_image(self, name: str, image: np.ndarray, steps: _WriteSteps) -> pathlib.Path:
        """A new PNG of `image` in the set's folder (never replacing an existing file), indexed by its
        pixel digest so that the same image is not written again."""
        final = self._write_png(name, image, steps)
        if self._images_by_digest is not None:
            self._images_by_digest[pixel_digest(image)] = final
        return final

    def _write_png(self, name: str, image: np.ndarray, steps: _WriteSteps) -> pathlib.Path:
        """A new PNG of `image` in the set's folder; never replaces an existing file."""
        ok, encoded = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        if not ok:
            raise SupportError("the exemplar image could not be encoded as PNG")
        folder = self.images_dir / set_folder_name(name)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            taken = {path.stem for path in folder.glob("*.png")}
            number = next(n for n in itertools.count() if f"{n:04d}" not in taken)
            temporary = _temporary_name(folder / f"{number:04d}.png")
            _write_synced(temporary, encoded.tobytes(), steps, "image temporary")
            try:
                while True:
                    final = folder / f"{number:04d}.png"
                    try:
                        os.link(temporary, final)  # atomic, and fails rather than replace a file
                        break
                    except FileExistsError:
                        number += 1
                    except OSError as error:
                        if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                            raise
                        # No hard links here (FAT, some network file systems): create the final name
                        # exclusively instead. A crash mid-write leaves a partial file no YAML names.
                        try:
                            _write_synced(final, encoded.tobytes(), steps, "image (no hard links)")
                            break
                        except FileExistsError:
                            number += 1
                steps.done("image linked to its name")
            finally:
                temporary.unlink(missing_ok=True)
            _fsync_folder(folder)
            steps.done("image temporary removed")
        except OSError as error:
            raise SupportError(f"could not store the exemplar image in {folder}: {error}") from error
        return final

    def _write_document(self, document: dict, steps: _WriteSteps) -> None:
        """Atomically replace the YAML with `document`, keeping the previous version as `.bak`."""
        text = (
            "# pop_ros support library (see README). Rewritten by pop_node when library_writable is true;\n"
            f"# the previous version is in {self.path.name}.bak.\n"
            + yaml.safe_dump(document, allow_unicode=True, sort_keys=False, default_flow_style=None)
        )
        folder = self.path.parent
        temporary = _temporary_name(self.path)
        try:
            try:
                _write_synced(temporary, text.encode("utf-8"), steps, "YAML temporary")
                if self.path.is_file():
                    backup = self.path.with_name(self.path.name + ".bak")
                    backup_temporary = _temporary_name(backup)
                    try:
                        _write_synced(backup_temporary, self.path.read_bytes(), steps, "backup temporary")
                        os.replace(backup_temporary, backup)
                    finally:
                        backup_temporary.unlink(missing_ok=True)
                    steps.done("backup in place")
                os.replace(temporary, self.path)
                steps.done("YAML replaced")
            finally:
                temporary.unlink(missing_ok=True)
            _fsync_folder(folder)
            steps.done("folder synced")
        except OSError as error:
            raise SupportError(f"could not write the support library {self.path}: {error}") from error
