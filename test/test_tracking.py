"""The part tracker on synthetic sequences with known motion: the tracked pixel stays within 1.5 px
of the truth while the track holds, and the track is dropped with its reason where it cannot hold."""

import math

import numpy as np
import pytest

from pop_ros.tracking.scenes import MovingPart, Pose, poses_between
from pop_ros.tracking.tracker import PartTracker, TrackSettings

TOLERANCE_PX = 1.5
POINT = (30.0, 60.0)  # a point of the part off its centre: rotation and scale move it differently


def follow(part: MovingPart, poses, occluders=None, settings=None):
    """Seed at poses[0] (with the part's mask), update with every next frame; (updates, truths)."""
    occluders = occluders or [None] * len(poses)
    tracker = PartTracker(settings)
    image, mask = part.render(poses[0], occluders[0])
    updates = [tracker.seed(image, *part.pixel(poses[0], POINT), mask=mask)]
    for pose, occluder in zip(poses[1:], occluders[1:], strict=True):
        updates.append(tracker.update(part.render(pose, occluder)[0]))
    return updates, [part.pixel(pose, POINT) for pose in poses]


def errors(updates, truths) -> list[float]:
    return [math.hypot(a.u - u, a.v - v) for a, (u, v) in zip(updates, truths, strict=True) if a.ok]


@pytest.mark.parametrize(
    "end",
    [
        Pose(220.0, 150.0),  # translation, 3.7 px a frame
        Pose(140.0, 110.0, angle_deg=60.0),  # in-plane rotation, 2 degrees a frame
        Pose(150.0, 120.0, scale=1.4),  # scale change (closing in), 1.1 % a frame
        Pose(180.0, 140.0, angle_deg=-30.0, scale=0.8),  # all at once
    ],
    ids=["translation", "rotation", "scale", "combined"],
)
def test_known_motion_is_followed_within_tolerance(end):
    part = MovingPart(seed=1)
    updates, truths = follow(part, poses_between(Pose(120.0, 100.0), end, 31))
    assert all(update.ok for update in updates), [u.reason for u in updates if not u.ok]
    assert max(errors(updates, truths)) <= TOLERANCE_PX
    final = updates[-1]
    assert final.scale == pytest.approx(end.scale, rel=0.03)
    assert final.angle_deg == pytest.approx(end.angle_deg, abs=1.5)


def test_partial_occlusion_keeps_the_point():
    """An occluder slides over the part's left half (the point stays visible): features under it
    fail the forward-backward check or the similarity, the rest keep the point where it is."""
    part = MovingPart(seed=2)
    poses = poses_between(Pose(150.0, 120.0), Pose(170.0, 125.0), 25)
    # The part spans x 102..198 at the start; the occluder grows from its left edge to x = 150.
    occluders = [(0, 60, 100 + 2 * i, 120) for i in range(25)]
    updates, truths = follow(part, poses, occluders)
    assert all(update.ok for update in updates), [u.reason for u in updates if not u.ok]
    assert max(errors(updates, truths)) <= TOLERANCE_PX
    assert updates[-1].features < updates[0].features  # the occluded features were dropped, not followed


def test_full_occlusion_drops_the_track_with_its_reason():
    part = MovingPart(seed=3)
    poses = poses_between(Pose(150.0, 120.0), Pose(160.0, 120.0), 12)
    occluders = [None] * 6 + [(60, 40, 200, 170)] * 6  # the whole part hidden from frame 6 on
    updates, truths = follow(part, poses, occluders)
    assert all(update.ok for update in updates[:6])
    assert max(errors(updates[:6], truths[:6])) <= TOLERANCE_PX
    lost = updates[6]
    assert not lost.ok
    assert "features" in lost.reason  # too few left, or too few passing forward-backward
    assert all(not update.ok and update.reason == lost.reason for update in updates[6:])  # it stays lost


def test_the_part_leaving_the_image_drops_the_track():
    part = MovingPart(seed=4)
    poses = poses_between(Pose(200.0, 120.0), Pose(360.0, 120.0), 33)  # 5 px a frame to the right, out
    updates, truths = follow(part, poses)
    held = [update for update in updates if update.ok]
    lost = next(update for update in updates if not update.ok)
    assert max(errors(held, truths[: len(held)])) <= TOLERANCE_PX
    assert "left the image" in lost.reason
    assert truths[len(held)][0] > part.width - 1 - 5  # dropped when the true point is at the border, not long before


def test_a_jump_beyond_max_jump_px_is_refused():
    part = MovingPart(seed=5)
    poses = poses_between(Pose(120.0, 120.0), Pose(180.0, 120.0), 7)  # 10 px a frame
    updates, _ = follow(part, poses, settings=TrackSettings(max_jump_px=6.0))
    assert not updates[1].ok
    assert updates[1].reason.startswith("large jump: 10 px")


def test_a_textureless_region_is_not_followed():
    flat = np.full((240, 320, 3), 128, np.uint8)
    update = PartTracker().seed(flat, 160.0, 120.0)
    assert not update.ok and update.reason.startswith("too little texture: 0 features")


def test_weak_when_most_features_are_gone():
    """Half the part hidden: still held (the point is visible) but weak: time for a new full answer."""
    part = MovingPart(seed=6)
    poses = [Pose(150.0, 120.0)] * 2
    updates, truths = follow(part, poses, [None, (0, 0, 150, 240)], TrackSettings(region_max_radius_px=200))
    assert updates[1].ok and updates[1].weak
    assert not updates[0].weak


def test_the_region_moves_with_the_part():
    part = MovingPart(seed=7)
    poses = poses_between(Pose(120.0, 100.0), Pose(170.0, 130.0, angle_deg=20.0), 15)
    tracker = PartTracker()
    image, mask = part.render(poses[0])
    tracker.seed(image, *part.pixel(poses[0]), mask=mask)
    for pose in poses[1:]:
        tracker.update(part.render(pose)[0])
    truth = part.render(poses[-1])[1]
    region = tracker.region()
    overlap = (region & truth).sum() / (region | truth).sum()
    assert overlap > 0.95
