"""Evaluation harness on tiny datasets written in each dataset's real format."""

import contextlib
import errno
import functools
import io
import json
import logging
import math
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from pop_ros.cli import evaluate as evaluate_cli
from pop_ros.evaluation import store
from pop_ros.evaluation.datasets import DatasetError, interior_click, load_dataset, readable_name
from pop_ros.evaluation.native import NativePointError, parse_molmo2_points, parse_molmo_point, parse_qwen_point
from pop_ros.evaluation.runner import (
    ALL_METHODS,
    build_work,
    dataset_record,
    describe_changes,
    digest,
    draw_episodes,
    folder_identity,
    group_by_image,
    hit,
    model_configuration,
    shard,
    write_reports,
)

H, W = 96, 128
# Per image: a mug whose body and handle are rectangles (x0, y0, x1, y1), shifted per image.
BODY = (30, 30, 70, 80)
HANDLE = (70, 45, 85, 65)


def shifted(box, dx):
    x0, y0, x1, y1 = box
    return (x0 + dx, y0, x1 + dx, y1)


def polygon(box):
    x0, y0, x1, y1 = box
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def draw(path, dx, seed):
    image = np.random.default_rng(seed).integers(0, 60, (H, W, 3), dtype=np.uint8)
    for box, colour in ((shifted(BODY, dx), (200, 40, 40)), (shifted(HANDLE, dx), (40, 200, 40))):
        x0, y0, x1, y1 = box
        image[y0:y1, x0:x1] = colour
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), image)


def write_paco(root, n_images=4, split="test"):
    """PACO-LVIS as released: image file names carry the COCO folder (`val2017/...`), LVIS object
    names carry a sense suffix, and some part annotations have an empty segmentation."""
    images, annotations = [], []
    categories = [{"id": 1, "name": "mug"}, {"id": 2, "name": "mug:handle"}, {"id": 3, "name": "mug:body"},
                  {"id": 4, "name": "car_(automobile)"}, {"id": 5, "name": "car_(automobile):antenna"}]  # fmt: skip
    for i in range(n_images):
        draw(root / "images" / "val2017" / f"{i:012d}.jpg", dx=5 * i, seed=i)
        images.append({"id": i + 1, "file_name": f"val2017/{i:012d}.jpg", "height": H, "width": W})
        object_id = 100 + i
        annotations.append({"id": object_id, "obj_ann_id": object_id, "image_id": i + 1, "category_id": 1,
                            "segmentation": polygon((30 + 5 * i, 30, 85 + 5 * i, 80))})  # fmt: skip
        annotations.append({"id": 200 + i, "obj_ann_id": object_id, "image_id": i + 1, "category_id": 2,
                            "segmentation": polygon(shifted(HANDLE, 5 * i))})  # fmt: skip
        annotations.append({"id": 300 + i, "obj_ann_id": object_id, "image_id": i + 1, "category_id": 3,
                            "segmentation": polygon(shifted(BODY, 5 * i))})  # fmt: skip
    # One car whose antenna is annotated, one whose antenna annotation is empty (skipped).
    annotations.append({"id": 400, "obj_ann_id": 400, "image_id": 1, "category_id": 4,
                        "segmentation": polygon((0, 0, 20, 20))})  # fmt: skip
    annotations.append({"id": 401, "obj_ann_id": 400, "image_id": 1, "category_id": 5,
                        "segmentation": polygon((2, 2, 6, 12))})  # fmt: skip
    annotations.append({"id": 402, "obj_ann_id": 400, "image_id": 2, "category_id": 5, "segmentation": []})
    annotations.append({"id": 403, "obj_ann_id": 400, "image_id": 3, "category_id": 5, "segmentation": [[]]})
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    data = {"images": images, "annotations": annotations, "categories": categories}
    (root / "annotations" / f"paco_lvis_v1_{split}.json").write_text(json.dumps(data))


def write_instructpart(root, n_images=4, split_folder="test", annotation="data_test.json", mask_high=255):
    """InstructPart as released: one image per part, `images/{stem}-{object}-{part}.jpg`, named like
    its mask; no image under the entry's own `image_path`."""
    split = root / split_folder
    entries = []
    for i in range(n_images):
        draw(split / "images" / f"img{i}-coffee_mug-handle.jpg", dx=5 * i, seed=10 + i)
        entries.append({"image_path": f"img{i}.jpg", "part_list": [
            {"object": "coffee mug", "part": "handle", "affordance": "hold", "action": "pick up",
             "instruction": ["a", "b", "c", "d", "handle of coffee mug", "f"]}]})  # fmt: skip
        mask = np.zeros((H, W), np.uint8)
        x0, y0, x1, y1 = shifted(HANDLE, 5 * i)
        mask[y0:y1, x0:x1] = mask_high
        (split / "masks").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(split / "masks" / f"img{i}-coffee_mug-handle.png"), mask)
    (split / annotation).write_text(json.dumps(entries))


def write_partimagenetpp(root, n_images=4):
    images, annotations = [], []
    for i in range(n_images):
        draw(root / "images" / "n03063599" / f"n03063599_{i}.JPEG", dx=5 * i, seed=20 + i)
        images.append({"id": i, "file_name": f"n03063599_{i}.JPEG", "height": H, "width": W})
        annotations.append(
            {"id": 10 + i, "image_id": i, "category_id": 7, "segmentation": polygon(shifted(HANDLE, 5 * i))}
        )
    data = {"images": images, "annotations": annotations, "categories": [{"id": 7, "name": "handle"}]}
    (root / "json").mkdir(parents=True, exist_ok=True)
    (root / "json" / "n03063599.json").write_text(json.dumps(data))
    (root / "category_name.json").write_text(json.dumps({"n03063599": {"object_name": "coffee mug"}}))


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    write_paco(root / "paco")
    write_instructpart(root / "instructpart")
    write_partimagenetpp(root / "pinpp")
    return root


@pytest.mark.parametrize(
    "name,folder,count,query",
    [
        ("paco", "paco", 8, "handle of the mug"),
        ("instructpart", "instructpart", 4, "handle of the coffee mug"),
        ("partimagenetpp", "pinpp", 4, "handle of the coffee mug"),
    ],
)
def test_loaders_read_parts_and_masks(datasets, name, folder, count, query):
    samples = load_dataset(name, datasets / folder)  # each dataset's default split
    samples = [s for s in samples if not s.object_name.startswith("car")]
    assert len(samples) == count  # PACO: handle and body parts, not the objects
    handle = next(s for s in samples if s.part_name == "handle")
    assert handle.query == query and handle.image_path.is_file()
    mask = handle.mask()
    index = int(re.findall(r"\d+", handle.image_path.stem)[-1])  # images are numbered by their shift
    x0, y0, x1, y1 = shifted(HANDLE, 5 * index)
    inside = mask[y0 + 1 : y1 - 1, x0 + 1 : x1 - 1]
    assert inside.all() and mask.sum() <= (x1 - x0 + 1) * (y1 - y0 + 1)


def test_interior_click_is_the_centre_of_a_rectangle():
    mask = np.zeros((20, 30), bool)
    mask[5:15, 10:20] = True
    u, v = interior_click(mask)
    assert 14 <= u <= 15 and 9 <= v <= 10 and mask[int(v), int(u)]  # a pixel centre: integers
    assert u == int(u) and v == int(v)


def test_metric_on_hand_placed_points():
    mask = np.zeros((10, 10), bool)
    mask[2:5, 3:6] = True
    # ROS pixel coordinates: pixel 3 covers [2.5, 3.5).
    assert hit(mask, 3.0, 2.0) and hit(mask, 5.49, 4.49) and hit(mask, 2.5, 1.5)
    assert not hit(mask, 5.5, 3.0) and not hit(mask, 2.49, 3.0) and not hit(mask, 3.0, 1.49)
    assert not hit(mask, math.nan, 3.0) and not hit(mask, -1, 3) and not hit(mask, 3, 10)
    edge = np.ones((10, 10), bool)
    assert hit(edge, -0.5, -0.5) and hit(edge, 9.49, 9.49) and not hit(edge, 9.5, 0) and not hit(edge, -0.51, 0)


def test_paco_skips_empty_segmentations_and_drops_lvis_senses(datasets, caplog):
    with caplog.at_level(logging.INFO, logger="pop_ros.evaluation.datasets"):
        samples = load_dataset("paco", datasets / "paco", split="test")
    antennas = [s for s in samples if s.part_name == "antenna"]
    assert [s.key for s in antennas] == ["paco:401"]  # 402 ([]) and 403 ([[]]) are skipped
    assert "skipped 2 part annotations with an empty segmentation" in caplog.text
    assert antennas[0].query == "antenna of the car"
    assert antennas[0].category == "car_(automobile):antenna"  # the category keeps LVIS's full name
    assert antennas[0].image_path == datasets / "paco" / "images" / "val2017" / "000000000000.jpg"
    assert antennas[0].mask()[2:12, 2:6].all()
    assert readable_name("glass_(drink_container)") == "glass" and readable_name("handle") == "handle"
    assert readable_name("hair_dryer") == "hair dryer"


def test_instructpart_splits_and_binary_masks(tmp_path):
    root = tmp_path / "InstructPart"
    write_instructpart(root, split_folder="train/train200", annotation="data_train.json", mask_high=1)
    samples = load_dataset("instructpart", root, split="train200")
    assert len(samples) == 4
    first = min(samples, key=lambda s: s.key)
    assert first.image_path == root / "train" / "train200" / "images" / "img0-coffee_mug-handle.jpg"
    x0, y0, x1, y1 = HANDLE
    mask = first.mask()  # stored as 0/1: still the part
    assert mask[y0:y1, x0:x1].all() and mask.sum() == (x1 - x0) * (y1 - y0)
    with pytest.raises(DatasetError, match=r"split 'test'.*does not exist.*present under .*: train200"):
        load_dataset("instructpart", root)  # default test: not there; the error lists what is
    with pytest.raises(DatasetError, match="no split 'val'; its release has test, all, train200"):
        load_dataset("instructpart", root, split="val")


def test_partimagenetpp_schema_errors_are_dataset_errors(tmp_path):
    root = tmp_path / "pinpp"
    write_partimagenetpp(root)
    for bad in ('["n03063599", "coffee mug"]', '{"n03063599": 7}', '"mug"'):
        (root / "category_name.json").write_text(bad)
        with pytest.raises(DatasetError, match="category_name.json"):
            load_dataset("partimagenetpp", root)
    (root / "category_name.json").write_text('{"n03063599": "coffee mug"}')
    assert load_dataset("partimagenetpp", root)[0].query == "handle of the coffee mug"
    (root / "json" / "n03063599.json").write_text('["not", "coco"]')
    with pytest.raises(DatasetError, match="not a COCO-format file"):
        load_dataset("partimagenetpp", root)


def test_molmo2_points_in_every_released_shape():
    size = (200, 400)  # H, W
    # One point, zero-padded, 0-1000 scale: x 555/1000 * 400, y 169/1000 * 200.
    assert parse_molmo_point('<points coords="1 1 555 169">handle</points>', size) == pytest.approx((222.0, 33.8))
    # alt after and before coords, inside a sentence, several triples (the first is taken).
    after = 'The handle is <points coords="1 1 073 160 2 173 600" alt="mug handle">handle</points> here.'
    before = 'Sure: <points alt="mug handle" coords="1 1 073 160 2 173 600">handle</points>'
    assert parse_molmo_point(after, size) == parse_molmo_point(before, size) == pytest.approx((29.2, 32.0))
    assert np.allclose(parse_molmo2_points(after, size), [(29.2, 32.0), (69.2, 120.0)])
    # Several images (tab-separated groups): only image 1's points belong to our single image.
    multi = '<points coords="2 1 500 500\t1 2 250 750">x</points>'
    assert parse_molmo_point(multi, size) == pytest.approx((100.0, 150.0))
    assert np.allclose(parse_molmo2_points(multi, size, image_index=2), [(200.0, 100.0)])
    # Cut short by the token limit: the complete triples count.
    cut = 'Here: <points alt="mug handle" coords="1 1 073 160 2 17'
    assert parse_molmo_point(cut, size) == pytest.approx((29.2, 32.0))
    # The far edge 1000 stays on the image.
    u, v = parse_molmo_point('<points coords="1 1 1000 000">x</points>', size)
    assert 399 < u < 400 and v == 0.0
    bad = [
        ('<points coords="2 1 500 500">x</points>', "no point on image 1"),
        ('<points coords="1 1 50', "no point on image 1"),  # cut before the first point closed
        ('<points coords="1 1 500">x</points>', "object-index x y triples"),
        ('<points coords="1 1 1500 20">x</points>', "off the 0-1000 scale"),
        ('<points coords="1 1 5a0 20">x</points>', "unreadable coords"),
    ]
    for answer, message in bad:
        with pytest.raises(NativePointError, match=message):
            parse_molmo_point(answer, size)


def test_qwen_points_fenced_bare_and_cut_short():
    resized, size = (280, 560), (480, 960)
    expected = (240.0, 96.0)  # (140, 56) in the 560x280 resized image, scaled by 960/560 and 480/280
    fenced = '```json\n[\n\t{"point_2d": [140, 56], "label": "handle of the coffee mug"}\n]\n```'
    bare = '[{"point_2d": [140, 56], "label": "handle of the coffee mug"}]'
    cut_label = '```json\n[\n\t{"point_2d": [140, 56], "label": "handle of the co'
    cut_second = '```json\n[{"point_2d": [140, 56], "label": "a"}, {"point_2d": [3'
    for answer in (fenced, bare, cut_label, cut_second, "Here: " + bare + " done."):
        assert parse_qwen_point(answer, resized, size) == pytest.approx(expected), answer
    with pytest.raises(NativePointError, match="no point_2d"):
        parse_qwen_point('```json\n[{"point_2d": [140, ', resized, size)  # cut before the point closed


def test_native_point_parsers():
    assert parse_molmo_point('<point x="50.0" y="25.0" alt="handle">handle</point>', (200, 400)) == (200.0, 50.0)
    assert parse_molmo_point('<points x1="10" y1="10" x2="20" y2="20">x</points>', (100, 100)) == (10.0, 10.0)
    answer = '```json\n[{"point_2d": [140, 56], "label": "handle"}]\n```'
    assert parse_qwen_point(answer, (280, 560), (480, 960)) == (240.0, 96.0)
    assert parse_qwen_point('{"point_2d": [10, 20]}', (100, 100), (100, 100)) == (10.0, 20.0)
    bad = [
        (lambda: parse_molmo_point("I cannot see a mug.", (10, 10)), "no <point"),
        (lambda: parse_molmo_point('<point x="150" y="10">', (10, 10)), "outside"),
        (lambda: parse_qwen_point('[{"point_2d": [1, ', (10, 10), (10, 10)), "no point_2d"),
        (lambda: parse_qwen_point('[{"bbox_2d": [1, 2, 3, 4]}]', (10, 10), (10, 10)), "no point_2d"),
        (lambda: parse_qwen_point("no json here", (10, 10), (10, 10)), "no JSON"),
        (lambda: parse_qwen_point('[{"point_2d": ["a", 2]}]', (10, 10), (10, 10)), "no point_2d"),
    ]
    for call, message in bad:
        with pytest.raises(NativePointError, match=message):
            call()


# Tests that run pop-eval two or more times: the default per-test limit is too short when the two
# shared cores are busy.
SEVERAL_RUNS = pytest.mark.timeout(900)


def run_eval_process(*args):
    """pop-eval as a process of its own interpreter: for what only a fresh process shows (nothing printed
    while importing before a refusal's one line)."""
    return subprocess.run(
        [sys.executable, "-m", "pop_ros.cli.evaluate", *args], capture_output=True, text=True, timeout=600, check=False
    )


@pytest.fixture
def run_eval(tool_shims):
    """pop-eval as a command, through the session's preloaded tool server (conftest's `tool_shims`): the
    same argv, streams and exit code, without a process start's ~3.5 s of imports."""

    def run(*args):
        return subprocess.run(
            [str(tool_shims / "pop-eval"), *args], capture_output=True, text=True, timeout=600, check=False
        )

    return run


@pytest.fixture
def eval_here(tool_here):
    """`run_eval` in this process (conftest's `tool_here` with pop-eval's main()): for the runs whose
    subject is what a run does with what an earlier one saved, not the process. The command runs through
    the tool server in the end-to-end test and the refusals, as a process of its own for bad input (one
    line, nothing printed while importing), the signals, a full disk and torchrun."""
    return functools.partial(tool_here, evaluate_cli.main)


@SEVERAL_RUNS
@pytest.mark.slow
def test_pop_eval_end_to_end_writes_reports_and_resumes(datasets, tmp_path, run_eval):
    out = tmp_path / "eval"
    methods = "native,attention-0shot,visual-1shot,pop-1shot,pop-3shot-cls,abl-sim-forward"
    args = [
        "--preset", "tiny", "--dataset", f"paco:{datasets / 'paco'}",
        "--dataset", f"instructpart:{datasets / 'instructpart'}", "--dataset", f"partimagenetpp:{datasets / 'pinpp'}",
        "--seeds", "2", "--limit", "2", "--cls-pool", "3", "--methods", methods, "--out", str(out), "--json",
    ]  # fmt: skip
    first = run_eval(*args)
    assert first.returncode == 0, first.stderr
    summary = json.loads(first.stdout)["summary"]
    assert set(summary) == {"paco", "instructpart", "partimagenetpp"}
    assert summary["paco"]["pop-1shot"]["seeds"] == 2 and summary["paco"]["pop-1shot"]["episodes"] == 4
    table = (out / "table.md").read_text()
    assert "RANDOM WEIGHTS" in table and "| pop-3shot-cls |" in table
    assert cv2.imread(str(out / "accuracy.png")) is not None
    rows = list(json.loads((out / "results.json").read_text())["predictions"])
    assert len(rows) == 3 * 2 * 2 * 6
    native = [r for r in rows if r["method"] == "native"]
    assert all(r["hit"] == 0 and r["reason"] for r in native)  # random text: a miss with a reason
    # pop-eval loads the whole MLLM when native pointing is asked for: the miss is the answer's, not trimming's.
    assert not any("whole MLLM" in r["reason"] for r in native)
    assert all(r["hit"] in (0, 1) for r in rows)
    with (out / "predictions.csv").open() as handle:
        assert len(handle.readlines()) == len(rows) + 1
    cached = (out / "predictions.jsonl").read_text().count("\n")
    second = run_eval(*args)  # resumes: nothing recomputed, same answers
    assert second.returncode == 0, second.stderr
    assert (out / "predictions.jsonl").read_text().count("\n") == cached
    assert json.loads(second.stdout)["summary"] == summary


def test_the_evaluation_runs_from_python_without_the_command_line(datasets, tmp_path):
    """The evaluation is a function with plain arguments: it plans, computes, resumes and reports
    without argparse, and refuses bad input with an EvaluationError (not an exit)."""
    from pop_ros.evaluation.evaluate import EvaluationError, EvaluationProgress, evaluate

    arguments = dict(out=tmp_path / "eval", methods=["attention-0shot", "pop-1shot"], preset="tiny", seeds=1, limit=2)
    progress = EvaluationProgress()
    first = evaluate([f"paco:{datasets / 'paco'}"], cls_pool=3, progress=progress, **arguments)
    assert (first["predictions"], first["computed"], first["reused"]) == (4, 4, 0)  # 2 episodes x 2 methods
    assert (progress.total, progress.done, progress.written) == (4, 4, 4)
    assert set(first["summary"]) == {"paco"} and first["summary"]["paco"]["pop-1shot"]["episodes"] == 2
    assert (tmp_path / "eval" / "table.md").is_file()
    again = evaluate([f"paco:{datasets / 'paco'}"], cls_pool=3, **arguments)
    assert (again["computed"], again["reused"]) == (0, 4) and again["summary"] == first["summary"]
    with pytest.raises(EvaluationError, match="unknown methods"):
        evaluate([f"paco:{datasets / 'paco'}"], out=tmp_path / "other", methods=["pop-9shot"])
    with pytest.raises(EvaluationError, match="expected NAME:ROOT"):
        evaluate(["coco:/x"], out=tmp_path / "other", preset="tiny")


@pytest.mark.slow
def test_pop_eval_bad_input_is_one_line(tmp_path):
    missing = run_eval_process("--preset", "tiny", "--dataset", f"paco:{tmp_path}")
    assert missing.returncode == 2 and "does not exist" in missing.stderr and "Traceback" not in missing.stderr
    wrong = run_eval_process("--preset", "tiny", "--dataset", "coco:/x")
    assert wrong.returncode == 2 and "expected NAME:ROOT" in wrong.stderr


# ---- trustworthy results: configuration keys, torn tails, lock, atomic reports, signals, ranks -----

TRUST_METHODS = "attention-0shot,pop-1shot,pop-3shot-cls"
TOTAL = 2 * 2 * 2 * 3  # datasets x seeds x episodes x methods of `eval_args`


@pytest.fixture(scope="module")
def paco6(tmp_path_factory):
    """PACO with 6 images: 5 other images per (object, part), so the CLS pool can be 3 to 5."""
    root = tmp_path_factory.mktemp("paco6")
    write_paco(root, n_images=6)
    return root


def keys_for(root, methods, seeds=2, limit=None, pool=3, split="test", model="m"):
    samples = load_dataset("paco", root, split=split)
    dataset = {"name": "paco", "split": split, "identity": folder_identity(root)}
    plans = [(dataset, seed, draw_episodes(samples, seed, pool=pool, limit=limit)) for seed in range(seeds)]
    work = build_work(model, plans, [ALL_METHODS[m] for m in methods])
    return {(w.method.name, w.episode.episode_id): w.key for w in work}


def test_support_draws_depend_on_neither_the_pool_nor_other_targets(paco6):
    samples = load_dataset("paco", paco6)
    small = {e.episode_id: e for e in draw_episodes(samples, seed=0, pool=3)}
    large = {e.episode_id: e for e in draw_episodes(samples, seed=0, pool=5)}
    assert set(small) == set(large) and len(small) == 12
    for episode_id, episode in small.items():
        assert [s.key for s in episode.supports] == [s.key for s in large[episode_id].supports[:3]]
        assert len({s.image_path for s in large[episode_id].supports}) == 5  # 5 distinct other images
        assert all(s.image_path != episode.target.image_path for s in large[episode_id].supports)
        assert all(s.category == episode.target.category for s in large[episode_id].supports)
    # Without the body parts (another category), the handles' draws are unchanged.
    handles = {e.episode_id: e for e in draw_episodes([s for s in samples if s.part_name == "handle"], 0, pool=3)}
    assert all([s.key for s in e.supports] == [s.key for s in small[i].supports] for i, e in handles.items())
    other_seed = {e.episode_id.split("|")[0]: e for e in draw_episodes(samples, seed=1, pool=3)}
    assert any(
        [s.key for s in e.supports] != [s.key for s in other_seed[i.split("|")[0]].supports] for i, e in small.items()
    )
    assert draw_episodes(samples, seed=0, pool=6) == []  # only 5 other images
    assert len(draw_episodes(samples, seed=0, pool=3, limit=4)) == 4


def test_prediction_keys_change_exactly_with_what_determines_them(paco6, tmp_path):
    base = keys_for(paco6, ["pop-1shot", "pop-3shot"])
    # Another method in the run: the existing methods' predictions stay valid.
    more = keys_for(paco6, ["pop-1shot", "pop-3shot", "pop-3shot-cls"])
    assert all(more[k] == v for k, v in base.items()) and len(more) == len(base) * 3 // 2
    # Another CLS pool: the K-shot methods keep their supports, the CLS method's pool changes.
    pool3 = keys_for(paco6, ["pop-3shot", "pop-3shot-cls"], pool=3)
    pool5 = keys_for(paco6, ["pop-3shot", "pop-3shot-cls"], pool=5)
    assert pool3.keys() == pool5.keys()
    assert all((pool3[k] == pool5[k]) == (k[0] == "pop-3shot") for k in pool3)
    # More seeds or a larger limit: the earlier predictions stay valid.
    assert all(keys_for(paco6, ["pop-1shot"], seeds=3)[k] == v for k, v in keys_for(paco6, ["pop-1shot"]).items())
    small = keys_for(paco6, ["pop-1shot"], limit=2)
    assert len(small) == 4 and all(keys_for(paco6, ["pop-1shot"], limit=5)[k] == v for k, v in small.items())
    # Another model configuration, split or dataset content: nothing is reused.
    other_model = keys_for(paco6, ["pop-1shot"], model="other")
    assert set(other_model.values()).isdisjoint(keys_for(paco6, ["pop-1shot"]).values())
    copy = tmp_path / "paco6"
    shutil.copytree(paco6, copy)
    assert keys_for(copy, ["pop-1shot"]) == keys_for(paco6, ["pop-1shot"])  # a moved copy is the same dataset
    annotations = copy / "annotations" / "paco_lvis_v1_test.json"
    shutil.copy(annotations, copy / "annotations" / "paco_lvis_v1_val.json")
    test = keys_for(copy, ["pop-1shot"])
    assert set(keys_for(copy, ["pop-1shot"], split="val").values()).isdisjoint(test.values())
    data = json.loads(annotations.read_text())
    data["annotations"][1]["segmentation"] = polygon((71, 46, 84, 64))  # one handle mask a pixel smaller
    annotations.write_text(json.dumps(data))
    assert set(keys_for(copy, ["pop-1shot"]).values()).isdisjoint(test.values())


@pytest.mark.parametrize(
    "override,field",
    [
        ({"prompt": "Point at the {query}."}, "prompt_template"),
        ({"resolution": 112}, "resolution"),
        ({"mllm": "tiny:molmo2"}, "mllm"),
        ({"visual": "some/other-dino"}, "visual"),
        ({"dtype": "bfloat16"}, "dtype"),
        ({"mllm_max_pixels": 4096}, "mllm_max_pixels"),
        ({"system_prompt": "You are a pirate."}, "system_prompt"),
        ({"trust_remote_code": True}, "trust_remote_code"),
    ],
)
def test_model_configuration_records_every_override(override, field):
    names = {"prompt": "prompt_template"}
    base = model_configuration("tiny", {}, cuda_available=False)
    changed = model_configuration("tiny", {names.get(k, k): v for k, v in override.items()}, cuda_available=False)
    assert digest(base) != digest(changed)
    assert describe_changes(base, changed).startswith(field + " ")
    assert model_configuration("tiny", {"device": "cpu"}, cuda_available=False) == base  # device alone: same


def test_model_configuration_records_heads_file_content_and_preset(tmp_path):
    heads = tmp_path / "heads.yaml"
    heads.write_text("heads: [[0, 0]]\n")
    first = model_configuration("tiny", {"heads_file": str(heads)}, cuda_available=False)
    heads.write_text("heads: [[0, 1]]\n")
    second = model_configuration("tiny", {"heads_file": str(heads)}, cuda_available=False)
    assert first["heads"]["sha256"] != second["heads"]["sha256"]
    assert model_configuration("tiny", {}, cuda_available=False)["heads"] == "fallback"
    assert digest(model_configuration("tiny-molmo2", {}, False)) != digest(model_configuration("tiny", {}, False))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        model_configuration("tiny", {"heads_file": str(tmp_path / "none.yaml")}, cuda_available=False)
    assert model_configuration("tiny", {}, cuda_available=True)["dtype"] == "float32"  # the preset pins it


def test_groups_keep_each_image_together_and_ranks_share_them(paco6):
    samples = load_dataset("paco", paco6)
    dataset = {"name": "paco", "split": "test", "identity": "x"}
    plans = [(dataset, seed, draw_episodes(samples, seed, pool=3)) for seed in range(2)]
    work = build_work("m", plans, [ALL_METHODS[m] for m in ("pop-1shot", "pop-3shot")])
    groups = group_by_image(work)
    assert len(groups) == 6  # 6 images, each the target of a handle and a body episode
    for group in groups:
        assert len({w.episode.target.image_path for w in group}) == 1 and len(group) == 2 * 2 * 2
        methods = [w.method.name for w in group]
        assert methods == sorted(methods, key=["pop-1shot", "pop-3shot"].index)  # method by method
    shares = [shard(groups, rank, 4) for rank in range(4)]
    assert sorted(w.key for share in shares for group in share for w in group) == sorted(w.key for w in work)
    assert all(sum(len(g) for g in share) in (8, 16) for share in shares)


def row(key, **extra):
    return {"key": key, "dataset": "paco", "seed": 0, "method": "m", "hit": 1, **extra}


def test_torn_tail_is_cut_before_appending_and_counted(tmp_path, caplog):
    path = tmp_path / store.MAIN_LOG
    header = {"pop_eval": 2, "config_digest": "c", "model": {}, "run": {}}
    path.write_text("\n".join(json.dumps(e) for e in (header, row("a"), row("b"))) + "\n" + json.dumps(row("c"))[:17])
    headers, rows, torn, bad = store.read_log(path)
    assert (len(headers), [r["key"] for r in rows], torn, bad) == (1, ["a", "b"], 1, 0)
    with caplog.at_level("WARNING"):
        log = store.AppendLog(path)
    assert log.torn_cut == 1 and "cut 1 torn line (17 bytes" in caplog.text
    log.append(row("c"))
    log.close()
    assert [r["key"] for r in store.read_log(path)[1]] == ["a", "b", "c"]
    assert all(json.loads(line) for line in path.read_text().splitlines())


def test_complete_last_line_missing_its_newline_is_kept(tmp_path):
    path = tmp_path / store.MAIN_LOG
    path.write_text(json.dumps(row("a")) + "\n" + json.dumps(row("b")))  # a kill between a line and its newline
    assert [r["key"] for r in store.read_log(path)[1]] == ["a", "b"]
    log = store.AppendLog(path)
    assert log.torn_cut == 0
    log.append(row("c"))
    log.close()
    assert [r["key"] for r in store.read_log(path)[1]] == ["a", "b", "c"] and path.read_text().endswith("\n")


@pytest.mark.slow
def test_short_write_on_a_full_disk_leaves_no_fragment(tmp_path):
    # RLIMIT_FSIZE makes write(2) stop at the limit like a full disk (short write, then EFBIG).
    script = f"""
import json, pathlib, resource, signal
from pop_ros.cli import evaluate as evaluate_cli
from pop_ros.evaluation import store
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
path = pathlib.Path({str(tmp_path / store.MAIN_LOG)!r})
log = store.AppendLog(path)
resource.setrlimit(resource.RLIMIT_FSIZE, (1000, resource.RLIM_INFINITY))
try:
    for i in range(100):
        log.append({{"key": str(i), "pad": "x" * 50}})
except OSError as error:
    print(error.errno, log.written)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    code, written = map(int, result.stdout.split())
    assert code in (errno.EFBIG, errno.ENOSPC) and 0 < written < 100, result.stderr
    text = (tmp_path / store.MAIN_LOG).read_text()
    assert text.endswith("\n") and [json.loads(line)["key"] for line in text.splitlines()] == [
        str(i) for i in range(written)
    ]


def test_merge_deduplicates_rank_logs_and_drops_torn_lines(tmp_path):
    header = {"pop_eval": 2, "config_digest": "c", "model": {}, "run": {}}
    (tmp_path / store.MAIN_LOG).write_text(json.dumps(header) + "\n" + json.dumps(row("a")) + "\n")
    (tmp_path / "predictions.rank0.jsonl").write_text(
        json.dumps(header) + "\n" + json.dumps(row("a")) + "\n" + json.dumps(row("b")) + "\n"
    )
    (tmp_path / "predictions.rank1.jsonl").write_text(json.dumps(row("c")) + "\n" + json.dumps(row("d"))[:9])
    assert store.merge(tmp_path) == (2, 1)
    headers, rows, torn, bad = store.read_log(tmp_path / store.MAIN_LOG)
    assert (headers, [r["key"] for r in rows], torn, bad) == ([header], ["a", "b", "c"], 0, 0)
    assert store.rank_logs(tmp_path) == []


def test_reports_are_replaced_all_at_once(tmp_path, monkeypatch):
    from pop_ros.evaluation import runner

    rows = [dict(row(str(i)), episode_id=str(i), hit=i % 2) for i in range(4)]
    write_reports(rows, tmp_path, ["m"], True, "tiny")
    before = {name: (tmp_path / name).read_bytes() for name in ("table.md", "predictions.csv", "results.json")}
    assert "50.0" in before["table.md"].decode()

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runner, "_bar_plot", full_disk)  # the last of the four reports fails
    with pytest.raises(OSError, match="No space"):
        write_reports([dict(r, hit=1) for r in rows], tmp_path, ["m"], True, "tiny")
    assert {name: (tmp_path / name).read_bytes() for name in before} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["accuracy.png", "predictions.csv", "results.json", "table.md"]


def eval_args(datasets, out, *extra):
    return [
        "--preset", "tiny", "--dataset", f"paco:{datasets / 'paco'}",
        "--dataset", f"partimagenetpp:{datasets / 'pinpp'}",
        "--seeds", "2", "--limit", "2", "--cls-pool", "3", "--methods", TRUST_METHODS, "--out", str(out), "--json",
        *extra,
    ]  # fmt: skip


def without_timing(out):
    """The reports of a run minus what legitimately differs between runs (the time per prediction)."""
    report = json.loads((out / "results.json").read_text())
    report["configuration"].pop("started", None)
    for prediction in report["predictions"]:
        prediction.pop("ms")
    return (out / "table.md").read_text(), report


@pytest.fixture(scope="module")
def reference(datasets, tmp_path_factory):
    """An uninterrupted run of `eval_args`, in this process (pop-eval's main(); the process is what the
    end-to-end test runs): the tests compare their runs' reports with it."""
    out = tmp_path_factory.mktemp("reference")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        returncode = evaluate_cli.main(eval_args(datasets, out))
    assert returncode == 0
    assert json.loads(printed.getvalue())["computed"] == TOTAL
    return out


def one_line_error(result):
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "RANDOM WEIGHTS" not in result.stderr  # refused before any model loaded
    return lines[0]


@pytest.mark.parametrize(
    "extra,names",
    [
        (["--preset", "tiny-molmo2"], ["mllm", "preset"]),
        (["--prompt", "Point at the {query}."], ["prompt_template"]),
        (["--resolution", "112"], ["resolution"]),
        (["--mllm", "tiny:internvl"], ["mllm"]),
    ],
)
@pytest.mark.slow
def test_another_model_configuration_is_refused_in_one_line(datasets, reference, extra, names, run_eval):
    before = (reference / store.MAIN_LOG).read_bytes()
    line = one_line_error(run_eval(*eval_args(datasets, reference), *extra))
    assert "another model configuration" in line and "new --out" in line and "--add-config" in line
    assert all(f"{name} " in line for name in names)
    assert (reference / store.MAIN_LOG).read_bytes() == before


@SEVERAL_RUNS
@pytest.mark.slow
def test_run_changes_reuse_exactly_the_valid_predictions(datasets, reference, tmp_path, eval_here):
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    # A method more: only its 2 datasets x 2 seeds x 2 episodes are computed.
    wider = eval_here(*eval_args(datasets, out, "--methods", TRUST_METHODS + ",abl-sim-forward"))
    assert wider.returncode == 0, wider.stderr
    assert json.loads(wider.stdout)["computed"] == 8 and json.loads(wider.stdout)["reused"] == TOTAL
    # One method, a seed more: that method's earlier seeds are reused, the new seed computed.
    fewer = eval_here(*eval_args(datasets, out, "--methods", "pop-1shot", "--seeds", "3"))
    assert fewer.returncode == 0, fewer.stderr
    assert json.loads(fewer.stdout)["computed"] == 4 and json.loads(fewer.stdout)["reused"] == 8
    table = (out / "table.md").read_text()
    assert "| pop-1shot |" in table and "pop-3shot" not in table
    # Kept beside the others by request: computed afresh, reported alone.
    both = eval_here(*eval_args(datasets, out, "--prompt", "Point at the {query}.", "--add-config"))
    assert both.returncode == 0, both.stderr
    assert json.loads(both.stdout)["computed"] == TOTAL and json.loads(both.stdout)["reused"] == 0
    assert json.loads((out / "results.json").read_text())["configuration"]["model"]["prompt_template"].startswith(
        "Point at"
    )


def test_a_dataset_loaded_again_after_its_annotations_changed_gives_the_new_clicks(datasets, tmp_path):
    """The support click is computed once per loaded sample, never kept across loads by its key: a process
    that evaluates a dataset, then its corrected annotations (in-process runs, a notebook), gets clicks
    inside the corrected masks (a cache keyed by sample key alone gave the old polygon's click)."""
    data = tmp_path / "paco"
    shutil.copytree(datasets / "paco", data)
    annotations = data / "annotations" / "paco_lvis_v1_test.json"
    content = json.loads(annotations.read_text())
    key = f"paco:{content['annotations'][1]['id']}"
    before = next(sample for sample in load_dataset("paco", data) if sample.key == key)
    assert before.mask()[round(before.click[1]), round(before.click[0])]
    content["annotations"][1]["segmentation"] = polygon((10, 10, 30, 30))  # the part redrawn elsewhere
    annotations.write_text(json.dumps(content))
    after = next(sample for sample in load_dataset("paco", data) if sample.key == key)
    assert after.click != before.click
    assert 10 <= after.click[0] <= 30 and 10 <= after.click[1] <= 30


@SEVERAL_RUNS
@pytest.mark.slow
def test_dataset_content_change_recomputes_that_dataset_only(datasets, reference, tmp_path, eval_here):
    out, data = tmp_path / "out", tmp_path / "data"
    shutil.copytree(reference, out)
    shutil.copytree(datasets, data)
    annotations = data / "paco" / "annotations" / "paco_lvis_v1_test.json"
    content = json.loads(annotations.read_text())
    content["annotations"][1]["segmentation"] = polygon((71, 46, 84, 64))
    annotations.write_text(json.dumps(content))
    result = eval_here(*eval_args(data, out))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["computed"] == TOTAL // 2 and json.loads(result.stdout)["reused"] == TOTAL // 2


@pytest.mark.slow
def test_second_run_on_the_same_out_is_refused(datasets, reference, run_eval):
    lock = store.FolderLock(reference)
    lock.acquire()
    try:
        line = one_line_error(run_eval(*eval_args(datasets, reference)))
    finally:
        lock.release()
    assert f"another pop-eval is writing to {reference} (pid {os.getpid()}" in line and "another --out" in line


@pytest.mark.slow
def test_unwritable_out_is_refused_before_models_load(datasets, tmp_path, run_eval):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert "is a file" in one_line_error(run_eval(*eval_args(datasets, a_file)))
    assert "not a writable folder" in one_line_error(run_eval(*eval_args(datasets, a_file / "sub")))
    if os.geteuid() == 0:
        pytest.skip("root ignores folder permissions: the read-only folder case cannot be made here")
    read_only = tmp_path / "read-only"
    read_only.mkdir(mode=0o555)
    assert "not a writable folder" in one_line_error(run_eval(*eval_args(datasets, read_only)))


def start_and_stop(args, out, sig, after_rows):
    """Start pop-eval, send `sig` once `after_rows` predictions are saved; the finished process."""
    process = subprocess.Popen(
        [sys.executable, "-m", "pop_ros.cli.evaluate", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A test session started in the background inherits SIGINT ignored; a terminal's Ctrl-C is not.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    log = out / store.MAIN_LOG
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if log.is_file() and log.read_text().count('"key"') >= after_rows:
            process.send_signal(sig)
            break
        time.sleep(0.01)
    stdout, stderr = process.communicate(timeout=300)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


@SEVERAL_RUNS
@pytest.mark.slow
def test_ctrl_c_says_what_was_saved_and_how_to_resume(datasets, reference, tmp_path, eval_here):
    out = tmp_path / "out"
    args = eval_args(datasets, out)
    stopped = start_and_stop(args, out, signal.SIGINT, after_rows=5)
    assert stopped.returncode == 130, stopped.stderr
    last = stopped.stderr.strip().splitlines()[-1]
    assert "Traceback" not in stopped.stderr and last.startswith("interrupted: ")
    assert f"of {TOTAL} done); resume with: pop-eval --preset tiny" in last and str(out) in last
    saved = len(store.read_log(out / store.MAIN_LOG)[1])
    reported = int(re.search(rf"\((\d+) of {TOTAL} done\)", last).group(1))
    assert 5 <= saved < TOTAL and saved - 1 <= reported <= saved  # a signal between a write and its count
    resumed = eval_here(*args)
    assert resumed.returncode == 0 and json.loads(resumed.stdout)["computed"] == TOTAL - saved
    assert without_timing(out) == without_timing(reference)


@SEVERAL_RUNS
@pytest.mark.slow
def test_sigkill_and_resume_give_the_uninterrupted_reports(datasets, reference, tmp_path, eval_here):
    out = tmp_path / "out"
    args = eval_args(datasets, out)
    killed = start_and_stop(args, out, signal.SIGKILL, after_rows=10)
    assert killed.returncode == -signal.SIGKILL
    resumed = eval_here(*args)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["reused"] >= 10
    keys = [r["key"] for r in store.read_log(out / store.MAIN_LOG)[1]]
    assert len(keys) == len(set(keys)) == TOTAL  # nothing lost, nothing twice
    assert without_timing(out) == without_timing(reference)


@SEVERAL_RUNS
@pytest.mark.slow
def test_full_disk_during_the_run_is_one_line_and_resumes(datasets, reference, tmp_path, eval_here):
    out = tmp_path / "out"
    args = eval_args(datasets, out)

    def small_disk():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4000, resource.RLIM_INFINITY))

    full = subprocess.run(
        [sys.executable, "-m", "pop_ros.cli.evaluate", *args],
        capture_output=True, text=True, timeout=600, check=False, preexec_fn=small_disk,
    )  # fmt: skip
    lines = [line for line in full.stderr.splitlines() if line.startswith("error:")]
    assert full.returncode == 2 and len(lines) == 1 and "Traceback" not in full.stderr, full.stderr
    assert "I/O error" in lines[0] and "rerun the same command" in lines[0]
    saved = int(re.search(r"; (\d+) new predictions of this run are saved", lines[0]).group(1))
    assert 0 < saved < TOTAL and len(store.read_log(out / store.MAIN_LOG)[1]) == saved  # failed mid-run, no fragment
    resumed = eval_here(*args)
    assert resumed.returncode == 0, resumed.stderr
    assert without_timing(out) == without_timing(reference)


@SEVERAL_RUNS
@pytest.mark.slow
def test_two_ranks_under_torchrun_give_the_one_rank_reports(datasets, reference, tmp_path):
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "pop_ros.cli.evaluate", *eval_args(datasets, out)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    shares = [int(n) for n in re.findall(r"\((\d+) on rank [01] of 2\)", result.stderr)]
    assert len(shares) == 2 and sum(shares) == TOTAL and min(shares) > 0, result.stderr[-3000:]  # both ranks worked
    assert store.rank_logs(out) == []  # merged into the one log
    rows = store.read_log(out / store.MAIN_LOG)[1]
    assert len(rows) == len({r["key"] for r in rows}) == TOTAL
    assert without_timing(out) == without_timing(reference)


def test_a_dataset_without_splits_records_no_split(datasets):
    """PartImageNet++ has no splits: `--split test` must not invalidate its predictions."""
    pinpp = datasets / "pinpp"
    assert dataset_record("partimagenetpp", pinpp, "test") == dataset_record("partimagenetpp", pinpp, "")
    paco = datasets / "paco"
    assert dataset_record("paco", paco, "test")["split"] == "test"
    assert dataset_record("paco", paco, "test") != dataset_record("paco", paco, "val")


def test_merge_counts_the_main_logs_torn_and_bad_lines_and_warns(tmp_path, caplog):
    header = {"pop_eval": 2, "config_digest": "c", "model": {}, "run": {}}
    main = tmp_path / store.MAIN_LOG
    lines = [json.dumps(header), json.dumps(row("a")), "not json at all", json.dumps(row("b"))]
    main.write_text("\n".join(lines) + "\n" + json.dumps(row("x"))[:10])  # one bad line, one torn tail
    (tmp_path / "predictions.rank0.jsonl").write_text(json.dumps(row("c")) + "\n")
    with caplog.at_level("WARNING"):
        assert store.merge(tmp_path) == (1, 2)  # c merged; the main log's bad and torn lines dropped
    assert "merge dropped 2 torn or unreadable lines" in caplog.text
    headers, rows, torn, bad = store.read_log(main)
    assert (headers, [r["key"] for r in rows], torn, bad) == ([header], ["a", "b", "c"], 0, 0)


def test_a_complete_but_corrupt_last_line_is_bad_not_torn(tmp_path):
    path = tmp_path / store.MAIN_LOG
    path.write_text(json.dumps(row("a")) + "\ngarbage\n")  # ends with its newline: written whole
    assert store.read_log(path)[1:] == ([row("a")], 0, 1)
    path.write_text("[1, 2]\n")  # valid JSON but no prediction
    assert store.read_log(path) == ([], [], 0, 1)
    path.write_text(json.dumps(row("a")) + "\ngarb")  # no newline: cut mid-write
    assert store.read_log(path)[1:] == ([row("a")], 1, 0)


@pytest.mark.slow
def test_a_folder_whose_only_line_is_garbage_is_refused(datasets, tmp_path, run_eval):
    out = tmp_path / "out"
    out.mkdir()
    (out / store.MAIN_LOG).write_text("garbage\n")
    args = [
        "--preset",
        "tiny",
        "--dataset",
        f"paco:{datasets / 'paco'}",
        "--seeds",
        "1",
        "--limit",
        "1",
        "--cls-pool",
        "3",
    ]
    line = one_line_error(run_eval(*args, "--methods", "attention-0shot", "--out", str(out)))
    assert "without a recorded configuration" in line and "--add-config" in line
    assert (out / store.MAIN_LOG).read_text() == "garbage\n"


INTERRUPTED_DECODES = """
import signal, sys
import numpy as np
from pop_ros.evaluation.datasets import coco_segmentation_mask
square = [[4.0, 4.0, 60.0, 4.0, 60.0, 60.0, 4.0, 60.0]]
try:
    print("ready", flush=True)  # inside the try: a signal any time after it is this loop's to catch
    while True:
        coco_segmentation_mask(square, 64, 64)
except KeyboardInterrupt:
    print("KeyboardInterrupt", flush=True)
"""


def test_ctrl_c_during_mask_decoding_is_a_keyboard_interrupt():
    """numpy 2 retries pycocotools' old-style `__array__` without `copy`; a SIGINT landing in that retry
    came out as `TypeError: __array__() got an unexpected keyword argument 'copy'` (24 of 40 tries), and
    pop-eval printed a traceback instead of what it saved. Six interrupted decode loops: each ends as an
    interrupt (on the old code, all six passing had a chance of about 0.4**6 = 0.4 %)."""
    for _ in range(6):
        child = subprocess.Popen(
            [sys.executable, "-c", INTERRUPTED_DECODES], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # a shell's `&` may have ignored it
        )  # fmt: skip
        assert child.stdout.readline().strip() == "ready"
        time.sleep(0.2)  # inside the loop: most of its time is in pycocotools' decode
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=60)
        assert out.strip() == "KeyboardInterrupt" and "Traceback" not in err, err[-2000:]
