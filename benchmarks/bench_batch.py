"""Batch throughput: inputs per minute and frames per second with 1 and 2 workers, local processes and Ray.

The inputs are cut from the bundled turntable session (each: the empty stage, then a different stretch
of the product turning), scaled down so a run takes minutes on two cores. Every mode starts from an empty
output folder; a last row re-runs the local batch, which skips everything (the cost of hashing inputs).
`cores_used` (local modes) is the workers' CPU time over wall time: whether a second worker got a core.
Usage:

    python benchmarks/bench_batch.py [--inputs 6] [--width 480] [--workers 1 2] [--modes local ray] [--repeat N]
                                     [--out FILE]

With --repeat N the modes run N times, interleaved, into fresh folders; the fastest run of each counts.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import av
import cv2

from turncrop.stream.batch import run_batch
from turncrop.stream.config import load_config

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "recordings" / "mic_turntable" / "video.mp4"
EMPTY, PRODUCT = range(0, 12), range(20, 120)  # frame ranges of the sample (see its session.json)


def make_inputs(folder: Path, count: int, width: int, product_frames: int = 24) -> list[Path]:
    """`count` clips: the sample's empty-stage opening, then `product_frames` of the product from an offset."""
    with av.open(str(SAMPLE)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    h, w = frames[0].shape[:2]
    height = round(width * h / w / 2) * 2
    small = [cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA) for f in frames]
    step = max((len(PRODUCT) - product_frames) // max(count - 1, 1), 1)
    paths = []
    for i in range(count):
        start = PRODUCT.start + (i * step) % (len(PRODUCT) - product_frames + 1)
        path = folder / f"clip{i:02d}.mp4"
        with av.open(str(path), "w") as out:
            stream = out.add_stream("libx264", rate=30)
            stream.width, stream.height, stream.pix_fmt, stream.options = width, height, "yuv420p", {"crf": "18"}
            for image in [small[j] for j in EMPTY] + small[start:start + product_frames]:
                out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
            out.mux(stream.encode())
        paths.append(path)
    return paths


def measure(inputs: list[Path], out: Path, workers: int, mode: str) -> dict:
    config = load_config(None, {"backend": "graphcut"})
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    report = run_batch(inputs, out, config, workers=workers, ray_address="auto" if mode == "ray" else None)
    seconds = time.perf_counter() - started  # includes process / Ray start-up, as a user sees it
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the local pool's workers (joined); Ray's are not ours
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    totals = report.as_dict()["totals"]
    if totals["failed"]:
        raise RuntimeError(f"{mode} x{workers}: {totals['failed']} inputs failed: {report.failed[0].error}")
    return {"mode": mode, "workers": workers, "inputs": totals["inputs"], "done": totals["done"],
            "skipped": totals["skipped"], "frames": totals["frames"], "seconds": round(seconds, 2),
            "inputs_per_min": round(totals["inputs"] * 60 / seconds, 2),
            "frames_per_s": round(totals["frames"] / seconds, 2),
            "cores_used": round(max(cpu, 0.0) / seconds, 2) if mode == "local" else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=6)
    parser.add_argument("--width", type=int, default=480)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--modes", nargs="+", choices=("local", "ray"), default=["local", "ray"])
    parser.add_argument("--repeat", type=int, default=1, help="runs per mode; the fastest counts")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bench_batch.json")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        inputs = make_inputs(tmp, args.inputs, args.width)
        runs: dict[tuple[str, int], list[dict]] = {}
        for i in range(args.repeat):  # interleaved, so that a change in the host's load hits every mode
            for mode in args.modes:
                for workers in args.workers:
                    runs.setdefault((mode, workers), []).append(measure(inputs, tmp / f"{mode}{workers}-{i}",
                                                                        workers, mode))
                    print(runs[mode, workers][-1], flush=True)
        for these in runs.values():
            rows.append({**min(these, key=lambda r: r["seconds"]), "runs_seconds": [r["seconds"] for r in these]})
        if "local" in args.modes:
            rerun = measure(inputs, tmp / f"local{args.workers[0]}-0", args.workers[0], "local")
            rows.append({**rerun, "mode": "local re-run"})

    cols = ["mode", "workers", "inputs", "done", "skipped", "frames", "seconds", "inputs_per_min", "frames_per_s",
            "cores_used"]
    print(" | ".join(f"{c:>14}" for c in cols))
    for r in rows:
        print(" | ".join(f"{'-' if r[c] is None else r[c]:>14}" for c in cols))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "sample": str(SAMPLE.relative_to(ROOT)), "width": args.width, "backend": "graphcut", "repeat": args.repeat,
        "machine": {"cpus": len(os.sched_getaffinity(0)), "platform": platform.platform()},
        "results": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
