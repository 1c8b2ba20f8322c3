"""Draw the sample images shipped in config/supports/ (exemplars) and pop_ros/data/ (demo scenes).

Synthetic on purpose: no licence questions, deterministic, small. Mugs (body + handle) and bottles
(body + shoulder + neck + cap) on a table; the exemplar clicks are written to the library YAML.
Run `python tools/make_sample_images.py` to regenerate; the outputs are committed.
"""

from __future__ import annotations

import pathlib

import cv2
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
SIZE = (240, 320)  # (H, W)


def background(rng: np.random.Generator) -> np.ndarray:
    image = np.zeros((*SIZE, 3), np.uint8)
    wall = rng.integers(170, 220, 3)
    table = rng.integers(90, 140, 3)
    image[:150] = wall
    image[150:] = table
    noise = rng.normal(0, 4, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def draw_mug(image, x, y, scale, colour, handle_right=True) -> tuple[int, int]:
    """Mug with its bottom-left corner near (x, y); returns a pixel on the handle."""
    width, height = int(50 * scale), int(60 * scale)
    cv2.rectangle(image, (x, y - height), (x + width, y), colour, -1)
    cv2.ellipse(
        image, (x + width // 2, y - height), (width // 2, int(6 * scale)), 0, 0, 360, [c // 2 for c in colour], -1
    )
    side = x + width if handle_right else x
    direction = 1 if handle_right else -1
    centre = (side + direction * int(8 * scale), y - height // 2)
    cv2.ellipse(
        image,
        centre,
        (int(14 * scale), int(18 * scale)),
        0,
        -90,
        90 if handle_right else 270,
        colour,
        max(3, int(7 * scale)),
    )
    if not handle_right:
        cv2.ellipse(image, centre, (int(14 * scale), int(18 * scale)), 0, 90, 270, colour, max(3, int(7 * scale)))
    return centre[0] + direction * int(12 * scale), centre[1]


def draw_bottle(image, x, y, scale, colour) -> tuple[int, int]:
    """Bottle standing at (x, y) (bottom centre); returns a pixel on the neck."""
    body_w, body_h = int(34 * scale), int(70 * scale)
    neck_w, neck_h = int(12 * scale), int(28 * scale)
    cv2.rectangle(image, (x - body_w // 2, y - body_h), (x + body_w // 2, y), colour, -1)
    shoulder = np.array(
        [
            [x - body_w // 2, y - body_h],
            [x + body_w // 2, y - body_h],
            [x + neck_w // 2, y - body_h - int(14 * scale)],
            [x - neck_w // 2, y - body_h - int(14 * scale)],
        ]
    )
    cv2.fillConvexPoly(image, shoulder, colour)
    neck_top = y - body_h - int(14 * scale) - neck_h
    cv2.rectangle(image, (x - neck_w // 2, neck_top), (x + neck_w // 2, y - body_h - int(14 * scale)), colour, -1)
    cv2.rectangle(
        image, (x - neck_w // 2 - 1, neck_top - int(6 * scale)), (x + neck_w // 2 + 1, neck_top), (40, 40, 40), -1
    )
    return x, neck_top + neck_h // 2


def save(path: pathlib.Path, image_rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR))


def main() -> None:
    rng = np.random.default_rng(7)
    supports = ROOT / "config" / "supports"
    entries = {"mug_handle": [], "bottle_neck": []}
    for index, (colour, right) in enumerate([((200, 40, 40), True), ((40, 90, 200), False), ((230, 200, 60), True)]):
        image = background(rng)
        u, v = draw_mug(image, 110 + 20 * index, 190, 1.2 + 0.15 * index, colour, handle_right=right)
        save(supports / "images" / f"mug_{index}.png", image)
        entries["mug_handle"].append((f"images/mug_{index}.png", u, v))
    for index, colour in enumerate([(40, 150, 60), (120, 60, 160), (30, 110, 140)]):
        image = background(rng)
        u, v = draw_bottle(image, 140 + 25 * index, 200, 1.1 + 0.1 * index, colour)
        save(supports / "images" / f"bottle_{index}.png", image)
        entries["bottle_neck"].append((f"images/bottle_{index}.png", u, v))
    queries = {"mug_handle": "handle of the mug", "bottle_neck": "neck of the bottle"}
    lines = [
        "# Example support library (synthetic images drawn by tools/make_sample_images.py).",
        "# Clicks are ROS/OpenCV pixel coordinates (the top-left pixel's centre is (0, 0)): the pixel the",
        "# drawing tool drew the part at.",
        "# Schema: sets -> name -> {query, exemplars: [{image (relative to this file), click: [u, v]}]}",
        "sets:",
    ]
    for name, items in entries.items():
        lines += [f"  {name}:", f"    query: {queries[name]}", "    exemplars:"]
        lines += [f"      - image: {path}\n        click: [{u}, {v}]" for path, u, v in items]
    (supports / "library.yaml").write_text("\n".join(lines) + "\n")

    # Demo scenes: two mugs (different colours) and a bottle, so the text must pick the instance.
    data = ROOT / "pop_ros" / "data"
    for index in range(3):
        image = background(rng)
        draw_mug(image, 30 + 10 * index, 200, 1.0, (200, 40, 40), handle_right=True)
        draw_mug(image, 150, 210, 1.1, (40, 90, 200), handle_right=bool(index % 2))
        draw_bottle(image, 270 - 5 * index, 215, 1.0, (40, 150, 60))
        save(data / f"scene_{index}.png", image)


if __name__ == "__main__":
    main()
