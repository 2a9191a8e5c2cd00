"""Record / replay benchmark: replay speed of the bundled sessions, and what recording costs per frame.

Replays each bundled session (`recordings/orbit_live`, `two_products`, `operator_clicks`) as it is
checked (as live where a live run was recorded, else every frame) and reports frames processed, seconds,
fps and the session's size. Then records the first 60 frames of `recordings/mic_turntable` (960x720) with
each codec and reports ms per frame (what the live source thread pays) and MB per second of video. Usage:

    python benchmarks/bench_replay.py [--out benchmarks/results/replay.json]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from turncrop.stream.config import load_config
from turncrop.stream.recording import CODECS, SessionRecorder, open_session
from turncrop.stream.replay import replay_session
from turncrop.stream.sources import open_source

ROOT = Path(__file__).resolve().parents[1]
SESSIONS = ["orbit_live", "two_products", "operator_clicks"]


def folder_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def bench_replays() -> list[dict]:
    rows = []
    for name in SESSIONS:
        folder = ROOT / "recordings" / name
        session = open_session(folder)
        for every_frame in ([False, True] if session.live else [True]):
            with tempfile.TemporaryDirectory() as out:
                report = replay_session(folder, out, every_frame=every_frame)
            rows.append({"session": name, "mode": report.mode, "frames_recorded": report.frames_recorded,
                         "frames_processed": len(report.processed), "seconds": round(report.seconds, 2),
                         "fps": round(report.fps, 2), "size_mb": round(folder_mb(folder), 2),
                         "video_mb": round(session.video.stat().st_size / 1e6, 2)})
    return rows


def bench_recording(frames: int = 60) -> list[dict]:
    images = []
    with open_source(ROOT / "recordings" / "mic_turntable" / "video.mp4") as source:
        for frame in source:
            images.append(frame)
            if len(images) == frames:
                break
    rows = []
    config = load_config(None, {"backend": "graphcut"})
    for codec in CODECS:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            with SessionRecorder(Path(tmp) / "s", config, 30.0, images[0].size, codec=codec) as recorder:
                for frame in images:
                    recorder.frame(frame)
            seconds = time.perf_counter() - start
            mb = (Path(tmp) / "s" / "video.mkv").stat().st_size / 1e6
        h, w = images[0].size
        rows.append({"codec": codec, "size": f"{w}x{h}", "frames": frames,
                     "ms_per_frame": round(1000 * seconds / frames, 1),
                     "mb_per_video_second": round(mb / (frames / 30.0), 2)})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "replay.json")
    args = parser.parse_args()
    replays, recording = bench_replays(), bench_recording()
    print(f"{'session':<16} {'mode':<12} {'frames':>11} {'seconds':>8} {'fps':>6} {'MB':>6}")
    for r in replays:
        print(f"{r['session']:<16} {r['mode']:<12} {r['frames_processed']:>4} of {r['frames_recorded']:<4} "
              f"{r['seconds']:>8.2f} {r['fps']:>6.2f} {r['size_mb']:>6.2f}")
    print(f"\n{'codec':<6} {'size':<9} {'ms/frame':>9} {'MB per video second':>20}")
    for r in recording:
        print(f"{r['codec']:<6} {r['size']:<9} {r['ms_per_frame']:>9.1f} {r['mb_per_video_second']:>20.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"replay": replays, "recording": recording}, indent=2) + "\n")
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
