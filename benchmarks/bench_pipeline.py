"""Replay benchmark: frames per second, encoder calls per frame, keyframe vs non-keyframe cost, memory.

Runs the bundled turntable recording through the pipeline with each backend and prints a table; writes
JSON with `--out`. SAM backends use random-initialised checkpoints saved in the official format (only the
cost is meaningful). Usage:

    python benchmarks/bench_pipeline.py [--backends graphcut mobile_sam] [--frames N] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from turncrop.models.registry import build_segmenter
from turncrop.stream.config import load_config
from turncrop.stream.runner import build_pipeline
from turncrop.stream.sources import open_source

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "recordings" / "mic_turntable" / "video.mp4"


def random_checkpoint(arch: str, folder: Path) -> Path:
    """A random-initialised state_dict in the official format, for speed measurements only."""
    import torch

    if arch == "vit_t":
        from mobile_sam import sam_model_registry
    else:
        from segment_anything import sam_model_registry
    path = folder / f"random_{arch}.pth"
    torch.save(sam_model_registry[arch](checkpoint=None).state_dict(), path)
    return path


class TimedSegmenter:
    """Wraps a segmenter to time encode and decode calls separately."""

    def __init__(self, inner) -> None:
        self.inner, self.name = inner, inner.name
        self.encode_ms: list[float] = []
        self.decode_ms: list[float] = []

    @property
    def encode_calls(self) -> int:
        return len(self.encode_ms)

    def encode(self, image, frame_index=-1):
        t = time.perf_counter()
        out = self.inner.encode(image, frame_index)
        self.encode_ms.append(1000 * (time.perf_counter() - t))
        return out

    def decode(self, embedding, prompt, image):
        t = time.perf_counter()
        out = self.inner.decode(embedding, prompt, image)
        self.decode_ms.append(1000 * (time.perf_counter() - t))
        return out


def bench(backend: str, frames: int | None, tmp: Path) -> dict:
    overrides: dict = {"backend": backend}
    checkpoint = None
    if backend != "graphcut":
        # Random weights make every quality check fail and re-key each frame; with trained weights the
        # policy keys on time and motion, which is what these numbers should cost.
        overrides.update({"keyframes.min_quality": 0.0, "keyframes.quality_drop": 1.0,
                          "keyframes.min_agreement": 0.0})
        arch = {"mobile_sam": "vit_t", "sam_vit_b": "vit_b"}[backend]
        checkpoint = random_checkpoint(arch, tmp)
    config = load_config("default", overrides)
    segmenter = TimedSegmenter(build_segmenter(backend, checkpoint=checkpoint, graphcut=config.graphcut))
    frame_ms: list[float] = []
    key_flags: list[bool] = []
    with open_source(SAMPLE) as source:
        pipeline = build_pipeline(config, segmenter=segmenter, frame_rate=source.fps or 30.0)
        started = time.perf_counter()
        for i, frame in enumerate(source):
            if frames is not None and i >= frames:
                break
            t = time.perf_counter()
            result = pipeline.process(frame)
            frame_ms.append(1000 * (time.perf_counter() - t))
            key_flags.append(result.keyframe if result.mask_result is not None else None)
        seconds = time.perf_counter() - started
    ms = np.array(frame_ms)
    flags = np.array([f for f in key_flags], dtype=object)
    key = ms[flags == True]  # noqa: E712 - object array
    nonkey = ms[flags == False]  # noqa: E712
    n = len(ms)
    return {
        "backend": backend,
        "frames": n,
        "fps": n / seconds,
        "encoder_calls": segmenter.encode_calls,
        "encoder_calls_per_frame": segmenter.encode_calls / max(n, 1),
        "encoder_ms_median": float(np.median(segmenter.encode_ms)) if segmenter.encode_ms else None,
        "decode_ms_median": float(np.median(segmenter.decode_ms)) if segmenter.decode_ms else None,
        "keyframe_ms_median": float(np.median(key)) if len(key) else None,
        "non_keyframe_ms_median": float(np.median(nonkey)) if len(nonkey) else None,
        "non_keyframe_ms_p95": float(np.percentile(nonkey, 95)) if len(nonkey) else None,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["graphcut", "mobile_sam"])
    parser.add_argument("--frames", type=int, default=None, help="stop after this many frames")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for backend in args.backends:
            rows.append(bench(backend, args.frames, Path(tmp)))
    cols = ["backend", "frames", "fps", "encoder_calls_per_frame", "encoder_ms_median", "decode_ms_median",
            "keyframe_ms_median", "non_keyframe_ms_median", "non_keyframe_ms_p95", "peak_rss_mb"]
    print(" | ".join(f"{c:>12}" for c in cols))
    for r in rows:
        print(" | ".join(f"{r[c]:>12.2f}" if isinstance(r[c], float) else f"{str(r[c]):>12}" for c in cols))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"sample": str(SAMPLE), "results": rows}, indent=2))


if __name__ == "__main__":
    main()
