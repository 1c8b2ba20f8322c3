"""pop-point: every argument mistake is found before any model loads (torch is not even imported),
each --query can carry its own support set (QUERY@SET, or --support-set repeated and paired in
order), and the plain output is one readable line per query."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import pytest

from pop_ros.clients.ros_client import LIBRARY
from pop_ros.paths import SAMPLE_DIR
from test.conftest import random_image

# Runs pop-point's main in a fresh interpreter, then reports whether a model could have loaded:
# the models need torch, so torch absent from sys.modules means no model was loaded (or imported).
PROBE = """
import sys
from pop_ros.cli import point
status = point.main(sys.argv[1:])
print(f"exit={status} torch_imported={'torch' in sys.modules}")
"""


def pop_point_without_models(*args: str) -> tuple[int, str, str]:
    completed = subprocess.run(
        [sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=120, check=False
    )
    return completed.returncode, completed.stdout.strip(), completed.stderr.strip()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    import numpy as np

    folder = tmp_path_factory.mktemp("pop_point")
    rng = np.random.default_rng(0)
    cv2.imwrite(str(folder / "target.png"), random_image(rng, 60, 80))
    cv2.imwrite(str(folder / "support.png"), random_image(rng, 60, 80))
    (folder / "library.yaml").write_text(
        "sets:\n"
        "  mug_handle:\n    query: handle of the mug\n    exemplars:\n      - {image: support.png, click: [10, 10]}\n"
        "  unnamed:\n    exemplars:\n      - {image: support.png, click: [20, 20]}\n"
    )
    return folder


@pytest.mark.parametrize(
    "args,message",
    [
        ([], "error: nothing to point at: give --query TEXT (0-shot, or with --support IMAGE:U,V) and/or "
             "--support-set NAME with --library (given only: --target {d}/target.png)"),
        (["--support", "{d}/support.png:5,5"],
         "error: --support gives exemplar clicks but no part name: add --query TEXT "
         "(given: --target {d}/target.png --support {d}/support.png:5,5)"),
        (["--library", "{d}/library.yaml"],
         "error: nothing to point at: give --query TEXT (0-shot, or with --support IMAGE:U,V) and/or "
         "--support-set NAME with --library (given only: --target {d}/target.png --library {d}/library.yaml)"),
        (["--query", "lid", "--library", "{d}/library.yaml"],
         "error: --library needs --support-set NAME or --query QUERY@SET"),
        (["--query", "handle@mug_handle"], "error: QUERY@SET needs --library (the YAML with the set)"),
        (["--query", "handle@"], "error: --query 'handle@': no support set name after '@'"),
        (["--query", "a", "--query", "b", "--query", "c", "--support-set", "x", "--support-set", "y",
          "--library", "{d}/library.yaml"], "error: 3 --query and 2 --support-set: give one --support-set for all"),
        (["--query", "a@unnamed", "--query", "b", "--support-set", "mug_handle", "--support-set", "other",
          "--library", "{d}/library.yaml"],
         "error: --query 'a@unnamed' names set 'unnamed' but is paired with --support-set mug_handle"),
        (["--support-set", "unnamed", "--library", "{d}/library.yaml"],
         "error: --support-set unnamed: support set 'unnamed' has no default query; give --query 'TEXT@unnamed'"),
        (["--query", "lid@nope", "--library", "{d}/library.yaml"],
         "error: support set 'nope' is not in {d}/library.yaml (known: mug_handle, unnamed)"),
        (["--query", "lid@mug_handle", "--support", "{d}/support.png:5,5", "--library", "{d}/library.yaml"],
         "error: use --support or a support set (--support-set, QUERY@SET), not both"),
        (["--query", "lid", "--query", " "], "error: --query ' ': request 1: the query is empty"),
    ],
)  # fmt: skip
@pytest.mark.slow
def test_argument_mistakes_are_one_line_before_any_model_loads(files, args, message):
    args = [a.replace("{d}", str(files)) for a in args]
    status, stdout, stderr = pop_point_without_models(
        "--preset", "qwen2.5-vl-7b", "--target", f"{files}/target.png", *args
    )
    assert status == 0 and stdout == "exit=2 torch_imported=False", (stdout, stderr)
    assert stderr.startswith(message.replace("{d}", str(files))), stderr
    assert len(stderr.splitlines()) == 1


@pytest.mark.slow
def test_a_run_that_would_load_models_does_import_torch(files):
    """The probe can fail: with valid arguments the model load starts (and fails on the unknown hub id)."""
    status, stdout, stderr = pop_point_without_models(
        "--preset", "qwen2.5-vl-3b", "--mllm", "pop-ros-test/not-a-model", "--visual", "pop-ros-test/none",
        "--target", f"{files}/target.png", "--query", "lid",
    )  # fmt: skip
    assert stdout == "exit=2 torch_imported=True", (stdout, stderr)
    assert "pop-ros-test/none" in stderr


def test_each_query_is_answered_with_its_own_set(capsys):
    """'cap of the bottle' must use the bottle exemplars, 'handle' the mug ones: as two single calls do."""
    from pop_ros.cli import point
    from pop_ros.pipeline import PartPointer, PointerSettings
    from pop_ros.supports import SupportLibrary, read_rgb

    target = str(SAMPLE_DIR / "scene_0.png")
    common = ["--preset", "tiny", "--target", target, "--library", str(LIBRARY), "--json"]
    paired = ["--query", "cap of the bottle", "--support-set", "bottle_neck", "--query", "handle", "--support-set",
              "mug_handle"]  # fmt: skip
    named = ["--query", "cap of the bottle@bottle_neck", "--query", "handle@mug_handle"]
    outputs = []
    for args in (paired, named):
        assert point.main([*common, *args]) == 0
        outputs.append(json.loads(capsys.readouterr().out))
    for output in outputs:
        assert [(r["query"], r["support_set"]) for r in output["results"]] == [
            ("cap of the bottle", "bottle_neck"),
            ("handle", "mug_handle"),
        ]
    pointer = PartPointer.from_preset(
        "tiny", library=SupportLibrary.load(LIBRARY), settings=PointerSettings(frame_cache_size=0)
    )
    image = read_rgb(target)
    for query, set_name, result in zip(("cap of the bottle", "handle"), ("bottle_neck", "mug_handle"),
                                       outputs[0]["results"], strict=True):  # fmt: skip
        alone = pointer.point(image, query, support_set=set_name)
        assert (result["u"], result["v"]) == (alone.u, alone.v)
        assert outputs[1]["results"][[r["query"] for r in outputs[1]["results"]].index(query)]["u"] == alone.u


def test_sets_alone_ask_each_set_s_default_query(capsys):
    from pop_ros.cli import point

    args = ["--preset", "tiny", "--target", str(SAMPLE_DIR / "scene_1.png"), "--library", str(LIBRARY), "--json"]
    assert point.main([*args, "--support-set", "mug_handle", "--support-set", "bottle_neck"]) == 0
    output = json.loads(capsys.readouterr().out)
    assert [(r["query"], r["support_set"]) for r in output["results"]] == [
        ("handle of the mug", "mug_handle"),
        ("neck of the bottle", "bottle_neck"),
    ]


def test_plain_output_is_one_line_per_query():
    from pop_ros.cli.point import plain_lines

    single = {"u": 412.04, "v": 233.0, "score": 0.73449, "query": "handle of the mug", "support_set": "mug_handle",
              "num_shots": 3, "used_text": True, "preset": "qwen2.5-vl-7b", "random_weights": False}  # fmt: skip
    assert plain_lines(single) == ["'handle of the mug' [mug_handle, 3 shots]: pixel (412.0, 233.0), score 0.734"]
    many = {
        "results": [
            {**single, "heatmap_png": "/tmp/h_0.png"},
            {"u": 5.0, "v": 6.25, "score": 0.5, "query": "lid", "support_set": "", "num_shots": 0, "used_text": True,
             "point_m": [0.01, -0.02, 0.8]},
            {"u": 1.0, "v": 2.0, "score": 0.1, "query": "rim", "support_set": "", "num_shots": 1, "used_text": False},
        ],
        "preset": "tiny",
        "random_weights": True,
    }  # fmt: skip
    assert plain_lines(many) == [
        "RANDOM WEIGHTS (preset tiny): these points are meaningless",
        "'handle of the mug' [mug_handle, 3 shots]: pixel (412.0, 233.0), score 0.734, overlay /tmp/h_0.png",
        "'lid' [0-shot]: pixel (5.0, 6.2), 3D (0.010, -0.020, 0.800) m, score 0.500",
        "'rim' [1 shot, visual only]: pixel (1.0, 2.0), score 0.100",
    ]


@pytest.mark.slow
def test_help_documents_query_at_set_and_pairing():
    completed = subprocess.run(
        [sys.executable, "-m", "pop_ros.cli.point", "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert completed.returncode == 0
    assert "--query QUERY[@SET]" in completed.stdout
    assert "once per --query (paired in order)" in " ".join(completed.stdout.split())
    assert '--query "handle of the mug@mug_handle"' in completed.stdout  # the example in the epilog


@pytest.mark.parametrize(
    "args,message",
    [
        (["--max-instances", "-1"], "error: --max-instances must be in [0, 64], got -1"),
        (["--depth", "{d}/depth.png"], "error: --depth needs --camera-info"),
        (["--camera-info", "{d}/camera.yaml"], "error: --camera-info needs --depth"),
        (["--cloud-out", "{d}/c.ply"], "error: --cloud-out needs --depth and --camera-info"),
        (["--depth", "{d}/depth.png", "--camera-info", "{d}/camera.yaml", "--cloud-out", "{d}/c.xyz"],
         "error: --cloud-out {d}/c.xyz: needs a cloud file name ending in .ply, .pcd"),
        (["--roi", "1,2,3"], "error: --roi '1,2,3': expected X,Y,W,H"),
        (["--roi", "5,5,0,10"], "error: --roi '5,5,0,10': the region of interest has zero area"),
        (["--roi", "90,5,10,10"], "error: --roi '90,5,10,10': the region of interest lies outside the 80x60 target"),
        (["--depth", "{d}/depth.png", "--camera-info", "{d}/bad_camera.yaml"],
         "error: --camera-info {d}/bad_camera.yaml: no camera_matrix (or k)"),
        (["--out", "{d}/target.png"], "error: --out {d}/target.png: is a file, not a folder"),
    ],
)  # fmt: skip
def test_region_argument_mistakes_are_one_line_before_any_model_loads(files, args, message):
    import numpy as np

    cv2.imwrite(str(files / "depth.png"), np.full((60, 80), 1000, np.uint16))
    (files / "camera.yaml").write_text(CAMERA_YAML.format(w=80, h=60))
    (files / "bad_camera.yaml").write_text("image_width: 80\n")
    args = [a.replace("{d}", str(files)) for a in args]
    status, stdout, stderr = pop_point_without_models(
        "--preset", "qwen2.5-vl-7b", "--target", f"{files}/target.png", "--query", "lid", *args
    )
    assert status == 0 and stdout == "exit=2 torch_imported=False", (stdout, stderr)
    assert stderr.startswith(message.replace("{d}", str(files))), stderr


CAMERA_YAML = """image_width: {w}
image_height: {h}
camera_name: test
camera_matrix: {{rows: 3, cols: 3, data: [300.0, 0, 159.5, 0, 300.0, 119.5, 0, 0, 1]}}
distortion_model: plumb_bob
distortion_coefficients: {{rows: 1, cols: 5, data: [0, 0, 0, 0, 0]}}
"""


def test_out_folder_is_created_when_it_does_not_exist(tmp_path, capsys):
    """`--out results/` as the README writes it: the folder (and its parents) need not exist yet."""
    from pop_ros.cli import point

    out = tmp_path / "results" / "run_1"
    args = ["--preset", "tiny", "--target", str(SAMPLE_DIR / "scene_0.png"), "--library", str(LIBRARY), "--json",
            "--support-set", "mug_handle", "--out", f"{out}/"]  # fmt: skip
    assert point.main(args) == 0, capsys.readouterr().err
    output = json.loads(capsys.readouterr().out)
    assert output["mask_png"] == str(out / "mask.png") and (out / "mask.png").is_file()


def test_depth_camera_info_instances_roi_and_region_files(tmp_path, capsys):
    """On a flat depth at 1.2 m: each instance's 3D point is the pinhole deprojection of its pixel, the
    answer lies in the ROI, the mask holds the answer pixel and the cloud's points lie on the plane."""
    import numpy as np

    from pop_ros.cli import point

    cv2.imwrite(str(tmp_path / "depth.png"), np.full((240, 320), 1200, np.uint16))  # 16UC1 millimetres
    (tmp_path / "camera.yaml").write_text(CAMERA_YAML.format(w=320, h=240))
    args = ["--preset", "tiny", "--target", str(SAMPLE_DIR / "scene_0.png"), "--library", str(LIBRARY), "--json",
            "--support-set", "mug_handle", "--max-instances", "3", "--roi", "160,0,160,240",
            "--depth", str(tmp_path / "depth.png"), "--camera-info", str(tmp_path / "camera.yaml"),
            "--out", str(tmp_path)]  # fmt: skip
    assert point.main(args) == 0
    output = json.loads(capsys.readouterr().out)
    assert 160 <= output["u"] < 320 and output["instances"][0]["u"] == output["u"]
    for instance in output["instances"]:
        expected = [(instance["u"] - 159.5) * 1.2 / 300.0, (instance["v"] - 119.5) * 1.2 / 300.0, 1.2]
        assert instance["point_m"] == pytest.approx(expected, abs=1e-5)
    assert output["point_m"] == output["instances"][0]["point_m"]
    mask = cv2.imread(output["mask_png"], cv2.IMREAD_GRAYSCALE)
    assert mask.shape == (240, 320) and mask[round(output["v"]), round(output["u"])] == 255
    lines = (tmp_path / "cloud.ply").read_text().splitlines()
    count = int(next(line for line in lines if line.startswith("element vertex")).split()[-1])
    assert count == output["cloud_points"] == int((mask > 0).sum())
    z = [float(line.split()[2]) for line in lines[lines.index("end_header") + 1 :]]
    assert z == pytest.approx([1.2] * count, abs=1e-6)
