"""pop-bench's time budget (pop_ros/bench/plan.py): what a run keeps, from a query's measured cost and
the section table, and when a ratio of two differences is reported. Pure functions: no timing here."""

import pytest

from pop_ros.bench.plan import (
    ASSUMED_NOISE_FRACTION,
    BUDGET_MARGIN,
    REQUIRED,
    SECTIONS,
    STREAM_OVERHEAD_S,
    STREAM_RUNS,
    Section,
    budget_report,
    estimate_s,
    image_cost_scale,
    plan_run,
    ratio_above_base,
    sections_for,
)

FULL, SMALL = (640, 480), (320, 240)
ALL_RATIOS = {ratio for section in SECTIONS for ratio in section.ratios}


def _needed(sections, repeats, image, query_s=10.0, warmed=1.0):
    """Time left that a run of exactly this size fills (the planner keeps BUDGET_MARGIN of it)."""
    return estimate_s(sections, repeats, image, query_s, FULL, 1, warmed if image == FULL else 0.0) / BUDGET_MARGIN


def test_a_run_that_fits_is_left_as_asked():
    sections = sections_for(60)
    plan = plan_run(10.0, FULL, 10_000.0, 3, FULL, sections)
    assert (plan.image, plan.repeats, plan.dropped, plan.changes, plan.fits) == (FULL, 3, (), [], True)
    assert plan.sections == tuple(s.name for s in sections)


def test_repeats_are_lowered_first():
    sections = sections_for(60)
    available = _needed(sections, 2, FULL) + 1  # 2 repeats fit at full size, 3 do not
    plan = plan_run(10.0, FULL, available, 3, FULL, sections)
    assert (plan.image, plan.repeats, plan.dropped) == (FULL, 2, ())
    assert plan.changes == ["repeats 3 -> 2"] and plan.estimate_s <= available * BUDGET_MARGIN


def test_then_the_image_with_as_many_repeats_as_fit_there():
    sections = sections_for(60)
    available = _needed(sections, 1, FULL) - 1  # not even 1 repeat at 640x480
    assert available > _needed(sections, 2, SMALL)  # (the numbers make 2 repeats at 320x240 fit)
    plan = plan_run(10.0, FULL, available, 3, FULL, sections)
    assert plan.image == SMALL and plan.dropped == () and plan.fits
    assert plan.repeats == (3 if available > _needed(sections, 3, SMALL) else 2)
    assert plan.changes[-1].startswith("MLLM image 640x480 -> 320x240")


def test_then_the_least_important_sections_are_dropped_and_named():
    sections = sections_for(60)
    by_importance = [s.name for s in sorted(sections, key=lambda s: s.importance)]
    assert by_importance[0] == "streaming" and by_importance[-1] == "stages"
    without_streaming = [s for s in sections if s.name != "streaming"]
    available = _needed(without_streaming, 1, SMALL) + 1
    plan = plan_run(10.0, FULL, available, 3, FULL, sections)
    assert (plan.image, plan.repeats, plan.dropped, plan.fits) == (SMALL, 1, ("streaming",), True)
    assert plan.changes == ["repeats 3 -> 1", plan.changes[1], "dropped streaming"]
    # Less time: sections go in order of importance, each change naming the ratios it loses.
    only_required = [s for s in sections if s.importance >= REQUIRED]
    plan = plan_run(10.0, FULL, _needed(only_required, 1, SMALL) + 1, 3, FULL, sections)
    assert plan.sections == ("stages",) and plan.fits
    assert list(plan.dropped) == ["streaming", "k_shots", "many_parts", "native", "text_prior"]
    assert "dropped native (no ratio_pop_vs_native)" in plan.changes


def test_the_required_section_runs_even_when_nothing_fits():
    plan = plan_run(10.0, FULL, -5.0, 3, FULL, sections_for(60))
    assert plan.sections == ("stages",) and plan.fits is False and plan.repeats == 1 and plan.image == SMALL


def test_a_smaller_request_is_never_enlarged():
    plan = plan_run(10.0, SMALL, 10_000.0, 1, SMALL, sections_for(0))
    assert (plan.image, plan.repeats, plan.changes) == (SMALL, 1, [])
    # Re-planning after the warm-up (ladder=()): only repeats and sections may go.
    plan = plan_run(10.0, FULL, _needed(sections_for(0), 1, FULL, warmed=0.0), 3, FULL, sections_for(0), ladder=())
    assert plan.image == FULL


def test_the_cost_table_reproduces_the_measured_make_bench():
    """docs/performance.md: the 3B shape in bf16 on the 2-core AVX512-BF16 CPU, a query 11.35 s, 3 repeats,
    60 s of streaming: the whole run took 8 min 49 s (about a minute of it building the models)."""
    estimate = 60.0 + estimate_s(sections_for(60), 3, FULL, 11.35, FULL, warmup_rounds=1)
    # That run predates continuous tracking's streaming runs (one per camera), which it did not make.
    estimate -= (STREAM_RUNS - 1) * (60 + STREAM_OVERHEAD_S)
    assert estimate == pytest.approx(8 * 60 + 49, rel=0.1)


def test_every_ratio_fits_15_minutes_on_a_2_core_avx2_cpu():
    """The issue's figures: a 3B query in float32 at 640x480 takes 46 s there; give the model build two
    minutes and the first warm-up query its 46 s."""
    left = 15 * 60 - 120.0 - 46.0
    plan = plan_run(46.0, FULL, left, 3, FULL, sections_for(60))
    kept = {ratio for s in SECTIONS if s.name in plan.sections for ratio in s.ratios}
    assert kept == ALL_RATIOS and plan.fits and plan.estimate_s <= left
    assert plan.changes  # 640x480 with 3 repeats would take about half an hour: something had to give


def test_streaming_is_asked_for_only_with_stream_seconds():
    assert "streaming" not in [s.name for s in sections_for(0)]
    streaming = next(s for s in sections_for(30) if s.name == "streaming")
    assert streaming.fixed_s > 30 and streaming.per_repeat_queries == 0


def test_a_quarter_of_the_pixels_costs_more_than_a_quarter():
    assert image_cost_scale(FULL, FULL) == 1.0
    assert 0.25 < image_cost_scale(SMALL, FULL) < 0.4


def test_a_new_section_slots_in_by_its_importance():
    tracked = Section("tracking", 1, 1.0, ratios=("ratio_track_vs_query",))
    sections = (*sections_for(0), tracked)
    without = [s for s in sections if s.name != "tracking"]
    plan = plan_run(10.0, FULL, _needed(without, 1, SMALL) + 1, 3, FULL, sections)
    assert plan.dropped == ("tracking",) and "dropped tracking (no ratio_track_vs_query)" in plan.changes


def test_ratio_of_differences_needs_both_above_the_noise():
    floor = [100.0, 101.0, 102.0]  # range 2 ms
    value, why = ratio_above_base([150.0, 151.0, 152.0], [200.0, 201.0, 202.0], floor)
    assert value == pytest.approx(50.0 / 100.0) and why is None
    # The tiny shape's case: the fast path measured below the floor gave -0.55; now no number, a reason.
    value, why = ratio_above_base([90.0, 91.0, 92.0], [200.0, 201.0, 202.0], floor)
    assert value is None and "numerator minus the base is -10.00 ms" in why and "range of 3 repeats" in why
    # Positive but within the noise: the spreads of the series (3 + 2 ms) exceed a 4 ms difference.
    value, why = ratio_above_base([150.0, 151.0, 152.0], [103.0, 105.0, 106.0], floor)
    assert value is None and why.startswith("denominator") and "noise of 5.00 ms" in why


def test_one_repeat_takes_the_assumed_noise():
    value, why = ratio_above_base([104.0], [200.0], [100.0])  # 4 ms above, noise 5 % of 104 + 5 % of 100
    assert value is None and f"{ASSUMED_NOISE_FRACTION:.0%} of one repeat (assumed)" in why
    value, _ = ratio_above_base([150.0], [200.0], [100.0])
    assert value == pytest.approx(0.5)


def test_the_budget_report_says_what_changed():
    sections = sections_for(60)
    requested = {"repeats": 3, "image": list(FULL), "sections": [s.name for s in sections]}
    unchanged = budget_report(None, requested, None, [])
    assert unchanged["used"] == requested and unchanged["changed"] is False and unchanged["changes"] == []
    first = plan_run(10.0, FULL, _needed([s for s in sections if s.name != "streaming"], 1, SMALL) + 1, 3, FULL,
                     sections)  # fmt: skip
    kept = [s for s in sections if s.name in first.sections]
    only_stages = estimate_s(kept[:1], 1, SMALL, 10.0, SMALL, warmup_rounds=0) / BUDGET_MARGIN
    second = plan_run(10.0, SMALL, only_stages, 1, SMALL, kept, warmup_rounds=0, warmed_queries=0.0, ladder=())
    report = budget_report(15, requested, 10.0, [first, second])
    assert report["changed"] is True and report["used"] == {"repeats": 1, "image": list(SMALL), "sections": ["stages"]}
    assert report["dropped"] == ["streaming", "k_shots", "many_parts", "native", "text_prior"]
    assert report["changes"] == first.changes + second.changes and report["fits"] is True
