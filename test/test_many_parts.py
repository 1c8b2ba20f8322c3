"""Many parts, one frame: the per-frame MLLM prefix and DINO features are computed once and reused.

The reference for every reused result is the same query answered on its own by the full path
(`head_maps`: the whole prompt through the model), itself tested equal to eager attention in
test_models.py. Random weights: these tests compare code paths, never where a model points.
"""

import logging

import numpy as np
import pytest
import torch

from pop_ros.models.tiny import FAMILIES, HYBRID_FAMILIES
from pop_ros.pipeline import PartPointer, PointerError, PointerSettings, PointRequest
from test.conftest import heads_on, random_image

HEADS = [(1, 0), (2, 3), (4, 1), (4, 2)]
QUERIES = ["handle of the mug", "neck of the bottle", "lid", "a part of the cup in the image"]
PRESETS = {
    "qwen2_5_vl": "tiny",
    "molmo2": "tiny-molmo2",
    "internvl": "tiny-internvl",
    "qwen3_5": "tiny-qwen3.5",
    "ovis2": "tiny-ovis2",
}


# Plain transformers only: this test's heads and prefix depths sit on layers 1, 2, 4, 5, which a
# hybrid model's linear-attention layers cannot hold; test_qwen3_5.py checks the same equality there.
@pytest.mark.parametrize("family", [family for family in FAMILIES if family not in HYBRID_FAMILIES])
def test_prefix_maps_equal_single_queries(tiny_adapters, rng, family):
    adapter = tiny_adapters[family]
    image = random_image(rng, 300, 500)
    prefix = adapter.image_prefix(image, QUERIES[0], depth=4)
    assert prefix.reusable, prefix.reason
    # The prefix ends after the image tokens and holds keys/values of layers 0..4 only.
    assert prefix.length > int(prefix.image_positions.max()) and prefix.depth == 4
    assert len(prefix.keys_values) == 5 and prefix.keys_values[0][0].shape[-2] == prefix.length
    for query in QUERIES:
        single = adapter.head_maps(image, query, HEADS)
        reused = adapter.head_maps_from_prefix(prefix, query, HEADS)
        torch.testing.assert_close(reused, single, atol=1e-5, rtol=0)
    # A head deeper than the prefix extends it (the vision tower's output is reused, not rerun).
    calls = []
    inner = adapter.model.model
    inner.get_image_features = lambda *a, **k: calls.append(1) or type(inner).get_image_features(inner, *a, **k)
    try:
        deep = adapter.head_maps_from_prefix(prefix, "lid", [(5, 3), (0, 1)])
    finally:
        del inner.get_image_features
    assert prefix.depth == 5 and calls == []
    torch.testing.assert_close(deep, adapter.head_maps(image, "lid", [(5, 3), (0, 1)]), atol=1e-5, rtol=0)


def _layer_batches(adapter):
    """A recorder of each call's batch size and token count at decoder layer 0 (the layers' input)."""
    seen = []
    handle = adapter.decoder_layers()[0].register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(
            tuple(kwargs.get("hidden_states", args[0] if args else None).shape[:2])
        ),
        with_kwargs=True,
    )
    return seen, handle


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_queries_equal_separate_calls_in_one_pass(tiny_adapters, rng, family):
    # Queries of 1 to 7 words: the batch is right-padded, and padding must change nothing.
    adapter = tiny_adapters[family]
    heads = heads_on(adapter, HEADS)  # Qwen3.5: its full-attention layers
    image = random_image(rng, 300, 500)
    prefix = adapter.image_prefix(image, QUERIES[0], depth=max(layer for layer, _ in heads))
    seen, handle = _layer_batches(adapter)
    try:
        batched = adapter.head_maps_from_prefix_batch(prefix, QUERIES, heads)
    finally:
        handle.remove()
    assert [size for size, _ in seen] == [len(QUERIES)]  # one pass through the layers, all queries in it
    assert len(batched) == len(QUERIES)
    for query, maps in zip(QUERIES, batched, strict=True):
        torch.testing.assert_close(maps, adapter.head_maps_from_prefix(prefix, query, heads), atol=1e-5, rtol=0)
        torch.testing.assert_close(maps, adapter.head_maps(image, query, heads), atol=1e-5, rtol=0)
    # The queries' maps differ from each other: equality above is not the same map four times.
    assert float((batched[0] - batched[2]).abs().max()) > 1e-4


def test_point_many_runs_its_queries_in_one_batch(rng):
    pointer = PartPointer.from_preset("tiny")
    seen, handle = _layer_batches(pointer.mllm)
    try:
        results = pointer.point_many(random_image(rng, 120, 160), [("lid", None), ("", None), ("neck of it", None)])
    finally:
        handle.remove()
    assert [type(r).__name__ for r in results] == ["PointResult", "PointerError", "PointResult"]
    # The frame's prefix (one row, the image and the text before the query), then both valid queries at once.
    assert [size for size, _ in seen] == [1, 2] and seen[0][1] > seen[1][1]
    assert "mllm_prefill_batch" in results[0].shared_timings_ms


def _qwen_sibling(model_type):
    """A tiny random Qwen2-VL or Qwen3-VL (the siblings the Qwen adapter serves; Qwen3-VL also adds
    deepstack visual features inside early decoder layers) with the tiny Qwen tokenizer."""
    import transformers

    from pop_ros.models.mllm import adapter_for
    from pop_ros.models.processors import build_processor
    from pop_ros.models.tiny import CHAT_TEMPLATES, build_tokenizer

    tokenizer = build_tokenizer("qwen2_5_vl")
    names = {"image": "<|image_pad|>", "video": "<|video_pad|>", "vision_start": "<|vision_start|>"}
    names["vision_end"] = "<|vision_end|>"
    ids = {f"{key}_token_id": tokenizer.convert_tokens_to_ids(token) for key, token in names.items()}
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}
    text = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 6, "num_attention_heads": 4}
    text |= {"num_key_value_heads": 2, "vocab_size": 128, "bos_token_id": None, "eos_token_id": None}
    torch.manual_seed(0)
    if model_type == "qwen2_vl":
        config = transformers.Qwen2VLConfig(
            text_config={**text, "rope_parameters": rope},
            vision_config={"depth": 2, "embed_dim": 32, "hidden_size": 64, "num_heads": 2, "mlp_ratio": 2},
            **ids,
        )
        model = transformers.Qwen2VLForConditionalGeneration(config)
        images = transformers.Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=448 * 448)
        processor_class = transformers.Qwen2VLProcessor
    else:
        vision = {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 64}
        vision |= {"patch_size": 16, "num_position_embeddings": 64, "deepstack_visual_indexes": [0, 1]}
        config = transformers.Qwen3VLConfig(
            text_config={**text, "head_dim": 16, "rope_parameters": {**rope, "mrope_interleaved": True}},
            vision_config=vision,
            **ids,
        )
        model = transformers.Qwen3VLForConditionalGeneration(config)
        images = transformers.Qwen2VLImageProcessorPil(patch_size=16, min_pixels=64 * 64, max_pixels=512 * 512)
        processor_class = transformers.Qwen3VLProcessor
    processor = build_processor(processor_class, images, tokenizer, CHAT_TEMPLATES["qwen2_5_vl"])
    return adapter_for(model, processor)


@pytest.mark.parametrize("model_type", ["qwen2_vl", "qwen3_vl"])
def test_prefix_maps_equal_single_queries_on_qwen_siblings(rng, model_type):
    adapter = _qwen_sibling(model_type)
    image = random_image(rng, 300, 500)
    prefix = adapter.image_prefix(image, "lid", depth=4)
    assert prefix.reusable, prefix.reason
    batched = adapter.head_maps_from_prefix_batch(prefix, QUERIES[:3], HEADS)  # 4, 3 and 1 words: padded
    for query, maps in zip(QUERIES[:3], batched, strict=True):
        single = adapter.head_maps(image, query, HEADS)
        torch.testing.assert_close(adapter.head_maps_from_prefix(prefix, query, HEADS), single, atol=1e-5, rtol=0)
        torch.testing.assert_close(maps, single, atol=1e-5, rtol=0)
        torch.testing.assert_close(single, adapter.head_maps_eager(image, query, HEADS), atol=1e-6, rtol=0)


def test_qwen_query_tokens_get_the_full_prompts_mrope_positions(tiny_adapters, rng):
    # The query's tokens continue the 3-D mRoPE positions of the whole prompt: compare against the
    # model's own get_rope_index over the full prompt (not against our offset arithmetic).
    adapter = tiny_adapters["qwen2_5_vl"]
    image = random_image(rng, 240, 400)
    prefix = adapter.image_prefix(image, "lid", depth=1)
    inputs = adapter.prepare(image, "lid").model_inputs
    full, _ = adapter.model.model.get_rope_index(
        inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"], image_grid_thw=inputs["image_grid_thw"]
    )
    count = inputs["input_ids"].shape[1] - prefix.length
    torch.testing.assert_close(adapter._query_positions(prefix, count), full[:, :, prefix.length :])
    assert prefix.position_offset < 0  # image tokens take fewer positions than tokens (2-D grid)


def test_query_before_image_falls_back_to_the_full_prefill(tiny_adapters, rng, caplog):
    adapter = tiny_adapters["internvl"]
    image = random_image(rng, 200, 200)
    template = adapter.processor.chat_template
    adapter.processor.chat_template = template.replace(
        "{% for item in message['content'] %}", "{% for item in message['content'] | reverse %}"
    )
    adapter._fallback_logged = False
    try:
        with caplog.at_level(logging.WARNING, logger="pop_ros.models.mllm"):
            prefix = adapter.image_prefix(image, "lid", depth=4)
        assert not prefix.reusable and "before the image" in prefix.reason
        assert any("full prefill" in record.getMessage() for record in caplog.records)
        reused = adapter.head_maps_from_prefix(prefix, "neck of the bottle", HEADS)
        single = adapter.head_maps(image, "neck of the bottle", HEADS)
        torch.testing.assert_close(reused, single, atol=0, rtol=0)
    finally:
        adapter.processor.chat_template = template


@pytest.fixture(scope="module")
def pointers():
    return {family: PartPointer.from_preset(preset) for family, preset in PRESETS.items()}


def _requests(rng):
    """The same four requests in the forms point_many takes, and as PointRequests."""
    supports = [(random_image(rng, 90, 120), (30.0, 40.0)), (random_image(rng, 80, 80), (10.0, 70.0))]
    requests = [
        PointRequest("handle of the mug", supports=supports),
        ("neck of the bottle", None),
        ("lid", supports[:1]),
        PointRequest("a part of the cup", supports=supports, shots=1),
    ]
    plain = [
        PointRequest("handle of the mug", supports=supports),
        PointRequest("neck of the bottle"),
        PointRequest("lid", supports=supports[:1]),
        PointRequest("a part of the cup", supports=supports, shots=1),
    ]
    return requests, plain


@pytest.mark.parametrize("family", FAMILIES)
def test_point_many_equals_separate_single_queries(pointers, rng, family):
    pointer = pointers[family]
    target = random_image(rng, 180, 260)
    requests, plain = _requests(rng)
    many = pointer.point_many(target, requests)
    assert len(many) == len(requests)
    pointer.settings = PointerSettings(frame_cache_size=0).validate()  # each single query from scratch
    try:
        singles = [pointer.point(target, r.query, supports=r.supports, shots=r.shots) for r in plain]
    finally:
        pointer.settings = PointerSettings()
    for reused, single in zip(many, singles, strict=True):
        assert not single.frame_reused and single.query == reused.query
        assert reused.num_shots == single.num_shots
        np.testing.assert_allclose(reused.heatmap, single.heatmap, atol=1e-5, rtol=0)
        assert (reused.u, reused.v) == (single.u, single.v)
        assert reused.score == pytest.approx(single.score, abs=1e-5)
    # One shared part, timed once; each request times only its own stages.
    shared = many[0].shared_timings_ms
    assert {"visual_forward", "mllm_prefix"} <= set(shared) and all(r.shared_timings_ms is shared for r in many)
    for result in many:
        assert "visual_forward" not in result.timings_ms and "mllm_prefix" not in result.timings_ms
        assert result.timings_ms["total"] == pytest.approx(sum(v for k, v in result.timings_ms.items() if k != "total"))


def test_sequential_points_on_one_frame_hit_the_cache(rng):
    pointer = PartPointer.from_preset("tiny")
    counts = {"visual": 0, "prefix": 0}
    visual_encode, image_prefix = pointer.visual.encode_preprocessed, pointer.mllm.image_prefix

    def counting_visual(*args):
        counts["visual"] += 1
        return visual_encode(*args)

    def counting_prefix(*args):
        counts["prefix"] += 1
        return image_prefix(*args)

    pointer.visual.encode_preprocessed, pointer.mllm.image_prefix = counting_visual, counting_prefix
    target = random_image(rng, 120, 160)
    first = pointer.point(target, "handle of the mug")
    second = pointer.point(target.copy(), "lid")  # same content, another array: found by hash
    again = pointer.point(target, "handle of the mug")
    assert counts == {"visual": 1, "prefix": 1}
    assert not first.frame_reused and second.frame_reused and again.frame_reused
    assert {"visual_forward", "mllm_prefix", "mllm_prefill"} <= set(first.timings_ms)
    assert "visual_forward" not in second.timings_ms and "mllm_prefix" not in second.timings_ms
    assert "frame_overlapped" not in first.timings_ms  # streams overlap on CUDA only
    np.testing.assert_array_equal(first.heatmap, again.heatmap)
    fresh = PartPointer(pointer.visual, pointer.mllm, pointer.model_config, PointerSettings(frame_cache_size=0))
    np.testing.assert_allclose(fresh.point(target, "lid").heatmap, second.heatmap, atol=1e-5, rtol=0)


def test_frame_cache_keeps_only_the_latest_frames(rng):
    pointer = PartPointer.from_preset("tiny", settings=PointerSettings(frame_cache_size=2))
    frames = [random_image(rng, 64, 80) for _ in range(3)]
    for frame in frames:
        pointer.point(frame, "lid")
    assert pointer.cached_frames() == 2
    assert pointer.point(frames[2], "lid").frame_reused and pointer.point(frames[1], "lid").frame_reused
    assert not pointer.point(frames[0], "lid").frame_reused  # the oldest was evicted
    assert pointer.cached_frames() == 2
    pointer.clear_frame_cache()
    assert pointer.cached_frames() == 0
    off = PartPointer.from_preset("tiny", settings=PointerSettings(frame_cache_size=0))
    off.point(frames[0], "lid")
    assert off.cached_frames() == 0 and not off.point(frames[0], "lid").frame_reused


def test_frame_key_identifies_a_frame_without_hashing(rng):
    # The node's key (stamp + frame_id) names the frame: same key, same frame (the caller's contract).
    pointer = PartPointer.from_preset("tiny")
    image = random_image(rng, 64, 64)
    assert not pointer.point(image, "lid", frame_key="camera@12.5").frame_reused
    assert pointer.point(image, "neck", frame_key="camera@12.5").frame_reused
    assert not pointer.point(image, "neck", frame_key="camera@12.6").frame_reused


def test_one_bad_request_does_not_fail_the_others(tiny_pointer, rng):
    target = random_image(rng, 64, 64)
    results = tiny_pointer.point_many(
        target,
        [("lid", None), ("", None), ("lid", "no_such_set"), ("lid", [(target, (99.0, 3.0))]), "oops", ("neck", None)],
    )
    assert [type(r).__name__ for r in results] == ["PointResult"] + ["PointerError"] * 4 + ["PointResult"]
    assert "request 1" in str(results[1]) and "query is empty" in str(results[1])
    assert "unknown support set" in str(results[2]) and "outside" in str(results[3])
    assert "pair" in str(results[4])
    with pytest.raises(PointerError, match="target"):
        tiny_pointer.point_many(np.zeros((4, 4), dtype=np.uint8), [("lid", None)])
    assert tiny_pointer.point_many(target, [("", None)])[0].args[0].startswith("request 0")


def test_frame_cache_size_is_validated():
    with pytest.raises(ValueError, match="frame_cache_size"):
        PointerSettings(frame_cache_size=-1).validate()
    with pytest.raises(ValueError, match="frame_cache_size"):
        PointerSettings(frame_cache_size=1.5).validate()


# ---- pop-point with several --query ---------------------------------------------------------------
@pytest.mark.slow
def test_pop_point_several_queries_share_one_frame(tmp_path, rng, tool_here):
    import json
    import subprocess
    import sys

    import cv2

    from pop_ros.cli import point

    target_rgb, support_rgb = random_image(rng, 120, 160), random_image(rng, 100, 100)
    cv2.imwrite(str(tmp_path / "target.png"), cv2.cvtColor(target_rgb, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(tmp_path / "support.png"), cv2.cvtColor(support_rgb, cv2.COLOR_RGB2BGR))
    command = ["--preset", "tiny", "--target", str(tmp_path / "target.png")]
    command += ["--support", f"{tmp_path / 'support.png'}:50,40", "--json"]
    queries = ["handle of the mug", "rim of the mug", "lid"]
    args = [item for query in queries for item in ("--query", query)]
    completed = tool_here(point.main, *command, *args, "--save-heatmap", tmp_path / "heat.png")
    assert completed.returncode == 0, completed.stderr
    output = json.loads(completed.stdout)
    assert [r["query"] for r in output["results"]] == queries and output["random_weights"] is True
    assert {"visual_forward", "mllm_prefix"} <= set(output["shared_timings_ms"])
    pointer = PartPointer.from_preset("tiny", settings=PointerSettings(frame_cache_size=0))
    for index, (query, result) in enumerate(zip(queries, output["results"], strict=True)):
        alone = pointer.point(target_rgb, query, supports=[(support_rgb, (50.0, 40.0))])
        assert (result["u"], result["v"]) == (alone.u, alone.v)
        assert cv2.imread(result["heatmap_png"]).shape == (120, 160, 3)
        assert result["heatmap_png"].endswith(f"heat_{index}.png")
    bad = subprocess.run(  # the refusal as a process: one line on stderr, nothing else
        [sys.executable, "-m", "pop_ros.cli.point", *command, "--query", "lid", "--query", "  "],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    last_line = bad.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: --query '") and "request 1: the query is empty" in last_line


def test_frames_differing_in_one_pixel_never_share_a_cache_entry(rng):
    # The content key covers every pixel and channel: first, odd-strided, middle and last.
    pointer = PartPointer.from_preset("tiny", settings=PointerSettings(frame_cache_size=64))
    frame = random_image(rng, 48, 64)
    assert not pointer.point(frame, "lid").frame_reused
    for row, col, channel in [(0, 0, 0), (1, 1, 1), (24, 33, 2), (47, 63, 2)]:
        changed = frame.copy()
        changed[row, col, channel] ^= 1  # one intensity level in one pixel
        assert not pointer.point(changed, "lid").frame_reused, (row, col, channel)
        assert pointer.point(frame.copy(), "lid").frame_reused  # the original is still found by content


def test_frame_cache_evicts_the_least_recently_used(rng):
    pointer = PartPointer.from_preset("tiny", settings=PointerSettings(frame_cache_size=2))
    a, b, c = (random_image(rng, 48, 64) for _ in range(3))
    assert [pointer.point(frame, "lid").frame_reused for frame in (a, b, a, c)] == [False, False, True, False]
    assert pointer.cached_frames() == 2
    assert pointer.point(a, "lid").frame_reused  # used after B: kept
    assert not pointer.point(b, "lid").frame_reused  # least recently used when C came: evicted


def test_batches_are_split_so_their_prefix_copies_fit_the_budget(tiny_adapters, rng, monkeypatch):
    """Each batch row holds a copy of the prefix's keys/values (the first append of a layer copies the
    expanded prefix): with a budget of 1.5 rows' copies, four queries run as batches of 1 row each, with
    the same maps as one batch."""
    from pop_ros.models import prefix_reuse

    adapter = tiny_adapters["qwen2_5_vl"]
    image = random_image(rng, 300, 500)
    prefix = adapter.image_prefix(image, QUERIES[0], depth=4)
    whole = adapter.head_maps_from_prefix_batch(prefix, QUERIES, HEADS)
    monkeypatch.setattr(prefix_reuse, "PREFIX_COPY_BUDGET_BYTES", prefix_reuse.prefix_bytes(prefix) * 3 // 2)
    assert prefix_reuse.rows_per_batch(prefix) == 1
    seen, handle = _layer_batches(adapter)
    try:
        split = adapter.head_maps_from_prefix_batch(prefix, QUERIES, HEADS)
    finally:
        handle.remove()
    assert [size for size, _ in seen] == [1] * len(QUERIES)
    for maps, reference in zip(split, whole, strict=True):
        torch.testing.assert_close(maps, reference, atol=1e-5, rtol=0)
