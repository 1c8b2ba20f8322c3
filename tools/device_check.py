#!/usr/bin/env python3
"""One command that proves the real path on a GPU: `make device-check` (or `python3 tools/device_check.py`).

Made for a GPU machine with a stock image (Python 3.12, CUDA torch, torchvision, an older
transformers; no ROS, no network), where the working tree arrives with `build/device-wheels`
beside it (made here by `make device-wheels`). In at most `--budget-s` seconds it:

1. records the environment (GPU, torch, torchvision, transformers);
2. installs the carried wheels (`pip install --no-index --find-links`) into a folder put first on
   PYTHONPATH, leaving the image's own packages alone;
3. runs the core, model, pipeline, precision (float16/bfloat16 on CUDA) and processor-equivalence
   tests with the stock interpreter;
4. runs `pop-bench` in bf16 on the Qwen2.5-VL-3B + DINOv3 ViT-B/16, Qwen3.5-4B + DINOv3 ViT-B/16
   and Qwen2.5-VL-7B + DINOv3 ViT-L/16 shapes at 640x480 (random weights, nothing downloaded), the
   7B last and skipped, with the reason recorded, when the budget would not hold it;
5. writes ONE JSON (`device_check.json`) and ONE log (`device_check.log`) into $OUT (the folder
   the GPU machine hands back), else `build/device-check/`.

`--dry-run` runs the same steps on the CPU with the `tiny` bench shape and a few quick tests
(`test/test_device_check.py` does, in `make test`, so this script cannot rot).
`--download-wheels` is the preparation step (`make device-wheels`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_WHEELS = REPO / "build" / "device-wheels"
LOCAL_OUT = REPO / "build" / "device-check"
SITE = pathlib.Path("/tmp/pop-ros-device-site")  # the carried wheels are installed here, never into the image

# What the GPU test machine's stock image lacks, with why. The image holds torch 2.11 (CUDA 13),
# torchvision 0.26, transformers 5.17.0, tokenizers 0.23.2, huggingface-hub 1.33.0, safetensors,
# numpy, opencv-python-headless, scipy, pillow, pyyaml, psutil, pytest, pytest-timeout, hypothesis
# (read on such a machine, 2026-11). transformers 5.17 has no Molmo2, so the pinned 5.24.0 travels;
# its requirements (huggingface-hub >= 1.31, < 3; tokenizers >= 0.23.1, < 0.24) are met by the image.
DEVICE_WHEELS = {"transformers": "5.17.0 on the image has no Molmo2; pop_ros pins 5.24.0"}
WHEEL_LIMIT_MB = 64  # everything that travels with the working tree, wheels included

GPU_TESTS = [
    "test/test_core.py",
    "test/test_models.py",
    "test/test_pipeline.py",
    "test/test_many_parts.py",
    "test/test_precision.py",
    "test/test_processors_equivalence.py",
]
DRY_RUN_TESTS = [
    "test/test_core.py::test_float16_gives_the_same_point_as_float32",
    "test/test_processors_equivalence.py",
]
# The 7B last: it is the one skipped when time runs out. Qwen3.5-4B: the hybrid (Gated DeltaNet) family.
GPU_SHAPES = ["qwen2.5-vl-3b", "qwen3.5-4b", "qwen2.5-vl-7b"]
DRY_RUN_SHAPES = ["tiny"]
# Seconds a bench needs at least to be worth starting (model build + warm-up + 3 repeats), and the
# seconds kept back at the end to write the report.
MIN_BENCH_S = {"qwen2.5-vl-3b": 60, "qwen3.5-4b": 75, "qwen2.5-vl-7b": 90, "tiny": 0}
REPORT_RESERVE_S = 10


def pinned_version(name: str) -> str:
    """The version requirements.txt pins for `name` (the one source of truth for versions)."""
    for line in (REPO / "requirements.txt").read_text().splitlines():
        match = re.fullmatch(rf"{re.escape(name)}==([^\s#]+)\s*(#.*)?", line.strip(), flags=re.IGNORECASE)
        if match:
            return match.group(1)
    raise SystemExit(f"requirements.txt pins no version of {name}")


# ---- preparation (here, with network) -------------------------------------------------------------------
def download_wheels(folder: pathlib.Path) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    wanted = {name: pinned_version(name) for name in DEVICE_WHEELS}
    for stale in folder.glob("*.whl"):  # exactly the pinned set, nothing left over from an older pin
        if not any(stale.name.lower().startswith(f"{n.replace('-', '_')}-{v}-") for n, v in wanted.items()):
            stale.unlink()
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
               "3.12", "--implementation", "cp", "--platform", "manylinux_2_28_x86_64", "--platform", "any",
               "--dest", str(folder), *(f"{n}=={v}" for n, v in wanted.items())]  # fmt: skip
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        print(completed.stdout[-2000:] + completed.stderr[-2000:], file=sys.stderr)
        print(f"device-wheels: pip download failed (exit {completed.returncode})", file=sys.stderr)
        return 1
    wheels = sorted(folder.glob("*.whl"))
    manifest = {
        "wheels": [
            {"file": w.name, "bytes": w.stat().st_size, "sha256": hashlib.sha256(w.read_bytes()).hexdigest()}
            for w in wheels
        ],
        "pinned": wanted,
        "why": DEVICE_WHEELS,
    }
    total_mb = sum(w["bytes"] for w in manifest["wheels"]) / 2**20
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    for wheel in manifest["wheels"]:
        print(f"{wheel['file']}  {wheel['bytes'] / 2**20:.1f} MiB")
    print(f"{len(wheels)} wheel(s), {total_mb:.1f} MiB in {folder} (carry it: at most {WHEEL_LIMIT_MB} MiB "
          "travel with the working tree)")  # fmt: skip
    if total_mb > WHEEL_LIMIT_MB:
        print(f"device-wheels: {total_mb:.1f} MiB is over the {WHEEL_LIMIT_MB} MiB limit", file=sys.stderr)
        return 1
    return 0


# ---- the check (on the GPU machine) ---------------------------------------------------------------------
class Check:
    def __init__(self, args):
        self.args = args
        self.started = time.monotonic()
        self.deadline = self.started + args.budget_s
        out = args.out or os.environ.get("OUT") or str(LOCAL_OUT)
        self.out = pathlib.Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.log_path = self.out / "device_check.log"
        self.log_path.write_text("")
        # Append mode: the children write into the same file, and every write lands at its end.
        self.log = self.log_path.open("a", encoding="utf-8")
        self.report: dict = {
            "mode": "dry-run" if args.dry_run else "gpu",
            "command": " ".join(["tools/device_check.py", *sys.argv[1:]]),
            "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "budget_s": args.budget_s,
            "random_weights": True,  # every model here has random weights: times and numerics, never accuracy
            "problems": [],
        }
        self.env = dict(os.environ)
        self.env.update({"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"})
        self.env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), self.env.get("PYTHONPATH", "")) if p)

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def say(self, message: str) -> None:
        line = f"[device-check {time.monotonic() - self.started:6.1f}s] {message}"
        print(line, flush=True)
        self.log.write(line + "\n")
        self.log.flush()

    def problem(self, message: str) -> None:
        self.report["problems"].append(message)
        self.say(f"PROBLEM: {message}")

    def run(self, command: list[str], timeout: float, capture_stdout: bool = False) -> tuple[int | None, str]:
        """Run `command`, its stderr (and stdout unless captured) into the log; (exit code or None on
        timeout, captured stdout)."""
        shown = [part if "\n" not in part else "<script>" for part in command]
        self.say("$ " + " ".join(shown))
        stdout_target = subprocess.PIPE if capture_stdout else self.log
        with subprocess.Popen(
            command, cwd=REPO, env=self.env, stdout=stdout_target, stderr=self.log, text=True, start_new_session=True
        ) as process:
            try:
                stdout, _ = process.communicate(timeout=max(1.0, timeout))
                return process.returncode, stdout or ""
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, 9)  # the whole group: pytest's and the bench's children too
                stdout, _ = process.communicate()
                return None, stdout or ""

    def last_log_line(self, since: int) -> str:
        """The last non-empty line a child wrote into the log after offset `since` (its error, usually)."""
        self.log.flush()
        with self.log_path.open(encoding="utf-8", errors="replace") as handle:
            handle.seek(since)
            lines = [line.strip() for line in handle.read().splitlines() if line.strip()]
        return lines[-1][:300] if lines else "(nothing written)"

    # -- steps --
    def environment(self) -> None:
        probe = (
            "import json, platform, sys, torch\n"
            "info = {'python': sys.version.split()[0], 'platform': platform.platform(), 'torch': torch.__version__,\n"
            "        'cuda_available': torch.cuda.is_available(), 'torch_cuda': torch.version.cuda}\n"
            "if torch.cuda.is_available():\n"
            "    p = torch.cuda.get_device_properties(0)\n"
            "    info.update(gpu=p.name, gpu_memory_mib=p.total_memory // 2**20, capability=f'{p.major}.{p.minor}')\n"
            "for name in ('torchvision', 'transformers', 'tokenizers', 'huggingface_hub', 'numpy', 'cv2', 'scipy'):\n"
            "    try:\n"
            "        info[name] = __import__(name).__version__\n"
            "    except Exception as error:\n"
            "        info[name] = f'not importable: {type(error).__name__}: {str(error)[:200]}'\n"
            "print(json.dumps(info))\n"
        )
        code, stdout = self.run([sys.executable, "-c", probe], timeout=min(120, self.remaining()), capture_stdout=True)
        try:
            info = json.loads(stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            info = {"error": f"the environment probe failed (exit {code}); see the log"}
            self.problem(info["error"])
        self.report["environment"] = info
        self.say("environment: " + json.dumps(info))
        if not self.args.dry_run and not info.get("cuda_available"):
            self.problem("CUDA is not available: the check ran, but nothing of it was on a GPU")

    def install_wheels(self) -> None:
        folder = pathlib.Path(self.args.wheels)
        step: dict = {"folder": str(folder)}
        self.report["wheels"] = step
        if self.args.dry_run:
            step["skipped"] = "dry run: this interpreter already has the pinned versions"
            return
        wheels = sorted(folder.glob("*.whl"))
        if not wheels:
            step["error"] = f"no wheels in {folder}: run `make device-wheels` here and carry build/device-wheels"
            self.problem(step["error"])
            return
        step["files"] = [w.name for w in wheels]
        shutil.rmtree(SITE, ignore_errors=True)
        names = [f"{n}=={pinned_version(n)}" for n in DEVICE_WHEELS]
        code, _ = self.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--find-links", str(folder), "--no-deps",
             "--no-compile", "--no-cache-dir", "--target", str(SITE), *names],
            timeout=min(180, self.remaining()),
        )  # fmt: skip
        if code != 0:
            step["error"] = f"pip install from {folder} failed (exit {code}); see the log"
            self.problem(step["error"])
            return
        self.env["PYTHONPATH"] = os.pathsep.join([str(SITE), self.env["PYTHONPATH"]])
        check = "import json, transformers; print(json.dumps({'transformers': transformers.__version__}))"
        _, stdout = self.run([sys.executable, "-c", check], timeout=min(120, self.remaining()), capture_stdout=True)
        try:
            installed = json.loads(stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            installed = {}
        step["installed"] = installed
        if installed.get("transformers") != pinned_version("transformers"):
            self.problem(f"transformers {installed.get('transformers')} is imported, not the pinned one")

    def tests(self) -> None:
        files = self.args.tests or (DRY_RUN_TESTS if self.args.dry_run else GPU_TESTS)
        shapes = self.shapes()
        reserve = sum(MIN_BENCH_S.get(s, 0) for s in shapes[:1]) + REPORT_RESERVE_S  # keep the first bench's time
        timeout = self.remaining() - reserve
        step: dict = {"files": files}
        self.report["tests"] = step
        if timeout < 30:
            step["skipped"] = f"only {self.remaining():.0f} s of the budget left"
            self.problem("tests skipped: " + step["skipped"])
            return
        # Read back, then removed: only one JSON and one log go into the report folder.
        junit = pathlib.Path(tempfile.mkdtemp(prefix="pop-device-check-")) / "junit.xml"
        started = time.monotonic()
        code, stdout = self.run(
            [sys.executable, "-m", "pytest", *files, "-v", "-rs", "-p", "no:cacheprovider", f"--junitxml={junit}"],
            timeout=timeout,
            capture_stdout=True,
        )
        self.log.write(stdout)
        step["seconds"] = round(time.monotonic() - started, 1)
        step["exit_code"] = code
        step.update(summarise_tests(junit, stdout))
        shutil.rmtree(junit.parent, ignore_errors=True)
        if code is None:
            self.problem(f"tests stopped after {timeout:.0f} s (budget); counts are from the lines printed so far")
        if step.get("failed") or step.get("errors"):
            self.problem(
                f"{step.get('failed', 0)} test(s) failed, {step.get('errors', 0)} error(s): {step['failures']}"
            )
        self.say(f"tests: {json.dumps({k: step.get(k) for k in ('passed', 'failed', 'skipped', 'errors')})}")

    def shapes(self) -> list[str]:
        return self.args.shapes or (DRY_RUN_SHAPES if self.args.dry_run else GPU_SHAPES)

    def benches(self) -> None:
        device = "cpu" if self.args.dry_run else "cuda"
        results: dict = {}
        self.report["bench"] = results
        for shape in self.shapes():
            needed = MIN_BENCH_S.get(shape, 60)
            left = self.remaining() - REPORT_RESERVE_S
            if left < max(needed, 1):
                results[shape] = {"skipped": f"time budget: {left:.0f} s left, at least {needed} s needed"}
                self.say(f"bench {shape}: skipped ({results[shape]['skipped']})")
                continue
            command = [sys.executable, "-m", "pop_ros.bench", "--shape", shape, "--device", device, "--dtype",
                       self.args.dtype, "--repeats", str(self.args.repeats), "--warmup", str(self.args.warmup),
                       "--stream-seconds", "0", "--json"]  # fmt: skip
            started = time.monotonic()
            log_start = self.log.tell()
            code, stdout = self.run(command, timeout=left, capture_stdout=True)
            seconds = round(time.monotonic() - started, 1)
            if code is None:
                results[shape] = {"skipped": f"time budget: stopped after {seconds} s", "seconds": seconds}
                self.problem(f"bench {shape} ran out of the time budget after {seconds} s")
                continue
            try:
                bench = json.loads(stdout)
            except json.JSONDecodeError:
                results[shape] = {
                    "error": f"pop-bench exited {code} without a JSON report: {self.last_log_line(log_start)}"
                }
                self.log.write(stdout[-5000:])
                self.problem(f"bench {shape}: " + results[shape]["error"])
                continue
            results[shape] = {"seconds": seconds, **summarise_bench(bench), "report": bench}
            self.say(f"bench {shape}: {json.dumps({k: results[shape][k] for k in ('ratios', 'memory_mb')})}")

    def finish(self) -> int:
        self.report["elapsed_s"] = round(time.monotonic() - self.started, 1)
        self.report["ok"] = not self.report["problems"]
        json_path = self.out / "device_check.json"
        json_path.write_text(json.dumps(self.report, indent=2) + "\n")
        self.say(f"wrote {json_path} and {self.log_path}; {'OK' if self.report['ok'] else 'PROBLEMS'}")
        self.log.close()
        return 0 if self.report["ok"] else 1


def summarise_tests(junit: pathlib.Path, stdout: str) -> dict:
    """Counts, failures and skip reasons: from the JUnit XML when pytest finished, else from `-v` lines."""
    summary: dict = {"failures": [], "skip_reasons": {}}
    if junit.is_file():
        root = ElementTree.parse(junit).getroot()
        counts = {"passed": 0, "failed": 0, "skipped": 0, "errors": 0}
        for case in root.iter("testcase"):
            name = f"{case.get('classname')}::{case.get('name')}"
            outcome = "passed"
            for child in case:
                if child.tag in ("failure", "error", "skipped"):
                    outcome = {"failure": "failed", "error": "errors", "skipped": "skipped"}[child.tag]
                    if child.tag == "skipped":
                        reason = (child.get("message") or "").strip()
                        summary["skip_reasons"][reason] = summary["skip_reasons"].get(reason, 0) + 1
                    else:
                        first_line = ((child.get("message") or "").splitlines() or [""])[0]
                        summary["failures"].append(f"{name}: {first_line[:300]}")
            counts[outcome] += 1
        summary.update(counts)
        return summary
    for outcome, key in (("PASSED", "passed"), ("FAILED", "failed"), ("SKIPPED", "skipped"), ("ERROR", "errors")):
        summary[key] = len(re.findall(rf"^\S+::\S+ {outcome}", stdout, flags=re.MULTILINE))
    summary["failures"] = re.findall(r"^(\S+::\S+) (?:FAILED|ERROR)", stdout, flags=re.MULTILINE)
    return summary


def find_ratios(value, path: str = "") -> dict:
    """Every number under a key that names a ratio (`ratio...`, `..._vs_...`, `overhead_fraction`),
    wherever pop-bench puts it: the comparisons it reports are read, not listed here."""
    found = {}
    if isinstance(value, dict):
        for key, item in value.items():
            name = f"{path}.{key}" if path else str(key)
            if isinstance(item, (int, float)) and not isinstance(item, bool):
                if "ratio" in str(key) or "_vs_" in str(key) or str(key) == "overhead_fraction":
                    found[name] = item
            else:
                found.update(find_ratios(item, name))
    return found


def summarise_bench(bench: dict) -> dict:
    models = bench.get("models", {})
    stages = {stage: values.get("median") for stage, values in models.get("stages_ms", {}).items()}
    memory = dict(bench.get("memory_mb", {}))
    memory.setdefault("peak_allocated", models.get("peak_memory_mb"))
    return {
        "device": models.get("device"),
        "dtype": models.get("dtype"),
        "model": models.get("model"),
        "stages_median_ms": stages,
        "ratios": find_ratios(models),
        "memory_mb": memory,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--download-wheels", action="store_true", help="preparation: fetch the pinned wheels")
    parser.add_argument("--wheels", default=str(DEFAULT_WHEELS), help="the carried wheel folder")
    parser.add_argument("--dry-run", action="store_true", help="on the CPU, tiny shapes, a few tests")
    parser.add_argument("--out", help="report folder (default: $OUT, else build/device-check)")
    parser.add_argument("--budget-s", type=float, default=450.0, help="time budget of the whole check (default 450)")
    parser.add_argument("--tests", nargs="*", help="pytest targets (default: the GPU or dry-run list)")
    parser.add_argument(
        "--shapes", nargs="*", help="pop-bench shapes (default: qwen2.5-vl-3b qwen3.5-4b qwen2.5-vl-7b; dry: tiny)"
    )
    parser.add_argument("--repeats", type=int, default=None, help="pop-bench repeats (default 5; dry run 1)")
    parser.add_argument("--warmup", type=int, default=None, help="pop-bench warm-ups (default 2; dry run 0)")
    parser.add_argument(
        "--dtype", default=None, help="pop-bench dtype (default bfloat16; dry run float32: bf16 on a CPU is slow)"
    )
    args = parser.parse_args(argv)
    if args.download_wheels:
        return download_wheels(pathlib.Path(args.wheels))
    if args.budget_s <= 0:
        parser.error("--budget-s must be positive")
    args.repeats = args.repeats if args.repeats is not None else (1 if args.dry_run else 5)
    args.warmup = args.warmup if args.warmup is not None else (0 if args.dry_run else 2)
    args.dtype = args.dtype or ("float32" if args.dry_run else "bfloat16")
    if args.dtype not in ("float32", "bfloat16", "float16"):
        parser.error(f"--dtype must be float32, bfloat16 or float16, got {args.dtype!r}")
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    check = Check(args)
    check.say(f"{check.report['mode']} on {platform.node()}, budget {args.budget_s:.0f} s, report in {check.out}")
    for step in (check.environment, check.install_wheels, check.tests, check.benches):
        try:
            step()
        except Exception as error:  # noqa: BLE001 - one broken step must not lose the others' results
            check.problem(f"{step.__name__} failed: {type(error).__name__}: {error}")
    return check.finish()


if __name__ == "__main__":
    sys.exit(main())
