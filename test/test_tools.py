"""Smoke tests of `pop-bench` and `make demo`'s script: they run end to end and report sane things.
Timings are never asserted (they are measured by `make bench`, not tested)."""

import json
import math
import subprocess
import sys

import cv2


def test_pop_bench_smoke_run_reports_every_comparison():
    completed = subprocess.run(
        [sys.executable, "-m", "pop_ros.bench", "--preset", "tiny", "--dtype", "float32", "--repeats", "1",
         "--warmup", "0", "--stream-seconds", "6", "--json"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout)
    models = report["models"]
    for key in ("ratio_fast_vs_eager", "ratio_pop_vs_native", "ratio_k10_vs_k1", "overhead_fraction"):
        assert math.isfinite(models[key]) and models[key] > 0, key
    assert set(models["k_shots_ms"]) == {"1", "3", "10"}
    for path in ("shared_floor", "eager"):
        assert math.isfinite(models["text_prior_ms"][path]["median"]) and models["text_prior_ms"][path]["median"] > 0
    stream = report["streaming"]
    assert stream["frames_received"] > 0 and stream["queries_processed"] > 0
    assert stream["distinct_frames_processed"] == stream["queries_processed"]  # no frame twice
    assert stream["callback_duration_ms"]["p99"] >= 0


def test_demo_streams_scenes_and_writes_results(tmp_path):
    out = tmp_path / "demo"
    completed = subprocess.run(
        [sys.executable, "-m", "pop_ros.demo", "--out", str(out), "--seconds", "1.5"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    assert "DEMO ON RANDOM WEIGHTS" in completed.stderr
    report = json.loads((out / "result.json").read_text())
    assert report["preset"] == "tiny" and report["random_weights"] is True
    assert len(report["results"]) == 3 * 2  # three scenes, two support sets
    for result in report["results"]:
        assert result["has_3d"] and result["point_m"][2] == 0.8  # the synthetic depth plane
        assert result["frame_id"] == "camera_color_optical_frame"
    assert cv2.imread(str(out / "heatmap.png")).shape == (240, 320, 3)
