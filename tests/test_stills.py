"""Scoring stills and keeping the best K candidates (synthetic images only)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from turncrop.tracking.frame import Frame
from turncrop.tracking.stills import (
    CandidatePool,
    StillScore,
    StillWeights,
    mask_stability,
    score_still,
)

H, W = 360, 480


def textured_disc(
    centre: tuple[int, int] = (240, 180), radius: int = 100, blur: float = 0.0, contrast: float = 1.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 frame with a textured disc on flat grey, and the disc's (H, W) bool mask."""
    rng = np.random.default_rng(seed)
    tex = cv2.GaussianBlur(rng.normal(0, 1, (H, W)).astype(np.float32), (0, 0), 1.0)
    tex = 128 + contrast * 40 * tex / tex.std()
    yy, xx = np.mgrid[:H, :W]
    mask = (xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 < radius**2
    grey = np.where(mask, tex, 200.0)
    img = np.repeat(np.clip(grey, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    if blur:
        img = cv2.GaussianBlur(img, (0, 0), blur)
    return img, mask


def score(img: np.ndarray, mask: np.ndarray, **kw) -> StillScore:
    kw.setdefault("confidence", 0.9)
    kw.setdefault("stability", 0.9)
    return score_still(img, mask, **kw)


def fake_score(total: float) -> StillScore:
    return StillScore(0.5, 0.5, 0.5, 1.0, 1.0, 1.0, None, total)


# --- score_still -----------------------------------------------------------------------------------


def test_sharp_disc_beats_the_same_disc_blurred() -> None:
    sharp = score(*textured_disc())
    blurred = score(*textured_disc(blur=2.0))
    assert sharp.sharpness > blurred.sharpness + 0.2
    assert sharp.total > blurred.total
    for s in (sharp, blurred):
        assert s.completeness == 1.0
        assert all(0.0 <= v <= 1.0 for v in (s.confidence, s.stability, s.sharpness, s.size, s.centring, s.total))


def test_sharpness_falls_monotonically_with_blur() -> None:
    values = [score(*textured_disc(blur=b)).sharpness for b in (0.0, 0.7, 1.5, 3.0, 5.0)]
    assert values == sorted(values, reverse=True)
    assert values[-1] < 0.1


def test_sharpness_does_not_depend_on_contrast_or_mask_size() -> None:
    ref = score(*textured_disc()).sharpness
    assert score(*textured_disc(contrast=0.5)).sharpness == pytest.approx(ref, abs=0.05)
    assert score(*textured_disc(radius=40)).sharpness == pytest.approx(ref, abs=0.05)


def test_disc_cut_by_the_border_scores_incomplete_and_loses() -> None:
    cut = score(*textured_disc(centre=(30, 180)), confidence=1.0, stability=1.0)
    whole_but_blurred = score(*textured_disc(blur=1.5), confidence=0.8, stability=0.8)
    assert cut.completeness == 0.0
    assert cut.sharpness > whole_but_blurred.sharpness  # better on everything that is not the cut ...
    assert cut.total < 0.1 * whole_but_blurred.total  # ... and still strongly disfavoured


def test_mask_stopping_one_pixel_short_of_the_edge_is_still_cut() -> None:
    img, mask = textured_disc(centre=(30, 180))
    mask[:, 0] = False
    assert score(img, mask).completeness == 0.0


def test_disc_close_to_but_clear_of_the_edge_is_complete() -> None:
    assert score(*textured_disc(centre=(105, 180))).completeness == 1.0


def test_size_penalises_tiny_and_frame_filling_masks() -> None:
    img, _ = textured_disc()
    tiny = np.zeros((H, W), bool)
    tiny[178:182, 238:242] = True
    filling = np.zeros((H, W), bool)
    filling[18:342, 24:456] = True  # 81 % of the frame
    assert score(img, tiny).size == 0.0
    assert score(img, filling).size < 0.3
    assert score(*textured_disc()).size == 1.0


def test_centring() -> None:
    centred = score(*textured_disc(radius=40)).centring
    off = score(*textured_disc(centre=(100, 80), radius=40)).centring
    assert centred > 0.99
    assert 0.2 < off < 0.7


def test_prior_agreement_enters_the_total_only_when_given() -> None:
    img, mask = textured_disc()
    base = score(img, mask)
    assert base.prior_agreement is None
    assert score(img, mask, prior_agreement=0.0).total < base.total < score(img, mask, prior_agreement=1.0).total


def test_evidence_agreement_enters_the_total_only_when_given() -> None:
    img, mask = textured_disc()
    base = score(img, mask)
    assert base.evidence_agreement is None
    assert score(img, mask, evidence_agreement=0.5).total < base.total < score(img, mask, evidence_agreement=1.0).total
    unweighted = StillWeights(evidence_agreement=0.0)
    assert score(img, mask, evidence_agreement=0.0, weights=unweighted).total == pytest.approx(
        score(img, mask, weights=unweighted).total)


def test_empty_mask_scores_zero() -> None:
    img, _ = textured_disc()
    s = score(img, np.zeros((H, W), bool))
    assert s.total == 0.0 and s.sharpness == 0.0 and s.completeness == 0.0


def test_inputs_are_validated_and_confidence_clipped() -> None:
    img, mask = textured_disc()
    with pytest.raises(ValueError, match="mask shape"):
        score(img, mask[:-1])
    with pytest.raises(ValueError, match="uint8 RGB"):
        score(img.astype(np.float32), mask)
    with pytest.raises(ValueError, match="confidence must be finite"):
        score(img, mask, confidence=float("nan"))
    assert score(img, mask, confidence=1.03).confidence == 1.0


def test_weights_are_validated_and_change_the_ranking() -> None:
    with pytest.raises(ValueError, match="sharpness"):
        StillWeights(sharpness=-1.0)
    with pytest.raises(ValueError, match="cut_floor"):
        StillWeights(cut_floor=1.0)
    img_s, mask = textured_disc()
    img_b, _ = textured_disc(blur=2.0)
    only_conf = StillWeights(confidence=1, stability=0, sharpness=0, size=0, centring=0)
    # Judged on confidence alone, a blurred frame with a more confident mask wins.
    assert score(img_b, mask, confidence=0.9, weights=only_conf).total > score(
        img_s, mask, confidence=0.8, weights=only_conf
    ).total


def test_mask_stability_on_crafted_logits() -> None:
    logits = np.full((10, 10), -5.0, np.float32)
    logits.flat[:40] = 5.0  # above +1
    logits.flat[40:50] = 0.5  # between -1 and +1: in the loose mask only
    assert mask_stability(logits, offset=1.0) == pytest.approx(40 / 50)
    assert mask_stability(logits, offset=0.4) == pytest.approx(1.0)
    assert mask_stability(np.full((4, 4), -3.0), offset=1.0) == 0.0
    # SAM-like radial logits (1 logit per px from the edge): IoU of discs of radius r-1 and r+1.
    yy, xx = np.mgrid[:201, :201]
    radial = 50.0 - np.hypot(xx - 100, yy - 100)
    assert mask_stability(radial, offset=1.0) == pytest.approx((49 / 51) ** 2, rel=0.02)
    with pytest.raises(ValueError, match="offset"):
        mask_stability(logits, offset=0.0)


# --- CandidatePool ---------------------------------------------------------------------------------


def test_pool_bound_holds_and_keeps_the_top_k() -> None:
    img, mask = textured_disc(radius=30)
    rng = np.random.default_rng(1)
    totals = rng.permutation(np.linspace(0.05, 0.95, 20))
    pool = CandidatePool(capacity=5, min_gap=0)
    for i, t in enumerate(totals):
        pool.offer(Frame(img, i, i / 30), mask, fake_score(float(t)))
        assert len(pool) <= 5
    kept = [c.score.total for c in pool.ranked()]
    assert kept == sorted(totals, reverse=True)[:5]
    assert pool.best().score.total == pytest.approx(0.95)
    assert pool.worst_total == pytest.approx(kept[-1])


def test_offer_worse_than_worst_is_refused_before_touching_inputs() -> None:
    img, mask = textured_disc(radius=30)
    pool = CandidatePool(capacity=2, min_gap=0)
    assert pool.offer(Frame(img, 0, 0.0), mask, fake_score(0.5))
    assert pool.offer(Frame(img, 1, 0.1), mask, fake_score(0.6))
    # A wrong-shaped mask would raise if it were looked at; the cheap path does not look.
    assert not pool.offer(Frame(img, 2, 0.2), mask[:5], fake_score(0.4))
    with pytest.raises(ValueError, match="mask shape"):
        pool.offer(Frame(img, 3, 0.3), mask[:5], fake_score(0.9))


def test_pool_keeps_owned_crops_with_offsets() -> None:
    img, _ = textured_disc()
    mask = np.zeros((H, W), bool)
    mask[60:120, 70:130] = True
    alpha = mask.astype(np.float32) * 0.75
    frame = Frame(img, 7, 0.25, source="clip.mp4")
    pool = CandidatePool(capacity=2, min_margin_px=10, margin_frac=0.0)
    assert pool.offer(frame, mask, fake_score(0.5), alpha=alpha)
    c = pool.best()
    assert (c.frame_index, c.timestamp, c.source, c.frame_size) == (7, 0.25, "clip.mp4", (H, W))
    assert c.box == (70, 60, 130, 120)
    assert c.offset == (60, 50)
    assert c.image.shape == (80, 80, 3) and c.mask.shape == (80, 80) and c.alpha.shape == (80, 80)
    assert not np.shares_memory(c.image, img)
    ox, oy = c.offset
    np.testing.assert_array_equal(c.image, img[oy : oy + 80, ox : ox + 80])
    np.testing.assert_array_equal(c.mask, mask[oy : oy + 80, ox : ox + 80])
    np.testing.assert_array_equal(c.alpha, alpha[oy : oy + 80, ox : ox + 80])
    x0, y0, x1, y1 = c.box_in_crop
    assert c.mask[y0:y1, x0:x1].sum() == mask.sum()


def test_refine_replaces_a_kept_candidate_and_keeps_its_score() -> None:
    img, mask = textured_disc(radius=30)
    pool = CandidatePool(capacity=2, min_gap=0)
    pool.offer(Frame(img, 4, 0.1), mask, fake_score(0.7))
    smaller = np.zeros_like(mask)
    smaller[100:140, 120:160] = True
    alpha = smaller.astype(np.float32) * 0.5
    assert pool.refine(Frame(img, 4, 0.1), smaller, alpha)
    c = pool.best()
    assert c.score.total == pytest.approx(0.7) and c.mask.sum() == smaller.sum() and c.alpha.max() == 0.5
    assert not pool.refine(Frame(img, 5, 0.2), smaller, alpha)  # no candidate of that frame
    assert not pool.refine(Frame(img, 4, 0.1), np.zeros_like(mask), None)


def test_crop_is_clipped_at_the_frame_edge() -> None:
    img, mask = textured_disc(centre=(20, 180), radius=30)
    pool = CandidatePool(min_margin_px=16, margin_frac=0.0)
    pool.offer(Frame(img, 0, 0.0), mask, fake_score(0.5))
    c = pool.best()
    assert c.offset[0] == 0 and c.box[0] == 0
    assert c.image.shape[1] == c.box[2] + 16


def test_pool_prefers_spread_out_frames() -> None:
    img, mask = textured_disc(radius=30)
    pool = CandidatePool(capacity=8, min_gap=2)
    assert pool.offer(Frame(img, 10, 0.0), mask, fake_score(0.5))
    assert pool.offer(Frame(img, 11, 0.0), mask, fake_score(0.6))  # replaces its worse neighbour
    assert [c.frame_index for c in pool.ranked()] == [11]
    assert not pool.offer(Frame(img, 13, 0.0), mask, fake_score(0.55))  # a better one within 2 frames
    assert pool.offer(Frame(img, 14, 0.0), mask, fake_score(0.1))  # 3 frames away: kept
    assert [c.frame_index for c in pool.ranked()] == [11, 14]


def test_empty_mask_is_not_kept_and_empty_pool_has_no_best() -> None:
    img, _ = textured_disc()
    pool = CandidatePool()
    assert pool.best() is None and pool.worst_total is None
    assert not pool.offer(Frame(img, 0, 0.0), np.zeros((H, W), bool), fake_score(0.9))
    assert len(pool) == 0
    with pytest.raises(ValueError, match="capacity"):
        CandidatePool(capacity=0)
