"""Evaluation harness on tiny datasets written in each dataset's real format."""

import json
import math
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest

from pop_ros.evaluation.datasets import interior_click, load_dataset, make_episodes
from pop_ros.evaluation.native import NativePointError, parse_molmo_point, parse_qwen_point
from pop_ros.evaluation.runner import hit

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


def write_paco(root, n_images=4):
    images, annotations = [], []
    categories = [{"id": 1, "name": "mug"}, {"id": 2, "name": "mug:handle"}, {"id": 3, "name": "mug:body"}]
    for i in range(n_images):
        draw(root / "images" / f"{i:012d}.jpg", dx=5 * i, seed=i)
        images.append({"id": i + 1, "file_name": f"{i:012d}.jpg", "height": H, "width": W})
        object_id = 100 + i
        annotations.append({"id": object_id, "obj_ann_id": object_id, "image_id": i + 1, "category_id": 1,
                            "segmentation": polygon((30 + 5 * i, 30, 85 + 5 * i, 80))})  # fmt: skip
        annotations.append({"id": 200 + i, "obj_ann_id": object_id, "image_id": i + 1, "category_id": 2,
                            "segmentation": polygon(shifted(HANDLE, 5 * i))})  # fmt: skip
        annotations.append({"id": 300 + i, "obj_ann_id": object_id, "image_id": i + 1, "category_id": 3,
                            "segmentation": polygon(shifted(BODY, 5 * i))})  # fmt: skip
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    data = {"images": images, "annotations": annotations, "categories": categories}
    (root / "annotations" / "paco_lvis_v1_val.json").write_text(json.dumps(data))


def write_instructpart(root, n_images=4):
    split = root / "val"
    entries = []
    for i in range(n_images):
        draw(split / "images" / f"img{i}.jpg", dx=5 * i, seed=10 + i)
        entries.append({"image_path": f"img{i}.jpg", "part_list": [
            {"object": "coffee mug", "part": "handle", "affordance": "hold", "action": "pick up",
             "instruction": ["a", "b", "c", "d", "handle of coffee mug", "f"]}]})  # fmt: skip
        mask = np.zeros((H, W), np.uint8)
        x0, y0, x1, y1 = shifted(HANDLE, 5 * i)
        mask[y0:y1, x0:x1] = 255
        (split / "masks").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(split / "masks" / f"img{i}-coffee_mug-handle.png"), mask)
    (split / "data_val.json").write_text(json.dumps(entries))


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
    samples = load_dataset(name, datasets / folder, split="val")
    assert len(samples) == count  # PACO: handle and body parts, not the objects
    handle = next(s for s in samples if s.part_name == "handle")
    assert handle.query == query and handle.image_path.is_file()
    mask = handle.mask()
    index = int(re.findall(r"\d+", handle.image_path.stem)[-1])  # images are numbered by their shift
    x0, y0, x1, y1 = shifted(HANDLE, 5 * index)
    inside = mask[y0 + 1 : y1 - 1, x0 + 1 : x1 - 1]
    assert inside.all() and mask.sum() <= (x1 - x0 + 1) * (y1 - y0 + 1)


def test_episodes_are_seeded_and_draw_supports_from_other_images(datasets):
    samples = load_dataset("paco", datasets / "paco")
    first = make_episodes(samples, shots=2, seed=0)
    again = make_episodes(samples, shots=2, seed=0)
    other = make_episodes(samples, shots=2, seed=1)
    key = [(e.episode_id.split("|")[0], [s.key for s in e.supports]) for e in first]
    assert key == [(e.episode_id.split("|")[0], [s.key for s in e.supports]) for e in again]
    assert key != [(e.episode_id.split("|")[0], [s.key for s in e.supports]) for e in other]
    for episode in first:
        assert len(episode.supports) == 2
        assert all(s.category == episode.target.category for s in episode.supports)
        assert all(s.image_path != episode.target.image_path for s in episode.supports)
    assert make_episodes(samples, shots=4, seed=0) == []  # only 3 other images per category
    assert len(make_episodes(samples, shots=1, seed=0, limit=3)) == 3


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


def test_native_point_parsers():
    assert parse_molmo_point('<point x="50.0" y="25.0" alt="handle">handle</point>', (200, 400)) == (200.0, 50.0)
    assert parse_molmo_point('<points x1="10" y1="10" x2="20" y2="20">x</points>', (100, 100)) == (10.0, 10.0)
    answer = '```json\n[{"point_2d": [140, 56], "label": "handle"}]\n```'
    assert parse_qwen_point(answer, (280, 560), (480, 960)) == (240.0, 96.0)
    assert parse_qwen_point('{"point_2d": [10, 20]}', (100, 100), (100, 100)) == (10.0, 20.0)
    bad = [
        (lambda: parse_molmo_point("I cannot see a mug.", (10, 10)), "no <point"),
        (lambda: parse_molmo_point('<point x="150" y="10">', (10, 10)), "outside"),
        (lambda: parse_qwen_point('[{"point_2d": [1, ', (10, 10), (10, 10)), "malformed JSON"),
        (lambda: parse_qwen_point('[{"bbox_2d": [1, 2, 3, 4]}]', (10, 10), (10, 10)), "no point_2d"),
        (lambda: parse_qwen_point("no json here", (10, 10), (10, 10)), "no JSON"),
        (lambda: parse_qwen_point('[{"point_2d": ["a", 2]}]', (10, 10), (10, 10)), "no point_2d"),
    ]
    for call, message in bad:
        with pytest.raises(NativePointError, match=message):
            call()


def run_eval(*args):
    return subprocess.run(
        [sys.executable, "-m", "pop_ros.cli.evaluate", *args], capture_output=True, text=True, timeout=600, check=False
    )


def test_pop_eval_end_to_end_writes_reports_and_resumes(datasets, tmp_path):
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
    assert all(r["hit"] in (0, 1) for r in rows)
    with (out / "predictions.csv").open() as handle:
        assert len(handle.readlines()) == len(rows) + 1
    cached = (out / "predictions.jsonl").read_text().count("\n")
    second = run_eval(*args)  # resumes: nothing recomputed, same answers
    assert second.returncode == 0, second.stderr
    assert (out / "predictions.jsonl").read_text().count("\n") == cached
    assert json.loads(second.stdout)["summary"] == summary


def test_pop_eval_bad_input_is_one_line(tmp_path):
    missing = run_eval("--preset", "tiny", "--dataset", f"paco:{tmp_path}")
    assert missing.returncode == 2 and "does not exist" in missing.stderr and "Traceback" not in missing.stderr
    wrong = run_eval("--preset", "tiny", "--dataset", "coco:/x")
    assert wrong.returncode == 2 and "expected NAME:ROOT" in wrong.stderr
