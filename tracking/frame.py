"""The one frame type every stage passes on."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import cv2
import numpy as np


@dataclass(frozen=True)
class Frame:
    """One decoded video frame.

    Attributes:
      image: (H, W, 3) uint8 RGB, C-contiguous.
      index: 0-based position in its source (decode order).
      timestamp: presentation time in seconds from the start of the source.
      source: a name for where it came from (file path, camera, peer id).
      original: the source-resolution frame this one was scaled down from (`scaled_to`), or None when this
        is it. A live stream segments at a working size; its stills are cut from the original.
    """

    image: np.ndarray
    index: int
    timestamp: float
    source: str = ""
    original: Frame | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.image.ndim != 3 or self.image.shape[2] != 3 or self.image.dtype != np.uint8:
            raise ValueError(
                f"Frame {self.index}: image must be (H, W, 3) uint8 RGB, got {self.image.shape} {self.image.dtype}"
            )

    @property
    def size(self) -> tuple[int, int]:
        """(H, W)."""
        return self.image.shape[0], self.image.shape[1]

    def scaled_to(self, max_side: int | None) -> Frame:
        """This frame with its longest side at most `max_side` px (area-averaged); itself if already small
        enough or `max_side` is None. Index, timestamp and source are kept; `original` is the unscaled frame."""
        scale = scale_to_fit(self.size, max_side)
        if scale == 1.0:
            return self
        h, w = self.size
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        return dataclasses.replace(self, image=cv2.resize(self.image, size, interpolation=cv2.INTER_AREA),
                                   original=self.original or self)


def scale_to_fit(size: tuple[int, int], max_side: int | None) -> float:
    """The factor (<= 1) that brings a (H, W) `size` to a longest side of at most `max_side` (None: 1)."""
    if max_side is None or not size or max(size) <= max_side:
        return 1.0
    return max_side / max(size)
