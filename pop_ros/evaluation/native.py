"""The MLLMs' own pointing answers: prompts and parsers (the paper's "native 0-shot" baseline).

A malformed answer is a miss with a reason (NativePointError), never a crash.
- Molmo style: `<point x="61.5" y="40.2" alt="...">handle</point>` (or `<points x1=".." y1="..">`),
  coordinates in percent of the image width and height.
- Qwen2.5-VL: JSON (often in a ```json fence) `[{"point_2d": [x, y], "label": "..."}]` in pixels of
  the image as the processor resized it.
"""

from __future__ import annotations

import json
import re

MOLMO_POINT = re.compile(r"<points?\b[^>]*?\bx1?\s*=\s*\"([-\d.]+)\"[^>]*?\by1?\s*=\s*\"([-\d.]+)\"", re.IGNORECASE)
JSON_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)

NATIVE_PROMPTS = {
    "molmo2": "Point to the {query}.",
    "qwen_vl": (
        "Locate the {query} in the image and output its point coordinates in JSON format: "
        '[{{"point_2d": [x, y], "label": "{query}"}}]'
    ),
}


class NativePointError(ValueError):
    """The answer holds no usable point; the message says why."""


def _inside(u: float, v: float, width: int, height: int) -> tuple[float, float]:
    if not (0 <= u < width and 0 <= v < height):
        raise NativePointError(f"point ({u:.1f}, {v:.1f}) is outside the {width}x{height} image")
    return u, v


def parse_molmo_point(text: str, image_size: tuple[int, int]) -> tuple[float, float]:
    """First Molmo point in `text` -> (u, v) pixels of an image of `image_size (H, W)`."""
    match = MOLMO_POINT.search(text or "")
    if match is None:
        raise NativePointError(f"no <point x=.. y=..> in answer {text[:80]!r}")
    try:
        x_percent, y_percent = float(match.group(1)), float(match.group(2))
    except ValueError as error:
        raise NativePointError(f"unreadable coordinates in {match.group(0)!r}") from error
    height, width = image_size
    return _inside(x_percent / 100.0 * width, y_percent / 100.0 * height, width, height)


def parse_qwen_point(text: str, resized_size: tuple[int, int], image_size: tuple[int, int]) -> tuple[float, float]:
    """First `point_2d` of a Qwen2.5-VL answer -> (u, v) pixels of the original image.

    `resized_size (H', W')` is the size the processor fed the model (grid_thw * patch size)."""
    fenced = JSON_FENCE.search(text or "")
    payload = fenced.group(1) if fenced else (text or "")
    start = min((i for i in (payload.find("["), payload.find("{")) if i >= 0), default=-1)
    if start < 0:
        raise NativePointError(f"no JSON in answer {text[:80]!r}")
    try:
        data = json.JSONDecoder().raw_decode(payload[start:])[0]
    except json.JSONDecodeError as error:
        raise NativePointError(f"malformed JSON in answer {text[:80]!r}: {error.msg}") from error
    items = data if isinstance(data, list) else [data]
    for item in items:
        point = item.get("point_2d") if isinstance(item, dict) else None
        if isinstance(point, (list, tuple)) and len(point) == 2 and all(isinstance(c, (int, float)) for c in point):
            resized_h, resized_w = resized_size
            height, width = image_size
            return _inside(point[0] * width / resized_w, point[1] * height / resized_h, width, height)
    raise NativePointError(f"no point_2d [x, y] in answer {text[:80]!r}")
