"""Loading a model's own processor, also where torchvision is missing.

transformers builds every multimodal processor with a video processor, and its video processors
(and Molmo2's image processor) are torchvision-only (upstream: huggingface/transformers#48558).
PyPI's torchvision does not import beside every torch build, the CPU build this project tests with
included. On such machines the processor is assembled from the checkpoint's own parts: its
tokenizer, its image processor, its chat template, its processor class and settings, with an
image-only placeholder in the video slot. Molmo2's image processor gets torch's bilinear resize and
per-channel normalisation, which is what torchvision's tensor functions compute. With torchvision
present, AutoProcessor is used unchanged.
"""

from __future__ import annotations

import functools
import json
import logging

import torch
import torch.nn.functional as F

LOG = logging.getLogger(__name__)


@functools.cache
def torchvision_works() -> bool:
    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001 - a mismatched torchvision build fails in many ways
        return False
    return True


@functools.cache
def _torch_resize_molmo2_class():
    from transformers.image_utils import PILImageResampling
    from transformers.models.molmo2.image_processing_molmo2 import Molmo2ImageProcessor

    class TorchResizeMolmo2ImageProcessor(Molmo2ImageProcessor):
        """Molmo2ImageProcessor whose resize is torch's bilinear interpolate (no torchvision)."""

        def resize(self, image, size, resample=None, antialias=True, **kwargs):
            if resample not in (None, PILImageResampling.BILINEAR):
                raise ValueError(f"only bilinear resize is available without torchvision, got {resample}")
            return F.interpolate(
                image, size=(size.height, size.width), mode="bilinear", align_corners=False, antialias=antialias
            )

        def normalize(self, image, mean, std, inplace=False, **kwargs):
            # torchvision's normalize on (..., C, H, W): per-channel (x - mean) / std.
            mean = torch.as_tensor(mean, dtype=image.dtype, device=image.device).view(-1, 1, 1)
            std = torch.as_tensor(std, dtype=image.dtype, device=image.device).view(-1, 1, 1)
            return (image - mean) / std

        def to_dict(self):
            output = super().to_dict()
            output["image_processor_type"] = "Molmo2ImageProcessor"  # saved files name the stock class
            return output

    return TorchResizeMolmo2ImageProcessor


def molmo2_image_processor(**kwargs):
    """A Molmo2 image processor that runs with or without torchvision."""
    from transformers.models.molmo2.image_processing_molmo2 import Molmo2ImageProcessor

    cls = Molmo2ImageProcessor if torchvision_works() else _torch_resize_molmo2_class()
    return cls(**kwargs)


@functools.cache
def _image_only_video_processor():
    import transformers.processing_utils as processing_utils
    from transformers.video_processing_utils import VideoProcessorMixin

    # transformers hides VideoProcessorMixin from its lazy module without torchvision, and then
    # cannot even check a processor's arguments; expose the (importable) class to that check.
    if not hasattr(processing_utils.transformers_module, "VideoProcessorMixin"):
        processing_utils.transformers_module.VideoProcessorMixin = VideoProcessorMixin

    class ImageOnlyVideoProcessor(VideoProcessorMixin):
        """Fills the video slot of a processor used for images only; any video call fails clearly."""

        def __call__(self, *args, **kwargs):
            raise RuntimeError("video input needs torchvision; pop_ros uses images only")

    return ImageOnlyVideoProcessor()


# A Qwen-VL config's token-id fields and the special tokens they name.
QWEN_VISION_TOKENS = {
    "image_token_id": "<|image_pad|>",
    "video_token_id": "<|video_pad|>",
    "vision_start_token_id": "<|vision_start|>",
    "vision_end_token_id": "<|vision_end|>",
}


def qwen_vision_token_ids(tokenizer) -> dict[str, int]:
    """A Qwen-VL config's image, video and vision-boundary token ids as `tokenizer` (tiny or shape-only
    models) numbers them: keyword arguments of Qwen2_5_VLConfig / Qwen3_5Config."""
    return {field: tokenizer.convert_tokens_to_ids(token) for field, token in QWEN_VISION_TOKENS.items()}


def build_processor(processor_class, image_processor, tokenizer, chat_template: str | None, **settings):
    """Instantiate `processor_class` from parts, with the image-only placeholder in its video slot."""
    import inspect

    if "video_processor" in inspect.signature(processor_class.__init__).parameters:
        settings["video_processor"] = _image_only_video_processor()
    return processor_class(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template, **settings
    )


def save_processor_parts(
    processor,
    folder,
    processor_class_file: str = "processor_config.json",
    chat_template_file: str = "chat_template.jinja",
) -> None:
    """Save a processor as a hub repository lays it out: tokenizer files, `preprocessor_config.json`,
    the processor class in `processor_class_file` (processor_config.json or, as Qwen2.5-VL's repos,
    preprocessor_config.json) and the chat template as `chat_template.jinja` or `.json`."""
    import pathlib

    folder = pathlib.Path(folder)
    processor.tokenizer.save_pretrained(folder)
    processor.image_processor.save_pretrained(folder)
    for stale in ("chat_template.jinja", "chat_template.json", "processor_config.json"):
        (folder / stale).unlink(missing_ok=True)  # tokenizer.save_pretrained may write its own
    if chat_template_file == "chat_template.json":
        (folder / chat_template_file).write_text(json.dumps({"chat_template": processor.chat_template}, indent=2))
    elif chat_template_file == "chat_template.jinja":
        (folder / chat_template_file).write_text(processor.chat_template)
    else:
        raise ValueError(
            f"chat_template_file must be chat_template.jinja or chat_template.json, got {chat_template_file!r}"
        )
    settings = {name: getattr(processor, name) for name in ("image_seq_length",) if hasattr(processor, name)}
    class_name = type(processor).__name__
    if processor_class_file == "processor_config.json":
        settings["processor_class"] = class_name
    elif processor_class_file == "preprocessor_config.json":
        image_settings = json.loads((folder / "preprocessor_config.json").read_text())
        image_settings["processor_class"] = class_name
        (folder / "preprocessor_config.json").write_text(json.dumps(image_settings, indent=2))
    else:
        raise ValueError(f"processor_class_file must be (pre)processor_config.json, got {processor_class_file!r}")
    if processor_class_file == "processor_config.json" or settings:
        (folder / "processor_config.json").write_text(json.dumps(settings, indent=2))


def _read_text(name_or_path: str, filename: str, **hub_kwargs) -> str | None:
    from transformers.utils import cached_file

    resolved = cached_file(
        name_or_path,
        filename,
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
        **hub_kwargs,
    )
    if resolved is None:
        return None
    with open(resolved, encoding="utf-8") as handle:
        return handle.read()


# Where hub repos keep the processor class: processor_config.json (InternVL -hf, Molmo2), else
# preprocessor_config.json (Qwen2-VL / Qwen2.5-VL, which have no processor_config.json), else
# tokenizer_config.json (older repos).
PROCESSOR_CLASS_FILES = ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json")
# The chat template: chat_template.jinja (newer saves), else chat_template.json (Qwen2.5-VL's hub
# repos, older saves), else the tokenizer's own.
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")


def _read_json_file(name_or_path: str, filename: str, **hub_kwargs) -> dict:
    text = _read_text(name_or_path, filename, **hub_kwargs)
    if not text:
        return {}
    data = json.loads(text)
    if not isinstance(data, dict):
        raise OSError(f"{name_or_path}/{filename} is not a JSON object")
    return data


def read_chat_template(name_or_path: str, **hub_kwargs) -> str | None:
    """The checkpoint's chat template file, if it has one (see CHAT_TEMPLATE_FILES)."""
    template = _read_text(name_or_path, "chat_template.jinja", **hub_kwargs)
    if template is not None:
        return template
    data = _read_json_file(name_or_path, "chat_template.json", **hub_kwargs)
    return data.get("chat_template")


def load_processor(name_or_path: str, trust_remote_code: bool = False, **hub_kwargs):
    """The model's own processor, from a hub id or a local folder."""
    import transformers

    if torchvision_works():
        return transformers.AutoProcessor.from_pretrained(
            name_or_path, trust_remote_code=trust_remote_code, **hub_kwargs
        )
    LOG.info("torchvision is not importable: assembling the image-only processor of %s from its parts", name_or_path)
    return assemble_processor(name_or_path, trust_remote_code=trust_remote_code, **hub_kwargs)


def assemble_processor(name_or_path: str, trust_remote_code: bool = False, **hub_kwargs):
    """The processor built from the checkpoint's parts (what `load_processor` uses without torchvision;
    `test_processors_equivalence.py` compares it with AutoProcessor where torchvision imports)."""
    import transformers

    settings = _read_json_file(name_or_path, "processor_config.json", **hub_kwargs)
    image_settings = _read_json_file(name_or_path, "preprocessor_config.json", **hub_kwargs)
    class_name, source = None, None
    for filename in PROCESSOR_CLASS_FILES:
        found = {"processor_config.json": settings, "preprocessor_config.json": image_settings}.get(filename)
        if found is None:
            found = _read_json_file(name_or_path, filename, **hub_kwargs)
        if found.get("processor_class"):
            class_name, source = found["processor_class"], filename
            break
    if class_name is None or not hasattr(transformers, class_name):
        raise OSError(
            f"{name_or_path} names no processor class transformers knows ({class_name!r}, looked in "
            f"{', '.join(PROCESSOR_CLASS_FILES)}); install torchvision to load it through AutoProcessor"
        )
    LOG.debug("%s: processor class %s from %s", name_or_path, class_name, source)
    # Only the processor's own settings (image_seq_length, ...): not its parts, not hub bookkeeping.
    ignored = ("processor_class", "auto_map", "video_processor", "image_processor", "tokenizer", "chat_template")
    settings = {k: v for k, v in settings.items() if k not in ignored}
    tokenizer = transformers.AutoTokenizer.from_pretrained(
        name_or_path, trust_remote_code=trust_remote_code, **hub_kwargs
    )
    if image_settings.get("image_processor_type") == "Molmo2ImageProcessor":
        molmo2_settings = {
            k: v for k, v in image_settings.items() if k not in ("image_processor_type", "processor_class", "auto_map")
        }
        image_processor = _torch_resize_molmo2_class()(**molmo2_settings)
    else:
        image_processor = transformers.AutoImageProcessor.from_pretrained(
            name_or_path, trust_remote_code=trust_remote_code, **hub_kwargs
        )
    chat_template = read_chat_template(name_or_path, **hub_kwargs) or tokenizer.chat_template
    processor_class = getattr(transformers, class_name)
    return build_processor(processor_class, image_processor, tokenizer, chat_template, **settings)
