"""Tiny randomly initialised models, saved as real checkpoints, for tests and offline demos.

No model hub is reachable from CI or many robots' build machines, so the `tiny` preset builds each
family from a config with a fixed seed and writes it with `save_pretrained` (model, tokenizer,
image processor, chat template) into a folder. Everything downstream then loads it through the
same `from_pretrained` code that loads the real checkpoints. Random weights prove plumbing, shapes
and geometry; the points they give are meaningless.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import shutil
import tempfile

import torch

LOG = logging.getLogger(__name__)

# Bump when the tiny configs change so stale cached folders are rebuilt.
TINY_VERSION = 3
FAMILIES = ("qwen2_5_vl", "molmo2", "internvl", "qwen3_5", "ovis2")
# Families whose decoder is not a plain transformer: generic tests pick their heads differently.
HYBRID_FAMILIES = ("qwen3_5",)

_WORDS = (
    "point to the handle of mug neck bottle lid cup a an in image where is part . , : ? ! "
    "user assistant system you You are helpful answer with json point_2d label x y"
).split() + ["\n"]

# Chat templates with the real models' layout and system-turn behaviour: Qwen2.5-VL's inserts
# "You are a helpful assistant." when the conversation does not open with a system turn;
# InternVL3's -hf template and Molmo2's insert none. Then the user turn (image placeholder, text)
# and the generation prompt, whose last token is the newline after "assistant".
_QWEN_DEFAULT_SYSTEM = (
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
)
CHAT_TEMPLATES = {
    "qwen2_5_vl": (
        "{% for message in messages %}" + _QWEN_DEFAULT_SYSTEM + "<|im_start|>{{ message['role'] }}\n"
        "{% for item in message['content'] %}"
        "{% if item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
        "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    ),
    "internvl": (
        "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
        "{% for item in message['content'] %}"
        "{% if item['type'] == 'image' %}<IMG_CONTEXT>\n"
        "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    ),
    "molmo2": (
        "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
        "{% for item in message['content'] %}"
        "{% if item['type'] == 'image' %}<|image|>"
        "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    ),
}

_SPECIAL_TOKENS = {
    "ovis2": ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<image>"]
    + ["<IMG_ATOM>", "<IMG_START>", "<IMG_GRID>", "<IMG_COL>", "<IMG_ROW>", "<IMG_END>"],
    "qwen2_5_vl": [
        "<|im_start|>",
        "<|im_end|>",
        "<|vision_start|>",
        "<|vision_end|>",
        "<|image_pad|>",
        "<|video_pad|>",
    ],
    "internvl": ["<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>"],
    "molmo2": [
        "<|im_start|>",
        "<|im_end|>",
        "<|endoftext|>",
        "<|image|>",
        "<|video|>",
        "<im_patch>",
        "<im_col>",
        "<im_start>",
        "<low_res_im_start>",
        "<frame_start>",
        "<im_end>",
        "<frame_end>",
        "<im_low>",
    ],
}


def build_tokenizer(family: str):
    """A word-level fast tokenizer holding the family's special tokens (ids are small).

    Like the real byte-level BPE tokenizers, a newline is a token of its own (spaces are not), so
    the prompt ends on the "\n" after "assistant" as on the real models."""
    from tokenizers import AddedToken, Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "[PAD]": 1}
    for token in _SPECIAL_TOKENS[family] + list(_WORDS):
        vocab.setdefault(token, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"[^\S\n]+"), behavior="removed"),  # spaces and tabs separate words
            pre_tokenizers.Split(Regex(r"\n|\w+|[^\w\s]+"), behavior="isolated"),  # "\n" is a token
        ]
    )
    # Special tokens are matched whole before pre-tokenisation, as in the real tokenizers.
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in _SPECIAL_TOKENS[family]])
    extra = {}
    if family == "qwen2_5_vl":
        extra = {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"}
    elif family == "internvl":
        extra = {
            "start_image_token": "<img>",
            "end_image_token": "</img>",
            "context_image_token": "<IMG_CONTEXT>",
            "video_token": "<video>",
        }
    elif family == "molmo2":
        extra = {"image_token": "<|image|>", "video_token": "<|video|>"}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        pad_token="[PAD]",
        eos_token="<|im_end|>",
        bos_token="<|endoftext|>" if family == "molmo2" else None,
        extra_special_tokens=extra,
    )
    return tokenizer


# Molmo2's real image processor: crop 378 px = 27 patches of 14, margins 4 + 4, window 19 patches,
# 2x2 pooling, so an odd tiling gives an odd canvas patch count and a padded last token row/column.
# The tiny one keeps that layout at 126 px = 9 patches, margins 1 + 1, window 7 (odd, like 19).
MOLMO2_TINY_CROP = 126

# Which file of each preset's hub repository holds the processor class and the chat template
# (Qwen2.5-VL: preprocessor_config.json + chat_template.json, no processor_config.json).
HUB_LAYOUTS = {
    "qwen2_5_vl": {"processor_class_file": "preprocessor_config.json", "chat_template_file": "chat_template.json"},
    "internvl": {"processor_class_file": "processor_config.json", "chat_template_file": "chat_template.json"},
    "molmo2": {"processor_class_file": "processor_config.json", "chat_template_file": "chat_template.jinja"},
    "qwen3_5": {"processor_class_file": "preprocessor_config.json", "chat_template_file": "chat_template.jinja"},
    "ovis2": {"processor_class_file": "processor_config.json", "chat_template_file": "chat_template.jinja"},
}
# Layers of each family's tiny checkpoint when not given (Qwen3.5: its 3:1 pattern needs 8).
TINY_LAYERS = {"qwen3_5": 8}


def _text_dims(num_layers: int) -> dict:
    return {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": num_layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "bos_token_id": None,
        "eos_token_id": None,
    }


def _build(family: str, num_layers: int):
    """(model, processor) of a tiny random `family` model: the family's builder from the table below."""
    if family not in _BUILDERS:
        raise ValueError(f"unknown tiny family {family!r}; choose one of {FAMILIES}")
    return _BUILDERS[family](num_layers)


def _build_qwen3_5(num_layers: int):
    from pop_ros.models.qwen3_5 import build_tiny  # its own module: transformers rebuilds its BPE tokenizer

    return build_tiny(num_layers)


def _build_ovis2(num_layers: int):
    from pop_ros.models.ovis2 import build_tiny

    return build_tiny(build_tokenizer("ovis2"), _text_dims(num_layers))


def _build_qwen2_5_vl(num_layers: int):
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessorPil,
    )

    from pop_ros.models.processors import build_processor, qwen_vision_token_ids

    tokenizer = build_tokenizer("qwen2_5_vl")
    text = {
        **_text_dims(num_layers),
        "vocab_size": _VOCAB_SIZE,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
    }
    vision = {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "out_hidden_size": 64,
        "fullatt_block_indexes": [1],
        "window_size": 112,
    }
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **qwen_vision_token_ids(tokenizer))
    model = Qwen2_5_VLForConditionalGeneration(config)
    # Small images keep the tiny model fast: at most 448 x 448 px (256 LLM tokens).
    image_processor = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=448 * 448)
    return model, build_processor(Qwen2_5_VLProcessor, image_processor, tokenizer, CHAT_TEMPLATES["qwen2_5_vl"])


def _build_internvl(num_layers: int):
    from transformers import (
        GotOcr2ImageProcessorPil,
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLProcessor,
    )

    from pop_ros.models.processors import build_processor

    tokenizer = build_tokenizer("internvl")
    text = {**_text_dims(num_layers), "vocab_size": _VOCAB_SIZE, "model_type": "qwen2"}
    vision = {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "image_size": [224, 224],
        "patch_size": [14, 14],
    }
    image_token_id = tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    config = InternVLConfig(text_config=text, vision_config=vision, image_token_id=image_token_id, image_seq_length=64)
    model = InternVLForConditionalGeneration(config)
    image_processor = GotOcr2ImageProcessorPil(size={"height": 224, "width": 224}, crop_to_patches=False)
    return model, build_processor(
        InternVLProcessor, image_processor, tokenizer, CHAT_TEMPLATES["internvl"], image_seq_length=64
    )


def _build_molmo2(num_layers: int):
    from transformers import Molmo2Config, Molmo2ForConditionalGeneration, Molmo2Processor

    from pop_ros.models.processors import build_processor, molmo2_image_processor

    tokenizer = build_tokenizer("molmo2")
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in _SPECIAL_TOKENS["molmo2"]}
    text = {**_text_dims(num_layers), "vocab_size": _VOCAB_SIZE, "additional_vocab_size": 0, "head_dim": 16}
    vision = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "image_size": [MOLMO2_TINY_CROP, MOLMO2_TINY_CROP],
        "patch_size": 14,
    }
    adapter = {
        "hidden_size": 32,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "intermediate_size": 64,
        "text_hidden_size": 64,
        "vision_feature_layer": [-1, -2],
    }
    config = Molmo2Config(
        text_config=text,
        vision_config=vision,
        adapter_config=adapter,
        image_start_token_id=ids["<im_start>"],
        low_res_image_start_token_id=ids["<low_res_im_start>"],
        image_end_token_id=ids["<im_end>"],
        image_patch_id=ids["<im_patch>"],
        frame_start_token_id=ids["<frame_start>"],
        frame_end_token_id=ids["<frame_end>"],
    )
    model = Molmo2ForConditionalGeneration(config)
    image_processor = molmo2_image_processor(
        size={"height": MOLMO2_TINY_CROP, "width": MOLMO2_TINY_CROP}, max_crops=4, overlap_margins=[1, 1]
    )
    return model, build_processor(Molmo2Processor, image_processor, tokenizer, CHAT_TEMPLATES["molmo2"])


_VOCAB_SIZE = 128  # > the tiny vocabulary
# One builder per family; each writes the family's tiny config out in full (the real layout, small sizes).
_BUILDERS = {
    "qwen2_5_vl": _build_qwen2_5_vl,
    "molmo2": _build_molmo2,
    "internvl": _build_internvl,
    "qwen3_5": _build_qwen3_5,
    "ovis2": _build_ovis2,
}


def build_tiny_visual():
    """A tiny random DINOv3 ViT (patch 16, 4 register tokens like the real checkpoints)."""
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    config = DINOv3ViTConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        patch_size=16,
        num_register_tokens=4,
        image_size=224,
    )
    return DINOv3ViTModel(config)


def default_cache_dir() -> pathlib.Path:
    root = os.environ.get("POP_ROS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "pop_ros")
    return pathlib.Path(root)


def ensure_tiny_checkpoint(
    kind: str, num_layers: int | None = None, seed: int = 0, root: pathlib.Path | None = None
) -> pathlib.Path:
    """Folder of a saved tiny checkpoint (`kind` = a family name or "dinov3"); built once, then reused.
    `num_layers`: default 6, or the family's own (TINY_LAYERS)."""
    from pop_ros.models.processors import save_processor_parts

    num_layers = TINY_LAYERS.get(kind, 6) if num_layers is None else int(num_layers)
    root = pathlib.Path(root) if root is not None else default_cache_dir()
    folder = root / f"tiny-v{TINY_VERSION}" / f"{kind}-l{num_layers}-s{seed}"
    marker = folder / "pop_ros_tiny.json"
    if marker.exists():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    # Built in a private folder beside the final one, then renamed into place: concurrent builders
    # (pytest-xdist workers, two checkouts sharing a cache) never read a half-written checkpoint.
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        torch.manual_seed(seed)
        if kind == "dinov3":
            build_tiny_visual().save_pretrained(staging)
        else:
            model, processor = _build(kind, num_layers)
            model.save_pretrained(staging)
            save_processor_parts(processor, staging, **HUB_LAYOUTS[kind])
        (staging / marker.name).write_text(
            json.dumps({"kind": kind, "num_layers": num_layers, "seed": seed, "random_weights": True})
        )
        _move_into_place(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    LOG.info("built tiny random %s checkpoint in %s", kind, folder)
    return folder


def _move_into_place(staging: pathlib.Path, folder: pathlib.Path) -> None:
    """Rename the finished `staging` folder to `folder`, unless another builder got there first."""
    try:
        os.rename(staging, folder)
    except OSError:
        if (folder / "pop_ros_tiny.json").exists():
            return  # another builder's identical checkpoint is in place
        # A folder without its marker: left half-written by a build that was killed; replace it.
        shutil.rmtree(folder, ignore_errors=True)
        os.rename(staging, folder)
