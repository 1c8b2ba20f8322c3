"""Qwen3.5 (hybrid Gated DeltaNet + gated full attention) on a tiny random checkpoint with the real
3:1 layer pattern (8 layers, full attention at 3 and 7).

References are independent computations: eager attention with `output_attentions=True` for the fast
path, the whole prompt through the model for the reused prefix, literal values for the layout and
the answer parser. Random weights: code paths and geometry only, never where the model points.
"""

import json
import logging
import shutil

import numpy as np
import pytest
import torch

from pop_ros.evaluation.native import NATIVE_PROMPTS, NativePointError, parse_qwen_relative_point
from pop_ros.models.heads import fallback_heads, load_head_file, sample_votes
from pop_ros.models.loading import load_mllm
from pop_ros.models.tiny import ensure_tiny_checkpoint
from test.conftest import random_image

QUERIES = ["handle of the mug", "neck of the bottle", "lid", "a part of the cup in the image"]
FULL = (3, 7)
THINKING_OFF_END = "<|im_start|>assistant\n<think>\n\n</think>\n\n"


@pytest.fixture(scope="module")
def qwen35():
    return load_mllm("tiny:qwen3_5", device="cpu", dtype="float32")


def test_tiny_checkpoint_has_the_hub_layout():
    folder = ensure_tiny_checkpoint("qwen3_5")
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "qwen3_5"
    assert config["text_config"]["layer_types"] == ["linear_attention"] * 3 + ["full_attention"] + [
        "linear_attention"
    ] * 3 + ["full_attention"]
    assert json.loads((folder / "preprocessor_config.json").read_text())["processor_class"] == "Qwen3VLProcessor"
    template = (folder / "chat_template.jinja").read_text()
    assert "enable_thinking" in template and "<|vision_start|><|image_pad|><|vision_end|>" in template


def test_prompt_has_thinking_off_and_the_image_first(qwen35):
    prompt = qwen35.prompt("handle of the mug")
    assert prompt == (
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Point to the handle of the mug.<|im_end|>\n"
        + THINKING_OFF_END
    )
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "x"}]}]
    default = qwen35.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert default.endswith("<|im_start|>assistant\n<think>\n")  # the template's default: thinking on


def test_heads_only_on_full_attention_layers(qwen35, rng, tmp_path):
    assert qwen35.head_layers == FULL and qwen35.num_layers == 8
    assert "full-attention layers [3, 7]" in qwen35.head_layer_note
    image = random_image(rng, 160, 200)
    with pytest.raises(ValueError, match="layer 2 is a linear-attention .Gated DeltaNet. layer"):
        qwen35.head_maps(image, "lid", [(3, 0), (2, 1)])
    path = tmp_path / "heads.yaml"
    path.write_text("heads: [[3, 1], [5, 0]]\n")
    with pytest.raises(ValueError, match=r"head \[5, 0\] is refused: layer 5 is a linear-attention"):
        load_head_file(path, 8, 4, layer_problem=qwen35.head_layer_problem)
    path.write_text("heads: [[3, 1], [7, 0]]\n")
    assert load_head_file(path, 8, 4, layer_problem=qwen35.head_layer_problem) == [(3, 1), (7, 0)]
    assert qwen35.all_head_maps(image, "lid").shape[:2] == (2, 4)  # the full-attention layers only


def test_fallback_heads_pick_full_attention_layers_only():
    # Tiny: the middle third of 8 layers is 2..4, of which only 3 is full attention.
    assert fallback_heads(8, 2, head_layers=FULL) == [(3, 0), (3, 1)]
    # Qwen3.5-2B's 24 layers (full at 3, 7, ..., 23): middle third 8..15 -> 11 and 15.
    real = tuple(range(3, 24, 4))
    assert sorted({layer for layer, _ in fallback_heads(24, 1, head_layers=real)}) == [11, 15]
    # No full-attention layer in the middle third: the one nearest its centre.
    assert fallback_heads(9, 1, head_layers=(0, 8)) == [(0, 0)]
    assert fallback_heads(8, 1) == [(2, 0), (3, 0), (4, 0)]  # plain transformers: unchanged


def test_head_votes_name_real_layer_indices():
    maps = torch.full((2, 4, 8, 8), 0.001)
    maps[1, 2, 3:5, 3:5] = 0.2  # one sharp head on the second searched layer
    assert sample_votes(maps, votes_per_sample=1, layers=FULL) == [(7, 2)]
    with pytest.raises(ValueError, match="2 layers of maps but 3 layer indices"):
        sample_votes(maps, layers=(3, 7, 11))


def test_fast_path_equals_eager_on_every_full_attention_layer(qwen35, rng):
    image = random_image(rng, 300, 500)
    prepared = qwen35.prepare(image, "neck of the bottle")
    heads = [(layer, head) for layer in FULL for head in range(qwen35.num_heads)]
    fast = qwen35.head_maps(image, "neck of the bottle", heads, prepared=prepared)
    eager = qwen35.head_maps_eager(image, "neck of the bottle", heads, prepared=prepared)
    assert fast.shape == (len(heads), *prepared.grid)
    torch.testing.assert_close(fast, eager, atol=1e-5, rtol=0)
    # Softmax weights before the output gate: a part of a row that sums to 1 over all tokens.
    assert float(fast.min()) >= 0 and bool((fast.sum(dim=(1, 2)) <= 1 + 1e-6).all())


def _snapshot(prefix):
    return [tuple(tensor.clone() for tensor in entry[1:]) for entry in prefix.keys_values]


def test_prefix_holds_kv_and_deltanet_states_and_equals_a_full_prefill(qwen35, rng):
    image = random_image(rng, 300, 500)
    prefix = qwen35.image_prefix(image, QUERIES[0], depth=2)  # a linear layer: the run goes on to layer 3
    assert prefix.reusable, prefix.reason
    assert prefix.depth == 3 and [entry[0] for entry in prefix.keys_values] == ["state"] * 3 + ["kv"]
    _, conv, recurrent = prefix.keys_values[0]
    # conv: (1, 2 * 2 * 16 + 4 * 16 channels, kernel 4); recurrent: (1, 4 value heads, 16, 16).
    assert tuple(conv.shape) == (1, 128, 4) and tuple(recurrent.shape) == (1, 4, 16, 16)
    assert prefix.keys_values[3][1].shape[-2] == prefix.length
    before = _snapshot(prefix)
    for query in QUERIES:
        reused = qwen35.head_maps_from_prefix(prefix, query, [(3, 0), (3, 2)])
        torch.testing.assert_close(reused, qwen35.head_maps(image, query, [(3, 0), (3, 2)]), atol=1e-5, rtol=0)
    # Each query ran from a copy: the frame's state is bit for bit what the prefix run left.
    assert all(
        torch.equal(a, b)
        for old, entry in zip(before, prefix.keys_values, strict=True)
        for a, b in zip(old, entry[1:], strict=True)
    )
    # A deeper head extends the prefix through the next three DeltaNet layers to layer 7.
    heads = [(7, 1), (3, 3)]
    for query in QUERIES[:2]:
        reused = qwen35.head_maps_from_prefix(prefix, query, heads)
        torch.testing.assert_close(reused, qwen35.head_maps(image, query, heads), atol=1e-5, rtol=0)
    assert prefix.depth == 7 and len(prefix.keys_values) == 8


def test_the_deltanet_states_matter(qwen35, rng):
    """Zeroed recurrent states (a prefix that kept only the KV cache) give other maps: the equality
    above is not one that holds whatever the linear layers' state."""
    image = random_image(rng, 200, 260)
    prefix = qwen35.image_prefix(image, "lid", depth=7)
    good = qwen35.head_maps_from_prefix(prefix, "lid", [(7, 0)])
    prefix.keys_values = [
        entry if entry[0] == "kv" else ("state", entry[1], torch.zeros_like(entry[2])) for entry in prefix.keys_values
    ]
    broken = qwen35.head_maps_from_prefix(prefix, "lid", [(7, 0)])
    assert float((good - broken).abs().max()) > 1e-4  # ten times the equality tolerance


def test_mtp_weights_in_a_checkpoint_are_not_loaded(qwen35, tmp_path, rng):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "with-mtp"
    shutil.copytree(ensure_tiny_checkpoint("qwen3_5"), folder)
    weights = load_file(folder / "model.safetensors")
    weights["mtp.fc.weight"] = torch.ones(64, 128)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    loaded = load_mllm(str(folder), device="cpu", dtype="float32")
    assert not [name for name, _ in loaded.model.named_parameters() if "mtp" in name]
    image = random_image(rng, 160, 160)
    torch.testing.assert_close(loaded.head_maps(image, "lid", [(7, 2)]), qwen35.head_maps(image, "lid", [(7, 2)]))


def test_native_answers_are_read_on_the_relative_0_1000_scale():
    assert "point_2d" in NATIVE_PROMPTS["qwen3_5"]
    fenced = '```json\n[{"point_2d": [250, 400], "label": "handle"}]\n```'
    assert parse_qwen_relative_point(fenced, (1080, 1920)) == pytest.approx((480.0, 432.0))
    assert parse_qwen_relative_point('[{"bbox_2d": [100, 200, 300, 400]}]', (1000, 2000)) == pytest.approx(
        (400.0, 300.0)
    )
    cut = '```json\n[{"point_2d": [500, 500], "label": "the han'  # cut by the token limit
    assert parse_qwen_relative_point(cut, (100, 200)) == pytest.approx((100.0, 50.0))
    u, v = parse_qwen_relative_point('{"point_2d": [1000, 0]}', (10, 20))
    assert 19.99 < u < 20 and v == 0
    for answer, reason in [
        ("the handle is on the left", "no JSON"),
        ('[{"point_2d": [1200, 10]}]', "off the 0-1000 scale"),
        ('[{"label": "handle"}]', "no point_2d"),
    ]:
        with pytest.raises(NativePointError, match=reason):
            parse_qwen_relative_point(answer, (100, 100))


def test_pop_find_heads_searches_only_full_attention_layers(tmp_path, rng, capsys, caplog):
    import cv2

    from pop_ros.cli import find_heads

    lines = []
    for index in range(2):
        cv2.imwrite(str(tmp_path / f"img{index}.png"), random_image(rng, 160, 160))
        lines.append(json.dumps({"image": f"img{index}.png", "expression": "the red mug"}))
    (tmp_path / "pairs.jsonl").write_text("\n".join(lines))
    out = tmp_path / "heads.yaml"
    with caplog.at_level(logging.INFO, logger="pop-find-heads"):
        status = find_heads.main(
            ["--preset", "tiny-qwen3.5", "--data", str(tmp_path / "pairs.jsonl"), "--out", str(out), "--json"]
        )
    captured = capsys.readouterr()
    assert "searching only the 2 full-attention layers [3, 7] of 8" in caplog.text
    if status == 0:
        result = json.loads(captured.out)
        assert result["searched_layers"] == [3, 7] and {layer for layer, _ in result["heads"]} <= set(FULL)
    else:  # random weights may leave every head flat: then nothing is written, and it says so
        assert status == 2 and "no head passed" in captured.err and not out.exists()


def test_pipeline_text_heads_fall_back_to_full_attention_layers(caplog):
    from pop_ros.pipeline import PartPointer

    with caplog.at_level(logging.WARNING):
        pointer = PartPointer.from_preset("tiny-qwen3.5")
    heads, aggregation = pointer.text_heads()
    assert aggregation == "mean" and {layer for layer, _ in heads} == {3}
    assert "layers [3]" in caplog.text and "full-attention layers [3, 7]" in caplog.text
    result = pointer.point(np.zeros((120, 160, 3), np.uint8), "handle of the mug")
    assert 0 <= result.u < 160 and 0 <= result.v < 120


def test_a_head_file_on_a_linear_layer_is_refused_by_the_pipeline(tmp_path):
    from pop_ros.models.loading import ModelLoadError
    from pop_ros.pipeline import PartPointer

    path = tmp_path / "heads.yaml"
    path.write_text("heads: [[7, 1], [4, 0]]\n")
    reason = r"head \[4, 0\] is refused: layer 4 is a linear-attention"
    # Trimmed (the default): refused while choosing the layers to load, before any weight is read.
    with pytest.raises(ModelLoadError, match=reason):
        PartPointer.from_preset("tiny-qwen3.5", heads_file=str(path))
    # Whole: refused by the pipeline against the loaded adapter's layer kinds.
    with pytest.raises(ValueError, match=reason):
        PartPointer.from_preset("tiny-qwen3.5", heads_file=str(path), trim=False)


def test_native_point_reads_the_answer_on_the_0_1000_scale(monkeypatch):
    from pop_ros.evaluation.runner import native_point
    from pop_ros.pipeline import PartPointer

    pointer = PartPointer.from_preset("tiny-qwen3.5")
    asked = {}

    def answer(image, prompt, **kwargs):
        asked["prompt"] = prompt
        return '```json\n[{"point_2d": [250, 500], "label": "handle"}]\n```'

    monkeypatch.setattr(pointer.mllm, "generate_text", answer)
    u, v = native_point(pointer, np.zeros((200, 400, 3), np.uint8), "handle")
    assert "point_2d" in asked["prompt"] and "handle" in asked["prompt"]
    assert (u, v) == pytest.approx((99.5, 99.5))  # 0.25 * 400 and 0.5 * 200, as ROS pixel centres (- 0.5)
    # The prompt the model answers goes through the chat template with thinking off.
    assert pointer.mllm._chat_text(asked["prompt"]).endswith(THINKING_OFF_END)


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_a_trimmed_load_keeps_the_familys_keys_to_ignore_and_reports_no_mtp_weights(tmp_path):
    from safetensors.torch import load_file, save_file
    from transformers import Qwen3_5ForConditionalGeneration

    from pop_ros.models.trimming import trimmed_class

    # The trimmed class adds its own patterns to the family's (mtp.*), it does not replace them.
    family = set(Qwen3_5ForConditionalGeneration._keys_to_ignore_on_load_unexpected or [])
    family |= set(Qwen3_5ForConditionalGeneration.__mro__[1]._keys_to_ignore_on_load_unexpected or [])
    assert r"^mtp.*" in family
    assert family <= set(trimmed_class(Qwen3_5ForConditionalGeneration)._keys_to_ignore_on_load_unexpected)

    # And the load report says nothing about them: a checkpoint with mtp weights and one weight no
    # model has (which the report must name: the report is seen), loaded trimmed.
    folder = tmp_path / "extra-weights"
    shutil.copytree(ensure_tiny_checkpoint("qwen3_5"), folder)
    weights = load_file(folder / "model.safetensors")
    weights["mtp.fc.weight"] = torch.ones(64, 128)
    weights["mtp.layers.0.mlp.up_proj.weight"] = torch.ones(8, 64)
    weights["unrelated.weight"] = torch.ones(3)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    records = _Records()
    transformers_log = logging.getLogger("transformers")
    transformers_log.addHandler(records)
    try:
        trimmed = load_mllm(str(folder), device="cpu", dtype="float32", trim_to_heads=fallback_heads)
    finally:
        transformers_log.removeHandler(records)
    assert trimmed.loaded_layers < trimmed.num_layers  # trimmed
    report = "\n".join(records.messages)
    assert "unrelated.weight" in report, records.messages
    assert "mtp." not in report, report
