"""The many-parts rows of pop-bench alone: a second query on the same frame over the first, and
five queries on one frame over one query, batched (one point_many call: the queries' own tokens
go through the layers as one batch) and one by one (one pass each).

Same models as `pop-bench` (random weights, Qwen2.5-VL-3B and DINOv3 ViT-B/16 shapes, `--dtype auto`:
bf16 where the CPU has it natively, else float32), same 640x480 image and 1-shot support, one
warm-up query; for when a full `make bench` does not fit the machine's time.
Run: `python tools/bench_many_parts.py [REPEATS]` (default 5); prints JSON, progress on stderr.
"""

from __future__ import annotations

import json
import sys
import time

from pop_ros.bench import benchmarks as bench


def progress(message: str) -> None:
    print(f"[bench_many_parts {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main() -> int:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    started = time.time()
    from pop_ros.models.loading import resolve_device

    cpu = bench.cpu_capability()
    dtype, reason = bench.choose_dtype("auto", resolve_device("auto"), cpu)
    progress(f"building the qwen2.5-vl-3b shape in {dtype} ({reason})")
    pointer = bench.build_shape_pointer("qwen2.5-vl-3b", "auto", dtype)
    target, supports = bench.bench_images(10)
    pointer.support_features.for_images([supports[0][0]])  # cached support features, as in use
    pointer.point(target, bench.QUERY, supports=supports[:1], shots=1)  # warm-up
    report = {"device": bench.device_name(pointer.visual.device), "cpu": cpu, "dtype": dtype, "repeats": repeats}
    report.update(bench.run_many_parts(pointer, target, supports, repeats, progress))
    pointer.clear_frame_cache()
    first = pointer.point(target, bench.MANY_QUERIES[0], supports=supports[:1], shots=1)
    second = pointer.point(target, bench.MANY_QUERIES[1], supports=supports[:1], shots=1)
    pointer.clear_frame_cache()
    many = pointer.point_many(target, [(query, supports[:1]) for query in bench.MANY_QUERIES])
    report["example_timings_ms"] = {
        "first_query": first.timings_ms,
        "second_query": second.timings_ms,
        "point_many_shared": many[0].shared_timings_ms,
        "point_many_each": [result.timings_ms for result in many],
    }
    report["wall_s"] = time.time() - started
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
