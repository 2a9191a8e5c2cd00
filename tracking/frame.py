"""The one frame type every stage passes on."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Frame:
    """One decoded video frame.

    Attributes:
      image: (H, W, 3) uint8 RGB, C-contiguous.
      index: 0-based position in its source (decode order).
      timestamp: presentation time in seconds from the start of the source.
      source: a name for where it came from (file path, camera, peer id).
    """

    image: np.ndarray
    index: int
    timestamp: float
    source: str = ""

    def __post_init__(self) -> None:
        if self.image.ndim != 3 or self.image.shape[2] != 3 or self.image.dtype != np.uint8:
            raise ValueError(
                f"Frame {self.index}: image must be (H, W, 3) uint8 RGB, got {self.image.shape} {self.image.dtype}"
            )

    @property
    def size(self) -> tuple[int, int]:
        """(H, W)."""
        return self.image.shape[0], self.image.shape[1]
