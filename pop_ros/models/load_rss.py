"""Peak resident memory of loading an MLLM checkpoint whole vs trimmed, each in a fresh process.

    python -m pop_ros.models.load_rss --shape qwen2.5-vl-3b --folder /tmp/qwen3b-random --json

Saves (once) a random-weight checkpoint of a real model's shape, written shard by shard from a meta-
device model (never the whole model in memory), then loads it in two child processes through the
loader POP uses: whole, and trimmed to the fallback heads (or `--deepest LAYER`). Each child reports
its resident set before loading, its peak right after `from_pretrained` (weights in the checkpoint's
dtype are memory-mapped views, not yet resident) and its peak once every weight it holds has been
read (`peak_rss_bytes`, what running it costs). Random weights: memory, not accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys

import torch

SHARD_BYTES = 1 << 30


def qwen_shape_config(shape: str):
    """Qwen2.5-VL config of a real shape (`pop_ros.models.shapes.SHAPES`: the checkpoints' config.json figures)."""
    from transformers import Qwen2_5_VLConfig

    from pop_ros.models.shapes import SHAPES

    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; choose one of {sorted(SHAPES)}")
    text, vision = SHAPES[shape][:2]
    config = Qwen2_5_VLConfig(text_config=dict(text), vision_config=dict(vision))
    config.architectures = ["Qwen2_5_VLForConditionalGeneration"]
    return config


def _seeded_tensor(name: str, shape: torch.Size, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Cheap deterministic values: norms 1, biases 0, the rest uniform in +-0.02."""
    if name.endswith(".bias"):
        return torch.zeros(shape, dtype=dtype)
    if "norm" in name and len(shape) == 1:
        return torch.ones(shape, dtype=dtype)
    generator = torch.Generator().manual_seed(seed)
    return torch.empty(shape, dtype=torch.float32).uniform_(-0.02, 0.02, generator=generator).to(dtype)


def save_random_checkpoint(config, folder: pathlib.Path, dtype: torch.dtype, seed: int = 0) -> pathlib.Path:
    """Write `config` and seeded random weights as a sharded safetensors checkpoint in `folder`."""
    from safetensors.torch import save_file
    from transformers import AutoModelForImageTextToText

    folder = pathlib.Path(folder)
    index_path = folder / "model.safetensors.index.json"
    if index_path.is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    weight_map, shard, shard_bytes, total, number = {}, {}, 0, 0, 0

    def flush():
        nonlocal shard, shard_bytes, number
        if shard:
            name = f"model-{number:05d}.safetensors"
            save_file(shard, str(folder / name), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(shard, name))
            shard, shard_bytes, number = {}, 0, number + 1

    for index, (key, value) in enumerate(model.state_dict().items()):
        if tied and key == "lm_head.weight":
            continue  # tied to the embeddings, as save_pretrained writes it
        tensor = _seeded_tensor(key, value.shape, dtype, seed + index)
        shard[key] = tensor
        shard_bytes += tensor.numel() * tensor.element_size()
        total += tensor.numel() * tensor.element_size()
        if shard_bytes >= SHARD_BYTES:
            flush()
    flush()
    config.save_pretrained(folder)
    index_path.write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    return folder


def save_random_checkpoint_in_child(config, folder: pathlib.Path, dtype: str) -> pathlib.Path:
    """`save_random_checkpoint` in a child process. (Files a process wrote count, for reasons of the
    kernel's page cache, in the resident set of the processes it starts that map them: a measuring
    parent must not write the checkpoint itself.)"""
    folder = pathlib.Path(folder)
    if (folder / "model.safetensors.index.json").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(folder)
    command = [sys.executable, "-m", "pop_ros.models.load_rss", "--save-child", str(folder), "--dtype", dtype]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"saving child failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return folder


class _RecordingSlice:
    """A safetensors slice that notes its key when its bytes are read (indexed)."""

    def __init__(self, inner, key: str, read: set):
        self._inner, self._key, self._read = inner, key, read

    def __getitem__(self, index):
        self._read.add(self._key)
        return self._inner[index]

    def __getattr__(self, name):
        return getattr(self._inner, name)


class _RecordingFile:
    """A safetensors file whose tensors note their keys when read."""

    def __init__(self, inner, read: set):
        self._inner, self._read = inner, read

    def get_slice(self, key: str):
        return _RecordingSlice(self._inner.get_slice(key), key, self._read)

    def get_tensor(self, key: str):
        self._read.add(key)
        return self._inner.get_tensor(key)

    def __enter__(self):
        self._inner.__enter__()
        return self

    def __exit__(self, *exc):
        return self._inner.__exit__(*exc)

    def __getattr__(self, name):
        return getattr(self._inner, name)


def _record_checkpoint_reads() -> set:
    """The keys of every checkpoint tensor transformers reads from here on (this child process only):
    a tensor never read was never materialised, whatever the page cache does to RSS."""
    import transformers.modeling_utils as modeling_utils

    read: set = set()
    opener = modeling_utils.safe_open
    modeling_utils.safe_open = lambda *args, **kwargs: _RecordingFile(opener(*args, **kwargs), read)
    return read


def _load_in_this_process(folder: str, dtype: str, trim: bool, deepest: int | None) -> dict:
    import psutil
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING

    from pop_ros.models.heads import fallback_heads
    from pop_ros.models.loading import _mllm_from_pretrained

    MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING[type(AutoConfig.from_pretrained(folder))]  # imports the modeling code
    read_keys = _record_checkpoint_reads()
    before = psutil.Process().memory_info().rss

    def heads(num_layers: int, num_heads: int, head_layers=None):
        return [(deepest, 0)] if deepest is not None else fallback_heads(num_layers, num_heads, head_layers)

    model = _mllm_from_pretrained(folder, getattr(torch, dtype), False, heads if trim else None)
    loaded_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    params = sum(p.numel() for p in model.parameters())
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    # Weights loaded in the checkpoint's dtype are views of the memory-mapped file, resident only once
    # read: touch one element per 4 KiB page of every tensor, as the first forward (or a copy to the
    # GPU) would. Weights the model does not hold cannot be touched.
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            flat = tensor.detach().reshape(-1)
            flat[:: max(1, 4096 // flat.element_size())].float().sum()
    return {
        "read_keys": sorted(read_keys),  # checkpoint tensors whose bytes were read (materialised)
        "rss_before_load_bytes": before,
        "peak_rss_after_load_bytes": loaded_peak,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "parameters": params,
        "weight_bytes": weight_bytes,
        "decoder_layers": int(model.config.get_text_config().num_hidden_layers),
    }


def drop_page_cache(folder: pathlib.Path) -> None:
    """Write back and evict `folder`'s files from the page cache: each child starts as after a reboot.
    (A memory-mapped file's pages still cached from writing it show up in the resident set of a
    process that maps it, read or not.)"""
    for path in pathlib.Path(folder).iterdir():
        if path.is_file():
            descriptor = os.open(path, os.O_RDONLY)
            try:
                os.fsync(descriptor)
                os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(descriptor)


def measure(folder: pathlib.Path, dtype: str, trim: bool, deepest: int | None = None) -> dict:
    """Load `folder` in a child process (whole or trimmed), from a cold page cache, and return what
    it reports."""
    drop_page_cache(folder)
    command = [sys.executable, "-m", "pop_ros.models.load_rss", "--child", str(folder), "--dtype", dtype]
    if trim:
        command.append("--trim")
    if deepest is not None:
        command += ["--deepest", str(deepest)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"loading child failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pop_ros.models.load_rss", description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default="qwen2.5-vl-3b", help="a pop_ros.bench shape (default qwen2.5-vl-3b)")
    parser.add_argument("--folder", type=pathlib.Path, help="where the random checkpoint is written (kept)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--deepest", type=int, help="trim to this layer (default: the fallback heads' deepest)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--save-child", help=argparse.SUPPRESS)
    parser.add_argument("--trim", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.save_child:
        from transformers import AutoConfig

        save_random_checkpoint(AutoConfig.from_pretrained(args.save_child), args.save_child, getattr(torch, args.dtype))
        return 0
    if args.child:
        print(json.dumps(_load_in_this_process(args.child, args.dtype, args.trim, args.deepest)))
        return 0
    if args.folder is None:
        parser.error("--folder is needed")
    save_random_checkpoint_in_child(qwen_shape_config(args.shape), args.folder, args.dtype)
    whole = measure(args.folder, args.dtype, trim=False)
    trimmed = measure(args.folder, args.dtype, trim=True, deepest=args.deepest)
    report = {
        "shape": args.shape,
        "dtype": args.dtype,
        "whole": whole,
        "trimmed": trimmed,
        "peak_rss_ratio_trimmed_vs_whole": trimmed["peak_rss_bytes"] / whole["peak_rss_bytes"],
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for name in ("whole", "trimmed"):
            item = report[name]
            print(
                f"{name:8s} {item['decoder_layers']:3d} layers  {item['parameters'] / 1e9:6.3f} B params  "
                f"peak RSS {item['peak_rss_bytes'] / 2**30:6.2f} GiB "
                f"(before load {item['rss_before_load_bytes'] / 2**30:.2f}, "
                f"after from_pretrained {item['peak_rss_after_load_bytes'] / 2**30:.2f})"
            )
        print(f"peak RSS trimmed / whole: {report['peak_rss_ratio_trimmed_vs_whole']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
