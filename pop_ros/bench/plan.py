"""What `pop-bench --budget MINUTES` runs, decided from what one query costs on this machine, and when
a ratio of two differences means something. Pure functions of numbers: no torch, no clock (tested
without timing in test/test_bench_plan.py).

The bench is a list of sections (`SECTIONS`): each has an importance, a cost per repeat and per
warm-up round in units of one fresh-frame 1-shot query at the same image size, a fixed cost in
seconds, and the ratios it reports. After its first warm-up query pop-bench knows that query's cost
here; `plan_run` then keeps what fits, degrading in this order:
1. fewer repeats (down to 1);
2. a smaller MLLM image (`IMAGE_LADDER`; DINO's input stays at its own resolution), with again as
   many repeats as fit there;
3. dropping the least important sections (lowest `importance` first; `REQUIRED` ones never).

A new section (a new ratio): add a `Section` row here (its name, importance, costs measured or
estimated as below, the keys it reports) and a runner of the same name in
`pop_ros.bench.benchmarks.SECTION_RUNNERS` (warm-ups in `SECTION_WARMUPS`); the planner needs nothing
else. docs/performance.md, "Time budget", says the same for users.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field, replace

REQUIRED = 100  # importance of a section no budget drops (the others' 1-shot rows come from it)

# Share of a query that does not shrink with the MLLM's image (DINO at its own 448 px, the text tokens,
# the heatmap): an image of a quarter of the pixels is estimated at 0.1 + 0.9 / 4 = 0.325 of the
# query, where the 3B shape measured about 0.28 (a 10.5 s prefix at 640x480, 1.9 s of 3.1 s at 320x240).
FIXED_QUERY_SHARE = 0.1
# The plan fills this share of the time left: the costs are estimates, and the warm-up's first query
# (the one measured) pays one-off allocations that later ones do not.
BUDGET_MARGIN = 0.9
# The MLLM image sizes a budget may fall back to, largest first (width, height); the second is --quick's.
IMAGE_LADDER = ((640, 480), (320, 240))
# With a single repeat a series has no spread: its run-to-run noise is taken as this share of its median
# (CPU timings of one process on a busy 2-core machine vary by a few percent between runs).
ASSUMED_NOISE_FRACTION = 0.05
# Seconds the streaming section costs beyond its --stream-seconds: the tiny preset's node, the camera
# process, the warm-up left out of the measurement (at most 5 s), the drain.
STREAM_OVERHEAD_S = 20.0
# Streaming runs of that length: the standing query's, then continuous tracking's, one per camera
# (bench_tracking.TRACKING_CAMERAS).
STREAM_RUNS = 3


@dataclass(frozen=True)
class Section:
    """One part of the bench. Costs are in fresh-frame 1-shot queries at the run's image size, from the
    3B shape's bf16 run of 2026-11-30 (docs/performance.md: a query 11.35 s; the text prior's fast path
    0.75, eager 0.85, eager everywhere 0.95 and the shared floor 0.55 of a query; native pointing 2.2;
    K = 3 and K = 10 one each; five batched 1.05, five one by one 1.13, a second query 0.03)."""

    name: str
    importance: int  # higher is kept longer; REQUIRED is never dropped
    per_repeat_queries: float  # one repeat of the section
    warmup_queries: float = 0.0  # one warm-up round of the section
    fixed_s: float = 0.0  # seconds independent of the query's cost (streaming)
    ratios: tuple[str, ...] = ()  # the report's keys it produces


SECTIONS = (
    # stages also times a tracked update on its frame (milliseconds: ratio_track_vs_query).
    Section("stages", REQUIRED, 1.0, warmup_queries=1.0, ratios=("overhead_fraction", "ratio_track_vs_query")),
    Section(
        "text_prior",
        5,
        3.2,
        warmup_queries=1.8,
        ratios=("ratio_fast_vs_eager", "ratio_fast_vs_eager_text_only", "ratio_fast_vs_eager_above_floor"),
    ),
    Section("native", 4, 2.2, warmup_queries=1.0, ratios=("ratio_pop_vs_native",)),
    Section("k_shots", 2, 2.0, ratios=("ratio_k10_vs_k1",)),
    Section(
        "many_parts",
        3,
        2.3,
        ratios=("ratio_second_vs_first_query", "ratio_5_queries_vs_1", "ratio_5_queries_vs_1_unbatched"),
    ),
    Section("streaming", 0, 0.0),  # fixed_s: STREAM_RUNS x (--stream-seconds + STREAM_OVERHEAD_S) (sections_for)
)


def sections_for(stream_seconds: float, sections=SECTIONS) -> tuple[Section, ...]:
    """The sections a run asks for: streaming only with --stream-seconds > 0, costing that long."""
    chosen = []
    for section in sections:
        if section.name == "streaming":
            if stream_seconds <= 0:
                continue
            section = replace(section, fixed_s=STREAM_RUNS * (stream_seconds + STREAM_OVERHEAD_S))
        chosen.append(section)
    return tuple(chosen)


def image_cost_scale(image: tuple[int, int], measured_at: tuple[int, int]) -> float:
    """A query's cost at `image` over its measured cost at `measured_at` (the MLLM's image; linear in pixels
    above the fixed share)."""
    pixels = (image[0] * image[1]) / (measured_at[0] * measured_at[1])
    return FIXED_QUERY_SHARE + (1.0 - FIXED_QUERY_SHARE) * pixels


@dataclass
class Plan:
    """What a run does: its image, repeats and sections, what it expects that to cost, and each change
    made to what was asked (in words, in the order made)."""

    image: tuple[int, int]
    repeats: int
    sections: tuple[str, ...]
    dropped: tuple[str, ...]
    estimate_s: float
    available_s: float
    fits: bool
    changes: list[str] = field(default_factory=list)


def estimate_s(
    sections, repeats: int, image, query_s: float, measured_at, warmup_rounds: int, warmed_queries: float = 0.0
) -> float:
    """Seconds `sections` take: `warmup_rounds` warm-up rounds (less `warmed_queries` already run at
    `image`) and `repeats` repeats, at `query_s` per query measured at `measured_at`, plus fixed costs."""
    query = query_s * image_cost_scale(image, measured_at)
    warmup = max(0.0, warmup_rounds * sum(s.warmup_queries for s in sections) - warmed_queries)
    per_repeat = sum(s.per_repeat_queries for s in sections)
    return query * (warmup + repeats * per_repeat) + sum(s.fixed_s for s in sections)


def plan_run(
    query_s: float,
    measured_at: tuple[int, int],
    available_s: float,
    repeats: int,
    image: tuple[int, int],
    sections,
    warmup_rounds: int = 1,
    warmed_queries: float = 1.0,
    ladder=IMAGE_LADDER,
) -> Plan:
    """The largest run that fits `available_s` * BUDGET_MARGIN: the asked `repeats` and `image` with every
    section if they fit, else fewer repeats, else a smaller image (no larger than asked), else fewer
    sections. `query_s`: one fresh-frame 1-shot query measured at `measured_at`; `warmed_queries`: warm-up
    queries already run (they count only while the image stays `measured_at`)."""
    sections = tuple(sections)
    allowed = available_s * BUDGET_MARGIN
    sizes = [image] + [size for size in ladder if size[0] * size[1] < image[0] * image[1]]

    def cost(kept, count, size):
        warmed = warmed_queries if tuple(size) == tuple(measured_at) else 0.0
        return estimate_s(kept, count, size, query_s, measured_at, warmup_rounds, warmed)

    def plan(kept, count, size, fits):
        names = tuple(s.name for s in kept)
        dropped = tuple(s.name for s in sorted(sections, key=lambda s: s.importance) if s.name not in names)
        changes = []
        if count != repeats:
            changes.append(f"repeats {repeats} -> {count}")
        if tuple(size) != tuple(image):
            changes.append(
                f"MLLM image {image[0]}x{image[1]} -> {size[0]}x{size[1]} (DINO's input stays at its resolution)"
            )
        for name in dropped:
            lost = next(s.ratios for s in sections if s.name == name)
            changes.append(f"dropped {name}" + (f" (no {', '.join(lost)})" if lost else ""))
        return Plan(tuple(size), count, names, dropped, cost(kept, count, size), available_s, fits, changes)

    for size in sizes:
        for count in range(repeats, 0, -1):
            if cost(sections, count, size) <= allowed:
                return plan(sections, count, size, True)
    kept = list(sections)
    smallest = sizes[-1]
    for section in sorted(sections, key=lambda s: s.importance):
        if section.importance >= REQUIRED or cost(kept, 1, smallest) <= allowed:
            break
        kept.remove(section)
    return plan(kept, 1, smallest, cost(kept, 1, smallest) <= allowed)


def spread(values) -> tuple[float, str]:
    """A series' run-to-run noise (ms) and where it comes from: its range over the repeats, or with one
    repeat ASSUMED_NOISE_FRACTION of its value."""
    values = list(values)
    if len(values) >= 2:
        return max(values) - min(values), f"range of {len(values)} repeats"
    return ASSUMED_NOISE_FRACTION * abs(values[0]), f"{ASSUMED_NOISE_FRACTION:.0%} of one repeat (assumed)"


def ratio_above_base(numerator, denominator, base) -> tuple[float | None, str | None]:
    """(median(numerator) - median(base)) / (median(denominator) - median(base)), with None and the reason
    unless both differences are positive and larger than their noise (the spreads of the two series)."""
    base_median = statistics.median(base)
    differences = []
    for label, series in (("numerator", numerator), ("denominator", denominator)):
        difference = statistics.median(series) - base_median
        noise = spread(series)[0] + spread(base)[0]
        if difference <= noise:
            how = f"{spread(series)[1]}, {spread(base)[1]}"
            return None, (
                f"{label} minus the base is {difference:.2f} ms, not above the run-to-run noise of {noise:.2f} ms "
                f"({how})"
            )
        differences.append(difference)
    return differences[0] / differences[1], None


def budget_report(minutes: float | None, requested: dict, query_s: float | None, plans) -> dict:
    """The report's `budget`: what was asked, what ran, each change and why, so that two reports say
    whether their figures are comparable (same `used`)."""
    plans = [plan for plan in plans if plan is not None]
    final = plans[-1] if plans else None
    used = (
        {"repeats": final.repeats, "image": list(final.image), "sections": list(final.sections)}
        if final
        else dict(requested)
    )
    return {
        "minutes": minutes,
        "query_s": query_s,
        "requested": requested,
        "used": used,
        "changed": used != requested,
        "changes": [change for plan in plans for change in plan.changes],
        "dropped": [name for plan in plans for name in plan.dropped],
        "estimate_s": final.estimate_s if final else None,
        "fits": final.fits if final else None,
    }
