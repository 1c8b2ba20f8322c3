"""Draw docs/images/tracking.png: the part tracker over a synthetic recorded sequence with known motion.

A textured part turns and slides across a textured background for 90 frames (30 Hz: 3 s) while an
occluder comes down over half of it and it finally leaves the image. Seeded once, at frame 0 (the "full answer"),
`PartTracker` follows the point through every frame (following.py does this between two answers);
the picture shows the first and the last frames held, the true path (green), the tracked path
(magenta, drawn over it), where the track was dropped and why, and the error along the way.

    python tools/make_tracking_picture.py            # writes docs/images/tracking.png
"""

from __future__ import annotations

import math
import pathlib
import sys

import cv2
import numpy as np

from pop_ros.tracking.scenes import MovingPart, Pose, poses_between
from pop_ros.tracking.tracker import PartTracker

OUT = pathlib.Path(__file__).resolve().parents[1] / "docs" / "images" / "tracking.png"
POINT = (30.0, 60.0)  # the followed point, in the part's own pixels
FRAMES = 90
OCCLUDED_PANEL = 50  # the middle panel: the occluder over the part's top half


def sequence(part: MovingPart):
    """(pose, occluder box) per frame: a turn and slide, an occluder coming down over the part's top
    half from frame 30 to 54 (the point stays visible), then a fast exit to the right."""
    poses = poses_between(Pose(90.0, 120.0, 0.0, 1.0), Pose(210.0, 130.0, 40.0, 1.2), 60)
    poses += poses_between(Pose(214.0, 130.0, 40.0, 1.2), Pose(400.0, 130.0, 40.0, 1.2), FRAMES - 60)
    occluders = [(0, 0, 320, min(60 + 4 * (i - 30), 120)) if 30 <= i < 55 else None for i in range(FRAMES)]
    return poses, occluders


def main() -> int:
    part = MovingPart(seed=3)
    poses, occluders = sequence(part)
    tracker = PartTracker()
    truth, tracked, errors, lost = [], [], [], None
    shown = {}  # frame index -> (image, part mask) of the panels
    for index, (pose, occluder) in enumerate(zip(poses, occluders, strict=True)):
        image, mask = part.render(pose, occluder)
        update = tracker.seed(image, *part.pixel(pose, POINT), mask=mask) if index == 0 else tracker.update(image)
        true_uv = part.pixel(pose, POINT)
        if not update.ok:
            lost = (index, update.reason, true_uv)
            break
        truth.append(true_uv)
        tracked.append((update.u, update.v))
        errors.append(math.hypot(update.u - true_uv[0], update.v - true_uv[1]))
        if index in (0, OCCLUDED_PANEL) or lost is None:
            shown[index if index in (0, OCCLUDED_PANEL) else "last"] = (index, image, mask)

    scale = 2
    panels = []
    titles = {0: "the full answer (seed)", OCCLUDED_PANEL: "partly occluded", "last": "last frame held"}
    for key, title in titles.items():
        index, image, mask = shown[key]
        panel = cv2.resize(cv2.cvtColor(image, cv2.COLOR_RGB2BGR), None, fx=scale, fy=scale)
        outline, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.polylines(panel, [c * scale for c in outline], True, (0, 255, 255), 2, cv2.LINE_AA)  # the part
        cv2.polylines(panel, [np.int32(np.array(truth) * scale)], False, (0, 200, 0), 6, cv2.LINE_AA)
        cv2.polylines(panel, [np.int32(np.array(tracked[: index + 1]) * scale)], False, (255, 0, 255), 2, cv2.LINE_AA)
        here = tuple(int(c * scale) for c in tracked[index])
        cv2.circle(panel, here, 7, (255, 255, 255), 2, cv2.LINE_AA)
        if lost is not None and key == "last":
            end = tuple(int(c * scale) for c in np.clip(lost[2], 0, (part.width - 1, part.height - 1)))
            cv2.drawMarker(panel, end, (0, 0, 255), cv2.MARKER_TILTED_CROSS, 22, 3)
        _label(panel, f"frame {index}: {title}", 0)
        panels.append(panel)
    gap = np.full((panels[0].shape[0], 8, 3), 255, np.uint8)
    picture = np.hstack([panels[0], gap, panels[1], gap, panels[2]])
    footer = np.full((96, picture.shape[1], 3), 255, np.uint8)
    lines = [
        "yellow: the part; green: the point's true path; magenta: tracked so far (Lucas-Kanade, forward-backward "
        "check, RANSAC similarity), drawn over the green; white circle: the tracked point in this frame",
        f"held {len(tracked)} frames (turn 40 deg, scale x1.2, occluder frames 30-54): error max {max(errors):.2f} px, "
        f"mean {np.mean(errors):.2f} px",
        f"dropped at frame {lost[0]} (red cross): {lost[1]}" if lost else "never dropped",
    ]
    for row, text in enumerate(lines):
        cv2.putText(footer, text, (10, 26 + 28 * row), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    picture = np.vstack([picture, footer])
    OUT.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(OUT), picture)
    print(f"wrote {OUT}: {lines[1]}; {lines[2]}")
    return 0


def _label(image: np.ndarray, text: str, row: int) -> None:
    origin = (10, 28 + 28 * row)
    cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, 0.75, (0, 0, 0), 4, cv2.LINE_AA)
    cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, 0.75, (255, 255, 255), 2, cv2.LINE_AA)


if __name__ == "__main__":
    sys.exit(main())
