"""DAVIS video-object-segmentation measures: region similarity J and boundary accuracy F.

The definitions follow the DAVIS 2017 evaluation (davis2017-evaluation, `davis2017/metrics.py` and
`davis2017/utils.py`) so that numbers are comparable with published ones:

- J is the IoU of the two masks, 1 when both are empty. Void pixels (DAVIS label 255), when given,
  count for neither intersection nor union.
- F is the boundary F-measure: both masks are reduced to 1-pixel boundary maps (seg2bmap: a pixel is
  on the boundary when it differs from its east, south or south-east neighbour; the last row, last
  column and bottom-right corner follow seg2bmap's special cases), a boundary pixel counts as matched
  when the other boundary has a pixel within a disk of radius `ceil(bound_th * image diagonal)`
  pixels, and precision / recall / F are computed from the matched counts. The empty conventions are
  DAVIS's and are decided on boundary pixels: both boundaries empty -> F = 1; exactly one empty -> F = 0.
  As in DAVIS, void pixels are cleared from both masks before the boundaries are taken.
- Per sequence: mean, recall (fraction of frames scoring > 0.5) and decay (mean of the first quarter
  of the frames minus mean of the last quarter, with DAVIS's overlapping quartile bins).

DAVIS's semi-supervised protocol scores every frame except the first (the given annotation) and the
last; `SequenceScores` scores whatever frames it is given, so leave those two out for comparable numbers.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

__all__ = [
    "SequenceScores",
    "boundary_f_measure",
    "boundary_map",
    "boundary_tolerance_px",
    "region_similarity",
]


def _as_bool_pair(pred: np.ndarray, gt: np.ndarray, void: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Validate shapes and return (pred, gt) as bool with void pixels cleared."""
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.ndim != 2 or pred.shape != gt.shape:
        raise ValueError(f"pred and gt must be 2-D masks of one shape, got {pred.shape} and {gt.shape}")
    pred = pred.astype(bool, copy=False)
    gt = gt.astype(bool, copy=False)
    if void is not None:
        void = np.asarray(void)
        if void.shape != gt.shape:
            raise ValueError(f"void must have the masks' shape {gt.shape}, got {void.shape}")
        keep = ~void.astype(bool, copy=False)
        pred = pred & keep
        gt = gt & keep
    return pred, gt


def region_similarity(pred: np.ndarray, gt: np.ndarray, void: np.ndarray | None = None) -> float:
    """DAVIS J: intersection over union of two masks.

    Args:
      pred: (H, W) predicted mask, bool or any dtype where non-zero is foreground.
      gt: (H, W) ground-truth mask, same convention.
      void: optional (H, W) mask of pixels to ignore (DAVIS label 255).

    Returns:
      IoU in [0, 1]; 1.0 when both masks are empty (outside the void).
    """
    pred, gt = _as_bool_pair(pred, gt, void)
    union = np.count_nonzero(pred | gt)
    if union == 0:
        return 1.0
    return np.count_nonzero(pred & gt) / union


_BLOCK_2X2 = np.ones((2, 2), dtype=np.uint8)


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """1-pixel boundary map of a mask, as DAVIS's seg2bmap builds it (same size, no resampling).

    Boundary pixels sit half a pixel towards the origin from the true edge: pixel (y, x) is on the
    boundary when it differs from (y, x+1), (y+1, x) or (y+1, x+1). In the last row only the east
    neighbour is compared, in the last column only the south one, and the bottom-right pixel is never
    a boundary, so a mask running off the right or bottom edge gets no boundary along that edge.

    Args:
      mask: (H, W) mask, non-zero = foreground.

    Returns:
      (H, W) uint8 map, 1 on boundary pixels and 0 elsewhere.
    """
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {m.shape}")
    m = m.view(np.uint8) if m.dtype == bool else (m != 0).view(np.uint8)
    # seg2bmap's rule is "the 2x2 block anchored at (y, x) is not uniform": its max differs from its
    # min. OpenCV's morphology ignores pixels outside the image, which yields exactly seg2bmap's
    # last-row, last-column and corner rules.
    block_max = cv2.dilate(m, _BLOCK_2X2, anchor=(0, 0))
    block_min = cv2.erode(m, _BLOCK_2X2, anchor=(0, 0))
    return cv2.subtract(block_max, block_min, dst=block_max)


def boundary_tolerance_px(shape: tuple[int, int], bound_th: float = 0.008) -> int:
    """Matching radius in pixels: `ceil(bound_th * diagonal)` when `bound_th < 1`, else `ceil(bound_th)`.

    Examples: 854x480 -> 8, 640x480 -> 7 (6.4 rounded up), 1920x1080 -> 18.
    """
    if bound_th <= 0:
        raise ValueError(f"bound_th must be positive, got {bound_th}")
    if bound_th >= 1:
        return math.ceil(bound_th)
    return math.ceil(bound_th * math.hypot(shape[0], shape[1]))


_DISKS: dict[int, np.ndarray] = {}


def _disk(radius: int) -> np.ndarray:
    """(2r+1, 2r+1) uint8 structuring element with x^2 + y^2 <= r^2 (scikit-image's `disk`)."""
    kernel = _DISKS.get(radius)
    if kernel is None:
        r = np.arange(-radius, radius + 1)
        kernel = ((r[:, None] ** 2 + r[None, :] ** 2) <= radius**2).astype(np.uint8)
        _DISKS[radius] = kernel
    return kernel


def _boundary_window(pred: np.ndarray, gt: np.ndarray) -> tuple[slice, slice] | None:
    """The crop of the frame that holds every boundary pixel of both masks; None if both are empty.

    Boundary pixels lie in the masks' joint bounding box grown by one pixel up and left (seg2bmap
    marks the pixel before a rising edge). Growing it by one pixel down and right as well leaves an
    empty last row and column inside the crop (or the crop ends where the frame does), so seg2bmap's
    last-row / last-column rules give the same map as on the full frame. Dilation stays exact on the
    crop because only boundary pixels are counted and all of them, the dilation's sources included,
    lie inside it. This cuts the cost of F to the object's size.
    """
    rows = np.flatnonzero(pred.any(axis=1) | gt.any(axis=1))
    if len(rows) == 0:
        return None
    cols = np.flatnonzero(pred.any(axis=0) | gt.any(axis=0))
    h, w = pred.shape
    return (
        slice(max(rows[0] - 1, 0), min(rows[-1] + 2, h)),
        slice(max(cols[0] - 1, 0), min(cols[-1] + 2, w)),
    )


def boundary_f_measure(
    pred: np.ndarray, gt: np.ndarray, bound_th: float = 0.008, void: np.ndarray | None = None
) -> float:
    """DAVIS F: F-measure of boundary precision and recall with a distance tolerance.

    Args:
      pred: (H, W) predicted mask, non-zero = foreground.
      gt: (H, W) ground-truth mask.
      bound_th: tolerance as a fraction of the image diagonal (< 1; rounded up to whole pixels) or,
        when >= 1, in pixels. DAVIS uses 0.008 (8 px at 854x480).
      void: optional (H, W) mask of pixels to ignore; cleared from both masks first, as DAVIS does.

    Returns:
      F in [0, 1]. Both boundaries empty -> 1.0; exactly one empty -> 0.0.
    """
    pred, gt = _as_bool_pair(pred, gt, void)
    radius = boundary_tolerance_px(pred.shape, bound_th)  # from the full frame, not the crop below
    window = _boundary_window(pred, gt)
    if window is None:
        return 1.0
    pred_b = boundary_map(pred[window])
    gt_b = boundary_map(gt[window])
    n_pred = cv2.countNonZero(pred_b)
    n_gt = cv2.countNonZero(gt_b)
    if n_pred == 0 and n_gt == 0:
        return 1.0
    if n_pred == 0 or n_gt == 0:
        return 0.0

    kernel = _disk(radius)
    # Precision: predicted boundary pixels near the true boundary; recall: the converse.
    gt_near = cv2.dilate(gt_b, kernel)
    pred_near = cv2.dilate(pred_b, kernel)
    precision = cv2.countNonZero(cv2.bitwise_and(pred_b, gt_near, dst=gt_near)) / n_pred
    recall = cv2.countNonZero(cv2.bitwise_and(gt_b, pred_near, dst=pred_near)) / n_gt
    if precision + recall == 0:
        return 0.0
    return 2.0 * precision * recall / (precision + recall)


def _recall(values: np.ndarray) -> float:
    return float(np.mean(values > 0.5)) if len(values) else math.nan


def _decay(values: np.ndarray) -> float:
    """DAVIS decay: mean of the first of four overlapping bins minus the mean of the last.

    Bin edges are the 0-based indices round(linspace(1, N, 5)) - 1 and bin i spans edges i..i+1
    inclusive, as in DAVIS (which casts the edges to uint8 and so breaks past 255 frames; plain ints here).
    """
    n = len(values)
    if n == 0:
        return math.nan
    edges = (np.round(np.linspace(1, n, 5) + 1e-10) - 1).astype(int)
    first = values[edges[0] : edges[1] + 1]
    last = values[edges[3] : edges[4] + 1]
    return float(np.mean(first) - np.mean(last))


class SequenceScores:
    """Per-frame J and F of one object through one sequence, and DAVIS's per-sequence statistics.

    Feed it frame by frame with `add`; read the statistics at any time. With no frames added every
    statistic is NaN. DAVIS's J&F for a whole dataset is the mean over objects of `JF_mean`.
    """

    def __init__(self, bound_th: float = 0.008) -> None:
        self.bound_th = bound_th
        self._j: list[float] = []
        self._f: list[float] = []

    def add(self, pred: np.ndarray, gt: np.ndarray, void: np.ndarray | None = None) -> tuple[float, float]:
        """Score one frame: (H, W) masks (non-zero = foreground), optional (H, W) void mask. Returns (J, F)."""
        j = region_similarity(pred, gt, void)
        f = boundary_f_measure(pred, gt, self.bound_th, void)
        self._j.append(j)
        self._f.append(f)
        return j, f

    @property
    def frames(self) -> int:
        return len(self._j)

    @property
    def J(self) -> np.ndarray:
        """(frames,) float64 per-frame region similarity, in the order added."""
        return np.asarray(self._j, dtype=np.float64)

    @property
    def F(self) -> np.ndarray:
        """(frames,) float64 per-frame boundary F-measure, in the order added."""
        return np.asarray(self._f, dtype=np.float64)

    @property
    def J_mean(self) -> float:
        return float(np.mean(self._j)) if self._j else math.nan

    @property
    def F_mean(self) -> float:
        return float(np.mean(self._f)) if self._f else math.nan

    @property
    def JF_mean(self) -> float:
        return (self.J_mean + self.F_mean) / 2.0

    @property
    def J_recall(self) -> float:
        """Fraction of frames with J > 0.5."""
        return _recall(self.J)

    @property
    def F_recall(self) -> float:
        """Fraction of frames with F > 0.5."""
        return _recall(self.F)

    @property
    def J_decay(self) -> float:
        """Loss of J from the first quarter of the sequence to the last (positive = got worse)."""
        return _decay(self.J)

    @property
    def F_decay(self) -> float:
        """Loss of F from the first quarter of the sequence to the last (positive = got worse)."""
        return _decay(self.F)

    def summary(self) -> dict[str, float]:
        """All statistics in one dict (keys: frames, J&F, J_mean, J_recall, J_decay, F_mean, F_recall, F_decay)."""
        return {
            "frames": float(self.frames),
            "J&F": self.JF_mean,
            "J_mean": self.J_mean,
            "J_recall": self.J_recall,
            "J_decay": self.J_decay,
            "F_mean": self.F_mean,
            "F_recall": self.F_recall,
            "F_decay": self.F_decay,
        }
