"""What reaches into the frame from its edge and is not the product: the operator's hand and arm, a person leaning in.

A product is put on the stage and taken away by hand. Against the empty stage the arm is foreground like the
product, so without a rule it starts false products, joins the product's mask and steals its still. The rules
(no learned model: they hold for any arm, sleeve or glove):

  * an intruder *enters*: a foreground piece that first appears touching the frame's edge and reaching no
    further in than `entry_depth` of the frame is an arm coming in (a product is put down, it does not grow
    from the edge; one that spans the frame from the first frame on is a product);
  * it stays an intruder while its pieces touch the frame's edge and overlap where it was (grown by `reach`
    of the frame for its motion), and where it moves over the product in its own colours;
  * the product is protected: what overlaps the product's previous mask is never the intruder, and a large
    piece that is new this frame (it was not foreground before) and unlike the intruder's own colours (a
    coarse colour histogram of its pixels so far: skin, a sleeve, a glove) is an object put down, the
    product, even where the hand still touches it.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class IntruderOptions:
    entry_depth: float = 0.3  # deepest first appearance (fraction of the frame) that is an entering arm
    reach: float = 0.04  # how far (fraction of the frame's larger side) an intruder moves between frames
    new_object_area: float = 0.01  # a new piece this large (fraction of the frame) is an object put down
    min_pixels: float = 0.0005  # intruder area (fraction of the frame) below which none is present
    own_colours: float = 0.5  # a new piece with this share of the intruder's colours is more of the intruder

    def __post_init__(self) -> None:
        for name in ("entry_depth", "reach", "new_object_area", "min_pixels", "own_colours"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ValueError(f"intruders.{name} must be in (0, 1), got {getattr(self, name)}")


class IntruderTracker:
    """Per frame, the (H, W) bool pixels of the intruders. One instance per stream; `reset` when the stage empties."""

    def __init__(self, options: IntruderOptions | None = None) -> None:
        self.options = options or IntruderOptions()
        self._mask: np.ndarray | None = None  # last frame's intruder pixels
        self._foreground: np.ndarray | None = None  # last frame's foreground
        self._colours: np.ndarray | None = None  # (BINS**3,) share of the intruder's pixels in each colour bin

    @property
    def present(self) -> bool:
        """Whether an intruder was in the last frame."""
        return self._mask is not None and self._mask.mean() >= self.options.min_pixels

    def update(self, image: np.ndarray, foreground: np.ndarray, product: np.ndarray | None) -> np.ndarray:
        """The intruder pixels of this frame.

        Args:
          image: (H, W, 3) uint8 frame.  foreground: (H, W) bool, the stage's foreground.  product: (H, W)
            bool, the product's mask in the previous frame, or None when no product is on the stage.
        """
        o = self.options
        h, w = foreground.shape
        radius = max(1, int(round(o.reach * max(h, w))))
        fg = foreground.astype(np.uint8)
        protect = np.zeros((h, w), bool)
        if product is not None:
            protect = cv2.dilate(product.astype(np.uint8), _disc(max(1, radius // 4))) > 0
            fg[protect] = 0
        n, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
        near = cv2.dilate(self._mask.astype(np.uint8), _disc(radius)) > 0 if self._mask is not None else None
        bins = _colour_bins(image)
        mask = np.zeros((h, w), bool)
        for i in range(1, n):
            x, y, bw, bh, _ = stats[i]
            if not (x == 0 or y == 0 or x + bw == w or y + bh == h):
                continue  # an arm is attached to someone outside the frame
            window = (slice(y, y + bh), slice(x, x + bw))
            piece = labels[window] == i
            if near is not None and (piece & near[window]).any():
                kept = piece & ~self._put_down(piece, bins[window], self._foreground, (x, y), radius)
            elif _depth(x, y, bw, bh, w, h) <= o.entry_depth:
                kept = piece
            else:
                continue
            mask[window] |= kept
        if near is not None:
            mask = self._into_product(mask, foreground & protect & near, bins)
        self._mask, self._foreground = mask, foreground.copy()
        self._learn_colours(bins[mask])
        return mask

    def _into_product(self, mask: np.ndarray, covered: np.ndarray, bins: np.ndarray) -> np.ndarray:
        """The intruder grown over the product where it has the intruder's colours, as far as it can move in a
        frame (`covered`): a hand moving over the product's last mask is still the hand."""
        if self._colours is None or not mask.any() or not covered.any():
            return mask
        own = covered & (self._colours[bins] * BINS**3 > 1.0)
        n, labels = cv2.connectedComponents((mask | own).astype(np.uint8), connectivity=8)
        touching = np.unique(labels[mask])
        return np.isin(labels, touching[touching > 0])

    def _learn_colours(self, bins: np.ndarray) -> None:
        if len(bins) < 16:
            return
        share = np.bincount(bins, minlength=BINS**3) / len(bins)
        self._colours = share if self._colours is None else 0.7 * self._colours + 0.3 * share

    def _put_down(self, piece: np.ndarray, bins: np.ndarray, seen: np.ndarray | None, origin: tuple[int, int],
                  radius: int) -> np.ndarray:
        """Pixels of `piece` that form a large object new this frame (not foreground before, not in the
        intruder's colours): put down by hand."""
        if seen is None:
            return np.zeros_like(piece)
        x, y = origin
        h, w = piece.shape
        before = cv2.dilate(seen.astype(np.uint8), _disc(max(1, radius // 2)))[y:y + h, x:x + w] > 0
        new = (piece & ~before).astype(np.uint8)
        n, labels, stats, _ = cv2.connectedComponentsWithStats(new, connectivity=8)
        frame_area = seen.size
        out = np.zeros_like(piece)
        for i in range(1, n):
            if stats[i, cv2.CC_STAT_AREA] < self.options.new_object_area * frame_area:
                continue
            part = labels == i
            if self._colours is not None:
                own = (self._colours[bins[part]] * BINS**3 > 1.0).mean()  # bins likelier than uniform
                if own >= self.options.own_colours:
                    continue
            out |= part
        return out

    def reset(self) -> None:
        self._mask = self._foreground = self._colours = None


def _depth(x: int, y: int, bw: int, bh: int, w: int, h: int) -> float:
    """How far in (fraction of the frame) a box touching the frame's edge reaches from the nearest edge it touches."""
    depths = []
    if x == 0:
        depths.append((x + bw) / w)
    if x + bw == w:
        depths.append((w - x) / w)
    if y == 0:
        depths.append((y + bh) / h)
    if y + bh == h:
        depths.append((h - y) / h)
    return min(depths)


BINS = 8  # colour bins per channel


def _colour_bins(image: np.ndarray) -> np.ndarray:
    """(H, W) int colour bin (of BINS**3) of each pixel."""
    q = (image // (256 // BINS)).astype(np.int32)
    return (q[..., 0] * BINS + q[..., 1]) * BINS + q[..., 2]


def _disc(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
