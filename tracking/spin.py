"""360° spin sets: find one revolution of a product on the turntable and pick N evenly turned views.

Everything here works on what a `SpinRecorder` keeps per frame of one product: a small appearance
descriptor, the mask box, a sharpness value and (for a bounded number of frames) the cropped image and
alpha. `plan_spin` turns those into a `SpinPlan` (period, phase of every frame, the chosen frames) or a
`NoSpin` (why no honest spin exists). Nothing here writes files: `turncrop.stream.spin_export` does.

Period. A turntable brings the product back to the same view after one turn, so the similarity of
frame i to frame i + L, averaged over i (the lag profile s(L)), falls as the product turns away and
comes back near the period P. Near a return, s(L) ≈ f(|P - L|), where f(d) is the similarity of views d
frames apart, which the small lags measure directly. P is the value that best explains the return side
of the profile with f (least squares on a 0.01-frame grid): this is sub-frame and, unlike peak picking,
still works when the recording stops right at the end of the turn, so that the peak itself is never seen.
When the peak is seen, its parabolic sub-frame position replaces the fit (less biased).
With more than 1.5 turns, the speed is measured locally (each frame's best match one turn later,
parabolic sub-frame peak) and the phase is the integral of that smoothed speed, so a drifting turntable
keeps its views evenly turned.

Descriptor. The box-normalised column profile of the mask and of the masked grey level, plus a coarse
4 x 48 grid of both. Columns follow the turn (a feature's x position depends on the azimuth), and
normalising by the box absorbs the vertical foreshortening when the camera elevation changes, which
whole-image crops do not.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from turncrop.tracking.frame import Frame
from turncrop.tracking.masks import mask_box

_COLS, _ROWS = 48, 4
# Lag-profile thresholds, in units of the profile's own range (hi = f(0), lo = its minimum).
_MIN_CONTRAST = 0.15  # hi - lo below this: the product looks the same from every side, no phase to find
_MIN_RETURN = 0.6  # the return must climb back this far from lo towards hi to count as a full turn
_GRID_STEP = 0.01  # period search resolution, frames
_INTERIOR_ERODE_PX = 3
# A crop keeps this margin (px, and fraction of the box's longer side) around the mask box: export needs
# the soft alpha's edge and a few px of context.
_CROP_MARGIN_PX, _CROP_MARGIN_FRAC = 8, 0.03


@dataclass(frozen=True)
class SpinCrop:
    """One frame's product crop, enough to export a spin view.

    Attributes:
      image: (h, w, 3) uint8 RGB crop.  alpha: (h, w) uint8 soft alpha (0..255) or None (export derives
        one from `mask`).  mask: (h, w) bool.  offset: (x, y) of the crop's top-left pixel in the frame.
    """

    image: np.ndarray
    mask: np.ndarray
    alpha: np.ndarray | None
    offset: tuple[int, int]


@dataclass
class SpinSample:
    """What is kept of one frame of a product. `crop` is None once the recorder has thinned it out."""

    frame_index: int
    timestamp: float
    descriptor: np.ndarray  # (D,) float32, unit norm
    box: tuple[int, int, int, int]  # mask box in frame px, x1/y1 exclusive
    sharpness: float
    crop: SpinCrop | None


@dataclass(frozen=True)
class SpinPlan:
    """One revolution found and N views chosen.

    Attributes:
      period_frames: samples per turn (sub-frame).  period_seconds: the same in seconds.
      phases: (n,) turn fraction of every sample since the first (cumulative, may exceed 1).
      targets: (N,) target phases k / N.  chosen: (N,) sample positions (into the recorder's list).
      drift: whether the phase integrates a measured, varying speed (> 1.5 turns seen) rather than P.
    """

    period_frames: float
    period_seconds: float
    phases: np.ndarray
    targets: np.ndarray
    chosen: np.ndarray
    drift: bool


@dataclass(frozen=True)
class NoSpin:
    """No honest spin: `reason` says why (kept in the product's spin record)."""

    reason: str
    period_frames: float | None = None


def spin_descriptor(image: np.ndarray, mask: np.ndarray, box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """Appearance of the masked product, normalised by its box (see the module doc).

    Args:
      image: (H, W, 3) uint8 RGB.  mask: (H, W) bool, not empty.  box: its mask box if already known.

    Returns:
      (2 * 48 + 2 * 4 * 48,) float32, zero-mean per part, unit norm overall.
    """
    if box is None:
        box = mask_box(mask)
        if box is None:
            raise ValueError("spin_descriptor: empty mask")
    x0, y0, x1, y1 = box
    m = mask[y0:y1, x0:x1].astype(np.float32)
    g = cv2.cvtColor(image[y0:y1, x0:x1], cv2.COLOR_RGB2GRAY).astype(np.float32)
    inside = m > 0
    g = (g - g[inside].mean()) / (g[inside].std() + 1.0) * m  # exposure-invariant, background ignored
    size = (_COLS, _ROWS)
    grid_m = cv2.resize(m, size, interpolation=cv2.INTER_AREA)
    grid_g = cv2.resize(g, size, interpolation=cv2.INTER_AREA)
    parts = [grid_m.mean(0), grid_g.mean(0)]
    out = np.concatenate([p - p.mean() for p in parts]).astype(np.float32)
    return out / max(float(np.linalg.norm(out)), 1e-9)


def mask_sharpness(image: np.ndarray, mask: np.ndarray, box: tuple[int, int, int, int]) -> float:
    """Variance of the Laplacian of the grey image inside the eroded mask (0 when too little is left)."""
    x0, y0, x1, y1 = box
    g = cv2.cvtColor(image[y0:y1, x0:x1], cv2.COLOR_RGB2GRAY)
    k = np.ones((2 * _INTERIOR_ERODE_PX + 1,) * 2, np.uint8)
    inner = cv2.erode(mask[y0:y1, x0:x1].astype(np.uint8), k) > 0
    if np.count_nonzero(inner) < 16:
        return 0.0
    return float(cv2.Laplacian(g, cv2.CV_32F)[inner].var())


class SpinRecorder:
    """Keeps what one product's spin needs while it is on the stage, in bounded memory.

    Every frame leaves a descriptor, box and sharpness (~0.5 KB). Crops are kept for at most
    `max_crops` frames: when that many are held, every other one is dropped and from then on only every
    second (then fourth, ...) frame keeps its crop, so the kept crops stay evenly spread over the whole
    product. Memory is bounded by max_crops x crop pixels x 5 bytes (RGB, mask, alpha): 180 crops of
    420 x 720 px ≈ 270 MB at 720p; lower `max_crops` for 4K cameras.
    """

    def __init__(self, max_crops: int = 180) -> None:
        if max_crops < 2:
            raise ValueError(f"SpinRecorder: max_crops must be >= 2, got {max_crops}")
        self.max_crops = max_crops
        self.samples: list[SpinSample] = []
        self._stride = 1
        self._crops = 0

    def add(self, frame: Frame, mask: np.ndarray, alpha: np.ndarray | None = None) -> None:
        """Record one frame of the product.

        Args:
          frame: the frame.  mask: (H, W) bool product mask (an empty one is ignored).
          alpha: optional (H, W) float soft alpha in [0, 1].
        """
        box = mask_box(mask)
        if box is None:
            return
        n = len(self.samples)
        crop = self._crop(frame.image, mask, alpha, box) if n % self._stride == 0 else None
        self.samples.append(SpinSample(frame.index, frame.timestamp, spin_descriptor(frame.image, mask, box), box,
                                       mask_sharpness(frame.image, mask, box), crop))
        if crop is not None:
            self._crops += 1
            if self._crops > self.max_crops:
                self._thin()

    def _thin(self) -> None:
        self._stride *= 2
        self._crops = 0
        for i, s in enumerate(self.samples):
            if s.crop is not None:
                if i % self._stride:
                    s.crop = None
                else:
                    self._crops += 1

    @staticmethod
    def _crop(image: np.ndarray, mask: np.ndarray, alpha: np.ndarray | None, box: tuple[int, int, int, int]) -> SpinCrop:
        h, w = mask.shape
        x0, y0, x1, y1 = box
        margin = max(_CROP_MARGIN_PX, math.ceil(_CROP_MARGIN_FRAC * max(x1 - x0, y1 - y0)))
        cx0, cy0, cx1, cy1 = max(0, x0 - margin), max(0, y0 - margin), min(w, x1 + margin), min(h, y1 + margin)
        win = (slice(cy0, cy1), slice(cx0, cx1))
        a = None
        if alpha is not None:
            a = np.rint(np.clip(np.asarray(alpha, np.float32)[win], 0.0, 1.0) * 255.0).astype(np.uint8)
        return SpinCrop(image[win].copy(), np.asarray(mask[win], bool).copy(), a, (cx0, cy0))


def plan_spin(descriptors: np.ndarray, timestamps: np.ndarray, sharpness: np.ndarray, views: int,
              available: np.ndarray | None = None, *, slack_frames: float = 0.5,
              sharper_by: float = 0.15) -> SpinPlan | NoSpin:
    """Find one revolution and choose `views` samples evenly spaced by rotation phase.

    Args:
      descriptors: (n, D) unit-norm descriptors of consecutive samples of one product.
      timestamps: (n,) seconds.  sharpness: (n,) e.g. `mask_sharpness`.
      views: N >= 2.
      available: (n,) bool, samples that can be exported (have a crop); default all.
      slack_frames: a sample within this many frames (and half a view step) of a view's target phase
        qualifies for it; of those the nearest is taken unless another is sharper by `sharper_by`
        (relative), so the phase error stays within `slack_frames` plus the estimate's own error.

    Returns:
      A `SpinPlan`, or `NoSpin` when the samples do not show one full turn.
    """
    d = np.asarray(descriptors, np.float32)
    n = len(d)
    if views < 2:
        raise ValueError(f"plan_spin: views must be >= 2, got {views}")
    available = np.ones(n, bool) if available is None else np.asarray(available, bool)
    if n < max(2 * views // 3, 12):
        return NoSpin(f"only {n} frames of the product: too few to find a turn for {views} views")
    period = estimate_period(d)
    if isinstance(period, NoSpin):
        return period
    phases, drift = _phases(d, period)
    turned = phases[-1] + (phases[-1] - phases[-2])  # each sample stands for one frame's turn
    if turned < 1.0 - 0.5 / views:
        return NoSpin(f"the product turned only {turned:.2f} of a revolution (period {period:.1f} frames)", period)
    targets = np.arange(views) / views
    chosen = select_views(phases, sharpness, targets, available, period, slack_frames, sharper_by)
    if isinstance(chosen, NoSpin):
        return chosen
    dt = float(np.median(np.diff(timestamps))) if n > 1 else 0.0
    return SpinPlan(period, period * dt, phases, targets, chosen, drift)


def estimate_period(descriptors: np.ndarray) -> float | NoSpin:
    """Samples per revolution (sub-frame) from the lag profile of (n, D) unit descriptors; see module doc."""
    n = len(descriptors)
    sim = descriptors @ descriptors.T
    prof = np.array([1.0] + [float(np.diagonal(sim, lag).mean()) for lag in range(1, n)])
    # f(0): the similarity of two different frames of the same view (noise keeps it below 1).
    prof[0] = min(1.0, 2 * prof[1] - prof[2]) if n > 2 else 1.0
    hi, lo = prof[0], float(prof[1:].min())
    if hi - lo < _MIN_CONTRAST:
        return NoSpin(f"the product's appearance hardly changes as it turns (contrast {hi - lo:.2f}): "
                      "no phase to measure")
    half = hi - 0.5 * (hi - lo)
    drop = int(np.argmax(prof <= half))  # first lag turned halfway away from the first view
    ret = np.arange(2 * drop, n)
    if len(ret) == 0 or (prof[ret].max() - lo) / (hi - lo) < _MIN_RETURN:
        best = float(prof[ret].max()) if len(ret) else lo
        return NoSpin(f"the product never came back to its first view (best return {(best - lo) / (hi - lo):.2f} "
                      f"of the way, {_MIN_RETURN} needed): less than one full turn seen")
    f = prof[: 2 * drop + 1]  # f(d) for d in 0 .. 2 * drop, the near side of a return
    # The first return crosses the threshold less than `drop` frames before its peak (f(drop) is below
    # it): the period lies in [first, first + drop], possibly past the last sample.
    first = int(ret[np.argmax(prof[ret] >= lo + _MIN_RETURN * (hi - lo))])
    grid = np.arange(first - 1, first + drop + 1 + _GRID_STEP, _GRID_STEP)
    cost = np.empty(len(grid))
    for k, p in enumerate(grid):
        lags = ret[np.abs(ret - p) <= drop]
        if len(lags) < 2:
            cost[k] = np.inf
            continue
        cost[k] = float(np.mean((prof[lags] - np.interp(np.abs(lags - p), np.arange(len(f)), f)) ** 2))
    if not np.isfinite(cost).any():
        return NoSpin("no period fits the return of the product's appearance")
    fitted = float(grid[int(np.argmin(cost))])
    # When the recording runs past the return's peak, the peak itself is the better estimate (the fit is
    # biased when the view changes between turns, e.g. a camera that rises): parabolic sub-frame peak.
    # A peak counts only with a quarter of `drop` seen after it, so that a bump is not taken for it.
    start = max(first, int(round(fitted)) - drop // 2)
    j = start + int(np.argmax(prof[start:int(round(fitted)) + drop // 2 + 1]))
    after = max(2, drop // 4)
    if j + after < n and prof[j] >= prof[j + 1: j + after + 1].max() and prof[j - 1] <= prof[j]:
        den = prof[j - 1] - 2 * prof[j] + prof[j + 1]
        return j + (0.5 * (prof[j - 1] - prof[j + 1]) / den if den < 0 else 0.0)
    return fitted


def _phases(descriptors: np.ndarray, period: float) -> tuple[np.ndarray, bool]:
    """(n,) cumulative phase of every sample, and whether it follows a measured varying speed.

    With at least 1.5 turns, each frame i's best match near i + period (parabolic sub-frame peak) gives
    the turn time starting there; 1 / that, placed at the turn's middle, is the local speed; a straight
    line fitted to those speeds is integrated into the phase. Otherwise the speed is 1 / period.
    """
    n = len(descriptors)
    t = np.arange(n, dtype=np.float64)
    if n - 1 < 1.5 * period:
        return t / period, False
    reach = max(2, int(period / 8))
    mids, speeds = [], []
    for i in range(int(n - 1 - period - reach)):
        lo_j, hi_j = int(i + period) - reach, int(i + period) + reach
        s = descriptors[lo_j:hi_j + 1] @ descriptors[i]
        k = int(np.argmax(s))
        if 0 < k < len(s) - 1:
            den = s[k - 1] - 2 * s[k] + s[k + 1]
            off = 0.5 * (s[k - 1] - s[k + 1]) / den if den < 0 else 0.0
        else:
            off = 0.0
        turn = lo_j + k + off - i
        mids.append(i + turn / 2)
        speeds.append(1.0 / turn)
    if len(speeds) < 4:
        return t / period, False
    # A linear drift (a belt warming up, a motor slowing down) is what turntables do; a straight line
    # is also the safe way to extrapolate over the first and last half turn, which have no measurement.
    slope, intercept = np.polyfit(mids, speeds, 1)
    speed = np.maximum(intercept + slope * t, 0.25 / period)
    phase = np.concatenate([[0.0], np.cumsum(0.5 * (speed[1:] + speed[:-1]))])
    return phase, True


def select_views(phases: np.ndarray, sharpness: np.ndarray, targets: np.ndarray, available: np.ndarray,
                 period: float, slack_frames: float = 0.5, sharper_by: float = 0.15) -> np.ndarray | NoSpin:
    """(N,) sample positions, one per target phase (see `plan_spin`); NoSpin when a target has none.

    Only samples of the first turn compete (phase < 1 + half a step, so the last view may come from
    just past the turn). Without a sample within `slack_frames`, the nearest available one within half
    a view step is taken.
    """
    half_step = 0.5 / len(targets)
    window = min(half_step, slack_frames / period)
    idx = np.flatnonzero(available & (phases < 1.0 + half_step))
    chosen = []
    for target in targets:
        err = np.abs(phases[idx] - target)
        near = idx[err <= window]
        if len(near) == 0:
            ok = idx[err <= half_step]
            if len(ok) == 0:
                return NoSpin(f"no kept frame within half a view step of phase {target:.3f}")
            near = ok[np.argsort(np.abs(phases[ok] - target))[:1]]
        nearest = near[int(np.argmin(np.abs(phases[near] - target)))]
        sharpest = near[int(np.argmax(sharpness[near]))]
        pick = sharpest if sharpness[sharpest] > (1.0 + sharper_by) * sharpness[nearest] else nearest
        chosen.append(int(pick))
    return np.array(chosen, dtype=np.int64)
