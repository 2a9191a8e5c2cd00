"""How the empty-stage plate looks in this frame: where the camera moved it, and how its exposure changed.

A real rig is not still. A motor or a floor shakes the camera by a pixel or two, and auto-exposure, auto white
balance and mains flicker rescale the whole frame, most of all when a dark or bright product enters. Both are
estimated per frame from the visible stage and applied to the plate before it is compared with the frame:

  * the shift is found with OpenCV's ECC (translation), which ignores a global gain and offset, on a grey
    image of at most `FIT_SIDE` px, with the last frame's foreground masked out;
  * the gain is one number per channel (auto-exposure and white balance scale the whole frame), the robust
    mean of log(frame / plate) by iteratively reweighted least squares (Tukey's biweight) on block averages:
    the product, the operator and shadows are outliers of that fit, whatever their colour. A gain field
    (a plane in log space) was tried and dropped: the product's own soft shadow, a large region a few % darker,
    tilted it and lit the far corners up as foreground.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

FIT_SIDE = 160  # px on the larger side of the grid the fits run on
_TUKEY = 4.685
_MIN_SCALE = 0.004  # log-gain residual scale never assumed below ~0.4 %
_SHIFT_GAIN = 0.2  # share of the frame's decorrelation from the plate a shift must remove to be believed


@dataclass(frozen=True)
class PlateFit:
    """The plate's shift (dx, dy) in frame pixels and its gain per channel, (3,) float32 (None: not fitted)."""

    shift: tuple[float, float] = (0.0, 0.0)
    gain: np.ndarray | None = None

    @property
    def moved(self) -> bool:
        return abs(self.shift[0]) + abs(self.shift[1]) > 0.05

    def apply(self, plate: np.ndarray) -> np.ndarray:
        """The plate (H, W, C) float32 moved and rescaled as this frame sees it."""
        out = shift_image(plate, self.shift)
        return out if self.gain is None else out * self.gain


def shift_image(image: np.ndarray, shift: tuple[float, float]) -> np.ndarray:
    """`image` translated by (dx, dy) px (sub-pixel, bilinear; the border repeats)."""
    if abs(shift[0]) + abs(shift[1]) <= 0.05:
        return image
    m = np.float32([[1, 0, shift[0]], [0, 1, shift[1]]])
    return cv2.warpAffine(image, m, (image.shape[1], image.shape[0]), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)


def fit_plate(image: np.ndarray, plate: np.ndarray, outliers: np.ndarray | None, *, max_shift: float,
              initial: tuple[float, float] = (0.0, 0.0)) -> PlateFit:
    """Fit the shift and the per-channel gain that best turn `plate` into `image`.

    Args:
      image: (H, W, 3) uint8 or float32 frame.  plate: (H, W, 3) float32 backdrop mean.
      outliers: (H, W) bool pixels known not to show the stage (the last frame's foreground), or None.
      max_shift: the largest shift believed, in px; a larger answer, or one that explains the frame no
        better than no shift (a featureless backdrop gives ECC nothing to hold on to), is dropped.
      initial: where ECC starts (the last frame's shift).
    """
    h, w = plate.shape[:2]
    step = max(1, int(np.ceil(max(h, w) / FIT_SIDE)))
    size = (max(8, w // step), max(8, h // step))
    small_x = cv2.resize(image.astype(np.float32), size, interpolation=cv2.INTER_AREA)
    small_b = cv2.resize(plate, size, interpolation=cv2.INTER_AREA)
    usable = np.ones(size[::-1], bool)
    if outliers is not None:
        usable = cv2.resize(outliers.astype(np.uint8), size, interpolation=cv2.INTER_AREA) == 0
    shift = _fit_shift(small_x, small_b, usable, step, max_shift, initial) if max_shift > 0 else (0.0, 0.0)
    if shift != (0.0, 0.0):
        small_b = cv2.resize(shift_image(plate, shift), size, interpolation=cv2.INTER_AREA)
    return PlateFit(shift=shift, gain=_fit_gain(small_x, small_b, usable))


def _fit_shift(x: np.ndarray, b: np.ndarray, usable: np.ndarray, step: int, max_shift: float,
               initial: tuple[float, float]) -> tuple[float, float]:
    """The plate's shift in frame px: ECC's answer if it explains the frame clearly better than no shift.

    On a featureless sweep ECC has nothing to hold on to and answers with an arbitrary shift of a few px; a
    plate moved by that is worse than one left in place (its compression pattern and banding no longer
    line up), so a shift must earn its place: it has to remove `_SHIFT_GAIN` of the decorrelation left.
    """
    grey_x = cv2.cvtColor(x, cv2.COLOR_RGB2GRAY)
    grey_b = cv2.cvtColor(b, cv2.COLOR_RGB2GRAY)
    mask = cv2.erode(usable.astype(np.uint8), np.ones((3, 3), np.uint8))
    start = np.float32([[1, 0, -initial[0] / step], [0, 1, -initial[1] / step]])
    try:
        # ECC warps the input (the plate) onto the template (the frame): plate(p + t) ~ frame(p).
        _, warp = cv2.findTransformECC(grey_x, grey_b, start.copy(), cv2.MOTION_TRANSLATION,
                                       (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 1e-4), mask, 3)
        found = (-float(warp[0, 2]) * step, -float(warp[1, 2]) * step)
    except cv2.error:
        return (0.0, 0.0)
    if not np.isfinite(sum(found)) or np.hypot(*found) > max_shift:
        return (0.0, 0.0)

    def correlation(shift: tuple[float, float]) -> float:
        moved = shift_image(grey_b, (shift[0] / step, shift[1] / step))
        return cv2.computeECC(grey_x, moved, mask)

    still = correlation((0.0, 0.0))
    return found if 1.0 - correlation(found) < (1.0 - _SHIFT_GAIN) * (1.0 - still) else (0.0, 0.0)


def _fit_gain(x: np.ndarray, b: np.ndarray, usable: np.ndarray) -> np.ndarray | None:
    """(3,) float32 gain per channel, or None when too little of the stage is visible or exposed."""
    h, w = usable.shape
    exposed = (x > 3).all(-1) & (b > 3).all(-1) & (x < 250).all(-1) & (b < 250).all(-1)
    keep = usable & exposed
    if keep.sum() < 0.1 * h * w:
        keep = exposed  # the foreground took most of the frame: let the robust weights sort it out
        if keep.sum() < 16:
            return None
    return np.exp([_robust_mean(np.log(x[..., c][keep] / b[..., c][keep])) for c in range(3)]).astype(np.float32)


def _robust_mean(values: np.ndarray, iterations: int = 6) -> float:
    """Tukey-weighted mean of `values`, started from their median."""
    centre = float(np.median(values))
    for _ in range(iterations):
        residual = values - centre
        scale = max(1.4826 * float(np.median(np.abs(residual))), _MIN_SCALE)
        r = residual / (_TUKEY * scale)
        weight = np.where(np.abs(r) < 1, (1 - r * r) ** 2, 0.0)
        if weight.sum() < 8:
            break
        centre = float((weight * values).sum() / weight.sum())
    return centre
