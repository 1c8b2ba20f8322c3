"""Where pop-eval keeps its predictions: a lock on the output folder, an append-only JSON-lines log
whose torn tail is cut before anything is appended, and reports replaced all at once.

The log (`predictions.jsonl`) holds two kinds of lines: a header per run (`{"pop_eval": ...}`,
the full configuration of that run) and one prediction per line (`{"key": ...}`, keyed by the
digest of everything that determines it). Under a multi-process launcher each rank appends to its
own `predictions.rank<R>.jsonl`; `merge` folds them into the main log under the same rules.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import pathlib
import time
from collections.abc import Callable

LOG = logging.getLogger(__name__)

MAIN_LOG = "predictions.jsonl"
RANK_LOG = "predictions.rank{rank}.jsonl"
LOCK_FILE = ".pop-eval.lock"


class StoreError(Exception):
    """The output folder cannot be used (not writable, locked, another configuration): one line."""


def prepare_output(out: pathlib.Path) -> pathlib.Path:
    """Create `out` if needed and prove it is a writable folder, before any model is loaded."""
    if out.exists() and not out.is_dir():
        raise StoreError(f"--out {out} is a file, not a folder; choose a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".pop-eval-probe-{os.getpid()}"
        probe.write_text("probe\n")
        probe.unlink()
    except OSError as error:
        raise StoreError(f"--out {out} is not a writable folder ({error.strerror or error}); choose another") from error
    return out


class FolderLock:
    """An exclusive, non-blocking flock on `out/.pop-eval.lock`, held for the whole run; the kernel
    drops it when the process dies, so a killed run never leaves a stale lock behind."""

    def __init__(self, out: pathlib.Path):
        self.path = out / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise StoreError(f"cannot open the lock file {self.path}: {error.strerror or error}") from error
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown process"
            os.close(fd)
            raise StoreError(
                f"another pop-eval is writing to {self.path.parent} ({holder}); wait for it to finish "
                "or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def read_log(path: pathlib.Path) -> tuple[list[dict], list[dict], int, int]:
    """(headers, predictions, torn, bad) of a log without changing it: `torn` is 1 when the last line
    was cut mid-write (no final newline and not valid JSON); `bad` counts other unreadable lines."""
    if not path.is_file():
        return [], [], 0, 0
    segments = path.read_bytes().split(b"\n")  # the last is b"" when the file ends with a newline
    headers: list[dict] = []
    rows: list[dict] = []
    torn = bad = 0
    for index, line in enumerate(segments):
        if not line.strip():
            continue
        try:
            _sort(json.loads(line), headers, rows)  # a complete last line missing its newline is kept
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError, KeyError):
            if index == len(segments) - 1:
                torn = 1
            else:
                bad += 1
    return headers, rows, torn, bad


def _sort(entry, headers: list, rows: list) -> None:
    if not isinstance(entry, dict):
        raise TypeError("not an object")
    if "pop_eval" in entry:
        headers.append(entry)
    else:
        entry["key"]  # noqa: B018 - a prediction without its key is unreadable (KeyError)
        rows.append(entry)


def repair_tail(path: pathlib.Path) -> int:
    """Make `path` end with a complete line before it is appended to: a torn last line is cut, a
    complete one missing its newline gets it. Returns how many torn lines were cut (0 or 1)."""
    if not path.is_file() or path.stat().st_size == 0:
        return 0
    with path.open("rb+") as handle:
        data = handle.read()
        if data.endswith(b"\n"):
            return 0
        start = data.rfind(b"\n") + 1
        try:
            json.loads(data[start:])
        except (json.JSONDecodeError, UnicodeDecodeError):
            handle.truncate(start)
            LOG.warning("cut 1 torn line (%d bytes, cut mid-write) from the end of %s", len(data) - start, path)
            return 1
        handle.seek(0, os.SEEK_END)
        handle.write(b"\n")
        return 0


class AppendLog:
    """Appends one JSON line per call with a single write(2) on an O_APPEND descriptor: a line is
    in the file whole or (after a short write on a full disk) cut back out before the error rises."""

    def __init__(self, path: pathlib.Path):
        self.path = path
        self.torn_cut = repair_tail(path)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.written = 0

    def append(self, entry: dict) -> None:
        line = (json.dumps(entry) + "\n").encode()
        size = os.fstat(self._fd).st_size
        try:
            count = os.write(self._fd, line)
            if count != len(line):
                raise OSError(errno.ENOSPC, f"short write ({count} of {len(line)} bytes)")
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, size)  # leave no fragment behind if the disk allows it
            raise
        if "pop_eval" not in entry:
            self.written += 1

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None


def rank_logs(out: pathlib.Path) -> list[pathlib.Path]:
    return sorted(out.glob(RANK_LOG.format(rank="*")))


def merge(out: pathlib.Path) -> tuple[int, int]:
    """Fold every per-rank log into the main log (headers kept, predictions deduplicated by key,
    torn or unreadable lines dropped and counted), written to a temporary file and renamed; the
    rank logs are removed afterwards. Returns (predictions merged in, lines dropped)."""
    sources = rank_logs(out)
    if not sources:
        return 0, 0
    main = out / MAIN_LOG
    headers, rows, torn, bad = read_log(main)
    seen = {row["key"] for row in rows}
    merged, dropped = 0, torn + bad
    for source in sources:
        more_headers, more_rows, torn, bad = read_log(source)
        dropped += torn + bad
        headers += [h for h in more_headers if h not in headers]
        for row in more_rows:
            if row["key"] not in seen:
                seen.add(row["key"])
                rows.append(row)
                merged += 1
    lines = [json.dumps(entry) for entry in headers + rows]
    replace_files({main: lambda path: path.write_text("\n".join(lines) + "\n")})
    for source in sources:
        source.unlink()
    if dropped:
        LOG.warning("merge dropped %d torn or unreadable lines", dropped)
    return merged, dropped


def replace_files(writers: dict[pathlib.Path, Callable[[pathlib.Path], None]]) -> None:
    """Write every file to a temporary sibling first, then rename them all into place: a failure
    while writing (full disk) leaves the previous versions untouched and no temporary behind."""
    temporaries = {path: path.with_name(f".{path.name}.tmp") for path in writers}
    try:
        for path, write in writers.items():
            write(temporaries[path])
            with open(temporaries[path], "rb") as handle:
                os.fsync(handle.fileno())
    except BaseException:
        for temporary in temporaries.values():
            with contextlib.suppress(OSError):
                temporary.unlink()
        raise
    for path, temporary in temporaries.items():
        os.replace(temporary, path)
