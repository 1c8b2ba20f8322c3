"""Draw the README's first picture: what each branch of POP contributes on one demo scene.

    python tools/make_method_figure.py [--preset tiny] [--out docs/images/method-scene_1-bottle_neck.jpg]

Four panels of the same scene and query: (1) the MLLM's text prior (the localization heads'
attention: which object's part), (2) the DINO correspondence map to the example clicks (which
spot looks like the clicked one), (3) their product, the fused map the node publishes as
~/heatmap, (4) the point, its argmax; the support exemplars with their clicks beside them. The maps
are the pipeline's own intermediates, taken as `fusion.fuse_to_instances` receives them. With the
`tiny` preset the weights are random: the picture then shows the method's plumbing, not its accuracy,
and says so on every panel.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import cv2
import numpy as np

from pop_ros.paths import SAMPLE_DIR, SOURCE_ROOT

SCENE, SUPPORT_SET = 1, "bottle_neck"
FIGURE = SOURCE_ROOT / "docs" / "images" / "method-scene_1-bottle_neck.jpg"
PANEL_W, PANEL_H, GAP = 400, 300, 8


def capture_maps(pointer, image_rgb: np.ndarray, support_set: str):
    """(PointResult, text prior (H_l, W_l) or None, visual maps (K, H_t, W_t) or None) of one query."""
    from pop_ros.pipeline import fusion

    captured = {}
    original = fusion.fuse_to_instances

    def keep(prior, maps, *args, **kwargs):
        captured["prior"], captured["maps"] = prior, maps
        return original(prior, maps, *args, **kwargs)

    fusion.fuse_to_instances = keep
    try:
        result = pointer.point(image_rgb, "", support_set=support_set)
    finally:
        fusion.fuse_to_instances = original
    return result, captured["prior"], captured["maps"]


def at_image_size(values, shape: tuple[int, int]) -> np.ndarray:
    """A map (torch or numpy) resized to the image, divided by its peak: [0, 1] like the heatmap."""
    array = values.detach().float().cpu().numpy() if hasattr(values, "detach") else np.asarray(values, np.float32)
    array = cv2.resize(np.clip(array, 0, None), (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    peak = float(array.max())
    return array / peak if peak > 0 else array


def method_figure(
    image_rgb, result, prior, maps, supports, query: str, random_weights: bool, shot_combination: str = "mean"
) -> np.ndarray:
    from pop_ros.core.fusion import combine_shots
    from pop_ros.visualize import label_box, overlay, warning_band

    shape = image_rgb.shape[:2]
    zero = np.zeros(shape, np.float32)
    text = at_image_size(prior, shape) if prior is not None else zero
    visual = at_image_size(combine_shots(maps, shot_combination), shape) if maps is not None else zero
    panels = [
        overlay(image_rgb, text, None, label="1 MLLM text prior: which object's part"),
        overlay(image_rgb, visual, None, label="2 DINO match to the clicks: which spot"),
        overlay(image_rgb, result.heatmap, None, label="3 product of 1 and 2 (~/heatmap)"),
        overlay(image_rgb, zero, (result.u, result.v), alpha=0.0, label="4 the point: argmax of 3", colour_scale=False),
    ]
    panels = [cv2.resize(panel, (PANEL_W, PANEL_H), interpolation=cv2.INTER_LINEAR) for panel in panels]
    if random_weights:
        for panel in panels:
            warning_band(panel, "RANDOM WEIGHTS: plumbing, not accuracy")
    header_h, column_w = 40, 200
    width = 2 * PANEL_W + column_w + 4 * GAP
    height = header_h + 2 * PANEL_H + 3 * GAP
    figure = np.full((height, width, 3), 255, np.uint8)
    title = f'POP on one scene: query "{query}", {len(supports)} example clicks (right)'
    cv2.putText(figure, title, (GAP, 28), cv2.FONT_HERSHEY_SIMPLEX, 0.75, (20, 20, 20), 2, cv2.LINE_AA)
    for index, panel in enumerate(panels):
        y = header_h + GAP + (index // 2) * (PANEL_H + GAP)
        x = GAP + (index % 2) * (PANEL_W + GAP)
        figure[y : y + PANEL_H, x : x + PANEL_W] = panel
    column_x = 3 * GAP + 2 * PANEL_W
    slot_h = (2 * PANEL_H + GAP) // max(1, len(supports))
    for index, (support_rgb, click) in enumerate(supports):
        scale = min(column_w / support_rgb.shape[1], (slot_h - GAP) / support_rgb.shape[0])
        size = (int(support_rgb.shape[1] * scale), int(support_rgb.shape[0] * scale))
        thumb = cv2.resize(cv2.cvtColor(support_rgb, cv2.COLOR_RGB2BGR), size, interpolation=cv2.INTER_AREA)
        centre = (int(round((click[0] + 0.5) * scale - 0.5)), int(round((click[1] + 0.5) * scale - 0.5)))
        cv2.circle(thumb, centre, 8, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.circle(thumb, centre, 8, (255, 255, 255), 1, cv2.LINE_AA)
        cv2.drawMarker(thumb, centre, (0, 255, 0), cv2.MARKER_CROSS, 10, 2, cv2.LINE_AA)
        label_box(thumb, f"example click {index + 1}", (0, 0))
        y = header_h + GAP + index * slot_h
        figure[y : y + thumb.shape[0], column_x : column_x + thumb.shape[1]] = thumb
    return figure


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="tiny", help="model preset (default tiny: random weights)")
    parser.add_argument("--out", type=pathlib.Path, default=FIGURE)
    args = parser.parse_args(argv)

    from pop_ros.pipeline import PartPointer
    from pop_ros.supports import SupportLibrary

    library = SupportLibrary.load(SOURCE_ROOT / "config" / "supports" / "library.yaml")
    pointer = PartPointer.from_preset(args.preset, library=library)
    image_rgb = cv2.cvtColor(cv2.imread(str(SAMPLE_DIR / f"scene_{SCENE}.png")), cv2.COLOR_BGR2RGB)
    result, prior, maps = capture_maps(pointer, image_rgb, SUPPORT_SET)
    support_set = library.get(SUPPORT_SET)
    supports = [(exemplar.image, exemplar.click) for exemplar in support_set.exemplars]
    figure = method_figure(
        image_rgb,
        result,
        prior,
        maps,
        supports,
        support_set.query,
        pointer.model_config.random_weights,
        pointer.settings.shot_combination,
    )
    if not cv2.imwrite(str(args.out), figure, [cv2.IMWRITE_JPEG_QUALITY, 88]):
        print(f"error: could not write {args.out}", file=sys.stderr)
        return 1
    print(f"{args.out}: point ({result.u:.1f}, {result.v:.1f}), random weights {pointer.model_config.random_weights}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
