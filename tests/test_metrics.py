"""DAVIS J and F: hand-made cases with known answers, and a brute-force reference on random masks."""
from __future__ import annotations

import math
import time

import numpy as np
import pytest

from turncrop.stream.metrics import (
    SequenceScores,
    boundary_f_measure,
    boundary_map,
    boundary_tolerance_px,
    region_similarity,
)

H, W = 480, 854  # DAVIS 480p: tolerance ceil(0.008 * 979.6) = 8 px


def square(top: int, left: int, size: int = 200, shape: tuple[int, int] = (H, W)) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[top : top + size, left : left + size] = True
    return m


# --- brute-force reference, written straight from the DAVIS definitions --------------------------


def reference_boundary(mask: np.ndarray) -> np.ndarray:
    h, w = mask.shape
    b = np.zeros((h, w), dtype=bool)
    for y in range(h):
        for x in range(w):
            if y == h - 1 and x == w - 1:
                continue
            if y == h - 1:
                b[y, x] = mask[y, x] != mask[y, x + 1]
            elif x == w - 1:
                b[y, x] = mask[y, x] != mask[y + 1, x]
            else:
                b[y, x] = (
                    mask[y, x] != mask[y, x + 1] or mask[y, x] != mask[y + 1, x] or mask[y, x] != mask[y + 1, x + 1]
                )
    return b


def reference_f(pred: np.ndarray, gt: np.ndarray, radius: int) -> float:
    pb, gb = reference_boundary(pred), reference_boundary(gt)
    p_pts, g_pts = np.argwhere(pb), np.argwhere(gb)
    if len(p_pts) == 0 and len(g_pts) == 0:
        return 1.0
    if len(p_pts) == 0 or len(g_pts) == 0:
        return 0.0
    d2 = ((p_pts[:, None, :] - g_pts[None, :, :]) ** 2).sum(-1)
    precision = np.mean(d2.min(axis=1) <= radius**2)
    recall = np.mean(d2.min(axis=0) <= radius**2)
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def random_blob(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """A union of a few random rectangles and discs, some touching the image border."""
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    m = np.zeros(shape, dtype=bool)
    for _ in range(rng.integers(0, 4)):
        if rng.random() < 0.5:
            y0, x0 = rng.integers(-3, h), rng.integers(-3, w)
            y1, x1 = y0 + rng.integers(1, h + 4), x0 + rng.integers(1, w + 4)
            m[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)] = True
        else:
            cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(1, max(h, w) // 2 + 2)
            m |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
    return m


# --- boundary extraction ---------------------------------------------------------------------------


def test_boundary_map_matches_reference_on_random_masks():
    rng = np.random.default_rng(0)
    for _ in range(60):
        shape = (int(rng.integers(1, 25)), int(rng.integers(1, 25)))
        m = random_blob(rng, shape) if rng.random() < 0.7 else rng.random(shape) < 0.5
        np.testing.assert_array_equal(boundary_map(m).astype(bool), reference_boundary(m))


def test_boundary_map_is_one_pixel_wide_and_offset_towards_origin():
    m = square(10, 20, size=5, shape=(30, 40))
    b = boundary_map(m).astype(bool)
    ys, xs = np.nonzero(b)
    # the ring runs from one pixel before the square (top/left) to its last row/column (bottom/right)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (9, 14, 19, 24)
    assert not b[11:14, 21:24].any()  # interior
    assert b.sum() == 4 * 6 - 4  # a 6x6 ring


def test_boundary_map_accepts_uint8_and_rejects_3d():
    m = square(3, 3, size=4, shape=(10, 10))
    np.testing.assert_array_equal(boundary_map(m.astype(np.uint8) * 255), boundary_map(m))
    with pytest.raises(ValueError, match="2-D"):
        boundary_map(np.zeros((4, 4, 1), dtype=bool))


# --- J ---------------------------------------------------------------------------------------------


def test_region_similarity_known_values():
    a = square(100, 100)
    assert region_similarity(a, a) == 1.0
    assert region_similarity(a, square(100, 400)) == 0.0
    # a 1-px shift of a 200 px square: 199*200 shared over 201*200
    assert region_similarity(square(100, 101), a) == pytest.approx(199 / 201)
    empty = np.zeros((H, W), dtype=bool)
    assert region_similarity(empty, empty) == 1.0
    assert region_similarity(a, empty) == 0.0
    assert region_similarity(empty, a) == 0.0


def test_region_similarity_ignores_void_pixels():
    gt = square(100, 100)
    pred = square(100, 150)
    void = np.zeros_like(gt)
    void[:, 300:] = True  # hides pred's overhang
    assert region_similarity(pred, gt, void) == pytest.approx(150 / 200)
    assert region_similarity(pred, gt) == pytest.approx(150 / 250)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="one shape"):
        region_similarity(np.zeros((4, 5), bool), np.zeros((5, 4), bool))
    with pytest.raises(ValueError, match="one shape"):
        boundary_f_measure(np.zeros((4, 5), bool), np.zeros((4, 6), bool))


# --- F ---------------------------------------------------------------------------------------------


def test_tolerance_is_ceil_of_fraction_of_diagonal():
    assert boundary_tolerance_px((480, 854)) == 8  # 7.84
    assert boundary_tolerance_px((480, 640)) == 7  # 6.4: rounded up, not to nearest
    assert boundary_tolerance_px((1080, 1920)) == 18  # 17.6
    assert boundary_tolerance_px((480, 854), bound_th=3) == 3  # >= 1 means pixels
    with pytest.raises(ValueError):
        boundary_tolerance_px((480, 854), bound_th=0)


def test_identical_and_disjoint_masks():
    a = square(100, 100)
    assert boundary_f_measure(a, a) == 1.0
    assert boundary_f_measure(a, square(100, 500)) == 0.0


def test_one_pixel_shift_is_within_tolerance_but_costs_j():
    gt = square(100, 100)
    pred = square(101, 101)
    assert boundary_f_measure(pred, gt) == 1.0
    assert region_similarity(pred, gt) < 1.0


@pytest.mark.parametrize("shape,radius", [((480, 854), 8), ((480, 640), 7)])
def test_tolerance_edge_exactly(shape, radius):
    """A vertical shift of exactly the tolerance still matches every boundary pixel; one more does not."""
    gt = square(100, 100, shape=shape)
    assert boundary_f_measure(square(100 + radius, 100, shape=shape), gt) == 1.0
    f_beyond = boundary_f_measure(square(100 + radius + 1, 100, shape=shape), gt)
    # the two horizontal sides (~half the boundary) now miss: F about 0.5
    assert 0.4 < f_beyond < 0.6


def test_shift_well_beyond_tolerance_gives_low_f_while_j_stays_moderate():
    gt = square(100, 100)
    pred = square(125, 125)
    f = boundary_f_measure(pred, gt)
    assert f < 0.15  # only the pixels near the two crossings of the outlines match
    assert region_similarity(pred, gt) > 0.6


def test_bound_th_in_pixels():
    gt = square(100, 100)
    pred = square(103, 100)
    assert boundary_f_measure(pred, gt, bound_th=3) == 1.0
    assert boundary_f_measure(pred, gt, bound_th=2) < 0.6


def test_empty_conventions():
    empty = np.zeros((H, W), dtype=bool)
    a = square(100, 100)
    assert boundary_f_measure(empty, empty) == 1.0
    assert boundary_f_measure(a, empty) == 0.0
    assert boundary_f_measure(empty, a) == 0.0


def test_full_frame_mask_has_no_boundary():
    """DAVIS decides the empty cases on boundary pixels: a mask filling the frame has none."""
    full = np.ones((60, 80), dtype=bool)
    assert boundary_f_measure(full, full) == 1.0
    assert boundary_f_measure(full, square(10, 10, size=20, shape=(60, 80))) == 0.0


def test_void_pixels_are_cleared_before_boundaries():
    gt = square(100, 100)
    pred = square(100, 100)
    pred[150:170, 250:330] = True  # a spur sticking out to the right
    void = np.zeros_like(gt)
    void[:, 305:] = True
    assert boundary_f_measure(pred, gt) < 0.97
    # the spur's far part is void; what is left of it lies within tolerance of the square's side
    assert boundary_f_measure(pred, gt, void=void) == 1.0


def test_f_matches_brute_force_reference_on_random_masks():
    rng = np.random.default_rng(1)
    for i in range(60):
        shape = (int(rng.integers(2, 40)), int(rng.integers(2, 40)))
        pred, gt = random_blob(rng, shape), random_blob(rng, shape)
        if i % 3 == 0:  # near-misses exercise the tolerance
            gt = np.roll(pred, (int(rng.integers(-4, 5)), int(rng.integers(-4, 5))), axis=(0, 1))
        bound_th = float(rng.choice([0.05, 0.1, 1, 2, 3]))
        radius = boundary_tolerance_px(shape, bound_th)
        assert boundary_f_measure(pred, gt, bound_th) == pytest.approx(reference_f(pred, gt, radius)), (i, shape)


def test_f_is_fast_at_480p():
    gt = np.zeros((H, W), dtype=bool)
    yy, xx = np.mgrid[:H, :W]
    gt[(yy - 240) ** 2 + (xx - 420) ** 2 <= 180**2] = True
    pred = np.roll(gt, (3, -4), axis=(0, 1))
    frame_wide = np.zeros((H, W), dtype=bool)
    frame_wide[2:-2, 2:-2] = True
    scores = SequenceScores()
    for p, g in [(pred, gt), (frame_wide, np.roll(frame_wide, 5, axis=1))]:
        times = []
        for _ in range(15):
            t0 = time.perf_counter()
            scores.add(p, g)
            times.append(time.perf_counter() - t0)
        assert np.median(times) < 0.010, f"{np.median(times) * 1e3:.1f} ms a frame"


# --- sequences --------------------------------------------------------------------------------------


def test_sequence_scores_mean_recall_decay():
    gt = square(100, 100)
    s = SequenceScores()
    assert s.frames == 0 and math.isnan(s.JF_mean) and math.isnan(s.J_decay)
    shifts = [0, 0, 0, 0, 2, 2, 30, 30]  # gets worse over time
    for d in shifts:
        j, f = s.add(square(100 + d, 100 + d), gt)
        assert j == region_similarity(square(100 + d, 100 + d), gt)
        assert f == boundary_f_measure(square(100 + d, 100 + d), gt)
    assert s.frames == len(shifts)
    assert s.J.shape == (8,) and s.F.shape == (8,)
    assert s.J_mean == pytest.approx(s.J.mean())
    assert s.F_mean == pytest.approx(s.F.mean())
    assert s.JF_mean == pytest.approx((s.J_mean + s.F_mean) / 2)
    assert s.J_recall == pytest.approx(np.mean(s.J > 0.5))
    assert s.F_recall == pytest.approx(6 / 8)  # F of the 30 px shifts is far below 0.5
    # DAVIS bins for 8 frames: edges [0, 2, 4, 5, 7] -> first bin frames 0..2, last bin frames 5..7
    assert s.F_decay == pytest.approx(s.F[0:3].mean() - s.F[5:8].mean())
    assert s.J_decay > 0 and s.F_decay > 0
    summary = s.summary()
    assert summary["J&F"] == s.JF_mean and summary["frames"] == 8.0


def test_decay_bins_past_255_frames():
    """DAVIS casts bin edges to uint8; long sequences must still bin by true position."""
    s = SequenceScores()
    good, bad = square(2, 2, size=10, shape=(30, 40)), square(15, 25, size=10, shape=(30, 40))
    for i in range(400):
        s.add(good if i < 200 else bad, good)
    assert s.J_decay == pytest.approx(1.0)
    assert s.J_recall == pytest.approx(0.5)
