"""KeyframePolicy: when the heavy encoder runs, and the reason it gives."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from turncrop.tracking.keyframes import (
    DISAGREEMENT,
    FIRST,
    MAX_INTERVAL,
    MOTION,
    NEW_TRACK,
    OPERATOR,
    QUALITY_DROP,
    KeyframeOptions,
    KeyframePolicy,
)
from turncrop.tracking.masks import mask_agreement, mask_iou

LOGGER = "turncrop.tracking.keyframes"


def _started(**options) -> KeyframePolicy:
    """A policy that has taken frame 0 as its first keyframe, scored 0.95."""
    policy = KeyframePolicy(KeyframeOptions(**options))
    decision = policy.before_decode(0)
    assert decision.keyframe and decision.reason == FIRST
    policy.keyframe_scored(0.95)
    return policy


def test_first_frame_is_a_keyframe_with_reason_first():
    policy = KeyframePolicy()
    d = policy.before_decode(17)
    assert (d.frame_index, d.keyframe, d.reason) == (17, True, FIRST)
    assert policy.reasons == {FIRST: 1}
    assert policy.keyframes == 1
    assert policy.frames == 1
    # The next, unremarkable frame propagates.
    d = policy.before_decode(18)
    assert (d.keyframe, d.reason) == (False, "propagate")
    assert policy.keyframes == 1
    assert policy.frames == 2


def test_max_interval_counts_frames_since_the_last_keyframe():
    policy = _started(max_interval=4)
    keyed = [i for i in range(1, 13) if policy.before_decode(i).keyframe]
    assert keyed == [4, 8, 12]
    assert policy.reasons[MAX_INTERVAL] == 3


def test_max_interval_restarts_after_a_keyframe_for_another_reason():
    policy = _started(max_interval=4)
    assert not policy.before_decode(1).keyframe
    assert policy.before_decode(2, operator=True).reason == OPERATOR
    # Counted from frame 2 now, not frame 0.
    assert not policy.before_decode(4).keyframe
    assert not policy.before_decode(5).keyframe
    assert policy.before_decode(6).reason == MAX_INTERVAL


def test_max_interval_of_one_keys_every_frame():
    policy = _started(max_interval=1)
    assert all(policy.before_decode(i).keyframe for i in range(1, 5))


def test_motion_threshold_is_inclusive_and_only_above_triggers():
    policy = _started(motion=0.1)
    assert not policy.before_decode(1, motion=0.099).keyframe
    d = policy.before_decode(2, motion=0.1)
    assert (d.keyframe, d.reason) == (True, MOTION)
    assert not policy.before_decode(3, motion=0.0).keyframe


def test_new_track_and_operator_force_a_keyframe():
    policy = _started()
    assert policy.before_decode(1, new_track=True).reason == NEW_TRACK
    assert policy.before_decode(2, operator=True).reason == OPERATOR
    assert policy.reasons == {FIRST: 1, NEW_TRACK: 1, OPERATOR: 1}


def test_reasons_are_checked_in_documented_order():
    # new_track beats operator beats max_interval beats motion.
    policy = _started(max_interval=2)
    assert policy.before_decode(2, motion=5.0, new_track=True, operator=True).reason == NEW_TRACK
    assert policy.before_decode(4, motion=5.0, operator=True).reason == OPERATOR
    assert policy.before_decode(6, motion=5.0).reason == MAX_INTERVAL
    assert policy.before_decode(7, motion=5.0).reason == MOTION


def test_reset_makes_the_next_frame_a_first_keyframe_and_forgets_the_score():
    policy = _started(min_quality=0.5, quality_drop=0.1)
    policy.reset()
    assert policy.before_decode(1).reason == FIRST
    # The old keyframe's score (0.95) is forgotten: 0.6 is not a drop from anything.
    assert not policy.after_decode(2, score=0.6, agreement=None).keyframe
    assert policy.reasons[FIRST] == 2  # counts survive a reset


def test_quality_drop_absolute():
    policy = _started(min_quality=0.75, quality_drop=0.5)
    assert not policy.after_decode(1, score=0.75, agreement=None).keyframe
    d = policy.after_decode(2, score=0.74, agreement=None)
    assert (d.frame_index, d.keyframe, d.reason) == (2, True, QUALITY_DROP)


def test_quality_drop_relative_to_the_keyframe_score():
    policy = _started(min_quality=0.1, quality_drop=0.12)  # keyframe scored 0.95
    assert not policy.after_decode(1, score=0.84, agreement=None).keyframe
    assert policy.after_decode(2, score=0.82, agreement=None).reason == QUALITY_DROP
    # After a fresh keyframe scored lower, the bar moves down with it.
    policy.keyframe_scored(0.7)
    assert not policy.after_decode(3, score=0.6, agreement=None).keyframe
    assert policy.after_decode(4, score=0.57, agreement=None).reason == QUALITY_DROP


def test_quality_without_a_keyframe_score_uses_the_first_judged_score():
    policy = KeyframePolicy(KeyframeOptions(min_quality=0.1, quality_drop=0.1))
    policy.before_decode(0)  # no keyframe_scored call
    assert not policy.after_decode(1, score=0.9, agreement=None).keyframe
    assert policy.after_decode(2, score=0.79, agreement=None).reason == QUALITY_DROP


def test_disagreement_with_the_propagated_mask():
    policy = _started(min_agreement=0.85)
    assert not policy.after_decode(1, score=0.95, agreement=0.85).keyframe
    assert not policy.after_decode(2, score=0.95, agreement=None).keyframe
    d = policy.after_decode(3, score=0.95, agreement=0.84)
    assert (d.keyframe, d.reason) == (True, DISAGREEMENT)
    # Quality is judged first.
    assert policy.after_decode(4, score=0.1, agreement=0.0).reason == QUALITY_DROP


def test_keyframe_from_after_decode_restarts_the_interval():
    policy = _started(max_interval=4)
    assert not policy.before_decode(2).keyframe
    assert policy.after_decode(2, score=0.2, agreement=None).keyframe
    policy.keyframe_scored(0.95)
    assert not policy.before_decode(5).keyframe
    assert policy.before_decode(6).reason == MAX_INTERVAL


def test_every_keyframe_is_logged_with_its_reason(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    policy = _started(max_interval=3, min_quality=0.5, min_agreement=0.9)
    policy.before_decode(1, new_track=True)
    policy.before_decode(2, operator=True)
    policy.before_decode(5)
    policy.before_decode(6, motion=1.0)
    policy.after_decode(7, score=0.1, agreement=None)
    policy.keyframe_scored(0.95)
    policy.after_decode(8, score=0.95, agreement=0.2)
    records = [r for r in caplog.records if r.name == LOGGER]
    messages = [r.getMessage() for r in records]
    expected = [(0, FIRST), (1, NEW_TRACK), (2, OPERATOR), (5, MAX_INTERVAL), (6, MOTION),
                (7, QUALITY_DROP), (8, DISAGREEMENT)]
    assert len(messages) == len(expected), messages
    for message, (frame, reason) in zip(messages, expected):
        assert f"frame {frame}" in message and reason in message, message
    assert all(r.levelno == logging.INFO for r in records)
    # The quality and agreement verdicts carry the numbers that caused them.
    assert "0.100" in messages[5] and "0.950" in messages[5]
    assert "0.200" in messages[6]
    assert sum(policy.reasons.values()) == len(expected) == policy.keyframes


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_interval": 0},
        {"motion": 0.0},
        {"motion": -0.1},
        {"quality_drop": 0.0},
        {"min_quality": -0.01},
        {"min_quality": 1.01},
        {"min_agreement": -0.5},
        {"min_agreement": 1.5},
    ],
)
def test_options_validation(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=f"keyframes.{name}"):
        KeyframeOptions(**kwargs)


def test_options_boundaries_are_accepted():
    KeyframeOptions(max_interval=1, min_quality=0.0, min_agreement=1.0)
    KeyframeOptions(min_quality=1.0, min_agreement=0.0)


def test_masks_a_pixel_apart_agree_whatever_the_products_size():
    # A thin cable decoded one pixel over: plain IoU calls it a different object (0.0), so a small product
    # was re-keyed frame after frame; a disc moved by as much agrees either way.
    cable, moved = np.zeros((60, 80), bool), np.zeros((60, 80), bool)
    cable[30, 10:70], moved[31, 10:70] = True, True
    assert mask_iou(cable, moved) == 0.0 and mask_agreement(cable, moved) == 1.0
    yy, xx = np.mgrid[0:60, 0:80]
    disc = (yy - 30) ** 2 + (xx - 40) ** 2 <= 15 ** 2
    assert mask_agreement(disc, np.roll(disc, 1, axis=1)) == 1.0
    # What lies farther than a pixel from the other mask still counts against them.
    far = np.roll(disc, 10, axis=1)
    assert mask_iou(disc, far) < mask_agreement(disc, far) < mask_iou(disc, far) + 0.1
    empty = np.zeros_like(disc)
    assert mask_agreement(disc, empty) == 0.0 and mask_agreement(empty, empty) == 1.0
