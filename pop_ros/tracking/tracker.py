"""Following a part between two full answers: pyramidal Lucas-Kanade on the part's features.

A full POP answer costs a model 0.3-2 s; a camera gives a frame every 33-66 ms. `PartTracker` is
seeded by an answer (its pixel, the part's region, the image) and moves that pixel with every new
frame: good features of the region are tracked frame to frame by pyramidal Lucas-Kanade (OpenCV),
each checked forward-backward (tracked back to the previous frame, it must land where it started),
and the survivors' motion is fitted as one similarity (translation, rotation, scale) with RANSAC;
the pixel moves with that similarity, so features off the pixel or a partly occluded region still
place it. The track is dropped, with its reason, instead of drifting: too few features left, too
few passing the forward-backward check, a jump larger than `max_jump_px` in one frame, a scale
change beyond `max_scale_step`, or the point leaving the image. `weak` marks a track still held
but with fewer than `weak_ratio` of its first features: time for a new full answer.

Images are RGB (H, W, 3) or grey (H, W) uint8; pixels are OpenCV pixel coordinates. No ROS.
"""

from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np


@dataclasses.dataclass(frozen=True)
class TrackSettings:
    max_features: int = 60  # good features taken in the part's region at the seed
    min_features: int = 8  # fewer consistent features than this: the track is lost
    weak_ratio: float = 0.5  # fewer than this share of the seed's features left: ask for a new answer
    feature_quality: float = 0.01  # goodFeaturesToTrack's qualityLevel (share of the best corner)
    feature_spacing_px: float = 4.0  # goodFeaturesToTrack's minDistance
    window_px: int = 21  # Lucas-Kanade window
    pyramid_levels: int = 3  # coarser levels follow motions up to about window * 2**levels / 2 pixels
    forward_backward_px: float = 1.0  # a feature tracked back must land this close to where it started
    # A feature within this of the fitted similarity is an inlier. Measured on the synthetic sequences:
    # features on an occluder's moving edge ride it 1.2 px a frame off the part's motion (1.5 px kept
    # them and bent the track by 1 px in 24 frames); 0.5 px drops them and still keeps all 60 features
    # of a 30-frame track under image noise of sigma 8.
    ransac_px: float = 0.5
    max_jump_px: float = 60.0  # the point moving more than this in one update: lost (a false match)
    max_scale_step: float = 1.25  # the part's scale changing by more than this factor in one update: lost
    region_radius_px: int = 24  # the region always includes this box around the pixel (a small part mask)
    region_max_radius_px: int = 96  # and never reaches farther than this from it (a large region)


@dataclasses.dataclass
class TrackUpdate:
    """Where the part is in one frame, or why the track was dropped."""

    ok: bool
    u: float
    v: float
    reason: str = ""  # why the track is lost ('' while it holds)
    features: int = 0  # consistent features (inliers of the similarity) in this frame
    seed_features: int = 0
    forward_backward_px: float = 0.0  # median forward-backward error of the tracked features
    weak: bool = False  # held, but few features left: a new full answer is wanted
    scale: float = 1.0  # the part's scale since the seed
    angle_deg: float = 0.0  # its in-plane rotation since the seed, degrees counter-clockwise on screen


def grey_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 3:
        return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return image if image.dtype == np.uint8 else np.clip(image, 0, 255).astype(np.uint8)


def region_masks(shape: tuple[int, int], u: float, v: float, mask, settings: TrackSettings) -> list[np.ndarray]:
    """uint8 (H, W) regions to take features in, best first, all within `region_max_radius_px` of the
    pixel: the part's mask shrunk by half a Lucas-Kanade window (a feature whose window crosses the
    part's outline moves partly with the background: measured, such features bent a 30-frame track
    by 2.7 to 6.8 px), then the mask and a small box around the pixel (for a part too small or too
    plain to give enough features inside)."""
    height, width = shape
    col, row = int(round(u)), int(round(v))

    def box(radius: int) -> tuple[slice, slice]:
        return (
            slice(max(row - radius, 0), max(min(row + radius + 1, height), 0)),
            slice(max(col - radius, 0), max(min(col + radius + 1, width), 0)),
        )

    reach = np.zeros((height, width), dtype=np.uint8)
    reach[box(settings.region_max_radius_px)] = 255
    regions = []
    part = np.zeros((height, width), dtype=np.uint8)
    if mask is not None and np.shape(mask) == (height, width):
        part = np.asarray(mask, dtype=np.uint8) * 255
        side = settings.window_px // 2 * 2 + 1
        regions.append(cv2.erode(part, np.ones((side, side), np.uint8)) & reach)
    part[box(settings.region_radius_px)] = 255
    regions.append(part & reach)
    return regions


class PartTracker:
    """One part's track: `seed` with an answer's frame, then `update` with every next frame."""

    def __init__(self, settings: TrackSettings | None = None):
        self.settings = settings or TrackSettings()
        self.last: TrackUpdate | None = None
        self._grey = None  # the last frame
        self._points = None  # (N, 1, 2) float32, in the last frame
        self._transform = np.eye(3)  # seed frame -> last frame
        self._seed_features = 0
        self._seed_mask = None

    @property
    def holds(self) -> bool:
        return self.last is not None and self.last.ok

    def seed(self, image: np.ndarray, u: float, v: float, mask=None) -> TrackUpdate:
        """Start following pixel (u, v) of `image`; `mask (H, W)` bool: the part's region, if known."""
        settings = self.settings
        grey = grey_image(image)
        self._transform = np.eye(3)
        self._seed_mask = None if mask is None else np.asarray(mask, dtype=bool)
        for region in region_masks(grey.shape, u, v, mask, settings):
            corners = cv2.goodFeaturesToTrack(
                grey,
                maxCorners=settings.max_features,
                qualityLevel=settings.feature_quality,
                minDistance=settings.feature_spacing_px,
                mask=region,
            )
            count = 0 if corners is None else len(corners)
            if count >= 2 * settings.min_features:
                break
        self._seed_features = count
        if count < settings.min_features:
            why = f"too little texture: {count} features in the part's region (min_features {settings.min_features})"
            return self._lose(u, v, why)
        self._points = corners.astype(np.float32)
        self._grey = grey
        self.last = TrackUpdate(True, float(u), float(v), features=count, seed_features=count)
        return self.last

    def update(self, image: np.ndarray) -> TrackUpdate:
        """The pixel in this next frame, or the track lost with its reason (then it stays lost)."""
        if not self.holds:
            return self.last or TrackUpdate(False, 0.0, 0.0, reason="not seeded")
        settings, last = self.settings, self.last
        grey = grey_image(image)
        window = (settings.window_px, settings.window_px)
        criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01)
        lk = {"winSize": window, "maxLevel": settings.pyramid_levels, "criteria": criteria}
        start = self._points
        ahead, found, _ = cv2.calcOpticalFlowPyrLK(self._grey, grey, start, None, **lk)
        back, found_back, _ = cv2.calcOpticalFlowPyrLK(grey, self._grey, ahead, None, **lk)
        error = np.linalg.norm((back - start).reshape(-1, 2), axis=1)
        tracked = (found.ravel() == 1) & (found_back.ravel() == 1)
        consistent = tracked & (error <= settings.forward_backward_px)
        median_error = float(np.median(error[tracked])) if tracked.any() else math.inf
        if consistent.sum() < settings.min_features:
            if tracked.sum() >= settings.min_features:
                why = (
                    f"forward-backward check: {int(consistent.sum())} of {int(tracked.sum())} features agree "
                    f"(median error {median_error:.2f} px > {settings.forward_backward_px} px)"
                )
            else:
                why = f"too few features left: {int(tracked.sum())} tracked (min_features {settings.min_features})"
            return self._lose(last.u, last.v, why, median_error)
        before, after = start[consistent].reshape(-1, 2), ahead[consistent].reshape(-1, 2)
        step, inliers = cv2.estimateAffinePartial2D(
            before, after, method=cv2.RANSAC, ransacReprojThreshold=settings.ransac_px, confidence=0.995
        )
        kept = 0 if inliers is None else int(inliers.sum())
        if step is None or kept < settings.min_features:
            why = f"too few features move together: {kept} (min_features {settings.min_features})"
            return self._lose(last.u, last.v, why, median_error)
        return self._moved(step, after[inliers.ravel() == 1], grey, median_error)

    def _moved(self, step: np.ndarray, points: np.ndarray, grey, median_error: float) -> TrackUpdate:
        """Apply one frame's similarity `step (2, 3)` to the pixel, with the jump and border checks."""
        settings, last = self.settings, self.last
        step_scale = math.sqrt(abs(np.linalg.det(step[:, :2])))
        u, v = (step @ np.array([last.u, last.v, 1.0])).tolist()
        jump = math.hypot(u - last.u, v - last.v)
        height, width = grey.shape
        if not (1.0 / settings.max_scale_step <= step_scale <= settings.max_scale_step):
            return self._lose(u, v, f"scale jump: x{step_scale:.2f} in one frame (max {settings.max_scale_step})")
        if jump > settings.max_jump_px:
            return self._lose(u, v, f"large jump: {jump:.0f} px in one frame (max_jump_px {settings.max_jump_px:.0f})")
        if not (0.0 <= u <= width - 1 and 0.0 <= v <= height - 1):
            return self._lose(u, v, f"the point left the image: ({u:.0f}, {v:.0f}) outside {width}x{height}")
        self._transform = np.vstack([step, [0.0, 0.0, 1.0]]) @ self._transform
        self._points = points.reshape(-1, 1, 2).astype(np.float32)
        self._grey = grey
        linear = self._transform[:2, :2]
        self.last = TrackUpdate(
            True,
            u,
            v,
            features=len(points),
            seed_features=self._seed_features,
            forward_backward_px=median_error,
            weak=len(points) < settings.weak_ratio * self._seed_features,
            scale=math.sqrt(abs(np.linalg.det(linear))),
            angle_deg=-math.degrees(math.atan2(linear[1, 0], linear[0, 0])),  # counter-clockwise on screen
        )
        return self.last

    def _lose(self, u: float, v: float, reason: str, median_error: float = 0.0) -> TrackUpdate:
        self._grey, self._points = None, None
        self.last = TrackUpdate(False, float(u), float(v), reason=reason, seed_features=self._seed_features)
        self.last.forward_backward_px = median_error
        return self.last

    def region(self) -> np.ndarray | None:
        """The seed's part mask moved with the track to the last frame (bool, image size), or None."""
        if self._seed_mask is None or not self.holds:
            return None
        height, width = self._seed_mask.shape
        warped = cv2.warpAffine(
            self._seed_mask.astype(np.uint8), self._transform[:2], (width, height), flags=cv2.INTER_NEAREST
        )
        return warped > 0
