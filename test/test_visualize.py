"""The demo's explained pictures: the target beside its support exemplars, text above, the red
random-weights warning exactly when the weights are random; the contact sheet's grid."""

from __future__ import annotations

import numpy as np

from pop_ros.visualize import WARNING_RED, contact_sheet, explained_picture

SUPPORT_RGB = (10, 200, 30)  # a colour found nowhere else in the picture


def picture(random_weights: bool, supports: int = 2) -> np.ndarray:
    panel = np.full((240, 320, 3), 128, np.uint8)  # the node's overlay: here a grey frame
    exemplar = np.zeros((100, 150, 3), np.uint8)
    exemplar[:] = SUPPORT_RGB
    return explained_picture(
        panel, "handle of the mug", 0.5, (100.0, 120.0), [(exemplar, (75.0, 50.0))] * supports,
        support_set="mug_handle", point_m=(0.1, 0.2, 0.8), random_weights=random_weights, caption="scene_0.png",
    )  # fmt: skip


def pixels_of(image: np.ndarray, bgr: tuple[int, int, int]) -> np.ndarray:
    return np.all(image == np.array(bgr, np.uint8), axis=2)


def test_target_is_scaled_to_480_px_beside_the_support_column_with_text_above():
    image = picture(random_weights=False)
    assert image.dtype == np.uint8 and image.shape == (78 + 480 + 28, 640 + 220 + 30, 3)
    target = image[78 : 78 + 480, 10 : 10 + 640]
    assert pixels_of(target, (128, 128, 128)).all()  # the panel, scaled 2x, untouched
    # Both exemplars are in the right-hand column (their colour in BGR), none of it elsewhere.
    support_bgr = SUPPORT_RGB[::-1]
    column = image[:, 10 + 640 + 10 :]
    assert pixels_of(column, support_bgr).sum() > 2 * 0.8 * 146 * 220 * (100 / 150)
    assert not pixels_of(image[:, : 10 + 640 + 10], support_bgr).any()
    assert pixels_of(column, (0, 255, 0)).any()  # the click marks (green crosses) on the exemplars
    header = image[:78]
    assert (header < 100).all(axis=2).sum() > 500  # dark text on white: the query and the numbers
    assert not pixels_of(image, WARNING_RED).any()  # real weights: no warning


def test_random_weights_draw_a_red_frame_and_a_band_on_the_target():
    image = picture(random_weights=True)
    assert pixels_of(image[:3], WARNING_RED).mean() > 0.95 and pixels_of(image[-3:], WARNING_RED).mean() > 0.95
    band = image[78 + 480 - 40 : 78 + 480, 10 : 10 + 640]  # across the bottom of the target
    assert pixels_of(band, WARNING_RED).mean() > 0.5
    assert (band == 255).all(axis=2).sum() > 300  # its white text


def test_zero_shot_has_no_exemplar_and_says_so():
    image = picture(random_weights=False, supports=0)
    assert not pixels_of(image, SUPPORT_RGB[::-1]).any()


def test_contact_sheet_lays_pictures_out_in_rows():
    pictures = [np.full((100, 200, 3), value, np.uint8) for value in (10, 20, 30)]
    sheet = contact_sheet(pictures, columns=2, cell_width=100)
    assert sheet.shape == (2 * (50 + 8) + 8, 2 * (100 + 8) + 8, 3)
    assert (sheet[8:58, 8:108] == 10).all() and (sheet[8:58, 116:216] == 20).all()
    assert (sheet[66:116, 8:108] == 30).all() and (sheet[66:116, 116:216] == 235).all()  # empty cell
