"""What `configure` loads, from the node's parameters: the support library, then the models and the
support features of every set (timed, in the log). `param(name)` reads a parameter's value."""

from __future__ import annotations

import pathlib
import time
from collections.abc import Callable


def load_library(param: Callable[[str], object], logger):
    """The support library named by support_library (empty: an empty one in memory)."""
    from pop_ros.paths import shipped_library_refusal
    from pop_ros.supports import SupportError, SupportLibrary

    library_path = param("support_library")
    if param("library_writable") and not library_path:
        raise SupportError("library_writable needs support_library: the YAML to keep taught sets in")
    if not library_path:
        return SupportLibrary()
    refusal = param("library_writable") and shipped_library_refusal(library_path)
    if refusal:
        raise SupportError(f"library_writable is true but support_library {refusal}")
    library = SupportLibrary.load(pathlib.Path(library_path).expanduser(), writable=param("library_writable"))
    for problem in library.errors:
        logger.error(f"support library: {problem}")
    if library.writable:
        logger.info(f"support library {library.path} is writable: taught images go to {library.images_dir}")
    return library


def load_pointer(param: Callable[[str], object], logger, settings, library):
    """A PartPointer for the preset and its overrides, with the features of every set of `library`."""
    from pop_ros.pipeline import PartPointer

    started = time.perf_counter()
    pointer = PartPointer.from_preset(
        param("preset"),
        settings=settings,
        library=library,
        feature_cache_dir=param("feature_cache_dir") or None,
        mllm=param("mllm") or None,
        visual=param("visual_model") or None,
        heads_file=param("heads_file") or None,
        device=param("device") or None,
        dtype=param("dtype") or None,
        resolution=param("resolution") or None,
        prompt_template=param("prompt_template") or None,
        mllm_max_pixels=None if param("mllm_max_pixels") < 0 else param("mllm_max_pixels"),
        system_prompt=param("system_prompt") or None,
        trust_remote_code=True if param("trust_remote_code") else None,
        trim=None if param("mllm_trim") else False,
        mllm_quantization=param("mllm_quantization"),
    )
    load_s = time.perf_counter() - started
    warm_started = time.perf_counter()
    for name in library.names():
        pointer.warm_support_set(name)
    if pointer.model_config.random_weights:
        logger.warning(f"preset {param('preset')!r} has RANDOM WEIGHTS: every point it gives is meaningless")
    logger.info(
        f"models {load_s:.1f} s (visual {pointer.load_timings_s['visual']:.1f} s, MLLM "
        f"{pointer.load_timings_s['mllm']:.1f} s), support features {time.perf_counter() - warm_started:.2f} s "
        f"for sets {library.names()}; heads: {pointer.heads_source}"
    )
    return pointer
