"""Evaluation harness on tiny datasets written in each dataset's real format."""

import json
import logging
import math
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest

from pop_ros.evaluation.datasets import DatasetError, interior_click, load_dataset, make_episodes, readable_name
from pop_ros.evaluation.native import NativePointError, parse_molmo2_points, parse_molmo_point, parse_qwen_point
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


def test_episodes_are_seeded_and_draw_supports_from_other_images(datasets):
    samples = load_dataset("paco", datasets / "paco", split="test")
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
