"""What reaches into the frame from its edge and is not the product: the operator's hand and arm, a person leaning in.

A product is put on the stage and taken away by hand. Against the empty stage the arm is foreground like the
product, so without a rule it starts false products, joins the product's mask and steals its still. The rules
(no learned model: they hold for any arm, sleeve or glove):

  * an intruder *enters*: a foreground piece that first appears touching the frame's edge, reaching no
    further in than `entry_depth` of the frame and with nothing else beside it is an arm coming in (a product
    is put down, it does not grow from the edge; one that spans the frame from its first frame on is a
    product, and so is a foot or a cable of it that touches the edge next to the rest of it or next to the
    product's last mask);
  * it stays an intruder while its pieces touch the frame's edge and overlap where it was (grown by `reach`
    of the frame for its motion), and where it moves over the product in its own colours;
  * the product is protected: what overlaps the product's previous mask (with no product on the stage, what
    stood there in the last frame) is never the intruder, and a large
    piece that is new this frame (it was not foreground before) and unlike the intruder's own colours (a
    coarse colour histogram of its pixels so far: skin, a sleeve, a glove) is an object put down, the
    product, even where the hand still touches it.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from turncrop.tracking.masks import grow


@dataclass(frozen=True)
class IntruderOptions:
    entry_depth: float = 0.3  # deepest first appearance (fraction of the frame) that is an entering arm
    reach: float = 0.04  # how far (fraction of the frame's larger side) an intruder moves between frames
    new_object_area: float = 0.01  # a new piece this large (fraction of the frame) is an object put down
    min_pixels: float = 0.0005  # intruder area (fraction of the frame) below which none is present
    own_colours: float = 0.8  # a new piece with this share of the intruder's colours is more of the intruder
    leave_frames: int = 2  # frames without a trace of an intruder before it has left (its last fingertips
    # at the frame's edge are below what the stage can see)

    def __post_init__(self) -> None:
        for name in ("entry_depth", "reach", "new_object_area", "min_pixels", "own_colours"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ValueError(f"intruders.{name} must be in (0, 1), got {getattr(self, name)}")
        if self.leave_frames < 1:
            raise ValueError(f"intruders.leave_frames must be >= 1, got {self.leave_frames}")


class IntruderTracker:
    """Per frame, the (H, W) bool pixels of the intruders. One instance per stream; `reset` when the stage empties."""

    def __init__(self, options: IntruderOptions | None = None) -> None:
        self.options = options or IntruderOptions()
        self._mask: np.ndarray | None = None  # last frame's intruder pixels
        self._foreground: np.ndarray | None = None  # last frame's foreground
        self._colours: np.ndarray | None = None  # (BINS**3,) share of the intruder's pixels in each colour bin
        self._product_colours: np.ndarray | None = None  # the same for the product's pixels
        self._frames_clear = self.options.leave_frames  # consecutive frames without an intruder

    @property
    def present(self) -> bool:
        """Whether an intruder is in view: seen in the last frame, or so recently that it may not have left."""
        return self._frames_clear < self.options.leave_frames

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
        # What is known not to be the intruder: the product's last mask or, with no product on the stage, what
        # stood there last frame (an object the operator said is no new product stays an object).
        known = product if product is not None else self._standing()
        protect = np.zeros((h, w), bool)
        if known is not None:
            protect = grow(known, max(1, radius // 4))
            fg[protect] = 0
        n, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
        beside_product = grow(product, radius) if product is not None else None
        near = grow(self._mask, radius) if self._mask is not None else None
        bins = _colour_bins(image)
        if product is not None:
            shown = product if self._mask is None else product & ~self._mask
            self._product_colours = _learn(self._product_colours, bins[shown])
        own = self._own_colours(bins)
        # Around the product only the intruder's own colours are the intruder: without this the arm would eat,
        # frame by frame, whatever edge of the product its mask missed.
        claim = ~_grown_box(product, radius) | own if product is not None else np.ones((h, w), bool)
        mask, put_down = np.zeros((h, w), bool), np.zeros((h, w), bool)
        for i in range(1, n):
            x, y, bw, bh, _ = stats[i]
            if not (x == 0 or y == 0 or x + bw == w or y + bh == h):
                continue  # an arm is attached to someone outside the frame
            window = (slice(y, y + bh), slice(x, x + bw))
            piece = labels[window] == i
            if near is not None and (piece & near[window]).any():
                put_down[window] |= self._put_down(piece, bins[window], self._foreground, (x, y), radius)
                kept = piece & claim[window] & ~put_down[window]
            elif _depth(x, y, bw, bh, w, h) <= o.entry_depth and not _beside_other(labels, i, (x, y, bw, bh), radius) \
                    and not (beside_product is not None and (piece & beside_product[window]).any()):
                kept = piece
            else:
                continue
            mask[window] |= kept
        if self._mask is not None:
            reach = grow(self._mask, 2 * radius)  # a hand moves fast
            mask = self._into_product(mask, foreground & protect & reach & own)
        if mask.any():
            placed = product if product is not None else put_down  # the product, or what the hand just put down
            mask = _without_strands(mask, _grown_box(placed, radius))
        self._mask, self._foreground = mask, foreground.copy()
        self._frames_clear = 0 if mask.mean() >= o.min_pixels else self._frames_clear + 1
        self._learn_colours(bins[mask])
        # The arm's own edge pixels mix it with what is behind: they are the arm's, not a rim of product.
        return grow(mask, EDGE_PX)

    def _standing(self) -> np.ndarray | None:
        """Last frame's foreground that was not the intruder, or None."""
        if self._foreground is None or not self._foreground.any():
            return None
        return self._foreground & ~self._mask

    def _into_product(self, mask: np.ndarray, covered: np.ndarray) -> np.ndarray:
        """The intruder grown over the product's last mask where a hand can have moved in a frame, in the
        intruder's colours (`covered`): a hand moving over the product is still the hand."""
        if not mask.any() or not covered.any():
            return mask
        n, labels = cv2.connectedComponents((mask | covered).astype(np.uint8), connectivity=8)
        touching = np.unique(labels[mask])
        return np.isin(labels, touching[touching > 0])

    def _learn_colours(self, bins: np.ndarray) -> None:
        self._colours = _learn(self._colours, bins)

    def _own_colours(self, bins: np.ndarray) -> np.ndarray:
        """(H, W) bool: pixels whose colour is the intruder's rather than the product's (twice as likely)."""
        if self._colours is None:
            return np.ones(bins.shape, bool)
        intruder = self._colours[bins]
        if self._product_colours is None:
            return intruder * BINS**3 > 1.0
        return intruder > 2.0 * self._product_colours[bins] + 1.0 / BINS**3

    def _put_down(self, piece: np.ndarray, bins: np.ndarray, seen: np.ndarray | None, origin: tuple[int, int],
                  radius: int) -> np.ndarray:
        """Pixels of `piece` that form a large object new this frame (not foreground before, not in the
        intruder's colours): put down by hand."""
        if seen is None:
            return np.zeros_like(piece)
        x, y = origin
        h, w = piece.shape
        before = grow(seen, max(1, radius // 2))[y:y + h, x:x + w]
        new = (piece & ~before).astype(np.uint8)
        n, labels, stats, _ = cv2.connectedComponentsWithStats(new, connectivity=8)
        frame_area = seen.size
        out = np.zeros_like(piece)
        for i in range(1, n):
            if stats[i, cv2.CC_STAT_AREA] < self.options.new_object_area * frame_area:
                continue
            part = labels == i
            if self._own_colours(bins[part]).mean() >= self.options.own_colours:
                continue  # more of the intruder: an arm reaching in fast
            out |= part
        return out

    def reset(self) -> None:
        self._mask = self._foreground = self._colours = self._product_colours = None
        self._frames_clear = self.options.leave_frames


def _learn(share: np.ndarray | None, bins: np.ndarray) -> np.ndarray | None:
    """A colour histogram `share` (BINS**3,) updated with the colour bins of some pixels (too few: unchanged)."""
    if len(bins) < 16:
        return share
    new = np.bincount(bins, minlength=BINS**3) / len(bins)
    return new if share is None else 0.7 * share + 0.3 * new


def _grown_box(mask: np.ndarray, margin: int) -> np.ndarray:
    """(H, W) bool: the box around `mask`'s pixels grown by `margin` px (all False for an empty mask)."""
    out = np.zeros(mask.shape, bool)
    ys, xs = np.nonzero(mask)
    if len(xs):
        out[max(ys.min() - margin, 0):ys.max() + margin + 1, max(xs.min() - margin, 0):xs.max() + margin + 1] = True
    return out


def _without_strands(mask: np.ndarray, near_product: np.ndarray) -> np.ndarray:
    """The intruder without the strands it reaches along inside `near_product`: parts far thinner than its
    own body (a cable or a tripod's leg that the hand touches, in the sleeve's dark colours) are the
    product's; a hand's fingers are a good fraction of its thickness and stay."""
    if not (mask & near_product).any():
        return mask
    inside = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 3)
    width = max(1, int(round(_STRAND * float(inside.max()))))
    thick = grow(cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_OPEN, _disc(width)) > 0, width + EDGE_PX)
    return mask & (thick | ~near_product)


_STRAND = 0.15  # of the intruder's largest inscribed radius: a part narrower than twice this is a strand


def _beside_other(labels: np.ndarray, i: int, box: tuple[int, int, int, int], radius: int) -> bool:
    """Whether another foreground piece lies within `radius` px of piece `i` (its box `box`)."""
    x, y, bw, bh = box
    h, w = labels.shape
    window = (slice(max(y - radius, 0), min(y + bh + radius, h)), slice(max(x - radius, 0), min(x + bw + radius, w)))
    around = labels[window]
    grown = cv2.dilate((around == i).astype(np.uint8), _disc(radius)) > 0
    return bool(((around > 0) & (around != i) & grown).any())


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
EDGE_PX = 2  # the intruder's blended edge, px


def _colour_bins(image: np.ndarray) -> np.ndarray:
    """(H, W) int colour bin (of BINS**3) of each pixel."""
    q = (image // (256 // BINS)).astype(np.int32)
    return (q[..., 0] * BINS + q[..., 1]) * BINS + q[..., 2]


def _disc(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
