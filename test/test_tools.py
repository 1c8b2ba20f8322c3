"""Smoke tests of `pop-bench` and `make demo`'s script: they run end to end and report sane things.
Timings are never asserted (they are measured by `make bench`, not tested)."""

import hashlib
import json
import math
import pathlib
import subprocess
import sys

import cv2
import pytest
import torch

REPO = pathlib.Path(__file__).resolve().parents[1]


def _median(row: dict) -> float:
    assert row["n"] >= 1 and math.isfinite(row["median"]) and row["median"] > 0
    return row["median"]


@pytest.mark.slow
def test_pop_bench_smoke_run_reports_every_comparison(tool_shims):
    completed = subprocess.run(
        [tool_shims / "pop-bench", "--preset", "tiny", "--dtype", "float32", "--repeats", "3",
         "--warmup", "1", "--stream-seconds", "3", "--json"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout)
    assert report["dtype"] == {"requested": "float32", "chosen": "float32", "reason": "asked for"}
    models = report["models"]
    assert models["dtype"] == "torch.float32" and models["image"] == [640, 480]
    # Each ratio is the quotient of the two rows it names (computed here from the report's medians).
    text, query, shots = models["text_prior_ms"], models["query_ms"], models["k_shots_ms"]
    many = models["many_parts_ms"]
    expected = {
        "ratio_fast_vs_eager": _median(text["fast"]) / _median(text["eager_everywhere"]),
        "ratio_fast_vs_eager_text_only": _median(text["fast"]) / _median(text["eager"]),
        "ratio_pop_vs_native": _median(query["pop_1shot"]) / _median(query["native_pointing"]),
        "ratio_k10_vs_k1": _median(shots["10"]) / _median(shots["1"]),
        "ratio_second_vs_first_query": _median(many["second_query"]) / _median(many["first_query"]),
        "ratio_5_queries_vs_1": _median(many["five_queries"]) / _median(many["first_query"]),
        "ratio_5_queries_vs_1_unbatched": _median(many["five_queries_unbatched"]) / _median(many["first_query"]),
        "ratio_track_vs_query": _median(models["track_update_ms"]) / _median(query["pop_1shot"]),
    }
    for key, value in expected.items():
        assert models[key] == pytest.approx(value, rel=1e-9), key
    assert set(shots) == {"1", "3", "10"} and all(row["n"] == 3 for row in shots.values())
    # The overhead is a fraction of the query: the model stages are part of the total, never more.
    assert 0 <= models["overhead_fraction"] < 1
    # A query on a cached frame skips the DINO forward and the vision tower: far cheaper than the first.
    assert models["ratio_second_vs_first_query"] < 0.8
    # Native pointing generates 24 tokens through every layer; POP stops at the deepest head.
    assert models["ratio_pop_vs_native"] < 1
    stream = report["streaming"]
    assert stream["frames_received"] > 0 and stream["queries_processed"] > 0
    assert stream["distinct_frames_processed"] == stream["queries_processed"]  # no frame twice
    assert stream["callback_duration_ms"]["p99"] >= 0
    # Continuous tracking, one run per camera: tracked answers arrive, with 3D from the camera's depth.
    assert [run["camera"] for run in stream["tracking"]] == ["320x240 at 15 Hz", "640x480 at 30 Hz"]
    for run in stream["tracking"]:
        assert run["tracked_answers"] > 0 and run["tracked_with_3d"] > 0, run


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


def _expected_auto_dtype() -> str:
    """bf16 where the CPU does bf16 arithmetic natively (its cpuinfo flags), else float32."""
    flags = set()
    with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    return "bfloat16" if flags & {"avx512_bf16", "amx_bf16"} else "float32"


def test_pop_bench_quick_shape_run_picks_a_native_dtype(capsys):
    """pop-bench's main() in this process: a process of its own spent ~5 of its ~7 s importing torch,
    torchao and transformers. `python -m pop_ros.bench` as a command is run by the smoke run above."""
    from pop_ros.bench import cli as bench

    returncode = bench.main(["--shape", "tiny", "--quick", "--stream-seconds", "0", "--json"])
    completed = capsys.readouterr()
    assert returncode == 0, completed.err
    report = json.loads(completed.out)
    chosen = _expected_auto_dtype()
    assert report["dtype"]["requested"] == "auto" and report["dtype"]["chosen"] == chosen
    assert report["cpu"]["native_bf16"] == (chosen == "bfloat16")
    assert report["cpu"]["torch_capability"] == torch.backends.cpu.get_cpu_capability()
    assert f"dtype {chosen}" in completed.err and "torch capability" in completed.err  # printed too
    models = report["models"]
    assert models["dtype"] == f"torch.{chosen}" and models["image"] == [320, 240]  # --quick: the small image
    assert models["stages_ms"]["total"]["n"] == 1 and "streaming" not in report
    for key in (
        "ratio_fast_vs_eager",
        "ratio_pop_vs_native",
        "ratio_k10_vs_k1",
        "overhead_fraction",
        "ratio_second_vs_first_query",
        "ratio_5_queries_vs_1",
        "ratio_5_queries_vs_1_unbatched",
        "ratio_track_vs_query",
    ):
        assert math.isfinite(models[key]), key  # fmt: skip
    assert "1-shot query 1/1" in completed.err and "many parts 1/1" in completed.err  # progress per repeat
    assert report["wall_s"] > 0 and report["load_s"] > 0
    # No --budget: what was asked ran, and the report says so (the `budget` of two reports compare them).
    requested = {"repeats": 1, "image": [320, 240], "sections": ["stages", "text_prior", "native", "k_shots",
                                                                 "many_parts"]}  # fmt: skip
    assert report["budget"]["minutes"] is None and report["budget"]["used"] == requested
    assert report["budget"]["changed"] is False and report["budget"]["changes"] == []


@pytest.mark.slow  # a pop-bench process of its own (about 15 s); the planner's own tests are in test_bench_plan.py
def test_pop_bench_within_a_budget_too_short_for_anything_runs_the_required_section_and_says_so():
    """--budget 0.01 (0.6 s) is spent before the models are built, whatever the machine: the plan keeps
    only the per-stage section, at 1 repeat and the small image, and names what it dropped. A process of
    its own: the budget counts its imports, which a run through the tests' tool server has made already."""
    completed = subprocess.run(
        [sys.executable, "-m", "pop_ros.bench", "--shape", "tiny", "--dtype", "float32", "--budget", "0.01",
         "--stream-seconds", "5", "--json"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout)
    budget = report["budget"]
    assert budget["minutes"] == 0.01 and budget["query_s"] > 0 and budget["fits"] is False
    assert budget["requested"] == {"repeats": 3, "image": [640, 480], "sections": [
        "stages", "text_prior", "native", "k_shots", "many_parts", "streaming"]}  # fmt: skip
    assert budget["used"] == {"repeats": 1, "image": [320, 240], "sections": ["stages"]} and budget["changed"]
    assert budget["dropped"] == ["streaming", "k_shots", "many_parts", "native", "text_prior"]
    assert budget["changes"][:2] == [
        "repeats 3 -> 1",
        "MLLM image 640x480 -> 320x240 (DINO's input stays at its resolution)",
    ]
    assert "dropped native (no ratio_pop_vs_native)" in budget["changes"]
    models = report["models"]
    assert models["image"] == [320, 240] and models["stages_ms"]["total"]["n"] == 1
    assert 0 <= models["overhead_fraction"] < 1 and "ratio_pop_vs_native" not in models
    assert "streaming" not in report and "budget 0.01 min: repeats 3 -> 1" in completed.stderr
    from pop_ros.bench.benchmarks import table

    text = table(report)  # the text report names what did not run
    assert "| ratio_pop_vs_native | not reported: its section did not run" in text and "dropped streaming" in text


def test_every_section_of_the_budget_table_has_a_runner_and_its_ratios_are_documented():
    from pop_ros.bench.benchmarks import SECTION_RUNNERS, SECTION_WARMUPS, TARGETS
    from pop_ros.bench.plan import SECTIONS

    names = [s.name for s in SECTIONS]
    assert [n for n in names if n != "streaming"] == list(SECTION_RUNNERS)  # streaming: run_report, after
    assert set(SECTION_WARMUPS) <= set(SECTION_RUNNERS) and names[0] == "stages"  # its 1-shot rows feed others
    ratios = {ratio for s in SECTIONS for ratio in s.ratios}
    assert set(TARGETS) <= ratios
    from pop_ros.bench.plan import STREAM_RUNS
    from pop_ros.bench.tracking import TRACKING_CAMERAS

    assert STREAM_RUNS == 1 + len(TRACKING_CAMERAS)  # the streaming section's cost counts every run
    performance = (REPO / "docs" / "performance.md").read_text()
    assert all(f"`{ratio}`" in performance for ratio in ratios)


def test_shape_models_are_seeded_tied_and_complete():
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from pop_ros.models.random_weights import build_random
    from pop_ros.models.shapes import SHAPES

    text, vision, _, _ = SHAPES["tiny"]
    config = Qwen2_5_VLConfig(text_config={**text, "tie_word_embeddings": True}, vision_config=dict(vision))
    first = build_random(Qwen2_5_VLForConditionalGeneration, config, "cpu", torch.float32, seed=7)
    again = build_random(Qwen2_5_VLForConditionalGeneration, config, "cpu", torch.float32, seed=7)
    other = build_random(Qwen2_5_VLForConditionalGeneration, config, "cpu", torch.float32, seed=8)
    assert first.lm_head.weight is first.model.language_model.embed_tokens.weight  # tied: one tensor
    assert not any(p.is_meta for p in first.parameters())
    first_state, again_state = first.state_dict(), again.state_dict()
    assert all(torch.equal(first_state[k], again_state[k]) for k in first_state)
    q_proj = "model.language_model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(first_state[q_proj], other.state_dict()[q_proj])
    assert 0.01 < float(first_state[q_proj].std()) < 0.03  # the 0.02 spread of transformers' init
    assert torch.equal(first_state["model.language_model.norm.weight"], torch.ones(text["hidden_size"]))
    # Buffers computed at construction (RoPE frequencies) are the real ones, not meta leftovers.
    reference = Qwen2_5_VLForConditionalGeneration(config)
    # As a normally built (or from_pretrained) model: torch's CPU matmul runs slow paths for frozen weights.
    assert [p.requires_grad for p in first.parameters()] == [p.requires_grad for p in reference.parameters()]
    for name, buffer in reference.named_buffers():
        torch.testing.assert_close(dict(first.named_buffers())[name], buffer, atol=0, rtol=0)
    ids = torch.arange(8)[None]
    with torch.no_grad():
        logits = first(input_ids=ids).logits
    assert logits.shape == (1, 8, text["vocab_size"]) and bool(torch.isfinite(logits).all())


def test_tracking_stream_report_counts_only_the_frames_of_its_window():
    """The streaming section's tracking figures are over the window of frame stamps measured (the
    camera process's start-up is not in it): answers about frames outside it are not counted, and
    the camera's frames in it are its published count at the rate it kept."""
    from types import SimpleNamespace

    from pop_ros.bench.tracking import stream_report

    def result(stamp_s, tracked=True, success=True):
        stamp = SimpleNamespace(sec=int(stamp_s), nanosec=round((stamp_s % 1) * 1e9))
        message = "ok" if success else "track lost: the point left the image: (700, 10) outside 640x480"
        return SimpleNamespace(header=SimpleNamespace(stamp=stamp), tracked=tracked, success=success,
                               has_3d=success, message=message)  # fmt: skip

    stamps = [100.0 + i / 30 for i in range(0, 91)]  # 3 s of a 30 Hz camera
    received = [result(s) for s in stamps] + [result(103.5, tracked=False), result(101.0 + 1 / 60, success=False)]
    camera = (640, 480, 30.0, 0.8)
    report = stream_report(received, {"published": 300, "seconds": 10.0}, (60, 4), (101.0, 103.0), camera)
    assert report["seconds_measured"] == 2.0
    assert report["tracked_answers"] == 60  # stamps in (101, 103]: 60 frames of 91
    assert report["tracks_lost"] == 1 and report["lost_reasons"] == {"the point left the image": 1}
    assert report["full_answers"] == 0  # the one at 103.5 is after the window
    assert report["frames_published"] == 60 and report["frames_skipped_by_the_tracker"] == 4
    assert abs(report["share_of_camera_rate"] - 1.0) < 1e-9


@pytest.mark.slow
def test_measure_camera_delivery_counts_what_arrives_with_the_shipped_profile():
    """tools/measure_camera_delivery.py as documented (docs/tracking.md): the camera process gets the
    shipped Fast DDS profile, and what it published and what arrived are reported."""
    completed = subprocess.run(
        [sys.executable, str(REPO / "tools" / "measure_camera_delivery.py"), "160", "120", "10", "1"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-2000:]
    report = json.loads(completed.stdout)
    assert report["dds_profile"].endswith("config/fastdds_large_images.xml")
    assert report["published"] >= 8 and 0 < report["received_colour"] <= report["published"]
