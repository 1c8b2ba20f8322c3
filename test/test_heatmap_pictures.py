"""What people see of an answer: the heatmap overlay names its query (one ~/heatmap topic for every
query, so two parts' pictures are told apart), carries its colour scale, colours a value the same in
every picture, and says when the weights are random; pop-point saves the same picture; pop-bag's video
is written with a codec browsers play when this OpenCV has one."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from sensor_msgs.msg import Image

from pop_ros.clients.ros_client import LIBRARY
from pop_ros.messages.image_conversion import to_rgb8
from pop_ros.paths import SAMPLE_DIR
from pop_ros.visualize import heatmap_colours, heatmap_label, overlay, video_writer
from pop_ros_interfaces.srv import PointToPart
from test.conftest import colour_msg, request, scene, wait_for


def peaked(shape, peak_value=1.0, at=(120, 160)) -> np.ndarray:
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    return (peak_value * np.exp(-((rows - at[0]) ** 2 + (cols - at[1]) ** 2) / 800.0)).astype(np.float32)


def test_the_overlay_names_its_query_and_shows_its_colour_scale():
    image = scene(0)
    heatmap = peaked(image.shape[:2])
    plain = overlay(image, heatmap, (160, 120), colour_scale=False)
    labelled = overlay(image, heatmap, (160, 120), label=heatmap_label("handle of the mug", "mug_handle"))
    corner = (slice(0, 20), slice(0, 120))
    assert (labelled[corner] != plain[corner]).any()
    assert heatmap_label("handle of the mug", "mug_handle") == "handle of the mug [mug_handle]"
    assert heatmap_label("lid") == "lid"
    # The scale at the right edge: the colour of 1 at its top, of 0 at its bottom.
    bar = labelled[30:210, 305:312].astype(int)
    top, bottom = heatmap_colours(np.array([[1.0]]))[0, 0], heatmap_colours(np.array([[0.0]]))[0, 0]
    assert np.abs(bar[1] - top).max(axis=-1).min() <= 8 and np.abs(bar[-2] - bottom).max(axis=-1).min() <= 8


def test_a_value_has_the_same_colour_in_every_picture():
    """Fixed range [0, 1]: 0.5 is the same colour whether the picture's highest value is 1 or 0.5."""
    black = np.zeros((60, 80, 3), np.uint8)
    high, low = np.full((60, 80), 0.5, np.float32), np.full((60, 80), 0.5, np.float32)
    high[0, 0] = 1.0
    first = overlay(black, high, None, colour_scale=False)
    second = overlay(black, low, None, colour_scale=False)
    np.testing.assert_array_equal(first[30, 40], second[30, 40])
    np.testing.assert_array_equal(
        heatmap_colours(np.array([[0.5, 2.0, -1.0]]))[0], heatmap_colours(np.array([[0.5, 1.0, 0.0]]))[0]
    )


def red_band(picture: np.ndarray) -> bool:
    """Whether the picture's bottom rows are mostly the warning red (BGR)."""
    bottom = picture[-6:].reshape(-1, 3).astype(int)
    red = (bottom[:, 2] > 150) & (bottom[:, 0] < 60) & (bottom[:, 1] < 60)
    return red.mean() > 0.6


def test_random_weights_put_a_red_band_on_the_overlay():
    image, heatmap = scene(1), peaked((240, 320))
    assert red_band(overlay(image, heatmap, (160, 120), random_weights=True))
    assert not red_band(overlay(image, heatmap, (160, 120)))


def test_pop_point_saves_the_overlay_labelled_like_the_demo(tmp_path, capsys):
    from pop_ros.cli import point

    saved = tmp_path / "heat.png"
    args = ["--preset", "tiny", "--target", str(SAMPLE_DIR / "scene_0.png"), "--library", str(LIBRARY), "--json",
            "--support-set", "mug_handle", "--save-heatmap", str(saved)]  # fmt: skip
    assert point.main(args) == 0
    output = json.loads(capsys.readouterr().out)
    assert output["random_weights"] is True
    picture = cv2.imread(str(saved))
    assert red_band(picture)  # random weights say so on the picture itself
    unlabelled = overlay(scene(0), np.zeros((240, 320), np.float32), None, colour_scale=False)
    assert (picture[0:20, 0:120] != unlabelled[0:20, 0:120]).any()


def test_the_video_codec_is_one_browsers_play_where_opencv_has_one(tmp_path):
    path = tmp_path / "v.mp4"
    writer, fourcc, description = video_writer(path, 10.0, (320, 240))
    assert writer is not None and description
    for index in range(5):
        writer.write(np.full((240, 320, 3), index * 40, np.uint8))
    writer.release()
    assert int(cv2.VideoCapture(str(path)).get(cv2.CAP_PROP_FRAME_COUNT)) == 5
    probe = cv2.VideoWriter(str(tmp_path / "probe.mp4"), cv2.VideoWriter_fourcc(*"vp09"), 10.0, (320, 240))
    if probe.isOpened():  # this OpenCV encodes VP9 (the PyPI wheels do; they have no H.264): a browser codec
        assert fourcc in ("avc1", "vp09"), fourcc
    probe.release()


def test_the_node_s_heatmap_names_the_query_it_shows(inprocess):
    ros, node, _ = inprocess("heatlabel", f"support_library:={LIBRARY}")
    pictures = ros.collect(Image, "/heatlabel/pop_node/heatmap")
    raw = ros.collect(Image, "/heatlabel/pop_node/heatmap_raw")
    for index, (query, support_set) in enumerate((("handle of the mug", "mug_handle"), ("neck", "bottle_neck"))):
        image = colour_msg(ros.now_stamp(), frame_id="heat_optical")
        answer = ros.call(PointToPart, "/heatlabel/pop_node/point_to_part", request(query, support_set, image))
        assert answer.success, answer.message
        assert wait_for(lambda: len(pictures) > index and len(raw) > index, 30)  # noqa: B023 - read at once
        picture, values = pictures[index], raw[index]
        assert picture.header.frame_id == "heat_optical"  # the camera's frame, whatever the label
        heatmap = np.frombuffer(bytes(values.data), np.float32).reshape(values.height, values.width)
        expected = overlay(scene(0), heatmap, (answer.u, answer.v), label=heatmap_label(query, support_set))
        np.testing.assert_array_equal(cv2.cvtColor(to_rgb8(picture), cv2.COLOR_RGB2BGR), expected)


def test_the_readme_s_method_figure_is_drawn_from_the_pipeline_s_own_maps(tmp_path):
    """tools/make_method_figure.py, which drew docs/images/method-scene_1-bottle_neck.jpg: the text
    prior and the visual maps are the ones the pipeline fused (their product is its heatmap)."""
    import importlib.util

    from pop_ros.core.fusion import fuse
    from pop_ros.paths import SOURCE_ROOT

    spec = importlib.util.spec_from_file_location("make_method_figure", SOURCE_ROOT / "tools" / "make_method_figure.py")
    figure_tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(figure_tool)
    out = tmp_path / "method.jpg"
    assert figure_tool.main(["--out", str(out)]) == 0
    panels_h, panels_w = 2 * figure_tool.PANEL_H + 3 * figure_tool.GAP, 2 * figure_tool.PANEL_W + 4 * figure_tool.GAP
    assert cv2.imread(str(out)).shape[:2] == (panels_h + 40, panels_w + 200)  # title; exemplar column
    from pop_ros.pipeline import PartPointer
    from pop_ros.supports import SupportLibrary

    pointer = PartPointer.from_preset("tiny", library=SupportLibrary.load(LIBRARY))
    result, prior, maps = figure_tool.capture_maps(pointer, scene(1), "bottle_neck")
    assert prior is not None and maps is not None and maps.shape[0] == 3
    fused = fuse(prior, maps, pointer.settings.shot_combination, int(pointer.settings.upsample))
    assert float(fused.max()) > 0 and result.heatmap.max() == pytest.approx(1.0)
