"""The promptable encoder/decoder interface every backend implements.

The shape of SAM's own API is kept: `encode` is the heavy, prompt-free step run once per keyframe;
`decode` is the cheap step that turns prompts (points, a box, a dense mask prior) into three candidate
masks with a predicted quality each. All coordinates are pixels of the full-resolution frame.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class Prompt:
    """What the caller knows about the object in the frame being decoded.

    Attributes:
      points: (N, 2) float32 pixel coordinates (x, y), or None.
      point_labels: (N,) int, 1 foreground / 0 background, required with `points`.
      box: (4,) float32 XYXY pixel box, or None.
      mask_logits: (H, W) float32 dense prior at frame resolution, positive = foreground (log-odds).
        SAM backends resample it into their 256x256 `mask_input`; the weight-free backend uses it as is.
    """

    points: np.ndarray | None = None
    point_labels: np.ndarray | None = None
    box: np.ndarray | None = None
    mask_logits: np.ndarray | None = None

    def __post_init__(self) -> None:
        if (self.points is None) != (self.point_labels is None):
            raise ValueError("Prompt: points and point_labels must be given together")
        if self.points is not None and (
            self.points.ndim != 2 or self.points.shape[1] != 2 or len(self.points) != len(self.point_labels)
        ):
            raise ValueError(f"Prompt: points must be (N, 2) with N labels, got {self.points.shape}")
        if self.box is not None and np.asarray(self.box).shape != (4,):
            raise ValueError(f"Prompt: box must be (4,) XYXY, got shape {np.asarray(self.box).shape}")
        if self.box is not None and not (self.box[2] > self.box[0] and self.box[3] > self.box[1]):
            raise ValueError(f"Prompt: box must have x1 > x0 and y1 > y0, got {np.asarray(self.box).tolist()}")
        if self.mask_logits is not None and np.asarray(self.mask_logits).ndim != 2:
            raise ValueError("Prompt: mask_logits must be a 2-D (H, W) array")

    @property
    def is_empty(self) -> bool:
        return self.points is None and self.box is None and self.mask_logits is None


@dataclass
class Embedding:
    """The result of one `encode` call, reusable by many `decode` calls.

    Attributes:
      image_size: (H, W) of the encoded frame.
      frame_index: index of the keyframe it came from (-1 when unknown).
      data: backend-specific payload (SAM: image features tensor; weight-free: colour models).
    """

    image_size: tuple[int, int]
    frame_index: int = -1
    data: Any = None
    stats: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class MaskSet:
    """Candidate masks for one prompt, as SAM returns them (multimask output).

    Attributes:
      masks: (C, H, W) bool, C candidates (3 for SAM multimask output).
      logits: (C, H, W) float32 log-odds at frame resolution; `logits > 0` equals `masks`.
      scores: (C,) float32 predicted IoU (or the backend's calibrated analogue), in [0, 1].
    """

    masks: np.ndarray
    logits: np.ndarray
    scores: np.ndarray

    def __post_init__(self) -> None:
        c = len(self.scores)
        if self.masks.shape[0] != c or self.logits.shape != self.masks.shape:
            raise ValueError(
                f"MaskSet: masks {self.masks.shape}, logits {self.logits.shape}, scores {self.scores.shape} disagree"
            )


@runtime_checkable
class Segmenter(Protocol):
    """A promptable segmenter. Implementations: SAM (vit_b/l/h), MobileSAM (vit_t), weight-free graph cut."""

    name: str

    def encode(self, image: np.ndarray, frame_index: int = -1) -> Embedding:
        """Heavy step: image (H, W, 3) uint8 RGB -> embedding. Run on keyframes only."""
        ...

    def decode(self, embedding: Embedding, prompt: Prompt, image: np.ndarray) -> MaskSet:
        """Cheap step: prompts -> candidate masks at `image`'s resolution.

        `image` is the frame being segmented, which may be later than the keyframe the embedding came
        from. SAM backends decode from the embedding alone (the image only fixes the output size); the
        weight-free backend re-evaluates its keyframe colour models on it.
        """
        ...
