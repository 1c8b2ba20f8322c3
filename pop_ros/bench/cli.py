"""pop-bench: where a query's time goes, and POP against the model's own pointing, side by side.

    pop-bench                      # Qwen2.5-VL-3B's exact shape, random weights, plus a streaming run
    pop-bench --budget 15          # the same, fitted into 15 minutes (make bench): fewer repeats first
    pop-bench --quick              # a first look: 1 repeat, a 320x240 image, 10 s of streaming
    pop-bench --preset tiny --repeats 3 --stream-seconds 10   # a quick smoke run
    pop-bench --json > bench.json

`--shape qwen2.5-vl-3b` builds random-weight models with the real widths and depth of
Qwen2.5-VL-3B-Instruct (3.75B parameters) and DINOv3 ViT-B/16, so the *ratios* mean what they would
with the real checkpoints (random weights change no FLOP). Every comparison runs in the same process
on the same models and the same 640x480 image. Absolute times depend on the machine; the report
names the device, the CPU's capability and the dtype (`--dtype auto`: bf16 only where the hardware
runs it natively; emulated bf16 would time the emulation, not the method). See docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from pop_ros.models.shapes import SHAPES


def _parser():
    from pop_ros.models.presets import PRESETS

    parser = argparse.ArgumentParser(prog="pop-bench", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--shape",
        default="qwen2.5-vl-3b",
        choices=sorted(SHAPES),
        help="random-weight models of a real shape: qwen2.5-vl-3b (+ DINOv3 ViT-B/16, default), "
        "qwen2.5-vl-7b (+ DINOv3 ViT-L/16), qwen3.5-4b / qwen3.5-9b (hybrid attention; + DINOv3 ViT-B/16 / "
        "ViT-L/16), tiny (a CPU test of the benchmark itself)",
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), help="benchmark a preset's models instead of --shape")
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--dtype",
        default="auto",
        help="auto (default): bfloat16 on CUDA and on CPUs with native bf16 (AVX512-BF16/AMX), else float32; "
        "or float32, bfloat16, float16",
    )
    parser.add_argument("--quick", action="store_true", help="a first look: 1 repeat, a 320x240 image, 10 s streaming")
    parser.add_argument("--repeats", type=int, help="timed repeats per row after warm-up (default 3; --quick 1)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument(
        "--budget",
        type=float,
        metavar="MINUTES",
        help="fit the run in MINUTES (make bench: 15): after the first warm-up query, fewer repeats, then a "
        "smaller MLLM image, then fewer sections (least important first), as needed; stored as `budget`",
    )
    parser.add_argument("--stream-seconds", type=float, help="streaming run length; 0 = skip (default 60; --quick 10)")
    parser.add_argument(
        "--stream-preset", default="tiny", choices=sorted(PRESETS), help="the node's preset (default tiny)"
    )
    parser.add_argument("--stream-rate", type=float, default=5.0, help="standing-query rate, Hz")
    parser.add_argument(
        "--stream-reliability",
        default="reliable",
        choices=["reliable", "best_effort"],
        help="the node's image_reliability in the streaming run (default reliable; see docs/interfaces.md, DDS tuning)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--memory",
        action="store_true",
        help="only print what each preset needs in memory (real configs on the meta device; see docs/memory.md)",
    )
    parser.add_argument("--serve-camera", metavar="TOPIC", help=argparse.SUPPRESS)  # the streaming run's camera
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.stream_seconds is None:
        args.stream_seconds = 10.0 if args.quick else 60.0
    if args.repeats < 1 or args.warmup < 0 or args.stream_seconds < 0:
        parser.error("--repeats must be >= 1, --warmup and --stream-seconds >= 0")
    if args.budget is not None and not args.budget > 0:
        parser.error("--budget must be a positive number of minutes")
    if args.serve_camera:  # the streaming run's camera process: no torch to import
        from pop_ros.bench.tracking import serve_streaming_camera

        return serve_streaming_camera(args.serve_camera, args.stream_seconds)
    started = time.perf_counter()  # a budget counts from here: imports and model building included
    from pop_ros.bench import benchmarks  # torch, transformers: only once the arguments are known good

    if args.memory:
        from pop_ros.models.footprint import memory_report, memory_table

        report = memory_report()
        print(json.dumps(report, indent=2) if args.json else memory_table(report))
        return 0

    def progress(message: str) -> None:
        print(f"[pop-bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    command = " ".join(["pop-bench", *(argv if argv is not None else sys.argv[1:])])
    report = benchmarks.run_report(args, command, progress, started)
    print(json.dumps(report, indent=2) if args.json else benchmarks.table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
