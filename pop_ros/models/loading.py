"""Loading the MLLM and the visual encoder from a hub id or a local folder, with one clear error.

The code users run is the code the tests run: `tiny:<family>` names a tiny random checkpoint that is
first saved to a folder (see `tiny.py`) and then loaded through the same `from_pretrained` calls.
`HF_HUB_OFFLINE` is respected by transformers itself; `trust_remote_code` stays off unless the
operator sets it (it executes code from the hub).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence

import torch

from pop_ros.models.mllm import DEFAULT_PROMPT, MLLMAdapter, adapter_for
from pop_ros.models.visual import VisualEncoder

LOG = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DINOV2_FALLBACK = "facebook/dinov2-with-registers-base"
VISUAL_MODEL_TYPES = ("dinov3_vit", "dinov2", "dinov2_with_registers")


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message names the model, the cause and the way out."""


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} was asked for but CUDA is not available (torch {torch.__version__})")
    return resolved


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ModelLoadError(f"dtype must be auto or one of {sorted(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


# One quick look at the hub before loading an uncached model: without it, an unreachable hub costs
# huggingface_hub's backoff (1 + 2 + 4 + 8 + 8 s of retries, a warning each) per file.
HUB_PROBE_TIMEOUT_S = 3.0


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")


def _check_hub_reachable(spec: str, role: str) -> None:
    """Raise the clear not-cached-and-unreachable error at once when `spec` is not in the local
    cache and one request to the hub (no retries) fails to connect."""
    if _hub_offline():
        return  # transformers refuses the download itself, without retrying
    from huggingface_hub import constants, try_to_load_from_cache
    from huggingface_hub.utils import get_session

    try:
        if isinstance(try_to_load_from_cache(spec, "config.json"), str):
            return  # cached: loading needs no download
    except Exception:  # noqa: BLE001 - a malformed id is reported by the loader itself
        return
    try:
        get_session().head(constants.ENDPOINT, timeout=HUB_PROBE_TIMEOUT_S)
    except Exception as error:  # noqa: BLE001 - DNS, refused, timeout, proxy: all mean unreachable
        raise _explain(spec, ConnectionError(f"cannot connect to {constants.ENDPOINT}: {error}"), role) from error


def _local_or_hub(spec: str, role: str) -> str:
    """A `tiny:<kind>` spec becomes its saved folder; a path must exist; anything else is a hub id."""
    if spec.startswith("tiny:"):
        from pop_ros.models.tiny import ensure_tiny_checkpoint

        return str(ensure_tiny_checkpoint(spec.split(":", 1)[1]))
    looks_like_path = spec.startswith(("/", "./", "../", "~")) or os.sep + os.sep in spec
    if looks_like_path:
        path = os.path.expanduser(spec)
        if not os.path.isdir(path):
            raise ModelLoadError(f"model folder {spec!r} does not exist or is not a folder")
        return path
    _check_hub_reachable(spec, role)
    return spec


def _explain(spec: str, error: Exception, role: str) -> ModelLoadError:
    text = f"{type(error).__name__}: {error}"
    offline = _hub_offline()
    gated = "gated" in text.lower() or "GatedRepo" in text or "401" in text or "403" in text
    # transformers imports model classes lazily: a broken dependency (typically a torchvision built for
    # another torch: "operator torchvision::nms does not exist") surfaces here, not at `import pop_ros`.
    if isinstance(error, ImportError):  # transformers raises ModuleNotFoundError, the real reason chained
        root = error
        while root.__cause__ is not None or root.__context__ is not None:
            root = root.__cause__ or root.__context__
        lines = [line.strip() for line in f"{type(root).__name__}: {root}".splitlines() if line.strip()]
        reason = lines[-1] if lines else type(root).__name__
        return ModelLoadError(
            f"could not load {role} model {spec!r}: a library transformers needs for it does not import "
            f"({reason[:300]}); "
            "check `python -c 'import torch, torchvision'`: a torchvision that does not match torch breaks "
            "transformers' vision models, so install the torchvision built for your torch, or uninstall it"
        )
    if gated:
        way_out = (
            "it is gated on the Hugging Face hub: log in (`hf auth login`) and accept its licence on the model page"
            + (f", or use the ungated DINOv2 fallback `{DINOV2_FALLBACK}`" if role == "visual" else "")
            + ", or set a local folder that holds it"
        )
    elif offline or "connect" in text.lower() or "offline" in text.lower() or "cache" in text.lower():
        way_out = (
            "it is not in the local cache and the hub is unreachable"
            + (" (HF_HUB_OFFLINE is set)" if offline else "")
            + f": download it on a connected machine (`hf download {spec}`) and copy the cache"
            ", or set a local folder that holds it"
            + (f", or use the DINOv2 fallback `{DINOV2_FALLBACK}`" if role == "visual" else "")
            + ", or use the `tiny` preset (random weights, plumbing only)"
        )
    elif "trust_remote_code" in text:
        way_out = "its code lives on the hub; set trust_remote_code: true only if you trust that repository"
    else:
        way_out = "check the id or folder"
    return ModelLoadError(f"could not load {role} model {spec!r}: {way_out}. Cause: {text.splitlines()[0][:300]}")


def _import_torchao_quietly() -> None:
    """transformers imports torchao (pinned for `mllm_quantization`) on every `from_pretrained` once it
    is installed; on import it logs that its optional CUDA kernels (fp8, cutlass) and triton are
    absent, and torch logs deprecation notes about its enums. None of that concerns int8 weight-only
    quantization or an unquantized model: imported once here, those lines stay out of the log."""
    loggers = [logging.getLogger(name) for name in ("torchao", "torchao.kernel.intmm", "torch.utils._pytree")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        import torchao.quantization  # noqa: F401
        import transformers.quantizers.quantizer_torchao  # noqa: F401 - what from_pretrained imports
    except ImportError:
        pass
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def load_mllm(
    spec: str,
    device: str = "auto",
    dtype: str = "auto",
    prompt_template: str = DEFAULT_PROMPT,
    trust_remote_code: bool = False,
    system_prompt: str = "",
    max_pixels: int = 0,
    trim_to_heads: Callable[[int, int, Sequence[int] | None], Sequence[Sequence[int]]] | None = None,
    quantization: str = "none",
) -> MLLMAdapter:
    """The text-prior adapter for the MLLM at `spec` (hub id, folder, or `tiny:<family>`).

    `trim_to_heads(num_layers, num_heads, head_layers)` -> the (layer, head) list POP will read
    (`head_layers`: the layers that can hold heads, None = all; see `trimming.config_head_layers`): when given, only
    decoder layers 0..its deepest layer are built and loaded, without `lm_head` (see `trimming.py`).
    `quantization`: `none` or `int8` (see `quantization.py`)."""
    from pop_ros.models.processors import load_processor
    from pop_ros.models.quantization import QuantizationError, check_quantization, quantize_model

    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    check_quantization(quantization)
    _import_torchao_quietly()
    source = _local_or_hub(spec, "MLLM")
    started = time.perf_counter()
    try:
        processor = load_processor(source, trust_remote_code=trust_remote_code)
        model = _mllm_from_pretrained(source, torch_dtype, trust_remote_code, trim_to_heads)
        quantize_model(model, quantization)
    except (ModelLoadError, FileNotFoundError, QuantizationError):
        raise  # FileNotFoundError: a head file named in the configuration, reported as is
    except Exception as error:  # noqa: BLE001 - every loading failure becomes one clear message
        raise _explain(spec, error, "MLLM") from error
    model.to(torch_device)
    adapter = adapter_for(
        model, processor, prompt_template=prompt_template, system_prompt=system_prompt, max_pixels=max_pixels
    )
    LOG.info(
        "loaded MLLM %s (%s, %d layers x %d heads%s%s) on %s/%s in %.1f s",
        spec,
        adapter.family,
        adapter.num_layers,
        adapter.num_heads,
        f", layers 0-{adapter.loaded_layers - 1} loaded" if adapter.loaded_layers < adapter.num_layers else "",
        f", {quantization} weights" if quantization != "none" else "",
        torch_device,
        torch_dtype,
        time.perf_counter() - started,
    )
    return adapter


def _mllm_from_pretrained(source: str, torch_dtype, trust_remote_code: bool, trim_to_heads):
    """The MLLM, whole or trimmed to the heads `trim_to_heads` names (see `load_mllm`)."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    from pop_ros.models.trimming import (
        config_head_layers,
        kept_layer_count,
        native_model_class,
        trim_config,
        trimmed_class,
    )

    kwargs = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code, "attn_implementation": "sdpa"}
    if trim_to_heads is None:
        return AutoModelForImageTextToText.from_pretrained(source, **kwargs)
    config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    model_class = native_model_class(config, trust_remote_code)
    if model_class is None:
        LOG.warning("MLLM %s: its code is not in transformers, so it is loaded whole (no trimming)", source)
        return AutoModelForImageTextToText.from_pretrained(source, **kwargs)
    text_config = config.get_text_config()
    whole = int(text_config.num_hidden_layers)
    try:
        # Hybrid models: the fallback heads lie on full-attention layers only, as the adapter reads them.
        heads = trim_to_heads(whole, int(text_config.num_attention_heads), config_head_layers(config))
    except ValueError as error:  # a malformed head file: its own message, not a loading failure
        raise ModelLoadError(str(error)) from error
    kept = kept_layer_count(heads)
    trim_config(config, kept)
    model, info = trimmed_class(model_class).from_pretrained(source, config=config, output_loading_info=True, **kwargs)
    if info.get("missing_keys"):
        missing = sorted(info["missing_keys"])
        raise ModelLoadError(
            f"trimmed loading of {source} left {len(missing)} weights unread (e.g. {missing[0]}); "
            "load it whole (mllm_trim false / --no-trim) and report this"
        )
    LOG.info(
        "MLLM trimmed for POP: decoder layers 0-%d of %d (the deepest localization head's layer is %d), no lm_head; "
        "mllm_trim false (tools: --no-trim) loads it whole",
        kept - 1,
        whole,
        kept - 1,
    )
    return model


def load_visual(spec: str, device: str = "auto", dtype: str = "auto", resolution: int = 448) -> VisualEncoder:
    """The DINO patch-feature encoder at `spec` (hub id, folder, or `tiny:dinov3`)."""
    from transformers import AutoModel

    _import_torchao_quietly()
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    source = _local_or_hub(spec, "visual")
    started = time.perf_counter()
    try:
        model = AutoModel.from_pretrained(source, dtype=torch_dtype)
    except Exception as error:  # noqa: BLE001
        raise _explain(spec, error, "visual") from error
    if model.config.model_type not in VISUAL_MODEL_TYPES:
        raise ModelLoadError(
            f"visual model {spec!r} is a {model.config.model_type!r}; pop_ros needs one of {VISUAL_MODEL_TYPES}"
        )
    encoder = VisualEncoder(model.to(torch_device), resolution=resolution)
    LOG.info(
        "loaded visual model %s (%s, patch %d) on %s/%s in %.1f s",
        spec,
        model.config.model_type,
        encoder.patch,
        torch_device,
        torch_dtype,
        time.perf_counter() - started,
    )
    return encoder
