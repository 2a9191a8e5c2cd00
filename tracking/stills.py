"""Choosing the best still of a product: score each frame's mask as a catalogue photo, keep the top K.

`score_still` is called once per frame for a tracked product and must stay cheap (a few ms at 720p):
every image operation runs on the mask's bounding box, never on the full frame. `CandidatePool` keeps
the best K scored frames of one product as small crops, so memory does not grow with the video length.

Score components (each in [0, 1], higher is better):
  confidence       the segmenter's own quality estimate (SAM's predicted IoU or the backend's analogue).
  stability        how little the mask moves when the logit threshold moves (`mask_stability`).
  sharpness        share of the fine-detail energy inside the mask that a slight re-blur destroys.
  completeness     1 when the mask does not touch the frame edge, 0 when it is clearly cut by it.
  size             mask area / frame area, penalising tiny and frame-filling masks.
  centring         1 when the mask box is centred in the frame, 0 when its centre is in a corner.
  prior_agreement  optional, e.g. IoU with the mask propagated from the previous frame.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import cv2
import numpy as np

from turncrop.tracking.frame import Frame
from turncrop.tracking.masks import mask_box

# Mask area fraction ramps for the size component: 0 below _AREA_TINY, 1 between _AREA_OK and _AREA_BIG,
# 0 above _AREA_FULL. Tiny masks give low-resolution stills (0.1 % of 720p is ~30x30 px); masks covering
# most of the frame are usually background leaks or a product too close to the lens to be whole.
_AREA_TINY, _AREA_OK, _AREA_BIG, _AREA_FULL = 0.001, 0.02, 0.5, 0.9
# A mask pixel this close to the frame edge counts as touching it (tolerates a mask stopping 1 px short).
_EDGE_PX = 2
# Sharpness: the re-blur kernel, and how far the mask is eroded so that the statistics see only product
# pixels (3x3 Laplacian + Gaussian support of ~3 sigma would otherwise pick up the product/background edge).
_REBLUR_SIGMA = 1.0
_INTERIOR_ERODE_PX = 4
_MIN_INTERIOR_PX = 64
# Laplacian energy of uint8 quantisation noise (variance 1/12 grey levels^2 through the 4-neighbour
# kernel, whose squared weights sum to 20). Re-blurring removes it almost entirely, so it would read as
# detail lost; it is subtracted from the energy lost (see `_sharpness`).
_QUANT_LAP_ENERGY = 20.0 / 12.0


@dataclass(frozen=True)
class StillWeights:
    """How the components combine into `StillScore.total`.

    total = quality * (cut_floor + (1 - cut_floor) * completeness), where quality is the weighted mean of
    the other components (prior_agreement only when given).

    Why these defaults: on a turntable every frame shows the same product at about the same size and
    place, so what really differs between frames is motion blur and how right the mask is. Sharpness
    (what a shopper notices first) gets the largest weight; confidence and stability together estimate
    mask quality and weigh as much; size and centring only break ties when the product drifts. The
    segmenter's own confidence is flat across good frames; where an independent estimate of the product
    exists (the empty-stage model), agreement between the two tells the frames whose mask is right.
    Completeness is not averaged in but gates the total: a catalogue still must show the whole product,
    so a cut mask scores at most `cut_floor` times an equal uncut one, yet cut candidates still rank
    among themselves when no frame shows the whole product.

    Attributes:
      confidence, stability, sharpness, size, centring, prior_agreement, evidence_agreement: non-negative
        weights (the last two count only when given).
      cut_tolerance: fraction of the mask outline on the frame edge at which completeness reaches 0
        (linear in between; 0.05 = a cut of 5 % of the outline already counts as fully cut).
      cut_floor: total multiplier of a fully cut mask, in [0, 1).
    """

    confidence: float = 1.0
    stability: float = 1.0
    sharpness: float = 2.0
    size: float = 0.5
    centring: float = 0.5
    prior_agreement: float = 1.0
    evidence_agreement: float = 1.0
    cut_tolerance: float = 0.05
    cut_floor: float = 0.05

    def __post_init__(self) -> None:
        names = ("confidence", "stability", "sharpness", "size", "centring", "prior_agreement", "evidence_agreement")
        for name in names:
            w = getattr(self, name)
            if not (math.isfinite(w) and w >= 0):
                raise ValueError(f"StillWeights.{name} must be a finite weight >= 0, got {w!r}")
        if sum(getattr(self, n) for n in names if not n.endswith("_agreement")) <= 0:
            raise ValueError("StillWeights: at least one of the always-present component weights must be > 0")
        if not 0 < self.cut_tolerance <= 1:
            raise ValueError(f"StillWeights.cut_tolerance must be in (0, 1], got {self.cut_tolerance!r}")
        if not 0 <= self.cut_floor < 1:
            raise ValueError(f"StillWeights.cut_floor must be in [0, 1), got {self.cut_floor!r}")


DEFAULT_WEIGHTS = StillWeights()


@dataclass(frozen=True)
class StillScore:
    """How good one frame's mask is as a catalogue still. All fields in [0, 1]; see the module doc."""

    confidence: float
    stability: float
    sharpness: float
    completeness: float
    size: float
    centring: float
    prior_agreement: float | None
    total: float
    evidence_agreement: float | None = None

    def as_dict(self) -> dict[str, float | None]:
        """JSON-ready plain dict of all fields."""
        return asdict(self)


def mask_stability(logits: np.ndarray, offset: float = 1.0) -> float:
    """SAM's stability score: IoU of the masks `logits > +offset` and `logits > -offset`.

    The first mask is a subset of the second, so the IoU is a ratio of pixel counts. An empty
    `logits > -offset` mask gives 0 (no mask is not a stable mask).

    Args:
      logits: (H, W) float log-odds, positive = foreground.
      offset: threshold shift in logit units, > 0.
    """
    if not (math.isfinite(offset) and offset > 0):
        raise ValueError(f"mask_stability: offset must be a finite number > 0, got {offset!r}")
    logits = np.asarray(logits)
    if logits.ndim != 2:
        raise ValueError(f"mask_stability: logits must be (H, W), got shape {logits.shape}")
    union = int(np.count_nonzero(logits > -offset))
    if union == 0:
        return 0.0
    return int(np.count_nonzero(logits > offset)) / union


def score_still(
    image: np.ndarray,
    mask: np.ndarray,
    *,
    confidence: float,
    stability: float,
    prior_agreement: float | None = None,
    evidence_agreement: float | None = None,
    weights: StillWeights = DEFAULT_WEIGHTS,
) -> StillScore:
    """Score one frame's mask of a product as a catalogue still.

    Args:
      image: (H, W, 3) uint8 RGB frame.
      mask: (H, W) bool (or 0/non-zero) mask of the product in that frame.
      confidence: segmenter quality estimate; clipped to [0, 1] (SAM's IoU head can exceed 1 slightly).
      stability: mask stability, e.g. `mask_stability(logits)`; clipped to [0, 1].
      prior_agreement: optional agreement with a prior (e.g. IoU with the propagated mask), clipped.
      evidence_agreement: optional agreement with an independent estimate of the product (e.g. IoU with
        the empty-stage model's foreground), clipped.
      weights: how the components combine.

    Returns:
      A `StillScore`. An empty mask scores 0 on every image component and 0 in total.
    """
    _check_image_mask(image, mask, "score_still")
    confidence = _unit(confidence, "confidence")
    stability = _unit(stability, "stability")
    if prior_agreement is not None:
        prior_agreement = _unit(prior_agreement, "prior_agreement")
    if evidence_agreement is not None:
        evidence_agreement = _unit(evidence_agreement, "evidence_agreement")

    m = _as_u8(mask)
    box = mask_box(m)
    if box is None:
        return StillScore(confidence, stability, 0.0, 0.0, 0.0, 0.0, prior_agreement, 0.0, evidence_agreement)
    h, w = m.shape
    x0, y0, x1, y1 = box
    area = int(np.count_nonzero(m[y0:y1, x0:x1]))

    sharp = _sharpness(image, m, box)
    complete = _completeness(m, box, weights.cut_tolerance)
    size = _size_score(area / (h * w))
    # Per-axis offset normalised by the half-frame, so a centre in a corner is 1 whatever the aspect.
    dx = ((x0 + x1) / 2 - w / 2) / (w / 2)
    dy = ((y0 + y1) / 2 - h / 2) / (h / 2)
    centring = float(np.clip(1.0 - math.hypot(dx, dy) / math.sqrt(2), 0.0, 1.0))

    parts = [
        (weights.confidence, confidence),
        (weights.stability, stability),
        (weights.sharpness, sharp),
        (weights.size, size),
        (weights.centring, centring),
    ]
    if prior_agreement is not None:
        parts.append((weights.prior_agreement, prior_agreement))
    if evidence_agreement is not None:
        parts.append((weights.evidence_agreement, evidence_agreement))
    quality = sum(wt * v for wt, v in parts) / sum(wt for wt, _ in parts)
    total = quality * (weights.cut_floor + (1.0 - weights.cut_floor) * complete)
    return StillScore(confidence, stability, sharp, complete, size, centring, prior_agreement, float(total),
                      evidence_agreement)


@dataclass(frozen=True)
class Candidate:
    """One kept frame of a product: a crop around the mask, enough to export a still.

    Attributes:
      frame_index, timestamp, source: from the `Frame`.
      image: (h, w, 3) uint8 RGB crop of the frame (mask box plus margin, clipped to the frame); owns its
        memory (never a view of the frame).
      mask: (h, w) bool crop of the mask.
      alpha: (h, w) float32 soft alpha in [0, 1], cropped the same way, or None.
      offset: (x, y) of the crop's top-left pixel in the frame.
      frame_size: (H, W) of the source frame.
      box: (x0, y0, x1, y1) mask bounding box in frame pixels; x1, y1 exclusive (width = x1 - x0).
      score: the frame's `StillScore`.
    """

    frame_index: int
    timestamp: float
    source: str
    image: np.ndarray
    mask: np.ndarray
    alpha: np.ndarray | None
    offset: tuple[int, int]
    frame_size: tuple[int, int]
    box: tuple[int, int, int, int]
    score: StillScore = field(repr=False)

    @property
    def box_in_crop(self) -> tuple[int, int, int, int]:
        """`box` in crop coordinates (x0, y0, x1, y1), x1/y1 exclusive."""
        ox, oy = self.offset
        x0, y0, x1, y1 = self.box
        return x0 - ox, y0 - oy, x1 - ox, y1 - oy


class CandidatePool:
    """The best `capacity` candidate stills of one product, kept as crops.

    Diversity: no two kept candidates are within `min_gap` frames of each other; a new candidate replaces
    its worse neighbours or is refused when a neighbour is at least as good (adjacent frames are near
    duplicates, and a spread-out pool is a better fallback if the best still is later rejected).
    Ties keep the earlier candidate. `min_gap=0` disables this.
    """

    def __init__(
        self, capacity: int = 8, *, min_gap: int = 2, margin_frac: float = 0.05, min_margin_px: int = 16
    ) -> None:
        """
        Args:
          capacity: K, the most candidates kept (>= 1).
          min_gap: frames within which only the better candidate is kept (>= 0).
          margin_frac, min_margin_px: crop margin around the mask box, the larger of
            `margin_frac` x the box's longer side and `min_margin_px`; export needs it for the soft edge
            and the PNG's margin.
        """
        if capacity < 1:
            raise ValueError(f"CandidatePool: capacity must be >= 1, got {capacity}")
        if min_gap < 0:
            raise ValueError(f"CandidatePool: min_gap must be >= 0, got {min_gap}")
        if not (margin_frac >= 0 and min_margin_px >= 0):
            raise ValueError("CandidatePool: margin_frac and min_margin_px must be >= 0")
        self.capacity = capacity
        self.min_gap = min_gap
        self.margin_frac = margin_frac
        self.min_margin_px = min_margin_px
        self._kept: list[Candidate] = []

    def __len__(self) -> int:
        return len(self._kept)

    @property
    def worst_total(self) -> float | None:
        """Total score a new candidate must beat once the pool is full; None while it is not full."""
        if len(self._kept) < self.capacity:
            return None
        return min(c.score.total for c in self._kept)

    def _would_keep(self, frame_index: int, score: StillScore) -> bool:
        """Whether `offer` could keep a candidate of this score at this frame."""
        total = score.total
        worst = self.worst_total
        if worst is not None and total <= worst:
            return False
        return not any(c.score.total >= total for c in self._kept if abs(c.frame_index - frame_index) <= self.min_gap)

    def offer(self, frame: Frame, mask: np.ndarray, score: StillScore, *, alpha: np.ndarray | None = None) -> bool:
        """Offer one frame's mask; returns True when it was kept.

        Cheap (no copy, no image work) when the pool is full and `score` does not beat the worst kept.
        An empty mask is never kept.

        Args:
          frame: the frame the mask belongs to.
          mask: (H, W) bool mask at the frame's resolution.
          score: its `score_still` result.
          alpha: optional (H, W) float soft alpha in [0, 1] at the frame's resolution.
        """
        if not self._would_keep(frame.index, score):
            return False
        _check_image_mask(frame.image, mask, "CandidatePool.offer")
        if alpha is not None and np.shape(alpha) != np.shape(mask):
            raise ValueError(f"CandidatePool.offer: alpha shape {np.shape(alpha)} != mask shape {np.shape(mask)}")

        neighbours = [c for c in self._kept if abs(c.frame_index - frame.index) <= self.min_gap]
        m = _as_u8(mask)
        box = mask_box(m)
        if box is None:
            return False
        for c in neighbours:
            self._kept.remove(c)
        if len(self._kept) >= self.capacity:
            self._kept.remove(min(self._kept, key=lambda c: (c.score.total, -c.frame_index)))
        self._kept.append(self._crop(frame, m, alpha, box, score))
        return True

    def refine(self, frame: Frame, mask: np.ndarray, alpha: np.ndarray | None) -> bool:
        """Replace the kept candidate of `frame` by a refined mask (and alpha), keeping its score; False if
        no candidate of that frame is kept or the mask is empty."""
        for i, c in enumerate(self._kept):
            if c.frame_index == frame.index:
                _check_image_mask(frame.image, mask, "CandidatePool.refine")
                m = _as_u8(mask)
                box = mask_box(m)
                if box is None:
                    return False
                self._kept[i] = self._crop(frame, m, alpha, box, c.score)
                return True
        return False

    def best(self) -> Candidate | None:
        """The highest-scoring candidate (earliest on ties), or None when empty."""
        ranked = self.ranked()
        return ranked[0] if ranked else None

    def ranked(self) -> list[Candidate]:
        """All kept candidates, best first."""
        return sorted(self._kept, key=lambda c: (-c.score.total, c.frame_index))

    def _crop(
        self, frame: Frame, m: np.ndarray, alpha: np.ndarray | None, box: tuple[int, int, int, int], score: StillScore
    ) -> Candidate:
        h, w = m.shape
        x0, y0, x1, y1 = box
        margin = max(self.min_margin_px, math.ceil(self.margin_frac * max(x1 - x0, y1 - y0)))
        cx0, cy0 = max(0, x0 - margin), max(0, y0 - margin)
        cx1, cy1 = min(w, x1 + margin), min(h, y1 + margin)
        win = (slice(cy0, cy1), slice(cx0, cx1))
        # Copies, so that the pool never keeps a whole frame alive through a view.
        a = None
        if alpha is not None:
            a = np.clip(np.asarray(alpha, dtype=np.float32)[win], 0.0, 1.0).copy()
        return Candidate(
            frame_index=frame.index,
            timestamp=frame.timestamp,
            source=frame.source,
            image=frame.image[win].copy(),
            mask=m[win].astype(bool),
            alpha=a,
            offset=(cx0, cy0),
            frame_size=(h, w),
            box=box,
            score=score,
        )


def _check_image_mask(image: np.ndarray, mask: np.ndarray, who: str) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"{who}: image must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
    if np.shape(mask) != image.shape[:2]:
        raise ValueError(f"{who}: mask shape {np.shape(mask)} does not match image (H, W) {image.shape[:2]}")


def _unit(value: float, name: str) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"score_still: {name} must be finite, got {value!r}")
    return min(1.0, max(0.0, value))


def _as_u8(mask: np.ndarray) -> np.ndarray:
    """(H, W) mask -> contiguous uint8 0/1 (zero-copy for contiguous bool)."""
    mask = np.asarray(mask)
    if mask.dtype == bool:
        return np.ascontiguousarray(mask).view(np.uint8)
    return (mask != 0).astype(np.uint8)


def _ramp(x: float, lo: float, hi: float) -> float:
    return min(1.0, max(0.0, (x - lo) / (hi - lo)))


def _size_score(area_fraction: float) -> float:
    return _ramp(area_fraction, _AREA_TINY, _AREA_OK) * (1.0 - _ramp(area_fraction, _AREA_BIG, _AREA_FULL))


def _completeness(m: np.ndarray, box: tuple[int, int, int, int], cut_tolerance: float) -> float:
    """1 - (fraction of the mask outline within `_EDGE_PX` of the frame edge) / cut_tolerance, clipped."""
    h, w = m.shape
    x0, y0, x1, y1 = box
    if x0 >= _EDGE_PX and y0 >= _EDGE_PX and x1 <= w - _EDGE_PX and y1 <= h - _EDGE_PX:
        return 1.0
    # Zero padding makes mask pixels on the frame edge part of the outline: the product is cut there.
    crop = cv2.copyMakeBorder(m[y0:y1, x0:x1], 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    inner = cv2.erode(
        crop, cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3)), borderType=cv2.BORDER_CONSTANT, borderValue=0
    )
    outline = (crop > inner)[1:-1, 1:-1]
    n_outline = int(np.count_nonzero(outline))
    ys, xs = np.nonzero(outline)
    xs, ys = xs + x0, ys + y0
    near = (xs < _EDGE_PX) | (ys < _EDGE_PX) | (xs >= w - _EDGE_PX) | (ys >= h - _EDGE_PX)
    frac = np.count_nonzero(near) / max(1, n_outline)
    return float(np.clip(1.0 - frac / cut_tolerance, 0.0, 1.0))


def _sharpness(image: np.ndarray, m: np.ndarray, box: tuple[int, int, int, int]) -> float:
    """Re-blur sharpness of the product's interior, in [0, 1].

    With g the grey image, Lap the 3x3 Laplacian, G a Gaussian of sigma `_REBLUR_SIGMA` px and energies
    E = var(Lap(g)), E_b = var(Lap(G * g)) over the eroded mask:

        s = (E - E_b - Q) / E,   Q = Laplacian energy of uint8 quantisation noise,

    i.e. the fraction of the fine-detail energy that a further slight blur destroys. A sharp image loses
    most of it (s near 1), an already blurred one little (s near 0). Q keeps quantisation noise, which
    dominates E once a product is very blurred, from reading as detail; it also makes s fall smoothly to
    0 when there is no detail above the noise (a flat interior scores 0 in every frame, harmless for
    ranking). As a ratio of energies over the same pixels, s does not depend on brightness, contrast (as
    long as E >> Q, true for any visible texture) or mask size, so no per-product running maximum is
    needed and a score is final when it is computed.

    It is not texture-scale invariant: blur is judged against the pixel grid, so a coarse texture
    scores lower than a fine one at the same blur (white noise: 0.99 sharp, 0.85 / 0.45 / 0.31 after a
    Gaussian blur of sigma 1 / 2 / 3 px; a texture of ~2 px grain: 0.85, 0.68, 0.39, 0.16). s is for
    ranking frames of one product, which share texture and resolution, not for comparing products.
    Sensor noise is sharp and counts as detail.
    """
    h, w = m.shape
    x0, y0, x1, y1 = box
    pad = _INTERIOR_ERODE_PX + 1
    cx0, cy0, cx1, cy1 = max(0, x0 - pad), max(0, y0 - pad), min(w, x1 + pad), min(h, y1 + pad)
    grey = cv2.cvtColor(image[cy0:cy1, cx0:cx1], cv2.COLOR_RGB2GRAY).astype(np.float32)
    mc = m[cy0:cy1, cx0:cx1]
    k = 2 * _INTERIOR_ERODE_PX + 1
    interior = cv2.erode(
        mc, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)), borderType=cv2.BORDER_CONSTANT, borderValue=0
    )
    if np.count_nonzero(interior) < _MIN_INTERIOR_PX:  # thin or tiny product: use what there is
        interior = mc
    sel = interior.astype(bool)
    energy = float(np.var(cv2.Laplacian(grey, cv2.CV_32F, ksize=1)[sel]))
    if energy <= 0.0:
        return 0.0
    reblur = cv2.GaussianBlur(grey, (0, 0), _REBLUR_SIGMA)
    energy_b = float(np.var(cv2.Laplacian(reblur, cv2.CV_32F, ksize=1)[sel]))
    return float(np.clip((energy - energy_b - _QUANT_LAP_ENERGY) / energy, 0.0, 1.0))
