"""Heatmap overlays for people: RViz, the CLI's --save-heatmap, the demo."""

from __future__ import annotations

import cv2
import numpy as np


def overlay(
    image_rgb: np.ndarray, heatmap: np.ndarray, point_uv: tuple[float, float] | None, alpha: float = 0.45
) -> np.ndarray:
    """BGR uint8 `(H, W, 3)`: the image with the [0, 1] heatmap (JET) blended in and the point marked."""
    if heatmap.shape != image_rgb.shape[:2]:
        raise ValueError(f"heatmap {heatmap.shape} and image {image_rgb.shape[:2]} differ in size")
    colours = cv2.applyColorMap(np.clip(heatmap * 255.0, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
    image_bgr = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)
    blended = cv2.addWeighted(image_bgr, 1.0 - alpha, colours, alpha, 0.0)
    if point_uv is not None:
        centre = (int(round(point_uv[0])), int(round(point_uv[1])))
        radius = max(4, min(image_rgb.shape[:2]) // 40)
        cv2.circle(blended, centre, radius + 2, (0, 0, 0), 2, cv2.LINE_AA)
        cv2.circle(blended, centre, radius, (255, 255, 255), 2, cv2.LINE_AA)
        cv2.drawMarker(blended, centre, (0, 255, 0), cv2.MARKER_CROSS, radius * 2, 2, cv2.LINE_AA)
    return blended


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
