"""Studio path before and after: `turncrop run` on realistic clips, this tree against an earlier commit, one run.

Each clip is made by `recordings/make_studio.py` (clean, and with the arm, platter, exposure ramp and shake),
and the bundled sample session (960x720, the README's first command) is run too;
each code version runs it in its own process through `turncrop.stream.runner.run` (the command's own path).
The earlier commit is checked out into a temporary git worktree and imported from there. Prints a table
(fps, mean J over the product frames, frames with a mask on an empty stage, the still's frame and J, peak
RSS) and writes JSON with `--out`. Usage:

    python benchmarks/bench_studio.py [--baseline d888e49] [--data ../shared/data/nerf_mic_orbit] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recordings"))
import make_studio  # noqa: E402

BUNDLED = ROOT / "recordings" / "mic_turntable"  # the README's sample session, with its ground truth
CLIPS = {
    "clean": {},
    "realistic": {"arm": True, "platter": True, "exposure": 0.12, "shake": 1.5},
}

# Runs in a child process, importing turncrop from whatever tree PYTHONPATH puts first.
CHILD = r"""
import json, resource, sys, time
from pathlib import Path
import cv2, numpy as np
from turncrop.stream.config import load_config
from turncrop.stream.runner import run
clip, out = Path(sys.argv[1]), Path(sys.argv[2])
meta = json.loads((clip / "clip.json").read_text()) if (clip / "clip.json").exists() else None  # a bundled recording
count = meta["frame_count"] if meta else len(list((clip / "gt").glob("*.png")))
gts = [cv2.imread(str(clip / "gt" / f"{i:05d}.png"), cv2.IMREAD_GRAYSCALE) > 127 for i in range(count)]
masks = {}
def keep(r):
    if len(r.detections):
        masks[r.frame.index] = r.detections.mask[0]
t = time.perf_counter()
summary = run(clip / "video.mp4", out, load_config(None, {"backend": "graphcut"}), on_frame=keep).as_dict()
seconds = time.perf_counter() - t
empty = np.zeros_like(gts[0])
def j(a, b):
    u = np.count_nonzero(a | b)
    return 1.0 if u == 0 else np.count_nonzero(a & b) / u
js = [j(masks.get(i, empty), g) for i, g in enumerate(gts) if g.any()]
ok = [p for p in summary["products"] if p["status"] == "ok"]
still = json.loads((out / f"{ok[0]['product_id']}.json").read_text())["frame_index"] if ok else None
print(json.dumps({
    "fps": summary["frames"] / seconds, "mean_J": float(np.mean(js)), "products": len(summary["products"]),
    "empty_stage_frames_flagged": sum(1 for i, g in enumerate(gts) if not g.any() and masks.get(i, empty).mean() > 0.005),
    "still_frame": still, "still_J": None if still is None else j(masks.get(still, empty), gts[still]),
    "still_alone": None if still is None or meta is None else meta["frames"][still]["alone"],
    "encoder_calls_per_frame": summary["encoder_calls_per_frame"],
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def tree_of(baseline: str, folder: Path) -> Path:
    """A folder whose `turncrop/` maps the baseline commit's top-level packages (as the install does)."""
    checkout = folder / "checkout"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(checkout), baseline], check=True)
    package = folder / "path" / "turncrop"
    package.mkdir(parents=True)
    for name in ("stream", "models", "tracking", "configs"):
        (package / name).symlink_to(checkout / name)
    return folder / "path"


def measure(clip: Path, out: Path, python_path: Path | None) -> dict:
    env = None
    if python_path is not None:
        import os

        env = {**os.environ, "PYTHONPATH": str(python_path)}
    done = subprocess.run([sys.executable, "-c", CHILD, str(clip), str(out)], env=env, check=True,
                          capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default="d888e49", help="the earlier commit (default: before issue 10)")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "nerf_mic_orbit")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        try:
            versions = {args.baseline: tree_of(args.baseline, tmp / "baseline"), "this tree": None}
            clips = {name: tmp / name for name in CLIPS} | {"bundled mic_turntable (960x720)": BUNDLED}
            for name, clip in clips.items():
                if name in CLIPS:
                    make_studio.render_clip(args.data, make_studio.Scene(seed=0, **CLIPS[name]), clip)
                for version, path in versions.items():
                    result = measure(clip, tmp / f"out-{name}-{len(rows)}", path)
                    rows.append({"clip": name, "code": version, **result})
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tmp / "baseline" / "checkout")],
                           check=False, capture_output=True)
    header = "| clip | code | fps | mean J | products | empty-stage frames flagged | still frame (J, alone) | encoder calls / frame | peak RSS |"
    print(header + "\n|" + "---|" * 9)
    for r in rows:
        still = "none" if r["still_frame"] is None else f"{r['still_frame']} ({r['still_J']:.3f}, {r['still_alone']})"
        print(f"| {r['clip']} | {r['code']} | {r['fps']:.1f} | {r['mean_J']:.3f} | {r['products']} | "
              f"{r['empty_stage_frames_flagged']} | {still} | {r['encoder_calls_per_frame']:.3f} | {r['peak_rss_mb']:.0f} MB |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"baseline": args.baseline, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
