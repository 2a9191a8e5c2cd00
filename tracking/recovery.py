"""Keeping hold of an object without a detector: a box that does not follow a failing mask, an appearance
memory, loss detection and re-acquisition.

Off the studio path (no empty-stage model, no detector) the only evidence of the product is its own mask.
Prompting each frame with a box predicted from the masks' own boxes closes a loop: a mask that shrinks
(a leak receding, a colour model drifting) drags the box in, the box prompt cuts the mask further, and a
Kalman filter extrapolates the shrinking into a collapse. Here the box prompt is an `anchor` instead: the
last healthy mask's box, moved each frame by the object's optical flow, whose edges follow the mask only
at a bounded rate.

The memory is the object's colour histogram and area from its healthy keyframes. A mask that is empty,
collapses or explodes against the memory's area, or whose colours are unlike the memory's is a loss:
the caller re-keys on the anchor (moved by a mean-shift search over the memory's back-projection) without
the carried-forward mask, until a healthy mask comes back (a recovery). Both are logged with the reason.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np

from turncrop.tracking.frame import Frame
from turncrop.tracking.keyframes import FIRST, OPERATOR
from turncrop.tracking.masks import mask_box
from turncrop.tracking.masktrack import MaskResult, MaskTracker

log = logging.getLogger(__name__)

_BINS = 16  # per channel of the colour histogram (16^3 bins)
_CUT_BAND = 3  # px inside a box side where a mask running along it is seen


@dataclass(frozen=True)
class RecoveryOptions:
    collapse: float = 0.5  # a mask smaller than this fraction of the memory's area is lost
    explode: float = 2.5  # ... or larger than this multiple of it
    min_similarity: float = 0.25  # histogram intersection with the memory below this: lost
    recovered_area: float = 0.6  # a re-keyed mask at least this fraction of the memory's area is recovered
    shrink_rate: float = 0.04  # the anchor's edges move inward at most this fraction of its size a frame
    grow_rate: float = 0.05  # ... and outward at most this
    max_growth: float = 2.0  # the anchor is at most this times the memory's box size in each dimension
    box_margin: float = 0.03  # the box prompt is the anchor grown by this fraction of its size each side
    memory_rate: float = 0.3  # weight of a new healthy keyframe in the memory
    memory_shrink_rate: float = 0.05  # ... of one whose mask is smaller than the memory's
    patience: int = 30  # frames of search before the object is given up (then it may end)
    search_reach: float = 2.0  # a lost object is looked for this many of its sizes around where it was
    clip_share: float = 0.3  # where the frames jumped, a mask along this share of a box side was cut there
    jump_reach: float = 0.3  # ... and the anchor may then jump this fraction of its size past that side
    jump_growth: float = 1.25  # ... up to this times the remembered size

    def __post_init__(self) -> None:
        if not 0 < self.collapse < self.recovered_area <= 1 < self.explode:
            raise ValueError("recovery: need 0 < collapse < recovered_area <= 1 < explode")
        if not 0 < self.memory_shrink_rate <= 1 or not 0 < self.memory_rate <= 1:
            raise ValueError("recovery: memory_rate and memory_shrink_rate must be in (0, 1]")
        if self.search_reach <= 0:
            raise ValueError(f"recovery.search_reach must be > 0, got {self.search_reach}")
        if self.patience < 1:
            raise ValueError(f"recovery.patience must be >= 1, got {self.patience}")


@dataclass(frozen=True)
class Verdict:
    """What `ObjectWatch.observe` made of a frame's mask.

    Attributes:
      healthy: the mask agrees with the memory (it updated the anchor).  lost: it does not; re-key.
      recovered: the first healthy mask after a loss.  reason: why, for the log.
    """

    healthy: bool
    lost: bool
    recovered: bool
    reason: str


@dataclass
class _Memory:
    histogram: np.ndarray  # (_BINS^3,) float32, sums to 1
    area: float
    size: np.ndarray  # (2,) float32 width, height of the core box


class ObjectWatch:
    """The anchor box, appearance memory and loss state of one object. One instance per pipeline."""

    def __init__(self, options: RecoveryOptions | None = None) -> None:
        self.options = options or RecoveryOptions()
        self.reset()

    def reset(self) -> None:
        self.anchor: np.ndarray | None = None  # (4,) float32 XYXY
        self._memory: _Memory | None = None
        self.lost_since: int | None = None  # frame index of the current loss, None when held
        self._gave_up = False
        self.losses = 0
        self.recoveries = 0

    @property
    def searching(self) -> bool:
        """Lost, and still within the patience: the caller re-keys and keeps the object."""
        return self.lost_since is not None and not self._gave_up

    def box(self, size: tuple[int, int]) -> np.ndarray | None:
        """The box prompt: (4,) float32 XYXY, the anchor grown by the margin and clipped to the frame; None
        before the first mask and while the anchor is outside the frame (the object moved out of view)."""
        if self.anchor is None:
            return None
        box = _grow(self.anchor, self.options.box_margin, size)
        return box if box[2] - box[0] >= 1 and box[3] - box[1] >= 1 else None

    def move(self, shift: np.ndarray) -> None:
        """Carry the anchor by the object's (dx, dy) flow since the last frame (full-resolution pixels)."""
        if self.anchor is not None:
            self.anchor = self.anchor + np.tile(np.asarray(shift, np.float32), 2)

    def region(self, size: tuple[int, int]) -> np.ndarray | None:
        """(H, W) bool: the anchor's pixels, where the object's motion is measured while its mask is lost."""
        if self.anchor is None:
            return None
        x0, y0, x1, y1 = _pixels(self.anchor, size)
        region = np.zeros(size, bool)
        region[y0:y1, x0:x1] = True
        return region if region.any() else None

    def observe(self, frame_index: int, image: np.ndarray, mask: np.ndarray, keyframe: bool,
                first: bool, jumped: bool = False) -> Verdict:
        """Judge frame `frame_index`'s (H, W) bool `mask` of the (H, W, 3) uint8 `image` against the memory.

        `first`: the object's first mask (a prompt): it starts the memory and the anchor as they are.
        """
        histogram = _histogram(image, mask) if mask.any() else None
        if first or self._memory is None:
            self.reset()
            if histogram is not None:
                self.anchor = _core_box(mask)
                self._memory = _Memory(histogram, float(mask.sum()), self.anchor[2:] - self.anchor[:2])
            return Verdict(True, False, False, "first")
        reason = self._fault(mask, histogram)
        if reason is not None:
            return self._lose(frame_index, reason)
        core = _core_box(mask)
        # Where the flow could not carry the mask (the frame jumped: photos taken walking round an object),
        # the anchor it carried cannot be trusted to hold the object either.
        self.anchor = self._follow(core, self._colour_reach(image, mask) if jumped else None)
        if keyframe:
            self._remember(histogram, mask, core)
        recovered = self.lost_since is not None
        if recovered:
            self.recoveries += 1
            log.info("frame %d: object re-acquired after %d frames (area %.2f of memory)", frame_index,
                     frame_index - self.lost_since, mask.sum() / self._memory.area)
            self.lost_since, self._gave_up = None, False
        return Verdict(True, False, recovered, "recovered" if recovered else "healthy")

    def search(self, image: np.ndarray) -> None:
        """While lost: move the anchor to the window of its size (at least the remembered size) where the
        memory's colours are densest (the back-projection of the memory's histogram, box-filtered), near
        where it was last seen: a Gaussian of `search_reach` object sizes around the anchor weighs the
        whole frame."""
        if self.anchor is None or self._memory is None:
            return
        h, w = image.shape[:2]
        # A lost object is looked for, and re-keyed on, at no less than the size it was remembered at: the
        # anchor may have shrunk with the failing masks before the loss was seen.
        size = np.maximum(np.maximum(self.anchor[2:] - self.anchor[:2], self._memory.size), 2.0)
        window = (int(min(size[0], w)), int(min(size[1], h)))
        density = cv2.boxFilter(_back_project(image, self._memory.histogram).astype(np.float32), -1, window)
        cx, cy = (self.anchor[:2] + self.anchor[2:]) / 2
        reach = self.options.search_reach * float(size.max())
        near = np.exp(-((np.arange(w, dtype=np.float32) - cx) ** 2)[None, :] / (2 * reach ** 2)) * \
            np.exp(-((np.arange(h, dtype=np.float32) - cy) ** 2)[:, None] / (2 * reach ** 2))
        y, x = np.unravel_index(int(np.argmax(density * near)), density.shape)
        centre = np.array([x + 0.5, y + 0.5], np.float32)
        self.anchor = np.concatenate([centre - size / 2, centre + size / 2]).astype(np.float32)

    def _fault(self, mask: np.ndarray, histogram: np.ndarray | None) -> str | None:
        """Why `mask` (with its colour `histogram`, None when empty) is not the object the memory holds, or None."""
        o, memory = self.options, self._memory
        area = float(mask.sum())
        if area == 0:
            return "mask empty"
        if area < o.collapse * memory.area:
            return f"area collapsed to {area / memory.area:.2f} of memory"
        if area > o.explode * memory.area:
            return f"area exploded to {area / memory.area:.2f} of memory"
        similarity = float(np.minimum(histogram, memory.histogram).sum())
        if similarity < o.min_similarity:
            return f"colours unlike memory (histogram intersection {similarity:.2f})"
        if self.lost_since is not None and area < o.recovered_area * memory.area:
            return f"still small ({area / memory.area:.2f} of memory)"
        return None

    def _lose(self, frame_index: int, reason: str) -> Verdict:
        if self.lost_since is None:
            self.lost_since = frame_index
            self.losses += 1
            log.info("frame %d: object lost: %s; re-keying on the anchor box %s", frame_index, reason,
                     np.round(self.anchor).astype(int).tolist())
        elif not self._gave_up and frame_index - self.lost_since >= self.options.patience:
            self._gave_up = True
            log.info("frame %d: object given up after %d frames of search: %s", frame_index,
                     frame_index - self.lost_since, reason)
        else:
            log.debug("frame %d: object still lost: %s", frame_index, reason)
        return Verdict(False, True, False, reason)

    def _colour_reach(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """(4,) float32: how far beyond each side of the box prompt (x0, y0, x1, y1) the object's colours go on
        where the mask runs along that side (0 where it does not: the box did not cut the object there).

        The box prompt bounds the cut: an object that grew or jumped between frames (photos taken walking
        around it) is cut at the box, and the mask's box, which the anchor follows, cannot show it. The
        memory's colours beyond the side can."""
        reach = np.zeros(4, np.float32)
        box = self.box(mask.shape)
        if box is None:
            return reach
        bounds = _pixels(box, mask.shape)
        likely = None
        for side in range(4):
            depth = max(1, int(self.options.jump_reach * (bounds[side % 2 + 2] - bounds[side % 2])))
            inner, _ = _side_strips(mask, bounds, side, depth)
            along = inner.any(axis=0)
            if along.mean() < self.options.clip_share:
                continue
            if likely is None:
                likely = _object_likely(image, ~mask, self._memory.histogram)
            _, beyond = _side_strips(likely, bounds, side, depth)
            share = beyond[:, along].mean(axis=1)  # empty on a side at the frame's edge
            below = np.flatnonzero(share < 0.5)
            reach[side] = float(below[0] if len(below) else len(share))
        return reach

    def _follow(self, target: np.ndarray, reach: np.ndarray | None = None) -> np.ndarray:
        """The anchor moved toward the mask's box `target`, each edge at a bounded rate, or out to `reach`
        (`_colour_reach`) beyond the box prompt where the object's colours go on past it."""
        o, anchor = self.options, self.anchor
        size = np.tile(np.maximum(anchor[2:] - anchor[:2], 1.0), 2)
        outward = np.array([-1, -1, 1, 1], np.float32)  # the sign of an edge's move that grows the box
        step = (target - anchor) * outward
        step = np.clip(step, -o.shrink_rate * size, o.grow_rate * size)
        if reach is not None:
            beyond = o.box_margin * size + reach  # the box prompt's side was the margin beyond the anchor's
            # A jump is for an object cut by the box, not a leak riding on it: not past the remembered size.
            room = np.tile(np.maximum(o.jump_growth * self._memory.size - (anchor[2:] - anchor[:2]), 0), 2)
            step = np.where(reach > 0, np.maximum(step, np.minimum(beyond, room)), step)
        moved = anchor + step * outward
        # A mask leaking out frame after frame must not take the box with it: the box keeps to the size of
        # the object as its healthy keyframes knew it, give or take `max_growth`.
        centre, half = (moved[:2] + moved[2:]) / 2, (moved[2:] - moved[:2]) / 2
        half = np.minimum(half, o.max_growth * self._memory.size / 2)
        return np.concatenate([centre - half, centre + half]).astype(np.float32)

    def _remember(self, histogram: np.ndarray, mask: np.ndarray, core: np.ndarray) -> None:
        """Learn a healthy keyframe's `mask`, its colour `histogram` and its `core` box (`_core_box`)."""
        o, memory = self.options, self._memory
        memory.histogram = (1 - o.memory_rate) * memory.histogram + o.memory_rate * histogram
        area = float(mask.sum())
        # A mask that fades a little each keyframe must come to look collapsed, not teach its fading.
        size_rate = o.memory_shrink_rate if area < memory.area else o.memory_rate
        memory.area = (1 - size_rate) * memory.area + size_rate * area
        memory.size = (1 - size_rate) * memory.size + size_rate * (core[2:] - core[:2])


def _histogram(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(_BINS^3,) float32 normalised RGB histogram of `image`'s pixels under `mask`."""
    hist = cv2.calcHist([image], [0, 1, 2], mask.astype(np.uint8), [_BINS] * 3, [0, 256] * 3).ravel()
    return (hist / max(float(hist.sum()), 1.0)).astype(np.float32)


def _object_likely(image: np.ndarray, around: np.ndarray, histogram: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels whose colour is likelier under the memory's `histogram` than among the pixels
    `around` the object."""
    return (histogram > _histogram(image, around))[_bin_index(image)]


def _side_strips(values: np.ndarray, bounds: tuple[int, int, int, int], side: int,
                 depth: int) -> tuple[np.ndarray, np.ndarray]:
    """The `_CUT_BAND` px of the (H, W) `values` just inside side `side` (0 left, 1 top, 2 right, 3 bottom) of
    the pixel `bounds` (x0, y0, x1, y1), and the `depth` px just beyond it (fewer at the frame's edge), each
    (across, along) with "across" running outward."""
    x0, y0, x1, y1 = bounds
    if side % 2:  # top and bottom are the left and right sides of the transposed values
        values, (x0, y0, x1, y1) = values.T, (y0, x0, y1, x1)
    rows = values[y0:y1]
    if side < 2:
        return rows[:, x0:x0 + _CUT_BAND][:, ::-1].T, rows[:, max(0, x0 - depth):x0][:, ::-1].T
    return rows[:, x1 - _CUT_BAND:x1].T, rows[:, x1:x1 + depth].T


def _back_project(image: np.ndarray, histogram: np.ndarray) -> np.ndarray:
    """(H, W) uint8: how typical of the object each pixel's colour is, against the whole frame's colours."""
    frame = _histogram(image, np.ones(image.shape[:2], bool))
    ratio = histogram / np.maximum(frame, 1e-6)  # colours common on the object and rare elsewhere score high
    lookup = (255 * ratio / max(float(ratio.max()), 1e-6)).astype(np.uint8)
    return lookup[_bin_index(image)]


def _bin_index(image: np.ndarray) -> np.ndarray:
    """(H, W) intp: each pixel's bin in `_histogram`'s flattened (_BINS^3,) order."""
    bins = (image // (256 // _BINS)).astype(np.intp)
    return (bins[..., 0] * _BINS + bins[..., 1]) * _BINS + bins[..., 2]


def _core_box(mask: np.ndarray, tail: float = 0.01) -> np.ndarray:
    """(4,) float32 XYXY box of a non-empty (H, W) bool mask without its `tail` fraction of pixels on each
    side: a thin leak into the background does not widen it, so it does not widen the next box prompt."""
    ys, xs = np.nonzero(mask)
    x0, x1 = np.quantile(xs, [tail, 1 - tail])
    y0, y1 = np.quantile(ys, [tail, 1 - tail])
    return np.array([x0, y0, x1 + 1, y1 + 1], np.float32)


def _grow(box: np.ndarray, margin: float, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    x0, y0, x1, y1 = box
    dx, dy = margin * (x1 - x0), margin * (y1 - y0)
    return np.array([max(0.0, x0 - dx), max(0.0, y0 - dy), min(float(w), x1 + dx), min(float(h), y1 + dy)],
                    np.float32)


def _pixels(box: np.ndarray, size: tuple[int, int]) -> tuple[int, int, int, int]:
    h, w = size
    x0, y0, x1, y1 = box
    return max(0, int(x0)), max(0, int(y0)), min(w, int(np.ceil(x1))), min(h, int(np.ceil(y1)))


def watched_step(masks: MaskTracker, watch: ObjectWatch, frame: Frame, box: np.ndarray | None, first: bool,
                 **prompt) -> MaskResult:
    """`masks.step` for an object with no detector to see it: the box prompt is the watch's anchor unless
    `box` (an operator's) is given; a mask judged lost is dropped and the frame re-keyed at once on the
    anchor, moved by the memory's search, and so is every frame until a healthy mask comes back.

    `prompt`: the other keyword arguments of `MaskTracker.step`. `first`: the object's first frame.
    """
    searching = watch.searching and box is None
    if searching:
        _search(masks, watch, frame)
    result = masks.step(frame, box, anchor=watch, recovery=searching or bool(prompt.pop("recovery", False)),
                        **prompt)
    first = first or result.reason in (FIRST, OPERATOR)  # a prompt is the operator's word: remember it afresh
    jumped = result.motion is not None and masks.propagator.jumped(result.motion)
    verdict = watch.observe(frame.index, frame.image, result.mask, result.keyframe, first, jumped)
    if verdict.lost and not searching:
        _search(masks, watch, frame)
        result = masks.step(frame, None, anchor=watch, recovery=True, evidence=prompt.get("evidence"))
        watch.observe(frame.index, frame.image, result.mask, result.keyframe, False)
    return result


def _search(masks: MaskTracker, watch: ObjectWatch, frame: Frame) -> None:
    masks.forget_mask()
    watch.search(frame.image)
