"""Where tests and benchmarks find data: the shared ground-truth sets and the bundled recordings.

`../shared/data` sits beside the clone on developer machines and in CI; a test that needs a set calls
`require_data(name)` and is skipped, with the reason, where the set is absent.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
RECORDINGS = REPO / "recordings"

_MASK_SUFFIXES = {".png", ".bmp", ".tif", ".tiff"}


def require_data(name: str) -> Path:
    """The folder `SHARED_DATA / name`; skips the calling test when it is missing."""
    folder = SHARED_DATA / name
    if not folder.is_dir():
        pytest.skip(f"shared data set {name!r} not found at {folder} (expected ../shared/data beside the clone)")
    return folder


def load_masks(folder: str | Path) -> list[np.ndarray]:
    """Every mask image in `folder`, sorted by file name, as (H, W) bool arrays (True where > 127)."""
    masks = []
    for path in sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in _MASK_SUFFIXES):
        mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if mask is None:
            raise OSError(f"cannot read mask {path}")
        masks.append(mask > 127)
    return masks
