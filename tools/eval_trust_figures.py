"""Re-measure pop-eval's resume guarantees on the tiny preset and tiny datasets in the real formats:

- SIGKILL three times during a run, resume each time; compare the reports with an uninterrupted run;
- per configuration change resumed into a finished run's --out: refused (model configuration) or
  how many predictions were computed, and whether the reports equal a fresh run's of that change.

    .venv/bin/python tools/eval_trust_figures.py [--work /tmp/eval-trust-figures]

Random weights: the figures are about bookkeeping, never accuracy.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import signal
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from test.test_evaluation import polygon, write_paco, write_partimagenetpp  # noqa: E402


def pop_eval(*args, **kwargs) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pop_ros.cli.evaluate", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, check=False, **kwargs)


def comparable(out: pathlib.Path):
    report = json.loads((out / "results.json").read_text())
    report["configuration"].pop("started", None)
    for prediction in report["predictions"]:
        prediction.pop("ms")
    return (out / "table.md").read_text(), report


def killed_and_resumed(args, out: pathlib.Path, kill_at: list[int]) -> list[int]:
    """SIGKILL when the log holds each count of predictions in turn, resuming after each; the
    number of predictions saved at each kill."""
    saved = []
    for count in kill_at:
        process = subprocess.Popen(
            [sys.executable, "-m", "pop_ros.cli.evaluate", *map(str, args)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        log = out / "predictions.jsonl"
        while process.poll() is None:
            if log.is_file() and log.read_text().count('"key"') >= count:
                process.send_signal(signal.SIGKILL)
                break
            time.sleep(0.005)
        process.wait()
        saved.append(log.read_text().count('"key"'))
    return saved


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=pathlib.Path, default=pathlib.Path("/tmp/eval-trust-figures"))
    work = parser.parse_args().work
    shutil.rmtree(work, ignore_errors=True)
    data = work / "data"
    write_paco(data / "paco", n_images=6)
    write_partimagenetpp(data / "pinpp", n_images=6)
    paco_annotations = data / "paco" / "annotations"
    shutil.copy(paco_annotations / "paco_lvis_v1_test.json", paco_annotations / "paco_lvis_v1_val.json")

    def args(out, *extra):
        return [
            "--preset", "tiny", "--dataset", f"paco:{data / 'paco'}", "--dataset", f"partimagenetpp:{data / 'pinpp'}",
            "--seeds", "2", "--limit", "5", "--cls-pool", "3", "--out", out, "--json", *extra,
        ]  # fmt: skip

    base = work / "base"
    started = time.perf_counter()
    first = pop_eval(*args(base))
    assert first.returncode == 0, first.stderr
    total = json.loads(first.stdout)["predictions"]
    print(f"uninterrupted run: {total} predictions in {time.perf_counter() - started:.0f} s")

    killed = work / "killed"
    saved = killed_and_resumed(args(killed), killed, [total // 6, total // 2, 5 * total // 6])
    resumed = pop_eval(*args(killed))
    lines = (killed / "predictions.jsonl").read_text().splitlines()
    keys = [json.loads(line)["key"] for line in lines if '"key"' in line]
    print(
        f"3 SIGKILLs (predictions saved at each: {saved}), resumed: {len(keys)} predictions, "
        f"{len(keys) - len(set(keys))} duplicate keys; reports equal the uninterrupted run's: "
        f"{resumed.returncode == 0 and comparable(killed) == comparable(base)}"
    )

    heads = work / "heads.yaml"
    heads.write_text("heads: [[0, 0], [1, 1]]\n")
    changed_data = work / "data-changed"
    shutil.copytree(data, changed_data)
    annotations = changed_data / "paco" / "annotations" / "paco_lvis_v1_test.json"
    content = json.loads(annotations.read_text())
    content["annotations"][1]["segmentation"] = polygon((71, 46, 84, 64))  # one handle a pixel smaller
    annotations.write_text(json.dumps(content))
    changes = {
        "--preset tiny-molmo2": ["--preset", "tiny-molmo2"],
        "--prompt 'Point at the {query}.'": ["--prompt", "Point at the {query}."],
        "--heads-file heads.yaml": ["--heads-file", heads],
        "--resolution 112": ["--resolution", "112"],
        "--mllm tiny:internvl": ["--mllm", "tiny:internvl"],
        "--prompt ... --add-config": ["--prompt", "Point at the {query}.", "--add-config"],
        "--cls-pool 5": ["--cls-pool", "5"],
        "--methods pop-1shot,pop-3shot": ["--methods", "pop-1shot,pop-3shot"],
        "--seeds 3": ["--seeds", "3"],
        "--split val": ["--split", "val"],
        "paco mask changed": ["--dataset", f"paco:{changed_data / 'paco'}"],
    }
    for name, extra in changes.items():
        out = work / f"resume-{len(list(work.glob('resume-*')))}"
        shutil.copytree(base, out)
        full_args = args(out, *extra)
        if name == "paco mask changed":
            full_args = [a for a in args(out) if not str(a).startswith(("paco:", "partimagenetpp:", "--dataset"))]
            full_args += ["--dataset", f"paco:{changed_data / 'paco'}", "--dataset", f"partimagenetpp:{data / 'pinpp'}"]
        started = time.perf_counter()
        result = pop_eval(*full_args)
        seconds = time.perf_counter() - started
        if result.returncode != 0:
            message = result.stderr.strip().splitlines()[-1]
            print(f"{name}: refused in {seconds:.0f} s (exit {result.returncode}): {message}")
            continue
        summary = json.loads(result.stdout)
        fresh = work / f"fresh-{out.name}"
        fresh_args = [fresh if a == out else a for a in full_args]
        fresh_result = pop_eval(*fresh_args)
        assert fresh_result.returncode == 0, fresh_result.stderr
        print(
            f"{name}: {summary['computed']} of {summary['predictions']} computed, {summary['reused']} reused; "
            f"reports equal a fresh run's: {comparable(out)[1]['predictions'] == comparable(fresh)[1]['predictions']}"
            f" (table {comparable(out)[0] == comparable(fresh)[0]})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
