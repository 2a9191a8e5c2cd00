"""Small geometry of binary masks shared by the time layer."""
from __future__ import annotations

import cv2
import numpy as np


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) of a (H, W) bool/uint8 mask, x1/y1 exclusive; None when empty."""
    x, y, w, h = cv2.boundingRect(np.asarray(mask, np.uint8))
    return None if w == 0 else (x, y, x + w, y + h)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two (H, W) bool masks; two empty masks agree fully (1.0)."""
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 1.0


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A (H, W) bool mask resized to (H', W') `size`: its coverage interpolated bilinearly and cut at one half,
    so an upscaled edge is smooth rather than stepped. A mask already of that size is returned as it is."""
    h, w = size
    if np.shape(mask) == (h, w):
        return mask
    return cv2.resize(np.asarray(mask, np.float32), (w, h), interpolation=cv2.INTER_LINEAR) >= 0.5
