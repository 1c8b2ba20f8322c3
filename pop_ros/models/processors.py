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


def build_processor(processor_class, image_processor, tokenizer, chat_template: str | None, **settings):
    """Instantiate `processor_class` from parts, with the image-only placeholder in its video slot."""
    import inspect

    if "video_processor" in inspect.signature(processor_class.__init__).parameters:
        settings["video_processor"] = _image_only_video_processor()
    return processor_class(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template, **settings
    )


def save_processor_parts(processor, folder) -> None:
    """Save a processor so both loaders below can read it (the parts, its settings, its template)."""
    import pathlib

    folder = pathlib.Path(folder)
    processor.tokenizer.save_pretrained(folder)
    processor.image_processor.save_pretrained(folder)
    (folder / "chat_template.jinja").write_text(processor.chat_template)
    settings = {"processor_class": type(processor).__name__}
    for name in ("image_seq_length",):
        if hasattr(processor, name):
            settings[name] = getattr(processor, name)
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

    settings_text = _read_text(name_or_path, "processor_config.json", **hub_kwargs)
    settings = json.loads(settings_text) if settings_text else {}
    class_name = settings.pop("processor_class", None)
    if class_name is None or not hasattr(transformers, class_name):
        raise OSError(
            f"{name_or_path} names no processor class transformers knows ({class_name!r}); "
            "install torchvision to load it through AutoProcessor"
        )
    settings = {k: v for k, v in settings.items() if k not in ("video_processor", "image_processor", "tokenizer")}
    tokenizer = transformers.AutoTokenizer.from_pretrained(
        name_or_path, trust_remote_code=trust_remote_code, **hub_kwargs
    )
    image_settings_text = _read_text(name_or_path, "preprocessor_config.json", **hub_kwargs)
    image_settings = json.loads(image_settings_text) if image_settings_text else {}
    if image_settings.get("image_processor_type") == "Molmo2ImageProcessor":
        image_settings.pop("image_processor_type")
        image_processor = _torch_resize_molmo2_class()(**image_settings)
    else:
        image_processor = transformers.AutoImageProcessor.from_pretrained(
            name_or_path, trust_remote_code=trust_remote_code, **hub_kwargs
        )
    chat_template = _read_text(name_or_path, "chat_template.jinja", **hub_kwargs)
    if chat_template is None:
        template_json = _read_text(name_or_path, "chat_template.json", **hub_kwargs)
        chat_template = json.loads(template_json)["chat_template"] if template_json else tokenizer.chat_template
    processor_class = getattr(transformers, class_name)
    return build_processor(processor_class, image_processor, tokenizer, chat_template, **settings)
