"""The node's health on /diagnostics, the way `diagnostic_updater` publishes it.

Once per period a `diagnostic_msgs/DiagnosticArray` (header stamped with the node's clock) holds
one `DiagnosticStatus` per task, named "<node name>: <task>", with the node's hardware_id, a level
(OK / WARN / ERROR) and string key/value pairs: what `rqt_robot_monitor` and the
`diagnostic_aggregator` read. The diagnostic_updater wheel is not on the package registry, and the
node needs four fixed tasks, so this small publisher does that job.

`NodeHealth` collects the figures (thread-safe; callbacks record into it); `DiagnosticsPublisher`
turns a snapshot of it into the message. Rates and latencies use a monotonic clock: they describe
this process's real-time behaviour whatever clock the stamps use.
"""

from __future__ import annotations

import collections
import math
import threading
import time
from collections.abc import Callable

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

OK, WARN, ERROR, STALE = DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR, DiagnosticStatus.STALE
LEVEL_NAMES = {OK: "OK", WARN: "WARN", ERROR: "ERROR", STALE: "STALE"}


class NodeHealth:
    """Counters and windows behind the diagnostics.

    - frames: the arrival time of each colour frame in the last `window_s` seconds; the rate is
      (frames - 1) / (last - first), so a steady 30 Hz camera reads 30.0 whatever the window holds.
    - depth pairing: of the queries that looked for a depth image, the share that found one within
      depth_max_dt of the colour stamp.
    - query latency: the last `latency_samples` total times (ms) of answered queries; p50 and p99
      by linear interpolation (numpy's default percentile).
    - outcomes and errors: counts by name ("ok", "rejected", "busy", "internal error", ...).
    - depth misfits: captures whose depth does not fit the colour image (locate.depth_misfit), and the
      last reason; answers dropped from the topics because one about a newer frame was published.
    """

    def __init__(self, window_s: float = 5.0, latency_samples: int = 1000, clock: Callable[[], float] = time.monotonic):
        self.window_s = float(window_s)
        self.clock = clock
        self._lock = threading.Lock()
        self._frame_times: collections.deque = collections.deque()
        self.frames_total = 0
        self._last_frame: float | None = None
        self.depth_lookups = 0
        self.depth_paired = 0
        self.depth_misfits = 0
        self.last_depth_misfit = ""
        self.out_of_order = 0
        self._latencies_ms: collections.deque = collections.deque(maxlen=latency_samples)
        self.outcomes: collections.Counter = collections.Counter()
        self.errors: collections.Counter = collections.Counter()

    # ---- recording (from callbacks) -------------------------------------------------------------------
    def frame(self, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        with self._lock:
            self.frames_total += 1
            self._last_frame = now
            self._frame_times.append(now)
            self._drop_old(now)

    def depth_lookup(self, paired: bool) -> None:
        with self._lock:
            self.depth_lookups += 1
            self.depth_paired += int(bool(paired))

    def depth_misfit(self, reason: str) -> None:
        """A stream capture's depth checked: `reason` why it does not fit, "" when it fits (clears the warning)."""
        with self._lock:
            self.depth_misfits += int(bool(reason))
            self.last_depth_misfit = reason

    def dropped_out_of_order(self) -> None:
        with self._lock:
            self.out_of_order += 1

    def query(self, outcome, total_ms: float | None = None) -> None:
        """One answered query: its outcome (an `answers.Outcome`, counted under its value) and, when
        it ran, its wall time."""
        with self._lock:
            self.outcomes[getattr(outcome, "value", outcome)] += 1
            if total_ms is not None and math.isfinite(total_ms):
                self._latencies_ms.append(float(total_ms))

    def error(self, kind: str) -> None:
        with self._lock:
            self.errors[kind] += 1

    def _drop_old(self, now: float) -> None:
        while self._frame_times and self._frame_times[0] < now - self.window_s:
            self._frame_times.popleft()

    # ---- reading ----------------------------------------------------------------------------------------
    def frame_rate_hz(self, now: float | None = None) -> float:
        now = self.clock() if now is None else now
        with self._lock:
            self._drop_old(now)
            times = list(self._frame_times)
        if len(times) < 2 or times[-1] <= times[0]:
            return 0.0
        return (len(times) - 1) / (times[-1] - times[0])

    def seconds_since_frame(self, now: float | None = None) -> float:
        now = self.clock() if now is None else now
        with self._lock:
            return math.inf if self._last_frame is None else now - self._last_frame

    def depth_pairing_rate(self) -> float | None:
        with self._lock:
            return self.depth_paired / self.depth_lookups if self.depth_lookups else None

    def counts(self) -> tuple[dict[str, int], dict[str, int]]:
        """(answers by outcome, errors by kind): one consistent copy."""
        with self._lock:
            return dict(self.outcomes), dict(self.errors)

    def latency_percentiles_ms(self) -> tuple[float, float] | None:
        with self._lock:
            samples = list(self._latencies_ms)
        if not samples:
            return None
        p50, p99 = np.percentile(np.asarray(samples, dtype=np.float64), [50, 99])
        return float(p50), float(p99)


def _status(name: str, hardware_id: str, level: bytes, message: str, values: dict) -> DiagnosticStatus:
    return DiagnosticStatus(
        level=level,
        name=name,
        message=message,
        hardware_id=hardware_id,
        values=[KeyValue(key=key, value=str(value)) for key, value in values.items()],
    )


def _fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


class DiagnosticsPublisher:
    """Publishes `health` and `model_state()` on /diagnostics every `period_s` seconds (0 = never).

    `model_state()` returns (level, message, extra key/values), e.g. (OK, "active", {"preset": ...});
    `camera_expected()` says whether frames should be arriving (the node is active)."""

    TOPIC = "/diagnostics"

    def __init__(
        self,
        node,
        health: NodeHealth,
        model_state: Callable[[], tuple[bytes, str, dict]],
        camera_expected: Callable[[], bool],
        period_s: float = 1.0,
        hardware_id: str = "none",
        stale_frame_s: float = 2.0,
        callback_group=None,
        wrap: Callable = lambda callback: callback,
        extra_statuses: Callable[[], list[tuple[str, bytes, str, dict]]] = list,
    ):
        self.node = node
        self.health = health
        self.model_state = model_state
        self.camera_expected = camera_expected
        self.hardware_id = hardware_id
        self.stale_frame_s = stale_frame_s
        self.extra_statuses = extra_statuses  # () -> [(task, level, message, values)]: optional tasks
        self.publisher = node.create_publisher(DiagnosticArray, self.TOPIC, 1)
        self.callback_group = callback_group
        self.timer = None
        self.set_period(period_s, wrap)

    def set_period(self, period_s: float, wrap: Callable = lambda callback: callback) -> None:
        """Publish every `period_s` seconds from now on (0 = stop)."""
        if self.timer is not None:
            self.node.destroy_timer(self.timer)
            self.timer = None
        if period_s > 0:
            self.timer = self.node.create_timer(period_s, wrap(self.publish), callback_group=self.callback_group)

    def statuses(self) -> list[DiagnosticStatus]:
        prefix = f"{self.node.get_name()}: "
        health, now = self.health, self.health.clock()
        hw = self.hardware_id

        rate, since = health.frame_rate_hz(now), health.seconds_since_frame(now)
        pairing = health.depth_pairing_rate()
        camera_values = {
            "frame rate (Hz)": _fmt(rate),
            "frames received": health.frames_total,
            "seconds since last frame": _fmt(since, 2),
            "depth pairing rate": _fmt(pairing, 3),
            "depth lookups": health.depth_lookups,
            "depth misfits": health.depth_misfits,
            "last depth misfit": health.last_depth_misfit,
        }
        if not self.camera_expected():
            camera = _status(prefix + "camera input", hw, OK, "not subscribed (node inactive)", camera_values)
        elif since > self.stale_frame_s:
            what = "no frame received yet" if math.isinf(since) else f"no frame for {since:.1f} s"
            camera = _status(prefix + "camera input", hw, WARN, what, camera_values)
        elif health.last_depth_misfit:
            what = f"{rate:.1f} Hz; depth does not fit the colour image: {health.last_depth_misfit}"
            camera = _status(prefix + "camera input", hw, WARN, what, camera_values)
        else:
            camera = _status(prefix + "camera input", hw, OK, f"{rate:.1f} Hz", camera_values)

        latency = health.latency_percentiles_ms()
        outcomes, errors = health.counts()
        answered = sum(outcomes.values())
        query_values = {
            "latency p50 (ms)": _fmt(latency[0] if latency else None),
            "latency p99 (ms)": _fmt(latency[1] if latency else None),
            "queries answered": answered,
            "answers not published (older frame)": health.out_of_order,
            **{f"answers {name}": count for name, count in sorted(outcomes.items())},
        }
        queries = _status(
            prefix + "queries",
            hw,
            OK,
            f"{answered} answered" + (f", p50 {latency[0]:.0f} ms, p99 {latency[1]:.0f} ms" if latency else ""),
            query_values,
        )

        total_errors = sum(errors.values())
        error_values = {"errors total": total_errors, **{name: count for name, count in sorted(errors.items())}}
        internal = errors.get("internal error", 0)
        summary = f"{internal} internal error(s) caught" if internal else f"{total_errors} refused, none internal"
        errors_status = _status(prefix + "errors", hw, WARN if internal else OK, summary, error_values)

        level, message, extra = self.model_state()
        model = _status(prefix + "model", hw, level, message, extra)
        others = [_status(prefix + task, hw, lvl, text, values) for task, lvl, text, values in self.extra_statuses()]
        return [camera, queries, errors_status, model, *others]

    def message(self) -> DiagnosticArray:
        array = DiagnosticArray(status=self.statuses())
        array.header.stamp = self.node.get_clock().now().to_msg()
        return array

    def publish(self) -> None:
        self.publisher.publish(self.message())

    def destroy(self) -> None:
        if self.timer is not None:
            self.node.destroy_timer(self.timer)
            self.timer = None
        self.node.destroy_publisher(self.publisher)
