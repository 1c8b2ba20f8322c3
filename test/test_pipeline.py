"""PartPointer, the support library and the command-line tools, on the tiny preset."""

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from pop_ros import core
from pop_ros.pipeline import PartPointer, PointerError, PointerSettings, PointResult
from pop_ros.supports import SupportError, SupportLibrary
from test.conftest import random_image


def write_image(path, image_rgb):
    cv2.imwrite(str(path), cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR))
    return path


def test_point_result_is_consistent_with_core(tiny_pointer, rng):
    target = random_image(rng, 240, 320)
    support = random_image(rng, 200, 300)
    result = tiny_pointer.point(target, "handle of the mug", supports=[(support, (150.0, 60.0))])
    assert result.heatmap.shape == (240, 320) and result.heatmap.dtype == np.float32
    assert float(result.heatmap.max()) == pytest.approx(1.0) and float(result.heatmap.min()) >= 0
    assert 0 <= result.u < 320 and 0 <= result.v < 240 and 0 <= result.score <= 1
    assert result.num_shots == 1 and result.used_text
    stages = {"frame_lookup", "visual_preprocess", "visual_forward", "mllm_prefix", "supports", "similarity"}
    assert stages | {"mllm_prefill", "fusion", "heatmap", "total"} == set(result.timings_ms)
    # Recompute by hand from the same pieces: the same point.
    visual = tiny_pointer.visual
    target_features = visual.encode_one(target)
    support_features = visual.encode_one(support)
    rc = core.click_to_patch((150.5, 60.5), (200, 300), support_features.grid.shape[:2])  # ROS -> edge origin
    vmap = core.visual_similarity(support_features.grid, target_features.grid, rc)
    heads, aggregation = tiny_pointer.text_heads()
    prior = core.text_prior(tiny_pointer.mllm.head_maps(target, "handle of the mug", heads), aggregation=aggregation)
    final = core.fuse(prior, [vmap])
    assert core.peak_to_pixel(final, (240, 320)) == (result.u + 0.5, result.v + 0.5)  # edge origin -> ROS


def test_uncalibrated_model_uses_the_documented_fallback(tiny_pointer):
    heads, aggregation = tiny_pointer.text_heads()
    assert tiny_pointer.heads_source == "fallback" and aggregation == "mean"
    assert {layer for layer, _ in heads} == {2, 3}  # middle third of 6 layers


def test_head_file_is_used_when_given(tmp_path, rng):
    path = tmp_path / "heads.yaml"
    path.write_text("model: tiny\nheads: [[3, 1], [4, 0], [5, 2]]\n")
    pointer = PartPointer.from_preset("tiny", heads_file=str(path))
    assert pointer.text_heads() == ([(3, 1), (4, 0), (5, 2)], "sum")
    result = pointer.point(random_image(rng, 100, 120), "lid")
    assert result.num_shots == 0 and result.used_text  # 0-shot: text prior alone


def test_support_features_are_cached_in_memory_and_on_disk(tmp_path, rng):
    pointer = PartPointer.from_preset("tiny", feature_cache_dir=tmp_path / "features")
    calls = []
    original = pointer.visual.encode_preprocessed

    def counting_encode(tensors, sizes):
        calls.append(len(tensors))
        return original(tensors, sizes)

    pointer.visual.encode_preprocessed = counting_encode
    supports = [(random_image(rng, 120, 160), (10.0, 10.0)), (random_image(rng, 90, 90), (45.0, 45.0))]
    target = random_image(rng, 100, 100)
    first = pointer.point(target, "neck", supports=supports)
    assert calls == [1, 2]  # the target, then both supports in one batched call
    second = pointer.point(target, "neck", supports=supports)
    assert calls == [1, 2]  # nothing again: the target's features are in the frame cache
    assert (first.u, first.v, first.score) == (second.u, second.v, second.score)
    assert len(list((tmp_path / "features").glob("*.pt"))) == 2
    fresh = PartPointer.from_preset("tiny", feature_cache_dir=tmp_path / "features")
    fresh_calls = []
    fresh_original = fresh.visual.encode_preprocessed
    fresh.visual.encode_preprocessed = lambda tensors, sizes: (
        fresh_calls.append(len(tensors)) or fresh_original(tensors, sizes)
    )
    third = fresh.point(target, "neck", supports=supports)
    assert fresh_calls == [1]  # supports came from the disk cache
    assert (third.u, third.v) == (first.u, first.v)


def test_named_set_features_are_looked_up_without_rehashing(rng):
    library = SupportLibrary()
    library.add_exemplar("lid", random_image(rng, 60, 80), (10, 10), query="lid of the cup")
    library.add_exemplar("lid", random_image(rng, 60, 80), (20, 20))
    pointer = PartPointer.from_preset("tiny", library=library)
    hashed = []
    original = pointer.support_features.image_key
    pointer.support_features.image_key = lambda image: hashed.append(image.shape) or original(image)
    target = random_image(rng, 64, 64)
    first = pointer.point(target, support_set="lid")
    assert len(hashed) == 2  # each exemplar once
    second = pointer.point(target, support_set="lid")
    assert len(hashed) == 2 and (first.u, first.v, first.score) == (second.u, second.v, second.score)
    pointer.add_exemplar("lid", random_image(rng, 60, 80), (5, 5))  # a new version of the set
    assert pointer.point(target, support_set="lid", shots=3).num_shots == 3
    assert pointer.support_features.cached_sets() == [("lid", library.get("lid").version)]  # only the newest


def test_cls_retrieval_picks_the_most_similar_support(tiny_pointer, rng):
    target = random_image(rng, 128, 128)
    others = [random_image(rng, 128, 128) for _ in range(3)]
    # With K=1, the target itself (CLS cosine 1) must be the support chosen; the point is then where
    # its click patch matches perfectly, and that patch's visual score is 1.
    supports = [(others[0], (5.0, 5.0)), (target, (100.0, 30.0)), (others[1], (5.0, 5.0)), (others[2], (5.0, 5.0))]
    tiny_pointer.settings = PointerSettings(use_text=False, max_shots=1, retrieval="cls").validate()
    try:
        result = tiny_pointer.point(target, "", supports=supports)
    finally:
        tiny_pointer.settings = PointerSettings()
    assert result.num_shots == 1 and not result.used_text
    assert result.score == pytest.approx(1.0, abs=1e-5)
    assert abs(result.u - 100) <= 16 and abs(result.v - 30) <= 16  # within the clicked 16 px patch


@pytest.mark.parametrize("shots", [1, 3, 10])
def test_k_supports_in_one_batch(tiny_pointer, rng, shots):
    supports = [(random_image(rng, 96, 128), (20.0, 30.0)) for _ in range(10)]
    result = tiny_pointer.point(random_image(rng, 96, 128), "lid", supports=supports, shots=shots)
    assert result.num_shots == shots


def test_bad_queries_are_clear_errors(tiny_pointer, rng):
    image = random_image(rng, 64, 64)
    with pytest.raises(PointerError, match="query is empty"):
        tiny_pointer.point(image, "   ")
    with pytest.raises(PointerError, match="unknown support set"):
        tiny_pointer.point(image, "lid", support_set="nope")
    with pytest.raises(PointerError, match="outside"):
        tiny_pointer.point(image, "lid", supports=[(image, (64.0, 3.0))])
    with pytest.raises(PointerError, match="target"):
        tiny_pointer.point(np.zeros((0, 5, 3), dtype=np.uint8), "lid")
    with pytest.raises(PointerError, match="target"):
        tiny_pointer.point(np.zeros((5, 5), dtype=np.uint8), "lid")
    with pytest.raises(PointerError, match="shots"):
        tiny_pointer.point(image, "lid", supports=[(image, (3.0, 3.0))], shots=0)
    with pytest.raises(ValueError, match="similarity"):
        PointerSettings(similarity="sideways").validate()


def test_out_of_memory_becomes_a_clear_error(tiny_pointer, rng):
    original = tiny_pointer.visual.encode_preprocessed

    def out_of_memory(*args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    tiny_pointer.visual.encode_preprocessed = out_of_memory
    try:
        with pytest.raises(PointerError, match="out of GPU memory"):
            tiny_pointer.point(random_image(rng, 32, 32), "lid")
    finally:
        tiny_pointer.visual.encode_preprocessed = original
    assert tiny_pointer.point(random_image(rng, 32, 32), "lid").heatmap.shape == (32, 32)  # still serving


# ---- support library -----------------------------------------------------------------------------
def test_support_library_reports_bad_entries_and_keeps_valid_sets(tmp_path, rng):
    write_image(tmp_path / "good.png", random_image(rng, 40, 60))
    (tmp_path / "broken.png").write_bytes(b"not an image")
    (tmp_path / "library.yaml").write_text(
        """
sets:
  mug_handle:
    query: handle of the mug
    exemplars:
      - {image: good.png, click: [10, 20]}
      - {image: missing.png, click: [1, 1]}
      - {image: good.png, click: [60, 5]}
      - {image: broken.png, click: [1, 1]}
      - {image: good.png}
  empty_set:
    query: lid
    exemplars: []
  not_a_set: 42
"""
    )
    library = SupportLibrary.load(tmp_path / "library.yaml")
    assert library.names() == ["mug_handle"]
    assert len(library.get("mug_handle").exemplars) == 1
    errors = "\n".join(library.errors)
    assert "exemplar 1: image file" in errors and "does not exist" in errors
    assert "exemplar 2: click (60.0, 5.0) is outside its 60x40 image" in errors
    assert "exemplar 3" in errors and "could not be read" in errors
    assert "exemplar 4: needs 'image' and 'click'" in errors
    assert "'empty_set': no valid exemplar" in errors and "'not_a_set'" in errors


def test_support_library_rejects_unusable_files(tmp_path):
    with pytest.raises(SupportError, match="does not exist"):
        SupportLibrary.load(tmp_path / "none.yaml")
    (tmp_path / "bad.yaml").write_text("sets: [unclosed")
    with pytest.raises(SupportError, match="not valid YAML"):
        SupportLibrary.load(tmp_path / "bad.yaml")
    (tmp_path / "code.yaml").write_text("!!python/object/apply:os.system ['true']")
    with pytest.raises(SupportError):  # safe_load: YAML cannot run code
        SupportLibrary.load(tmp_path / "code.yaml")


def test_runtime_exemplars_update_the_set_and_its_cache_key(tiny_pointer, rng):
    library = SupportLibrary()
    first = library.add_exemplar("lid", random_image(rng, 50, 50), (10, 10), query="lid of the cup")
    second = library.add_exemplar("lid", random_image(rng, 50, 50), (20, 20))
    assert second.version > first.version and len(second.exemplars) == 2  # a new cache key per change
    assert second.query == "lid of the cup"
    with pytest.raises(SupportError, match="outside"):
        library.add_exemplar("lid", random_image(rng, 50, 50), (50, 10))
    with pytest.raises(SupportError, match="name"):
        library.add_exemplar(" ", random_image(rng, 50, 50), (5, 5))
    assert len(library.get("lid").exemplars) == 2  # the failed additions changed nothing


def test_shipped_example_library_loads_cleanly():
    from pop_ros.paths import config_dir

    library = SupportLibrary.load(config_dir() / "supports" / "library.yaml")
    assert library.errors == [] and len(library.names()) >= 2


# ---- command-line tools ----------------------------------------------------------------------------
def run_cli(module, *args):
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=300, check=False
    )


@pytest.mark.slow
def test_pop_point_json_and_heatmap(tmp_path, rng, tool_here):
    from pop_ros.cli import point

    target = write_image(tmp_path / "target.png", random_image(rng, 120, 160))
    support = write_image(tmp_path / "support.png", random_image(rng, 100, 100))
    heatmap = tmp_path / "heat.png"
    completed = tool_here(
        point.main,
        "--preset", "tiny", "--target", str(target), "--query", "handle",
        "--support", f"{support}:50,40", "--json", "--save-heatmap", str(heatmap),
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    result = json.loads(completed.stdout)
    assert result["random_weights"] is True and result["num_shots"] == 1
    assert 0 <= result["u"] < 160 and 0 <= result["v"] < 120
    assert cv2.imread(str(heatmap)).shape == (120, 160, 3)
    assert "RANDOM WEIGHTS" in completed.stderr


@pytest.mark.parametrize(
    "args,message",
    [
        (["--support", "SUPPORT:500,5"], "outside"),
        (["--support", "SUPPORT"], "expected IMAGE:U,V"),
        (["--support-set", "x"], "needs --library"),
        (["--save-heatmap", "/nonexistent/dir/h.png"], "does not exist"),
    ],
)
@pytest.mark.slow
def test_pop_point_bad_input_is_one_line_and_exit_2(tmp_path, rng, args, message):
    target = write_image(tmp_path / "target.png", random_image(rng, 40, 40))
    support = write_image(tmp_path / "support.png", random_image(rng, 40, 40))
    args = [a.replace("SUPPORT", str(support)) for a in args]
    completed = run_cli("pop_ros.cli.point", "--preset", "tiny", "--target", str(target), "--query", "lid", *args)
    assert completed.returncode == 2
    assert message in completed.stderr and "Traceback" not in completed.stderr
    assert completed.stderr.strip().splitlines()[-1].startswith("error: ")


def _sharpened_checkpoint(folder):
    """The tiny Qwen2.5-VL with its query projections of layers 2-5 scaled by 30: random but peaked
    attention, so some heads pass the discovery criteria (flat random attention passes none)."""
    import torch
    from transformers import AutoModelForImageTextToText

    from pop_ros.models.processors import load_processor, save_processor_parts
    from pop_ros.models.tiny import ensure_tiny_checkpoint

    source = ensure_tiny_checkpoint("qwen2_5_vl")
    model = AutoModelForImageTextToText.from_pretrained(source)
    with torch.no_grad():
        for layer in model.model.language_model.layers[2:]:
            layer.self_attn.q_proj.weight.mul_(30)
    model.save_pretrained(folder)
    save_processor_parts(load_processor(str(source)), folder)
    return folder


@pytest.mark.slow
def test_pop_find_heads_writes_a_usable_head_file(tmp_path, rng, tool_here):
    from pop_ros.cli import find_heads

    lines = []
    for index in range(3):
        write_image(tmp_path / f"img{index}.png", random_image(rng, 224, 224))
        lines.append(json.dumps({"image": f"img{index}.png", "expression": "the red mug"}))
    (tmp_path / "pairs.jsonl").write_text("\n".join(lines))
    model = _sharpened_checkpoint(tmp_path / "sharp")
    out = tmp_path / "heads.yaml"
    completed = tool_here(
        find_heads.main, "--preset", "tiny", "--mllm", model, "--data", tmp_path / "pairs.jsonl",
        "--out", out, "-k", "2", "--json",
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    result = json.loads(completed.stdout)
    assert result["samples"] == 3 and len(result["heads"]) == 2
    assert all(layer >= 2 for layer, _ in result["heads"])
    from pop_ros.models.heads import load_head_file

    assert [list(h) for h in load_head_file(out, 6, 4)] == result["heads"]
    assert "finding heads" in completed.stderr  # the progress bar


@pytest.mark.slow
def test_pop_find_heads_refuses_to_write_an_empty_head_file(tmp_path, rng, tool_here):
    from pop_ros.cli import find_heads

    write_image(tmp_path / "a.png", random_image(rng, 224, 224))
    (tmp_path / "a.txt").write_text("the red mug")
    out = tmp_path / "heads.yaml"
    flat = tool_here(find_heads.main, "--preset", "tiny", "--data", tmp_path, "--out", out)
    assert flat.returncode == 2 and "no head passed" in flat.stderr and not out.exists()
    bad = run_cli("pop_ros.cli.find_heads", "--preset", "tiny", "--data", str(tmp_path / "none.jsonl"))
    assert bad.returncode == 2 and "neither a JSONL file nor a folder" in bad.stderr


def test_clicks_and_answers_are_ros_pixel_coordinates(tiny_pointer, rng):
    """Pixel i covers [i - 0.5, i + 0.5): a click at u = 15.6 is pixel 16, in the second patch of a
    16-pixel grid (an edge-origin reading would put it in the first), and the answer for that patch
    is its centre pixel, 16 + 7.5 = 23.5 (an edge-origin answer would say 24.0)."""
    target = random_image(rng, 128, 128)
    grid_h, grid_w = tiny_pointer.visual.encode_one(target).grid.shape[:2]
    patch_w, patch_h = 128 / grid_w, 128 / grid_h
    click = (patch_w - 0.4, 2 * patch_h - 0.4)  # just past the first / second patch boundary
    tiny_pointer.settings = PointerSettings(use_text=False, max_shots=1, upsample=1).validate()
    try:
        result = tiny_pointer.point(target, "", supports=[(target, click)])  # the target itself: peak at the click
    finally:
        tiny_pointer.settings = PointerSettings()
    assert result.score == pytest.approx(1.0, abs=1e-5)
    assert (result.u, result.v) == pytest.approx((patch_w + patch_w / 2 - 0.5, 2 * patch_h + patch_h / 2 - 0.5))
    with pytest.raises(PointerError, match="outside"):
        tiny_pointer.point(target, "", supports=[(target, (127.5, 3.0))])  # pixel 128 does not exist
    assert tiny_pointer.point(target, "the part", supports=[(target, (-0.5, 127.4))]).num_shots == 1  # pixel (0, 127)


def test_a_settings_change_lands_at_once_and_applies_from_the_next_query(rng):
    """A change from another thread (ros2 param set) neither waits for the query in flight nor
    changes it: that query finishes with the settings it started with."""
    import dataclasses
    import threading

    pointer = PartPointer.from_preset("tiny")
    inside, release = threading.Event(), threading.Event()
    original = pointer.visual.encode_preprocessed

    def held_encode(*args, **kwargs):
        inside.set()
        release.wait(timeout=60)
        return original(*args, **kwargs)

    pointer.visual.encode_preprocessed = held_encode
    results = []
    query = threading.Thread(target=lambda: results.append(pointer.point(random_image(rng, 96, 128), "lid")))
    query.start()
    assert inside.wait(timeout=60)  # the query is inside its model forward, holding the lock
    changed = threading.Thread(
        target=lambda: setattr(pointer, "settings", dataclasses.replace(pointer.settings, use_text=False))
    )
    changed.start()
    changed.join(timeout=60)
    assert not changed.is_alive() and not pointer.settings.use_text  # landed while the query runs
    release.set()
    query.join(timeout=60)
    assert len(results) == 1 and results[0].used_text  # ... which kept the settings it started with


def test_each_call_uses_one_settings_snapshot_when_they_change_mid_call(rng):
    """Catches: point()/point_many() reading `settings` before the lock and again under it (issue 20).
    A `ros2 param set use_text` landing between the reads sent an empty query into the MLLM or
    refused a valid one. The change is made deterministically from inside the call (the library
    lookup), between the request's first and later reads of the settings."""
    import dataclasses

    library = SupportLibrary()
    library.add_exemplar("lid", random_image(rng, 64, 64), (10, 10))  # no default query
    pointer = PartPointer.from_preset("tiny", library=library, settings=PointerSettings(use_text=False))
    lookup = library.get

    def lookup_then_toggle_use_text(name):
        found = lookup(name)
        pointer.settings = dataclasses.replace(pointer.settings, use_text=not pointer.settings.use_text)
        return found

    library.get = lookup_then_toggle_use_text
    target = random_image(rng, 64, 64)
    visual_only = pointer.point(target, "", support_set="lid")  # started visual-only: no query needed
    assert (visual_only.used_text, visual_only.num_shots) == (False, 1)
    assert pointer.settings.use_text  # the change itself landed, for the next call
    with_text = pointer.point(target, "lid", support_set="lid")  # started with the text prior
    assert (with_text.used_text, with_text.num_shots) == (True, 1)
    assert not pointer.settings.use_text
    [many] = pointer.point_many(target, [("", "lid")])  # started visual-only again
    assert isinstance(many, PointResult) and (many.used_text, many.num_shots) == (False, 1)
