"""Encoder / decoder speed of the SAM backends on this machine, per precision and speed option.

Random weights (speed does not depend on them). Each configuration runs in its own subprocess so that its
peak RSS (resource.getrusage) and torch.compile state are its own.

    python benchmarks/bench_encoder.py --repeats 5 --out bench.json          # MobileSAM (vit_t)
    python benchmarks/bench_encoder.py --all --options fp32,bf16             # + SAM vit_b
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

OPTIONS = {
    "fp32": {},
    "channels_last": {"channels_last": True},
    "bf16": {"precision": "bf16"},
    "bf16+channels_last": {"precision": "bf16", "channels_last": True},
    "compile": {"compile": True},
    "compile+bf16": {"compile": True, "precision": "bf16"},
}


def _timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000.0)
    return times


def run_worker(arch: str, option: str, repeats: int, height: int, width: int) -> dict:
    """One configuration, in this process: build, warm up (compiles if asked), then time."""
    import numpy as np
    import torch

    from turncrop.models.base import Prompt
    from turncrop.models.sam import SamSegmenter
    from turncrop.models.weights import new_model

    torch.manual_seed(0)
    seg = SamSegmenter(new_model(arch), **OPTIONS[option])
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    box = np.array([width * 0.3, height * 0.2, width * 0.7, height * 0.8], np.float32)
    prior = np.full((height, width), -8.0, np.float32)
    prior[int(box[1]):int(box[3]), int(box[0]):int(box[2])] = 8.0

    first_ms = _timed(lambda: seg.encode(image), 1)[0]
    encode_ms = _timed(lambda: seg.encode(image), repeats)
    embedding = seg.encode(image)
    decode_box_ms = _timed(lambda: seg.decode(embedding, Prompt(box=box), image), 5 * repeats)
    decode_mask_ms = _timed(lambda: seg.decode(embedding, Prompt(box=box, mask_logits=prior), image), 5 * repeats)
    return {
        "arch": arch,
        "option": option,
        "compile_status": seg.compile_status,
        "first_encode_ms": first_ms,
        "encode_ms_median": statistics.median(encode_ms),
        "encode_ms_min": min(encode_ms),
        "decode_box_ms_median": statistics.median(decode_box_ms),
        "decode_box_mask_ms_median": statistics.median(decode_mask_ms),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,  # KiB on Linux
        "threads": seg.num_threads,
    }


def run_isolated(arch: str, option: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--worker", arch, option, "--repeats", str(args.repeats),
           "--height", str(args.height), "--width", str(args.width)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        return {"arch": arch, "option": option, "error": f"exit {proc.returncode}: {tail[0]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def format_table(rows: list[dict]) -> str:
    head = ("arch", "option", "encode ms", "(min)", "1st encode ms", "decode box ms", "box+mask ms", "peak RSS MB",
            "compile")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['arch']} | {r['option']} | error: {r['error']} |")
            continue
        lines.append(
            f"| {r['arch']} | {r['option']} | {r['encode_ms_median']:.0f} | {r['encode_ms_min']:.0f} | "
            f"{r['first_encode_ms']:.0f} | {r['decode_box_ms_median']:.1f} | {r['decode_box_mask_ms_median']:.1f} | "
            f"{r['peak_rss_mb']:.0f} | {r['compile_status']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--all", action="store_true", help="also SAM vit_b (~12 s an fp32 encode on 2 cores)")
    parser.add_argument("--options", default=",".join(OPTIONS), help=f"comma list of: {', '.join(OPTIONS)}")
    parser.add_argument("--repeats", type=int, default=3, help="timed encodes per configuration (after a warm-up)")
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per configuration")
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--worker", nargs=2, metavar=("ARCH", "OPTION"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")

    if args.worker:
        print(json.dumps(run_worker(args.worker[0], args.worker[1], args.repeats, args.height, args.width)))
        return 0

    options = [o.strip() for o in args.options.split(",") if o.strip()]
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        parser.error(f"unknown options {unknown}; choose from {', '.join(OPTIONS)}")
    archs = ["vit_t", "vit_b"] if args.all else ["vit_t"]
    load_before = os.getloadavg()
    rows = []
    for arch in archs:
        for option in options:
            rows.append(run_isolated(arch, option, args))
            print(format_table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)

    import torch

    machine = {
        "platform": platform.platform(),
        "cpus": len(os.sched_getaffinity(0)),
        "torch": torch.__version__,
        "frame": [args.height, args.width],
        "repeats": args.repeats,
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
    }
    print(format_table(rows))
    print(f"\n{machine}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"machine": machine, "results": rows}, f, indent=2)
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
