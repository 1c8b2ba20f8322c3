"""Pictures for people: heatmap overlays (RViz, the CLI's --save-heatmap), teaching thumbnails, and the
demo's explained pictures and contact sheet."""

from __future__ import annotations

import cv2
import numpy as np

# The heatmap's colours: one fixed map over one fixed range, [0, 1] = the share of the answer's peak
# (the pipeline's heatmap is the fused map divided by its maximum; ~/heatmap_raw holds those values).
# Never rescaled per picture, so a colour means the same share in every picture; the scale is drawn.
HEATMAP_COLOURMAP = cv2.COLORMAP_JET
HEATMAP_RANGE = (0.0, 1.0)


def heatmap_colours(values: np.ndarray) -> np.ndarray:
    """BGR uint8 of `values` on the fixed range HEATMAP_RANGE (clipped), never normalised per image."""
    low, high = HEATMAP_RANGE
    scaled = np.clip((np.asarray(values, np.float32) - low) / (high - low), 0.0, 1.0)
    return cv2.applyColorMap(np.round(scaled * 255.0).astype(np.uint8), HEATMAP_COLOURMAP)


def overlay(
    image_rgb: np.ndarray,
    heatmap: np.ndarray,
    point_uv: tuple[float, float] | None,
    alpha: float = 0.45,
    label: str = "",
    random_weights: bool = False,
    colour_scale: bool = True,
) -> np.ndarray:
    """BGR uint8 `(H, W, 3)`: the image with the [0, 1] heatmap blended in (fixed colours, see
    HEATMAP_RANGE) and the point marked; `label` (the query) on a dark box at the top left, the colour
    scale at the right edge, and with `random_weights` a red band saying the point is meaningless."""
    if heatmap.shape != image_rgb.shape[:2]:
        raise ValueError(f"heatmap {heatmap.shape} and image {image_rgb.shape[:2]} differ in size")
    image_bgr = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)
    blended = cv2.addWeighted(image_bgr, 1.0 - alpha, heatmap_colours(heatmap), alpha, 0.0)
    if point_uv is not None:
        centre = (int(round(point_uv[0])), int(round(point_uv[1])))
        radius = max(4, min(image_rgb.shape[:2]) // 40)
        cv2.circle(blended, centre, radius + 2, (0, 0, 0), 2, cv2.LINE_AA)
        cv2.circle(blended, centre, radius, (255, 255, 255), 2, cv2.LINE_AA)
        cv2.drawMarker(blended, centre, (0, 255, 0), cv2.MARKER_CROSS, radius * 2, 2, cv2.LINE_AA)
    if colour_scale:
        draw_colour_scale(blended)
    if label:
        label_box(blended, label, (0, 0))
    if random_weights:
        warning_band(blended, "RANDOM WEIGHTS: this point is meaningless")
    return blended


def heatmap_label(query: str, support_set: str = "") -> str:
    """Which query a heatmap shows: `query [set]` (the node, pop-point and pop-bag label it alike)."""
    return f"{query} [{support_set}]" if support_set else query


def text_scale(image: np.ndarray) -> float:
    """A font scale legible on `image` (0.45 on 320x240, 0.9 on 1280x720)."""
    return float(np.clip(min(image.shape[:2]) / 530.0, 0.4, 1.2))


def label_box(image_bgr: np.ndarray, text: str, corner: tuple[int, int], max_width: int | None = None) -> int:
    """White text on an opaque dark box with its top left at `corner` (legible on any heatmap and
    after video compression); returns the box's height. Drawn in place. A negative corner y counts
    from the bottom (-1: the box ends at the last row)."""
    scale = text_scale(image_bgr)
    thickness = 1 if scale < 0.7 else 2
    text = _ascii(text)
    limit = (max_width or image_bgr.shape[1]) - corner[0] - 8
    while scale > 0.3 and cv2.getTextSize(text, _FONT, scale, thickness)[0][0] > limit:
        scale *= 0.9
    (width, height), baseline = cv2.getTextSize(text, _FONT, scale, thickness)
    pad = max(3, height // 3)
    x, y = corner
    box_h = height + baseline + 2 * pad
    if y < 0:
        y = image_bgr.shape[0] + y + 1 - box_h - 1
    cv2.rectangle(image_bgr, (x, y), (x + width + 2 * pad, y + box_h), (25, 25, 25), -1)
    cv2.putText(image_bgr, text, (x + pad, y + pad + height), _FONT, scale, (255, 255, 255), thickness, cv2.LINE_AA)
    return box_h


def warning_band(image_bgr: np.ndarray, text: str) -> None:
    """A red band with white text across the bottom of the image, in place."""
    scale = text_scale(image_bgr)
    band_h = int(cv2.getTextSize("Ag", _FONT, scale, 1)[0][1] * 2.2) + 4
    top = image_bgr.shape[0] - band_h
    cv2.rectangle(image_bgr, (0, top), (image_bgr.shape[1] - 1, image_bgr.shape[0] - 1), WARNING_RED, -1)
    _put_text(image_bgr, text, (6, image_bgr.shape[0] - band_h // 3), scale, (255, 255, 255), image_bgr.shape[1] - 12)


def draw_colour_scale(image_bgr: np.ndarray) -> None:
    """The heatmap's colour scale at the right edge, in place: the colours from 1 (the answer's peak,
    top) to 0 (bottom) with ticks 1, .5, 0."""
    height, width = image_bgr.shape[:2]
    bar_w = max(8, width // 40)
    top, bottom = height // 8, height - height // 8
    left = width - bar_w - 4
    values = np.linspace(1.0, 0.0, bottom - top, dtype=np.float32)[:, None].repeat(bar_w, axis=1)
    image_bgr[top:bottom, left : left + bar_w] = heatmap_colours(values)
    cv2.rectangle(image_bgr, (left - 1, top - 1), (left + bar_w, bottom), (255, 255, 255), 1)
    scale = text_scale(image_bgr) * 0.8
    for value, y in ((1.0, top), (0.5, (top + bottom) // 2), (0.0, bottom - 1)):
        text = f"{value:g}"
        (text_w, text_h), _ = cv2.getTextSize(text, _FONT, scale, 1)
        origin = (left - text_w - 4, min(height - 2, max(text_h + 1, y + text_h // 2)))
        cv2.putText(image_bgr, text, origin, _FONT, scale, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(image_bgr, text, origin, _FONT, scale, (255, 255, 255), 1, cv2.LINE_AA)


# Video codecs to try, in order: H.264 plays everywhere; VP9 in MP4 plays in Chrome, Firefox and Edge;
# MPEG-4 Part 2 ('mp4v') is the last resort (players such as VLC, not browsers). OpenCV's PyPI wheels
# carry no H.264 encoder (licensing), so there the probe settles on VP9.
VIDEO_CODECS = (("avc1", "H.264"), ("vp09", "VP9"), ("mp4v", "MPEG-4 Part 2, not played by browsers"))


def video_writer(path, fps: float, size: tuple[int, int]):
    """(opened cv2.VideoWriter, fourcc, description) for an .mp4 at `path`, the first of VIDEO_CODECS
    this OpenCV can encode; (None, "", "") when none opens."""
    # A codec that fails to open makes OpenCV log errors ("Could not open codec h264_v4l2m2m"): the
    # probe's expected outcome, not the user's problem; the chosen codec is reported instead.
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        for fourcc, description in VIDEO_CODECS:
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, size)
            if writer.isOpened():
                return writer, fourcc, description
            writer.release()
    finally:
        cv2.utils.logging.setLogLevel(level)
    return None, "", ""


THUMBNAIL_SIZE = 128  # pixels, square: what an operator needs to see which part a click took


def click_thumbnail(image_rgb: np.ndarray, click_uv: tuple[float, float], size: int = THUMBNAIL_SIZE) -> np.ndarray:
    """RGB uint8 `(h, w, 3)` with h, w <= size: the image around the click (the box shifted inside the
    image at its borders), with a ring of radius 6 drawn around the click."""
    height, width = image_rgb.shape[:2]
    u, v = int(round(click_uv[0])), int(round(click_uv[1]))
    box_w, box_h = min(size, width), min(size, height)
    left = min(max(u - box_w // 2, 0), width - box_w)
    top = min(max(v - box_h // 2, 0), height - box_h)
    crop = image_rgb[top : top + box_h, left : left + box_w].copy()  # drawn on: never a view of the frame
    centre = (u - left, v - top)
    cv2.circle(crop, centre, 7, (0, 0, 0), 1, cv2.LINE_8)
    cv2.circle(crop, centre, 6, (255, 255, 255), 1, cv2.LINE_8)
    return crop


# ---- pictures that explain a result: `make demo`'s output ------------------------------------------------
PANEL_HEIGHT = 480  # pixels: the target is scaled to this height so that the text stays legible
SUPPORT_COLUMN_WIDTH = 220
WARNING_RED = (0, 0, 200)  # BGR
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _ascii(text: str) -> str:
    """OpenCV's Hershey fonts draw ASCII only."""
    return text.encode("ascii", "replace").decode("ascii")


def _put_text(image: np.ndarray, text: str, origin: tuple[int, int], scale: float, colour, max_width: int) -> None:
    """Text with its baseline at `origin`, shrunk until it fits `max_width` pixels."""
    text = _ascii(text)
    thickness = 2 if scale >= 0.6 else 1
    while scale > 0.3 and cv2.getTextSize(text, _FONT, scale, thickness)[0][0] > max_width:
        scale *= 0.9
    cv2.putText(image, text, origin, _FONT, scale, colour, thickness, cv2.LINE_AA)


def _fit(image: np.ndarray, width: int, height: int) -> tuple[np.ndarray, float]:
    """The image scaled (aspect kept) to fit width x height, and the scale factor."""
    scale = min(width / image.shape[1], height / image.shape[0])
    size = (max(1, int(round(image.shape[1] * scale))), max(1, int(round(image.shape[0] * scale))))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(image, size, interpolation=interpolation), scale


def _mark_click(image_bgr: np.ndarray, uv: tuple[float, float], scale: float, colour=(0, 255, 0)) -> None:
    """A ring and a cross at the ROS pixel (u, v) of the unscaled image (pixel centres at integers)."""
    centre = (int(round((uv[0] + 0.5) * scale - 0.5)), int(round((uv[1] + 0.5) * scale - 0.5)))
    cv2.circle(image_bgr, centre, 9, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.circle(image_bgr, centre, 9, (255, 255, 255), 1, cv2.LINE_AA)
    cv2.drawMarker(image_bgr, centre, colour, cv2.MARKER_CROSS, 12, 2, cv2.LINE_AA)


def explained_picture(
    panel_bgr: np.ndarray,
    query: str,
    score: float,
    point_uv: tuple[float, float],
    supports: list[tuple[np.ndarray, tuple[float, float]]],
    support_set: str = "",
    point_m: tuple[float, float, float] | None = None,
    random_weights: bool = False,
    caption: str = "",
) -> np.ndarray:
    """BGR uint8: one result a person reads at a glance. A header with the query, the pixel, the 3D
    point and the score; the target (`panel_bgr`: the heatmap overlay with the point marked, as the
    node publishes it) beside the support exemplars (RGB images with their clicks, ringed); with
    `random_weights` a red frame and a red band across the target saying the point is meaningless."""
    target, _ = _fit(panel_bgr, 10_000, PANEL_HEIGHT)
    header_h, footer_h, margin = 78, 28, 10
    width = target.shape[1] + SUPPORT_COLUMN_WIDTH + 3 * margin
    height = header_h + PANEL_HEIGHT + footer_h
    picture = np.full((height, width, 3), 255, np.uint8)
    text_width = width - 2 * margin
    source = f"set {support_set}, {len(supports)} exemplar(s)" if support_set else f"{len(supports)} exemplar(s)"
    _put_text(picture, f'query: "{query}"   ({source if supports else "0-shot: text only"})', (margin, 30), 0.75,
              (20, 20, 20), text_width)  # fmt: skip
    where = f"point (u, v) = ({point_uv[0]:.1f}, {point_uv[1]:.1f}) px"
    if point_m is not None:
        where += f"   3D = ({point_m[0]:.3f}, {point_m[1]:.3f}, {point_m[2]:.3f}) m"
    _put_text(picture, f"{where}   score {score:.3f}", (margin, 62), 0.6, (60, 60, 60), text_width)
    top = header_h
    picture[top : top + target.shape[0], margin : margin + target.shape[1]] = target
    # Support exemplars, stacked in the right column, each with its click.
    column_x = 2 * margin + target.shape[1]
    _put_text(picture, "support exemplars (clicks)", (column_x, top + 14), 0.45, (60, 60, 60), SUPPORT_COLUMN_WIDTH)
    if supports:
        slot_h = (PANEL_HEIGHT - 24) // len(supports)
        for index, (image_rgb, click) in enumerate(supports):
            thumb, scale = _fit(cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), SUPPORT_COLUMN_WIDTH, slot_h - 6)
            thumb = thumb.copy()
            _mark_click(thumb, click, scale)
            y = top + 22 + index * slot_h
            picture[y : y + thumb.shape[0], column_x : column_x + thumb.shape[1]] = thumb
    else:
        _put_text(picture, "none (0-shot)", (column_x, top + 44), 0.5, (60, 60, 60), SUPPORT_COLUMN_WIDTH)
    if random_weights:
        band_top = top + target.shape[0] - 40
        cv2.rectangle(picture, (margin, band_top), (margin + target.shape[1] - 1, band_top + 39), WARNING_RED, -1)
        _put_text(picture, "RANDOM WEIGHTS: this point is meaningless", (margin + 8, band_top + 27), 0.65,
                  (255, 255, 255), target.shape[1] - 16)  # fmt: skip
        cv2.rectangle(picture, (0, 0), (width - 1, height - 1), WARNING_RED, 6)
    if caption:
        _put_text(picture, caption, (margin, height - 9), 0.45, (90, 90, 90), text_width)
    return picture


def contact_sheet(pictures: list[np.ndarray], columns: int = 2, cell_width: int = 560) -> np.ndarray:
    """BGR uint8: the pictures scaled to `cell_width` and laid out in rows of `columns`."""
    if not pictures:
        raise ValueError("a contact sheet needs at least one picture")
    cells = [_fit(picture, cell_width, 10_000)[0] for picture in pictures]
    cell_h = max(cell.shape[0] for cell in cells)
    rows = -(-len(cells) // columns)
    gap = 8
    sheet = np.full((rows * (cell_h + gap) + gap, columns * (cell_width + gap) + gap, 3), 235, np.uint8)
    for index, cell in enumerate(cells):
        y = gap + (index // columns) * (cell_h + gap)
        x = gap + (index % columns) * (cell_width + gap)
        sheet[y : y + cell.shape[0], x : x + cell.shape[1]] = cell
    return sheet
