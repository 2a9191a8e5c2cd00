"""How the empty-stage plate looks in this frame: where the camera moved it, and how its exposure changed.

A real rig is not still. A motor or a floor shakes the camera by a pixel or two, and auto-exposure, auto white
balance and mains flicker rescale the whole frame, most of all when a dark or bright product enters. Both are
estimated per frame from the visible stage and applied to the plate before it is compared with the frame:

  * the shift is found with OpenCV's ECC (translation), which ignores a global gain and offset, on a grey
    image of at most `FIT_SIDE` px, with the last frame's foreground masked out;
  * the gain is a smooth field per channel, log g_c(u, v) = a_c + b_c u + c_c v over normalised image
    coordinates (a lamp that dims on one side is a gradient, not a constant), fitted by iteratively reweighted
    least squares (Tukey's biweight) on block averages: the product, the operator and shadows are outliers
    of that fit, whatever their colour.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

FIT_SIDE = 160  # px on the larger side of the grid the fits run on
_TUKEY = 4.685
_MIN_SCALE = 0.004  # log-gain residual scale never assumed below ~0.4 %


@dataclass(frozen=True)
class PlateFit:
    """The plate's shift (dx, dy) in frame pixels and its (3, 3) log-gain coefficients [a, b, c] per channel."""

    shift: tuple[float, float] = (0.0, 0.0)
    log_gain: np.ndarray | None = None

    @property
    def moved(self) -> bool:
        return abs(self.shift[0]) + abs(self.shift[1]) > 0.05

    def gain_field(self, size: tuple[int, int]) -> np.ndarray | None:
        """(H, W, 3) float32 per-channel gain, or None when no gain was fitted."""
        if self.log_gain is None:
            return None
        h, w = size
        u = np.linspace(-1, 1, w, dtype=np.float32)[None, :, None]
        v = np.linspace(-1, 1, h, dtype=np.float32)[:, None, None]
        a, b, c = (self.log_gain[:, k].astype(np.float32) for k in range(3))
        return np.exp(a + b * u + c * v).astype(np.float32)

    def apply(self, plate: np.ndarray) -> np.ndarray:
        """The plate (H, W, C) float32 moved and rescaled as this frame sees it."""
        out = shift_image(plate, self.shift)
        gain = self.gain_field(plate.shape[:2])
        return out if gain is None else out * gain


def shift_image(image: np.ndarray, shift: tuple[float, float]) -> np.ndarray:
    """`image` translated by (dx, dy) px (sub-pixel, bilinear; the border repeats)."""
    if abs(shift[0]) + abs(shift[1]) <= 0.05:
        return image
    m = np.float32([[1, 0, shift[0]], [0, 1, shift[1]]])
    return cv2.warpAffine(image, m, (image.shape[1], image.shape[0]), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)


def fit_plate(image: np.ndarray, plate: np.ndarray, outliers: np.ndarray | None, *, max_shift: float,
              initial: tuple[float, float] = (0.0, 0.0)) -> PlateFit:
    """Fit the shift and the gain field that best turn `plate` into `image`.

    Args:
      image: (H, W, 3) uint8 or float32 frame.  plate: (H, W, 3) float32 backdrop mean.
      outliers: (H, W) bool pixels known not to show the stage (the last frame's foreground), or None.
      max_shift: the largest shift believed, in px; a larger answer (a featureless backdrop gives ECC
        nothing to hold on to) is dropped for `initial`.
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
    return PlateFit(shift=shift, log_gain=_fit_gain(small_x, small_b, usable))


def _fit_shift(x: np.ndarray, b: np.ndarray, usable: np.ndarray, step: int, max_shift: float,
               initial: tuple[float, float]) -> tuple[float, float]:
    grey_x = cv2.cvtColor(x, cv2.COLOR_RGB2GRAY)
    grey_b = cv2.cvtColor(b, cv2.COLOR_RGB2GRAY)
    warp = np.float32([[1, 0, initial[0] / step], [0, 1, initial[1] / step]])
    mask = cv2.erode(usable.astype(np.uint8), np.ones((3, 3), np.uint8))
    try:
        # ECC warps the template (the plate) onto the input: the warp found is the plate's shift.
        _, warp = cv2.findTransformECC(grey_x, grey_b, warp, cv2.MOTION_TRANSLATION,
                                       (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 1e-4), mask, 3)
    except cv2.error:
        return initial
    dx, dy = -float(warp[0, 2]) * step, -float(warp[1, 2]) * step
    if not np.isfinite(dx + dy) or np.hypot(dx, dy) > max_shift:
        return initial
    return (dx, dy)


def _fit_gain(x: np.ndarray, b: np.ndarray, usable: np.ndarray) -> np.ndarray | None:
    """(3, 3) log-gain plane per channel, or None when too little of the stage is visible or exposed."""
    h, w = usable.shape
    u, v = np.meshgrid(np.linspace(-1, 1, w, dtype=np.float32), np.linspace(-1, 1, h, dtype=np.float32))
    exposed = (x > 3).all(-1) & (b > 3).all(-1) & (x < 250).all(-1) & (b < 250).all(-1)
    keep = usable & exposed
    if keep.sum() < 0.1 * h * w:
        keep = exposed  # the foreground took most of the frame: let the robust weights sort it out
        if keep.sum() < 16:
            return None
    design = np.stack([np.ones(keep.sum(), np.float32), u[keep], v[keep]], 1)
    coeffs = np.zeros((3, 3))
    for c in range(3):
        target = np.log(x[..., c][keep] / b[..., c][keep])
        coeffs[c] = _robust_plane(design, target)
    return coeffs


def _robust_plane(design: np.ndarray, target: np.ndarray, iterations: int = 6) -> np.ndarray:
    """Least-squares plane through `target` with Tukey weights, started from the median (no slope)."""
    beta = np.array([np.median(target), 0.0, 0.0])
    for _ in range(iterations):
        residual = target - design @ beta
        scale = max(1.4826 * np.median(np.abs(residual - np.median(residual))), _MIN_SCALE)
        r = residual / (_TUKEY * scale)
        weight = np.where(np.abs(r) < 1, (1 - r * r) ** 2, 0.0)
        if weight.sum() < 8:
            break
        wd = design * weight[:, None]
        beta = np.linalg.lstsq(wd.T @ design + 1e-6 * np.eye(3), wd.T @ target, rcond=None)[0]
    return beta
