"""Marketplace-style checks of an exported catalogue JPEG (used by `turncrop replay --check` and the tests)."""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

# A pixel belongs to the product when any channel is below this (JPEG noise on white stays above it).
NEAR_WHITE = 250


def check_marketplace_jpeg(
    path: str | os.PathLike[str], fill_range: tuple[float, float] = (0.80, 0.90), max_offcentre: float = 0.05
) -> list[str]:
    """Problems with a catalogue JPEG; an empty list means it passes.

    Checks: a JPEG; square; every border pixel exactly (255, 255, 255) after decoding; the product box
    (pixels with any channel < `NEAR_WHITE`) exists, its longer side / image side is within
    `fill_range`, and its centre is within `max_offcentre` x side of the image centre.
    """
    problems: list[str] = []
    with Image.open(path) as im:
        if im.format != "JPEG":
            problems.append(f"not a JPEG: {im.format}")
        rgb = np.asarray(im.convert("RGB"))
    h, w = rgb.shape[:2]
    if h != w:
        problems.append(f"not square: {w}x{h}")
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    bad = np.any(border != 255, axis=1)
    if bad.any():
        problems.append(
            f"{int(bad.sum())} border pixels are not pure white (min channel {int(border.min())})"
        )
    ys, xs = np.nonzero((rgb < NEAR_WHITE).any(axis=2))
    if len(xs) == 0:
        problems.append("no product: every pixel is near-white")
        return problems
    bw, bh = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
    side = max(h, w)
    fill = max(bw, bh) / side
    lo, hi = fill_range
    if not lo <= fill <= hi:
        problems.append(f"product fills {fill:.3f} of the side, outside [{lo}, {hi}]")
    cx, cy = (xs.min() + xs.max() + 1) / 2, (ys.min() + ys.max() + 1) / 2
    off = max(abs(cx - w / 2), abs(cy - h / 2)) / side
    if off > max_offcentre:
        problems.append(f"product box centre is {off:.3f} x side off the image centre (> {max_offcentre})")
    return problems
