"""Motion as evidence of the object: pixels moving with it against pixels moving with its surroundings.

Colour alone cannot part an object from a backdrop of its colours (a black swan before a shaded wall), but a
handheld or panning camera moves the backdrop differently from the object. With the object's median flow
`v_o` (over its carried mask's core) and the surroundings' `v_b` (outside its box), a pixel of flow `v` has
log-odds (|v - v_b|^2 - |v - v_o|^2) / (2 sigma^2), sigma a third of |v_o - v_b|, clipped. Where the two
motions are too alike to tell apart (a static camera and a turning product) there is no evidence.
"""
from __future__ import annotations

import cv2
import numpy as np

from turncrop.tracking.propagation import Motion

MIN_SEPARATION = 2.0  # px (full resolution) between the object's and the surroundings' motion
CLIP = 3.0  # |log-odds| at most: flow is wrong in flat or occluded regions
SURROUND_MARGIN = 0.1  # the surroundings start this fraction of the box size outside it


def motion_log_odds(motion: Motion, mask: np.ndarray, box: np.ndarray, size: tuple[int, int]) -> np.ndarray | None:
    """(H, W) float32 log-odds that each pixel moves with the object, or None without motion contrast.

    Args:
      motion: the backward flow from the current frame to the previous one (`FlowPropagator.motion`).
      mask: (H, W) bool, the object in the previous frame.  box: (4,) XYXY, the object's box.
      size: (H, W) of the frame.
    """
    flow = motion.flow
    small = (flow.shape[0], flow.shape[1])
    core = cv2.resize(mask.astype(np.uint8), (small[1], small[0]), interpolation=cv2.INTER_NEAREST)
    core = cv2.erode(core, np.ones((5, 5), np.uint8)) > 0
    surround = np.ones(small, bool)
    x0, y0, x1, y1 = np.asarray(box, np.float64) / motion.scale
    dx, dy = SURROUND_MARGIN * (x1 - x0), SURROUND_MARGIN * (y1 - y0)
    rows = slice(max(0, int(y0 - dy)), max(0, int(np.ceil(y1 + dy))))
    surround[rows, max(0, int(x0 - dx)):max(0, int(np.ceil(x1 + dx)))] = False
    if core.sum() < 20 or surround.sum() < 20:
        return None
    v_o, v_b = np.median(flow[core], axis=0), np.median(flow[surround], axis=0)
    separation = float(np.hypot(*(v_o - v_b)))
    if separation * motion.scale < MIN_SEPARATION:
        return None
    sigma2 = (separation / 3.0) ** 2
    d_o = ((flow - v_o) ** 2).sum(-1)
    d_b = ((flow - v_b) ** 2).sum(-1)
    odds = np.clip((d_b - d_o) / (2.0 * sigma2), -CLIP, CLIP).astype(np.float32)
    return cv2.resize(odds, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
