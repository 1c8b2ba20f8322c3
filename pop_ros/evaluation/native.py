"""The MLLMs' own pointing answers: prompts and parsers (the paper's "native 0-shot" baseline).

A malformed answer is a miss with a reason (NativePointError), never a crash. Formats, as the
released models write them:
- Molmo2: `<points coords="1 1 555 169">handle</points>`: the first number is the image index
  (from 1), then one `object-index x y` triple per point, x and y zero-padded on a 0-1000 scale
  of the image width and height; several images are separated by tab, `;`, `,` or `:`; an `alt="..."`
  attribute may come before or after `coords`; the tag may sit inside a sentence.
- Molmo (v1): `<point x="61.5" y="40.2" alt="...">handle</point>` or `<points x1=".." y1=".."
  x2=".." ...>`, coordinates in percent of the image width and height.
- Qwen2.5-VL: JSON `[{"point_2d": [x, y], "label": "..."}]`, usually in a ```json fence, in pixels
  of the image as its processor resized it. An answer cut short after the first complete
  `point_2d` still counts: the point was emitted.
- Qwen3.5 (as Qwen3-VL): the same JSON, but `point_2d` (and `bbox_2d` [x1, y1, x2, y2], read as its
  centre when no point is given) on a relative 0-1000 scale of the image width and height,
  whatever size the processor resized it to. The prompt goes through the chat template with
  thinking off, so the answer is the JSON itself, not a reasoning trace first.
"""

from __future__ import annotations

import json
import re

# Molmo v1: x/y (or x1/y1) attributes in percent.
MOLMO_V1_POINT = re.compile(r"<points?\b[^>]*?\bx1?\s*=\s*\"([-\d.]+)\"[^>]*?\by1?\s*=\s*\"([-\d.]+)\"", re.IGNORECASE)
# Molmo2: a coords attribute anywhere in a <points>/<point> tag (alt before or after it); an
# answer cut short inside the attribute still holds its complete triples.
MOLMO2_COORDS = re.compile(r"<points?\b[^>]*?\bcoords\s*=\s*\"([^\"]*)(\"|$)", re.IGNORECASE)
MOLMO2_IMAGE_GROUP_SEPARATOR = re.compile(r"[\t;,:]")
JSON_FENCE = re.compile(r"```(?:json)?\s*(.*?)(?:```|$)", re.DOTALL)
QWEN_POINT_2D = re.compile(r"\"point_2d\"\s*:\s*\[\s*(-?[\d.]+)\s*,\s*(-?[\d.]+)\s*\]")

# New tokens the native answer may need (both tokenizers spell numbers digit by digit): Molmo2's
# one-point tag with an alt and a label of a few words is about 40 tokens, Qwen's fenced JSON
# with a label of a few words about 45. 64 lets a one-point answer close; a longer one (several
# points, a sentence) is cut, and its first complete point still counts. Generation stops at the
# end of turn, so short answers cost no more.
NATIVE_MAX_NEW_TOKENS = 64

NATIVE_PROMPTS = {
    "molmo2": "Point to the {query}.",
    "qwen_vl": (
        "Locate the {query} in the image and output its point coordinates in JSON format: "
        '[{{"point_2d": [x, y], "label": "{query}"}}]'
    ),
}
NATIVE_PROMPTS["qwen3_5"] = NATIVE_PROMPTS["qwen_vl"]  # same request; the answer is on a 0-1000 scale
QWEN_BBOX_2D = re.compile(r"\"bbox_2d\"\s*:\s*\[\s*(-?[\d.]+)\s*,\s*(-?[\d.]+)\s*,\s*(-?[\d.]+)\s*,\s*(-?[\d.]+)\s*\]")


class NativePointError(ValueError):
    """The answer holds no usable point; the message says why."""


def _inside(u: float, v: float, width: int, height: int) -> tuple[float, float]:
    if not (0 <= u < width and 0 <= v < height):
        raise NativePointError(f"point ({u:.1f}, {v:.1f}) is outside the {width}x{height} image")
    return u, v


def parse_molmo2_points(text: str, image_size: tuple[int, int], image_index: int = 1) -> list[tuple[float, float]]:
    """Every Molmo2 point on image `image_index` (from 1) -> [(u, v)] pixels of an `(H, W)` image."""
    height, width = image_size
    points = []
    for match in MOLMO2_COORDS.finditer(text or ""):
        cut_short = match.group(2) != '"'
        for group in MOLMO2_IMAGE_GROUP_SEPARATOR.split(match.group(1)):
            numbers = group.split()
            if cut_short and len(numbers) % 3 != 1:
                numbers = numbers[: 1 + 3 * ((len(numbers) - 1) // 3)]  # drop the unfinished triple
            if len(numbers) < 4 and cut_short:
                continue
            if not numbers:
                continue
            if len(numbers) % 3 != 1:
                raise NativePointError(
                    f"coords group {group.strip()!r} is not an image index then object-index x y triples"
                )
            try:
                index = int(float(numbers[0]))
                triples = [(float(x), float(y)) for x, y in zip(numbers[2::3], numbers[3::3], strict=True)]
            except ValueError as error:
                raise NativePointError(f"unreadable coords {group.strip()!r}") from error
            if index != image_index:
                continue
            for x_thousandths, y_thousandths in triples:
                if not (0 <= x_thousandths <= 1000 and 0 <= y_thousandths <= 1000):
                    raise NativePointError(f"coords ({x_thousandths:g}, {y_thousandths:g}) are off the 0-1000 scale")
                # 1000 is the far edge itself; keep it on the last pixel.
                u = min(x_thousandths / 1000.0 * width, width - 1e-3)
                v = min(y_thousandths / 1000.0 * height, height - 1e-3)
                points.append((u, v))
    return points


def parse_molmo_point(text: str, image_size: tuple[int, int]) -> tuple[float, float]:
    """First Molmo2 or Molmo (v1) point in `text` -> (u, v) pixels of an image of `image_size (H, W)`."""
    text = text or ""
    height, width = image_size
    if MOLMO2_COORDS.search(text):
        points = parse_molmo2_points(text, image_size)
        if not points:
            raise NativePointError(f"no point on image 1 in answer {text[:80]!r}")
        return _inside(*points[0], width, height)
    match = MOLMO_V1_POINT.search(text)
    if match is None:
        raise NativePointError(f"no <points coords=..> or <point x=.. y=..> in answer {text[:80]!r}")
    try:
        x_percent, y_percent = float(match.group(1)), float(match.group(2))
    except ValueError as error:
        raise NativePointError(f"unreadable coordinates in {match.group(0)!r}") from error
    return _inside(x_percent / 100.0 * width, y_percent / 100.0 * height, width, height)


def _first_point_2d(text: str) -> tuple[float, float] | None:
    """The first well-formed `point_2d` of a (fenced or bare) JSON answer; None where there is none.

    Whole JSON is decoded first; an answer cut short (the generation limit, a missing fence end)
    falls back to the first complete `"point_2d": [x, y]` pair in it."""
    fenced = JSON_FENCE.search(text)
    payload = fenced.group(1) if fenced else text
    start = min((i for i in (payload.find("["), payload.find("{")) if i >= 0), default=-1)
    if start >= 0:
        try:
            data = json.JSONDecoder().raw_decode(payload[start:])[0]
        except json.JSONDecodeError:
            data = None
        items = data if isinstance(data, list) else [data]
        for item in items:
            point = item.get("point_2d") if isinstance(item, dict) else None
            if (
                isinstance(point, (list, tuple))
                and len(point) == 2
                and all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in point)
            ):
                return float(point[0]), float(point[1])
        if data is not None:
            return None
    match = QWEN_POINT_2D.search(payload)
    if match is None:
        return None
    try:
        return float(match.group(1)), float(match.group(2))
    except ValueError:
        return None


def parse_qwen_point(text: str, resized_size: tuple[int, int], image_size: tuple[int, int]) -> tuple[float, float]:
    """First `point_2d` of a Qwen2.5-VL answer -> (u, v) pixels of the original image.

    `resized_size (H', W')` is the size the processor fed the model (grid_thw * patch size)."""
    text = text or ""
    if "point_2d" not in text and "[" not in text and "{" not in text:
        raise NativePointError(f"no JSON in answer {text[:80]!r}")
    point = _first_point_2d(text)
    if point is None:
        raise NativePointError(f"no point_2d [x, y] in answer {text[:80]!r}")
    resized_h, resized_w = resized_size
    height, width = image_size
    return _inside(point[0] * width / resized_w, point[1] * height / resized_h, width, height)


def parse_qwen_relative_point(text: str, image_size: tuple[int, int]) -> tuple[float, float]:
    """First `point_2d` (else the centre of the first `bbox_2d`) of a Qwen3.5 / Qwen3-VL answer, on
    the 0-1000 relative scale -> (u, v) continuous coordinates of an `(H, W)` image."""
    text = text or ""
    if "[" not in text and "{" not in text:
        raise NativePointError(f"no JSON in answer {text[:80]!r}")
    point = _first_point_2d(text)
    if point is None:
        box = QWEN_BBOX_2D.search(text)
        if box is None:
            raise NativePointError(f"no point_2d [x, y] or bbox_2d [x1, y1, x2, y2] in answer {text[:80]!r}")
        try:
            x1, y1, x2, y2 = (float(value) for value in box.groups())
        except ValueError as error:
            raise NativePointError(f"unreadable bbox_2d in {box.group(0)!r}") from error
        point = ((x1 + x2) / 2.0, (y1 + y2) / 2.0)
    x_thousandths, y_thousandths = point
    if not (0 <= x_thousandths <= 1000 and 0 <= y_thousandths <= 1000):
        raise NativePointError(f"point ({x_thousandths:g}, {y_thousandths:g}) is off the 0-1000 scale")
    height, width = image_size
    # 1000 is the far edge itself; keep it on the last pixel.
    u = min(x_thousandths / 1000.0 * width, width - 1e-3)
    v = min(y_thousandths / 1000.0 * height, height - 1e-3)
    return u, v
