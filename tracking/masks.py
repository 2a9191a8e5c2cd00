"""Small geometry of binary masks shared by the time layer."""
from __future__ import annotations

import cv2
import numpy as np


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) of a (H, W) bool/uint8 mask, x1/y1 exclusive; None when empty."""
    x, y, w, h = cv2.boundingRect(np.asarray(mask, np.uint8))
    return None if w == 0 else (x, y, x + w, y + h)


def grow(mask: np.ndarray, radius: int) -> np.ndarray:
    """A (H, W) bool mask dilated by a disc of `radius` px (OpenCV's elliptic element), worked out only over
    the mask's box grown by the radius: a product or an arm is a small part of the frame, and a dilation's
    cost grows with the disc."""
    out = np.zeros(np.shape(mask), bool)
    box = mask_box(mask)
    if box is None:
        return out
    h, w = out.shape
    x0, y0, x1, y1 = max(box[0] - radius, 0), max(box[1] - radius, 0), min(box[2] + radius, w), min(box[3] + radius, h)
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    window = np.ascontiguousarray(mask[y0:y1, x0:x1], np.uint8)
    out[y0:y1, x0:x1] = cv2.dilate(window, disc, borderType=cv2.BORDER_CONSTANT, borderValue=0) > 0
    return out


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two (H, W) bool masks; two empty masks agree fully (1.0)."""
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 1.0


def mask_agreement(a: np.ndarray, b: np.ndarray, tolerance_px: int = 1) -> float:
    """IoU of two (H, W) bool masks that forgives a pixel of either within `tolerance_px` of the other.

    Two masks of one object decoded a frame apart differ by a pixel along their edges; on a thin part (a
    cable, a stand) that is a large share of its area, so plain IoU calls a small product's masks apart
    that a large one's would call alike. Two empty masks agree fully (1.0).
    """
    union = np.count_nonzero(a | b)
    if not union:
        return 1.0
    kernel = np.ones((2 * tolerance_px + 1,) * 2, np.uint8)
    near_a = cv2.dilate(a.astype(np.uint8), kernel).astype(bool)
    near_b = cv2.dilate(b.astype(np.uint8), kernel).astype(bool)
    apart = np.count_nonzero(a & ~near_b) + np.count_nonzero(b & ~near_a)
    return 1.0 - apart / union


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A (H, W) bool mask resized to (H', W') `size`: its coverage interpolated bilinearly and cut at one half,
    so an upscaled edge is smooth rather than stepped. A mask already of that size is returned as it is."""
    h, w = size
    if np.shape(mask) == (h, w):
        return mask
    return cv2.resize(np.asarray(mask, np.float32), (w, h), interpolation=cv2.INTER_LINEAR) >= 0.5
