"""Smoke tests of `pop-bench` and `make demo`'s script: they run end to end and report sane things.
Timings are never asserted (they are measured by `make bench`, not tested)."""

import hashlib
import json
import math
import subprocess
import sys

import cv2
import pytest


@pytest.mark.slow
def test_pop_bench_smoke_run_reports_every_comparison():
    completed = subprocess.run(
        [sys.executable, "-m", "pop_ros.bench", "--preset", "tiny", "--dtype", "float32", "--repeats", "1",
         "--warmup", "0", "--stream-seconds", "6", "--json"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout)
    models = report["models"]
    # Each ratio is the quotient of the two medians the report gives for it (numerator first), so a
    # ratio of the wrong pair or the wrong way round fails.
    prior, shots, query = models["text_prior_ms"], models["k_shots_ms"], models["query_ms"]
    for key, over, under in (
        ("ratio_fast_vs_eager", prior["fast"], prior["eager_everywhere"]),
        ("ratio_pop_vs_native", query["pop_1shot"], query["native_pointing"]),
        ("ratio_k10_vs_k1", shots["10"], shots["1"]),
    ):
        assert models[key] == pytest.approx(over["median"] / under["median"], rel=1e-9), key
    assert math.isfinite(models["overhead_fraction"]) and models["overhead_fraction"] < 1  # model time >= 0
    assert set(models["k_shots_ms"]) == {"1", "3", "10"}
    for path in ("shared_floor", "eager"):
        assert math.isfinite(models["text_prior_ms"][path]["median"]) and models["text_prior_ms"][path]["median"] > 0
    stream = report["streaming"]
    assert stream["frames_received"] > 0 and stream["queries_processed"] > 0
    assert stream["distinct_frames_processed"] == stream["queries_processed"]  # no frame twice
    assert stream["callback_duration_ms"]["p99"] >= 0


SETS = ("bottle_neck", "mug_handle")  # config/supports/library.yaml


@pytest.mark.slow
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
    # One explained picture per scene and query, each distinct, plus an index page and a contact sheet.
    pictures = [out / result["picture"] for result in report["results"]]
    assert sorted(p.name for p in pictures) == sorted(f"scene_{i}_{s}.png" for i in range(3) for s in SETS)
    assert sorted(p.name for p in out.glob("*.png")) == sorted([p.name for p in pictures] + ["contact_sheet.png"])
    assert len({hashlib.sha256(p.read_bytes()).hexdigest() for p in pictures}) == len(pictures)  # no copies
    for picture in pictures:
        image = cv2.imread(str(picture))
        assert image.shape[0] > 480 and image.shape[1] > 640  # the 320x240 scene scaled up, with text beside
        red_frame = image[:3, :, :]  # the random-weights frame along the top edge, BGR (0, 0, 200)
        assert (abs(red_frame.astype(int) - (0, 0, 200)).sum(axis=2) < 30).mean() > 0.9
    page = (out / "index.html").read_text()
    assert all(f"src='{p.name}'" in page for p in pictures) and "RANDOM WEIGHTS" in page
    assert cv2.imread(str(out / "contact_sheet.png")) is not None
