"""tools/device_check.py, the GPU machine's one command: its CPU dry run end to end (so the script
cannot rot between the rare runs on a GPU), and its budget and report logic on known inputs."""

import importlib.metadata
import importlib.util
import json
import pathlib
import subprocess
import sys
import types

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def device_check():
    spec = importlib.util.spec_from_file_location("device_check", REPO / "tools" / "device_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_dry_run_writes_one_json_and_one_log(tmp_path):
    out = tmp_path / "out"
    completed = subprocess.run(
        [sys.executable, str(REPO / "tools" / "device_check.py"), "--dry-run", "--out", str(out)],
        capture_output=True, text=True, timeout=600, check=False, cwd=REPO,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["device_check.json", "device_check.log"]
    report = json.loads((out / "device_check.json").read_text())
    assert report["mode"] == "dry-run" and report["ok"] is True and report["problems"] == []
    assert report["random_weights"] is True
    assert report["environment"]["cuda_available"] is False and report["environment"]["transformers"]
    tests = report["tests"]
    assert tests["exit_code"] == 0 and tests["passed"] >= 1 and tests["failed"] == 0 and tests["errors"] == 0
    if "not importable" in report["environment"]["torchvision"]:  # then the equivalence test says why it skips
        assert any("torchvision does not import" in reason for reason in tests["skip_reasons"])
    bench = report["bench"]["tiny"]
    assert bench["model"]["mllm"] == "shape:tiny"
    for key in ("ratio_fast_vs_eager", "ratio_pop_vs_native", "ratio_k10_vs_k1"):
        assert bench["ratios"][key] > 0, key
    assert bench["stages_median_ms"]["total"] > 0 and bench["memory_mb"]["peak_allocated"] > 0
    assert bench["report"]["models"]["device"].startswith("CPU")
    log = (out / "device_check.log").read_text()
    assert "pop_ros.bench --shape tiny" in log and "pytest" in log


def test_benches_that_do_not_fit_the_budget_are_skipped_with_the_reason(device_check, tmp_path):
    args = types.SimpleNamespace(
        dry_run=False, budget_s=30.0, out=str(tmp_path), shapes=["qwen2.5-vl-3b", "qwen2.5-vl-7b"], tests=None,
        repeats=1, warmup=0, dtype="bfloat16", wheels=str(tmp_path / "no-wheels"),
    )  # fmt: skip
    check = device_check.Check(args)
    check.benches()  # 30 s cannot hold a 3B (60 s) or a 7B (90 s) run: nothing is started
    for shape in ("qwen2.5-vl-3b", "qwen2.5-vl-7b"):
        assert check.report["bench"][shape]["skipped"].startswith("time budget")
    check.install_wheels()  # no carried wheels: a problem that says what to do
    assert "make device-wheels" in check.report["wheels"]["error"]
    assert check.finish() == 1
    report = json.loads((tmp_path / "device_check.json").read_text())
    assert report["ok"] is False and any("make device-wheels" in p for p in report["problems"])


def test_ratios_are_read_from_whatever_the_bench_reports(device_check):
    models = {
        "ratio_fast_vs_eager": 0.4,
        "overhead_fraction": 0.02,
        "multi_query": {"ratio_second_query_vs_first": 0.3, "five_vs_one": 2.5, "ms": 12.0},
        "stages_ms": {"total": {"median": 50.0}},
    }
    assert device_check.find_ratios(models) == {
        "ratio_fast_vs_eager": 0.4,
        "overhead_fraction": 0.02,
        "multi_query.ratio_second_query_vs_first": 0.3,
        "multi_query.five_vs_one": 2.5,
    }


def test_test_counts_survive_a_run_stopped_by_the_budget(device_check, tmp_path):
    printed = (
        "test/test_core.py::test_a PASSED [ 10%]\n"
        "test/test_core.py::test_b[bfloat16-cuda] FAILED [ 20%]\n"
        "test/test_models.py::test_c SKIPPED (no CUDA) [ 30%]\n"
    )
    summary = device_check.summarise_tests(tmp_path / "absent.xml", printed)
    assert (summary["passed"], summary["failed"], summary["skipped"]) == (1, 1, 1)
    assert summary["failures"] == ["test/test_core.py::test_b[bfloat16-cuda]"]


def test_the_carried_wheels_are_pinned_in_requirements(device_check, tmp_path, monkeypatch):
    for name in device_check.DEVICE_WHEELS:  # the wheel carried is the version the tests here run on
        assert device_check.pinned_version(name) == importlib.metadata.version(name), name
    (tmp_path / "requirements.txt").write_text("torch>=2.0\nTransformers==5.24.0  # a reason\n")
    monkeypatch.setattr(device_check, "REPO", tmp_path)
    assert device_check.pinned_version("transformers") == "5.24.0"  # any case, comment dropped
    with pytest.raises(SystemExit, match="pins no version of torch"):  # a range is no pin
        device_check.pinned_version("torch")
