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

NATIVE_NEW_TOKENS = 24  # a point answer: [{"point_2d": [412, 233], "label": "handle of the mug"}]
QUERY = "handle of the mug"
# Five parts asked of one frame (a behaviour tree's usual burst); the first is QUERY.
MANY_QUERIES = (QUERY, "rim of the mug", "neck of the bottle", "lid of the cup", "handle of the kettle")


# ---- models -------------------------------------------------------------------------------------------
# Real checkpoints' config.json figures (text and vision tower of the MLLM, the DINOv3 ViT); the
# token ids are mapped to the small tokenizer, which changes no FLOP but the embedding lookups.
QWEN25_VL_3B_TEXT = {
    "hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36, "num_attention_heads": 16,
    "num_key_value_heads": 2, "vocab_size": 151936, "max_position_embeddings": 128000, "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
    "tie_word_embeddings": True,
}  # fmt: skip
QWEN25_VL_7B_TEXT = {
    "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
    "num_key_value_heads": 4, "vocab_size": 152064, "max_position_embeddings": 128000, "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
    "tie_word_embeddings": False,
}  # fmt: skip
QWEN25_VL_VISION = {  # the same tower in 3B and 7B; only its output width differs
    "depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16, "patch_size": 14,
    "spatial_merge_size": 2, "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31],
}  # fmt: skip
DINOV3_VITB16 = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12}
DINOV3_VITL16 = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16}

# Qwen3.5 (hybrid: a full-attention layer every 4th, the rest Gated DeltaNet). 4B and 9B: checked
# against their published config.json figures (text widths, heads, DeltaNet heads, vocabulary, tied
# embeddings; the vision towers: 24 x 1024 / 4096 for the 4B, 27 x 1152 / 4304 for the 9B).
QWEN35_TEXT = {
    "num_hidden_layers": 32, "num_attention_heads": 16, "num_key_value_heads": 4, "head_dim": 256,
    "linear_num_key_heads": 16, "linear_num_value_heads": 32, "linear_key_head_dim": 128, "linear_value_head_dim": 128,
    "vocab_size": 248320, "max_position_embeddings": 262144,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000000.0, "partial_rotary_factor": 0.25,
                        "mrope_section": [11, 11, 10], "mrope_interleaved": True},
}  # fmt: skip
QWEN35_VISION = {"patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2, "num_position_embeddings": 2304}

# name -> (MLLM text config, MLLM vision config, DINOv3 config, visual model named in the report)
SHAPES = {
    "qwen3.5-4b": ({**QWEN35_TEXT, "hidden_size": 2560, "intermediate_size": 9216, "tie_word_embeddings": True},
                   {**QWEN35_VISION, "depth": 24, "hidden_size": 1024, "intermediate_size": 4096, "num_heads": 16,
                    "out_hidden_size": 2560}, DINOV3_VITB16, "dinov3-vitb16"),
    "qwen3.5-9b": ({**QWEN35_TEXT, "hidden_size": 4096, "intermediate_size": 12288},
                   {**QWEN35_VISION, "depth": 27, "hidden_size": 1152, "intermediate_size": 4304, "num_heads": 16,
                    "out_hidden_size": 4096}, DINOV3_VITL16, "dinov3-vitl16"),
    "qwen2.5-vl-3b": (QWEN25_VL_3B_TEXT, {**QWEN25_VL_VISION, "out_hidden_size": 2048}, DINOV3_VITB16,
                      "dinov3-vitb16"),
    "qwen2.5-vl-7b": (QWEN25_VL_7B_TEXT, {**QWEN25_VL_VISION, "out_hidden_size": 3584}, DINOV3_VITL16,
                      "dinov3-vitl16"),
    # The same code on models small enough for a CPU test of the benchmark itself (tools/device_check.py --dry-run).
    "tiny": (
        {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 6, "num_attention_heads": 4,
         "num_key_value_heads": 2, "vocab_size": 128,
         "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}},
        {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 64,
         "fullatt_block_indexes": [1], "window_size": 112},
        {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2},
        "dinov3-tiny",
    ),
}  # fmt: skip


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
    started = time.perf_counter()  # a budget counts from here: imports and model building included
    from pop_ros import benchmarks  # torch, transformers: only once the arguments are known good

    if args.serve_camera:
        return benchmarks.serve_camera(args.serve_camera, args.stream_seconds)
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
