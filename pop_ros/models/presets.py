"""Named model configurations: which MLLM, which visual encoder, which heads, which precision.

`tiny*` presets are small random models for tests and offline demos: their points are meaningless.
The others name hub checkpoints; they are what the README recommends on a robot GPU. A preset's
fields can be overridden one by one (the node's parameters and the CLI flags do that).
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Sequence

from pop_ros.models.prompts import DEFAULT_PROMPT
from pop_ros.paths import heads_dirs, user_heads_dir


@dataclasses.dataclass
class ModelConfig:
    mllm: str  # hub id, local folder, or tiny:<family>
    visual: str  # hub id, local folder, or tiny:dinov3
    heads_file: str = ""  # YAML from pop-find-heads; empty = <mllm id>.yaml in heads_dirs() if present
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | float32 | bfloat16 | float16
    resolution: int = 448  # longer side of the image given to the visual encoder, pixels
    prompt_template: str = DEFAULT_PROMPT
    trust_remote_code: bool = False
    random_weights: bool = False  # tiny presets: say loudly that points are meaningless
    # Cap on the pixels of the image the MLLM sees (aspect kept), independent of `resolution`;
    # 0 = the checkpoint's own cap (Qwen2.5-VL's is 12845056, ~16k image tokens).
    mllm_max_pixels: int = 0
    # System turn: "" = what the checkpoint's chat template does; "internvl-original" = the one
    # InternVL3's own chat() sends (the -hf template sends none); any other text is sent as is.
    system_prompt: str = ""
    # Load only the decoder layers up to the deepest localization head, without lm_head (see
    # models/trimming.py). Off for what needs the whole model: native pointing, head discovery.
    trim: bool = True
    # MLLM weight quantization: none | int8 (torchao; see models/quantization.py).
    mllm_quantization: str = "none"

    def load_mllm(self):
        """The text-prior adapter this configuration names (see `loading.load_mllm`)."""
        from pop_ros.models.loading import load_mllm

        return load_mllm(
            self.mllm,
            device=self.device,
            dtype=self.dtype,
            prompt_template=self.prompt_template,
            trust_remote_code=self.trust_remote_code,
            system_prompt=self.system_prompt,
            max_pixels=self.mllm_max_pixels,
            trim_to_heads=self.text_prior_heads if self.trim else None,
            quantization=self.mllm_quantization,
        )

    def head_file(self) -> pathlib.Path | None:
        """The head file a pointer on this configuration reads, or None when it uses the fallback."""
        if self.heads_file:
            return pathlib.Path(self.heads_file)
        path = default_head_file(self.mllm)
        return path if path.is_file() else None

    def text_prior_heads(
        self, num_layers: int, num_heads: int, head_layers: Sequence[int] | None = None
    ) -> list[tuple[int, int]]:
        """The (layer, head) list the text prior reads on a model of that size with the default
        settings: the head file's, else the fallback (every head of the middle third).
        `head_layers`: the layers that can hold heads (a hybrid model's full-attention layers; None:
        all), as the adapter's `head_layers`, so trimming keeps exactly what the pointer reads."""
        from pop_ros.models.heads import fallback_heads, load_head_file

        path = self.head_file()
        if path is None:
            return fallback_heads(num_layers, num_heads, head_layers)
        allowed = None if head_layers is None else {int(layer) for layer in head_layers}

        def layer_problem(layer: int) -> str | None:
            if allowed is None or layer in allowed:
                return None
            return (
                f"layer {layer} is a linear-attention layer: it has no attention matrix, so no localization "
                f"head; only the full-attention layers {sorted(allowed)} can hold heads"
            )

        return load_head_file(path, num_layers, num_heads, layer_problem=layer_problem)

    def load_visual(self):
        """The patch-feature encoder this configuration names (see `loading.load_visual`)."""
        from pop_ros.models.loading import load_visual

        return load_visual(self.visual, device=self.device, dtype=self.dtype, resolution=self.resolution)

    def replace(self, **changes) -> ModelConfig:
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown model settings {sorted(unknown)}")
        return dataclasses.replace(self, **changes)


# 1280 * 28 * 28 px: at most 1280 Qwen image tokens (~1000x1000 px), the cap Qwen's own examples
# use; a 4K frame would otherwise become ~10,500 tokens.
ROBOT_MLLM_MAX_PIXELS = 1280 * 28 * 28

_TINY = {"visual": "tiny:dinov3", "device": "cpu", "dtype": "float32", "resolution": 224, "random_weights": True}

PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(mllm="tiny:qwen2_5_vl", **_TINY),
    "tiny-molmo2": ModelConfig(mllm="tiny:molmo2", **_TINY),
    "tiny-internvl": ModelConfig(mllm="tiny:internvl", **_TINY),
    "tiny-qwen3.5": ModelConfig(mllm="tiny:qwen3_5", **_TINY),
    "tiny-ovis2": ModelConfig(mllm="tiny:ovis2", **_TINY),
    "qwen2.5-vl-3b": ModelConfig(
        mllm="Qwen/Qwen2.5-VL-3B-Instruct",
        visual="facebook/dinov3-vitb16-pretrain-lvd1689m",
        mllm_max_pixels=ROBOT_MLLM_MAX_PIXELS,
    ),
    "qwen2.5-vl-7b": ModelConfig(
        mllm="Qwen/Qwen2.5-VL-7B-Instruct",
        visual="facebook/dinov3-vitl16-pretrain-lvd1689m",
        mllm_max_pixels=ROBOT_MLLM_MAX_PIXELS,
    ),
    "molmo2-8b": ModelConfig(mllm="allenai/Molmo2-8B", visual="facebook/dinov3-vitl16-pretrain-lvd1689m"),
    "internvl3-8b": ModelConfig(mllm="OpenGVLab/InternVL3-8B-hf", visual="facebook/dinov3-vitl16-pretrain-lvd1689m"),
    # Qwen3.5: hybrid Gated DeltaNet / gated full attention; heads on the full-attention layers only.
    **{
        f"qwen3.5-{size}": ModelConfig(
            mllm=f"Qwen/Qwen3.5-{size.upper()}",
            visual="facebook/dinov3-vitl16-pretrain-lvd1689m"
            if size == "9b"
            else "facebook/dinov3-vitb16-pretrain-lvd1689m",
            mllm_max_pixels=ROBOT_MLLM_MAX_PIXELS,
        )
        for size in ("0.8b", "2b", "4b", "9b")
    },
    # Ovis2 (native in transformers; the paper's Ovis2.5 is remote code only).
    "ovis2-2b": ModelConfig(mllm="thisisiron/Ovis2-2B-hf", visual="facebook/dinov3-vitb16-pretrain-lvd1689m"),
    "ovis2-8b": ModelConfig(mllm="thisisiron/Ovis2-8B-hf", visual="facebook/dinov3-vitl16-pretrain-lvd1689m"),
    # DINOv3 is gated on the hub; DINOv2 with registers is not.
    "qwen2.5-vl-7b-dinov2": ModelConfig(
        mllm="Qwen/Qwen2.5-VL-7B-Instruct",
        visual="facebook/dinov2-with-registers-large",
        mllm_max_pixels=ROBOT_MLLM_MAX_PIXELS,
    ),
}
DEFAULT_PRESET = "qwen2.5-vl-7b"


def get_preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


def head_file_candidates(mllm: str) -> list[pathlib.Path]:
    """Where a head file for `mllm` is looked for when `heads_file` is empty, in order."""
    from pop_ros.models.heads import head_file_name

    return [folder / head_file_name(mllm) for folder in heads_dirs()]


def default_head_file(mllm: str) -> pathlib.Path:
    """The first existing candidate, else the user's own path (where `pop-find-heads` writes)."""
    existing = [path for path in head_file_candidates(mllm) if path.is_file()]
    return existing[0] if existing else user_head_file(mllm)


def user_head_file(mllm: str) -> pathlib.Path:
    """`pop-find-heads`' default output: the user's data folder, outside any install tree."""
    from pop_ros.models.heads import head_file_name

    return user_heads_dir() / head_file_name(mllm)
