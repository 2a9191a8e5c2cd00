"""Live benchmark: a 30 fps 1280x720 simulated camera through the live pipeline.

The bundled session is upscaled to 1280x720 and looped (with continuing timestamps) as a camera paced at
30 fps. Per backend it reports output fps, added latency p50/p95 (slot arrival -> frame path done),
keyframes per second (first + background), dropped frames and memory (RSS of this process and its
encoder worker sampled every second; peak RSS is this process's alone: pass one backend per run for a
clean figure). SAM backends use random-initialised checkpoints (only the cost is meaningful). Usage:

    python benchmarks/bench_live.py [--backends graphcut mobile_sam] [--seconds 10] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import cv2

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline import random_checkpoint  # noqa: E402

from turncrop.models.registry import build_segmenter  # noqa: E402
from turncrop.stream.config import load_config  # noqa: E402
from turncrop.stream.live import LiveStats, run_live  # noqa: E402
from turncrop.stream.live_sources import RealtimeSource  # noqa: E402
from turncrop.stream.sources import FrameSource, open_source  # noqa: E402
from turncrop.tracking.frame import Frame  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "recordings" / "mic_turntable" / "video.mp4"
SIZE = (1280, 720)  # W, H
FPS = 30.0


class LoopedCamera(FrameSource):
    """The sample's frames upscaled to 1280x720, looped for `seconds`, time-stamped at 30 fps."""

    def __init__(self, seconds: float) -> None:
        with open_source(SAMPLE) as source:
            # 960x720 -> 1280x720: stretched, so that the whole stage stays in view.
            self.images = [cv2.resize(f.image, SIZE, interpolation=cv2.INTER_LINEAR) for f in source]
        count = int(seconds * FPS)
        super().__init__("mic_turntable@1280x720", FPS, count, (SIZE[1], SIZE[0]))

    def _frames(self) -> Iterator[Frame]:
        for i in range(self.frame_count):
            if self._closed:
                return
            yield Frame(self.images[i % len(self.images)], i, i / FPS, self.name)


def _rss_mb(pid: str = "self") -> float:
    """Resident memory of a process and, recursively, its children (the encoder worker), in MB."""
    total = 0.0
    try:
        with open(f"/proc/{pid}/status") as f:
            total = next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                total += _rss_mb(child)
    except (OSError, StopIteration):
        pass  # the process ended while being read
    return total


def bench(backend: str, seconds: float, tmp: Path) -> dict:
    overrides: dict = {"backend": backend}
    checkpoint = None
    if backend != "graphcut":
        # Random weights fail every quality check; with trained weights the policy keys on time and motion.
        overrides.update({"keyframes.min_quality": 0.0, "keyframes.quality_drop": 1.0,
                          "keyframes.min_agreement": 0.0})
        checkpoint = random_checkpoint({"mobile_sam": "vit_t"}[backend], tmp)
    config = load_config("default", overrides)
    segmenter = build_segmenter(backend, checkpoint=checkpoint, graphcut=config.graphcut)
    rss: list[float] = []

    def on_stats(stats: LiveStats) -> None:
        rss.append(round(_rss_mb(), 1))
        print(f"  [{backend}] {stats.line()}", flush=True)

    camera = RealtimeSource(LoopedCamera(seconds))
    report = run_live(camera, tmp / f"out_{backend}", config, segmenter=segmenter, on_stats=on_stats)
    s = report.stats.as_dict()
    keyframes = s["keyframes_first"] + s["keyframes_encoded"]
    return {
        "backend": backend,
        **s,
        "keyframes_per_s": round(keyframes / max(s["seconds"], 1e-9), 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_mb_per_s": rss,
        # Memory flat after warm-up: the total at 10 s against the total at the end.
        "rss_mb_at_10s": rss[min(9, len(rss) - 1)] if rss else None,
        "rss_mb_at_end": rss[-1] if rss else None,
        "products_exported": [p["product_id"] for p in report.summary.products if p["status"] == "ok"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["graphcut", "mobile_sam"])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for backend in args.backends:
            rows.append(bench(backend, args.seconds, Path(tmp)))
    print(f"\n{'backend':<11} {'fps in':>7} {'fps out':>8} {'p50 ms':>8} {'p95 ms':>8} {'key/s':>6} "
          f"{'bg keys':>8} {'refresh':>8} {'dropped':>8} {'peak RSS MB':>12} {'RSS 10s->end MB':>16}")
    for r in rows:
        print(f"{r['backend']:<11} {r['fps_in']:7.1f} {r['fps_out']:8.2f} {r['latency_ms_p50'] or 0:8.0f} "
              f"{r['latency_ms_p95'] or 0:8.0f} {r['keyframes_per_s']:6.2f} {r['keyframes_encoded']:8d} "
              f"{r['refreshes']:8d} {r['frames_dropped']:8d} {r['peak_rss_mb']:12.0f} "
              f"{r['rss_mb_at_10s'] or 0:7.0f}->{r['rss_mb_at_end'] or 0:<7.0f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"size": list(SIZE), "fps": FPS, "seconds": args.seconds,
                                        "results": rows}, indent=2))


if __name__ == "__main__":
    main()
