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
SAMPLE = RECORDINGS / "mic_turntable" / "video.mp4"

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


def write_short_session(folder: Path, size: tuple[int, int] = (480, 360), step: int = 2) -> Path:
    """Every `step`-th frame of the bundled sample, resized to `size`, as PNGs in `folder`; with the defaults
    70 frames: 10 empty, 50 with the product (10..59), 10 empty. The ground truth goes to `folder/gt`."""
    from turncrop.stream.sources import open_source

    gt = folder / "gt"
    gt.mkdir(parents=True, exist_ok=True)
    masks = sorted((SAMPLE.parent / "gt").glob("*.png"))
    with open_source(SAMPLE) as source:
        for frame in source:
            if frame.index % step:
                continue
            name = f"{frame.index // step:03d}.png"
            small = cv2.resize(frame.image, size, interpolation=cv2.INTER_AREA)
            cv2.imwrite(str(folder / name), cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
            mask = cv2.imread(str(masks[frame.index]), cv2.IMREAD_GRAYSCALE)
            cv2.imwrite(str(gt / name), cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST))
    return folder
