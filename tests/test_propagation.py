"""FlowPropagator: DIS flow between frames, mask warping, and the dense prior it makes."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from turncrop.tracking.propagation import FlowPropagator, Motion, PropagationOptions

H, W = 160, 200
CX, CY, R = 90.0, 80.0, 35.0
_rng = np.random.default_rng(7)
# Object texture in object coordinates (twice the frame, so it can be shifted and rotated), and a
# faint, smooth backdrop texture that stays put.
OBJECT_TEXTURE = cv2.GaussianBlur(_rng.normal(0, 40, (2 * H, 2 * W)).astype(np.float32), (0, 0), 1.5)
BACKDROP_TEXTURE = cv2.GaussianBlur(_rng.normal(0, 10, (H, W)).astype(np.float32), (0, 0), 3.0)


def _frame(cx: float = CX, cy: float = CY, angle: float = 0.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A textured disc centred at integer (cx, cy), its texture turned by `angle` degrees about its centre."""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= R * R
    turn = cv2.getRotationMatrix2D((float(W), float(H)), angle, 1.0)
    texture = cv2.warpAffine(OBJECT_TEXTURE, turn, (2 * W, 2 * H), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_REFLECT)
    ox, oy = int(W - cx), int(H - cy)
    grey = np.where(mask, 110 + texture[oy:oy + H, ox:ox + W], 180 + BACKDROP_TEXTURE)
    grey = grey + np.random.default_rng(seed).normal(0, 1.0, grey.shape)
    img = np.clip(np.stack([grey, 0.9 * grey, 0.8 * grey], -1), 0, 255).astype(np.uint8)
    return img, mask


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.fixture(scope="module")
def translated():
    """Frame pair: the disc moves by (+6, -4) px."""
    prev, prev_mask = _frame(seed=1)
    cur, cur_mask = _frame(CX + 6, CY - 4, seed=2)
    return prev, prev_mask, cur, cur_mask


def test_grey_keeps_small_frames_and_shrinks_large_ones():
    img, _ = _frame()
    fp = FlowPropagator()
    g = fp.grey(img)
    assert g.shape == (H, W) and g.dtype == np.uint8
    np.testing.assert_array_equal(g, cv2.cvtColor(img, cv2.COLOR_RGB2GRAY))
    small = FlowPropagator(PropagationOptions(work_max_side=100)).grey(img)
    assert small.shape == (80, 100)
    assert abs(float(small.mean()) - float(g.mean())) < 1.0  # area averaging, not a crop


def test_translation_shift_and_warp(translated):
    prev, prev_mask, cur, cur_mask = translated
    fp = FlowPropagator()
    motion = fp.motion(fp.grey(prev), fp.grey(cur), (H, W), region=prev_mask)
    assert isinstance(motion, Motion)
    assert motion.flow.shape == (H, W, 2) and motion.flow.dtype == np.float32
    assert motion.scale == pytest.approx(1.0)
    assert motion.shift.shape == (2,) and motion.shift.dtype == np.float32
    np.testing.assert_allclose(motion.shift, [6, -4], atol=1.0)
    warped = fp.warp(prev_mask.astype(np.float32), motion) > 0.5
    assert _iou(warped, cur_mask) > 0.9
    assert _iou(warped, cur_mask) > _iou(prev_mask, cur_mask) + 0.15  # unwarped: about 0.77


def test_translation_at_reduced_working_size(translated):
    prev, prev_mask, cur, cur_mask = translated
    fp = FlowPropagator(PropagationOptions(work_max_side=100, preset="medium"))
    motion = fp.motion(fp.grey(prev), fp.grey(cur), (H, W), region=prev_mask)
    assert motion.flow.shape == (80, 100, 2)
    assert motion.scale == pytest.approx(2.0)
    # The shift is reported in full-resolution pixels.
    np.testing.assert_allclose(motion.shift, [6, -4], atol=1.0)
    warped = fp.warp(prev_mask.astype(np.float32), motion) > 0.5
    assert warped.shape == (H, W)
    assert _iou(warped, cur_mask) > 0.9


def test_shift_summary_is_limited_to_the_region(translated):
    prev, prev_mask, cur, _ = translated
    fp = FlowPropagator()
    g0, g1 = fp.grey(prev), fp.grey(cur)
    # The still backdrop is most of the frame: without the region the median motion is (nearly) the
    # backdrop's, far from the object's (6, -4).
    assert np.hypot(*fp.motion(g0, g1, (H, W)).shift) < 1.5
    # An all-False region falls back to the whole frame rather than failing.
    whole = fp.motion(g0, g1, (H, W), region=np.zeros((H, W), bool)).shift
    np.testing.assert_allclose(whole, fp.motion(g0, g1, (H, W)).shift, atol=1e-6)


def test_residual_is_small_where_the_flow_explains_the_change_and_large_where_the_frame_jumped(translated):
    prev, prev_mask, cur, _ = translated
    fp = FlowPropagator()
    moved = fp.motion(fp.grey(prev), fp.grey(cur), (H, W), region=prev_mask).residual
    unwarped = float(cv2.absdiff(fp.grey(prev), fp.grey(cur))[prev_mask].mean())
    assert moved < 0.5 * unwarped, (moved, unwarped)
    # Another view of the object in its place (its texture turned by a third of a turn): no flow explains it.
    jumped, _ = _frame(angle=120.0, seed=3)
    residual = fp.motion(fp.grey(prev), fp.grey(jumped), (H, W), region=prev_mask).residual
    assert residual > 3 * moved, (residual, moved)


@pytest.mark.parametrize("preset", ["fast", "medium"])
def test_turning_in_place_has_no_shift(preset):
    prev, mask = _frame(seed=1)
    cur, cur_mask = _frame(angle=5.0, seed=2)
    fp = FlowPropagator(PropagationOptions(preset=preset))
    motion = fp.motion(fp.grey(prev), fp.grey(cur), (H, W), region=mask)
    assert np.hypot(*motion.shift) < 0.5
    assert _iou(fp.warp(mask.astype(np.float32), motion) > 0.5, cur_mask) > 0.95
    if preset == "medium":
        # Yet the flow is not zero: the texture turned (about 2.5 px on the rim; DIS's coarser presets
        # work at 1/4 resolution and underestimate it on a frame this small).
        yy, xx = np.mgrid[0:H, 0:W]
        rim = mask & ((xx - CX) ** 2 + (yy - CY) ** 2 > (0.6 * R) ** 2)
        assert np.median(np.hypot(*motion.flow[rim].T)) > 1.0


def test_warp_carries_values_and_fills_outside(translated):
    prev, prev_mask, cur, _ = translated
    fp = FlowPropagator()
    motion = fp.motion(fp.grey(prev), fp.grey(cur), (H, W), region=prev_mask)
    # A constant field survives the warp except where flow samples from outside the frame.
    const = fp.warp(np.full((H, W), 5.0, np.float32), motion, fill=-1.0)
    assert const.dtype == np.float32
    np.testing.assert_allclose(const[3:-3, 3:-3], 5.0, atol=1e-4)
    assert const.min() >= -1.0 - 1e-4 and const.max() <= 5.0 + 1e-4
    # Zero motion is the identity.
    frames = {"greys": (np.zeros((H, W), np.uint8),) * 2, "region": np.ones((H, W), bool)}
    still = Motion(flow=np.zeros((H, W, 2), np.float32), scale=1.0, shift=np.zeros(2, np.float32), **frames)
    values = np.random.default_rng(0).normal(size=(H, W)).astype(np.float32)
    np.testing.assert_allclose(fp.warp(values, still), values, atol=1e-5)
    # A uniform backward flow of (+3, 0) samples 3 px to the right: content moves left.
    left = Motion(flow=np.tile(np.float32([3, 0]), (H, W, 1)), scale=1.0, shift=np.float32([-3, 0]), **frames)
    out = fp.warp(values, left, fill=9.0)
    np.testing.assert_allclose(out[:, :-3], values[:, 3:], atol=1e-5)
    assert (out[:, -2:] == 9.0).all()


def test_prior_logits_shape_sign_and_saturation():
    fp = FlowPropagator(PropagationOptions(prior_strength=3.0, prior_width=0.05))  # width 12.8 px
    yy, xx = np.mgrid[0:H, 0:W]
    dist = np.hypot(xx - CX, yy - CY)
    mask = dist <= R
    logits = fp.prior_logits(mask)
    assert logits.shape == (H, W) and logits.dtype == np.float32
    # Sign equals the mask.
    assert ((logits > 0) == mask).all()
    # Small on both sides of the edge ...
    edge = np.abs(dist - R) < 1.0
    assert np.abs(logits[edge]).max() < 0.5
    # ... growing with distance ...
    assert 0.5 < logits[(dist > R - 7) & (dist < R - 5)].mean() < 2.5
    # ... and saturating at +-strength deep inside and far outside.
    np.testing.assert_allclose(logits[dist < R - 15], 3.0)
    np.testing.assert_allclose(logits[dist > R + 15], -3.0)
    assert logits.max() == pytest.approx(3.0) and logits.min() == pytest.approx(-3.0)


def test_prior_logits_default_width_and_degenerate_masks():
    fp = FlowPropagator()  # width = 0.01 * diagonal = 2.6 px
    mask = np.zeros((H, W), bool)
    mask[40:120, 50:150] = True
    logits = fp.prior_logits(mask)
    strength = fp.options.prior_strength
    assert ((logits > 0) == mask).all()
    np.testing.assert_allclose(logits[45:115, 55:145], strength)
    np.testing.assert_allclose(fp.prior_logits(np.zeros((H, W), bool)), -strength)
    np.testing.assert_allclose(fp.prior_logits(np.ones((H, W), bool)), strength)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"preset": "slow"}, "preset"),
        ({"work_max_side": 31}, "work_max_side"),
        ({"prior_strength": 0.0}, "prior_strength"),
        ({"prior_width": -0.01}, "prior_width"),
    ],
)
def test_options_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PropagationOptions(**kwargs)


@pytest.mark.parametrize("preset", ["ultrafast", "fast", "medium"])
def test_every_preset_builds(preset):
    fp = FlowPropagator(PropagationOptions(preset=preset, work_max_side=32))
    assert fp.options.preset == preset
