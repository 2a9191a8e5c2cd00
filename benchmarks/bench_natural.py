"""Natural video and photographs without a plate: `turncrop eval` over every ground-truth set in shared/data.

Each set (`frames/` + `masks/`) is run through `turncrop.stream.evaluate.evaluate` (the `eval` command's own
path, weight-free backend) from three first-frame prompts: the tight box of the first mask, that box padded
by 20 % of its size (10 % each side, clipped to the frame), and the first mask itself (`--mask`). Prints a
table (mean J and the worst frame's J per set and prompt; then the mean and the worst set per prompt) and
writes JSON with `--out` (also the products found, the frames below 0.5 and fps). Usage:

    python benchmarks/bench_natural.py [--data ../shared/data] [--only davis_blackswan,...] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import cv2
import numpy as np

from turncrop.tracking.masks import mask_box

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ("tight", "pad20", "mask")


def first_mask(masks: Path) -> np.ndarray:
    path = sorted(p for p in masks.iterdir() if p.suffix.lower() == ".png")[0]
    return cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) > 127


def prompt_overrides(kind: str, mask: np.ndarray, scratch: Path) -> dict:
    """The config overrides that give the first frame's prompt `kind` (`PROMPTS`)."""
    if kind == "mask":
        path = scratch / "first_mask.png"
        cv2.imwrite(str(path), mask.astype(np.uint8) * 255)
        return {"prompt.mask": str(path)}
    x0, y0, x1, y1 = (float(v) for v in mask_box(mask))
    if kind == "pad20":
        h, w = mask.shape
        dx, dy = 0.1 * (x1 - x0), 0.1 * (y1 - y0)
        x0, y0, x1, y1 = max(0.0, x0 - dx), max(0.0, y0 - dy), min(float(w), x1 + dx), min(float(h), y1 + dy)
    return {"prompt.box": [x0, y0, x1, y1]}


def measure(folder: Path, kind: str) -> dict:
    from turncrop.stream.config import load_config
    from turncrop.stream.evaluate import evaluate

    with tempfile.TemporaryDirectory() as scratch:
        overrides = {"backend": "graphcut", **prompt_overrides(kind, first_mask(folder / "masks"), Path(scratch))}
        report = evaluate(folder / "frames", folder / "masks", load_config(None, overrides))
    js = [float(d["J"]) for d in report["frames_detail"]]
    return {"J_mean": round(float(report["J_mean"]), 4), "J_worst_frame": round(min(js), 4),
            "frames_below_0.5": sum(int(j < 0.5) for j in js), "products": int(report["products"]),
            "fps": round(float(report["fps"]), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--only", help="comma-separated set names (default: every set with frames/ and masks/)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    names = args.only.split(",") if args.only else sorted(
        p.name for p in args.data.iterdir() if (p / "frames").is_dir() and (p / "masks").is_dir())
    results: dict[str, dict] = {}
    print(f"{'set':24} " + " ".join(f"{k:>22}" for k in PROMPTS))
    for name in names:
        results[name] = {kind: measure(args.data / name, kind) for kind in PROMPTS}
        cells = [f"{r['J_mean']:.3f} (worst {r['J_worst_frame']:.2f})" for r in results[name].values()]
        print(f"{name:24} " + " ".join(f"{c:>22}" for c in cells), flush=True)
    summary = {kind: {"J_mean": round(float(np.mean([r[kind]["J_mean"] for r in results.values()])), 4),
                      "worst_set": min(results, key=lambda n: results[n][kind]["J_mean"])} for kind in PROMPTS}
    for kind, s in summary.items():
        print(f"{kind}: mean J {s['J_mean']:.3f} over {len(results)} sets; worst "
              f"{s['worst_set']} {results[s['worst_set']][kind]['J_mean']:.3f}")
    if args.out:
        args.out.write_text(json.dumps({"sets": results, "summary": summary}, indent=2) + "\n")


if __name__ == "__main__":
    main()
