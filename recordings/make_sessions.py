#!/usr/bin/env python
"""Make the bundled replay sessions (turncrop session folders) from the NeRF "mic" orbit.

    python recordings/make_sessions.py --data ../shared/data/nerf_mic_orbit --out recordings

Four sessions, 480x360 at 15 fps, H.264 (crf 16; studio_realistic crf 22) in Matroska, each with `gt.npz` (the exact ground-truth
mask of every frame, bit-packed like the golden masks) and its golden outputs (`golden/`, from a replay):

  orbit_live/          the spine issue's single product: the empty stage, one full turn of the mic, the
                       empty stage again; recorded from a live run (`run_live(..., record=...)` on this
                       machine), so it replays "as live", with the drops and keyframe hand-offs it noted
  two_products/        the mic, the empty stage, then a second product (the same mic model mirrored,
                       scaled to 80 % and tinted red: a stand-in for a different product), the empty stage
  operator_clicks/     no stage model (stage.enabled: false), so the operator's box starts the product: the
                       box covers only the microphone's head; 8 frames later two clicks on the stand and
                       the base correct the mask
  studio_realistic/    a real session's troubles (`make_studio.py`): the operator's arm puts the mic down on
                       a turning platter and takes it away, auto-exposure brightens 12 % while it is on
                       stage, the camera shakes by 1.5 px

Frames are composited as `make_turntable.py` does (same backdrop, contact shadow from the visual hull,
exposure flicker, sensor noise), at a quarter of its area. Deterministic for a given --seed, except the
live session's drops and keyframe hand-offs, which are whatever the live run on this machine did.
"""
from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_studio  # noqa: E402  (the sibling generator of realistic sessions)
import make_turntable as mt  # noqa: E402  (the sibling generator: backdrop, shadow, noise)

from turncrop.stream.config import load_config  # noqa: E402
from turncrop.stream.live import run_live  # noqa: E402
from turncrop.stream.live_sources import MonotonicClock, RealtimeSource  # noqa: E402
from turncrop.stream.recording import SessionRecorder  # noqa: E402
from turncrop.stream.sources import FrameSource  # noqa: E402
from turncrop.tracking.frame import Frame  # noqa: E402

WIDTH, HEIGHT, FPS, CRF = 480, 360, 15.0, 16
SCALE = 0.45  # the 800 px render spans the canvas height, as in mic_turntable
ATTRIBUTION = {
    **mt.ATTRIBUTION,
    "changes": ("renders scaled to 0.45, composited over a synthetic studio backdrop with a synthetic contact "
                "shadow, exposure flicker and sensor noise, encoded as H.264; empty-stage frames added; in "
                "two_products the second product is the same model mirrored, scaled by 0.8 and tinted red"),
}


@dataclass
class Shot:
    """One frame to render: a view of the orbit (or None: the empty stage) and how it is changed."""

    view: int | None
    variant: str = "plain"  # "plain" or "second" (mirrored, scaled, tinted: the second product)


class Studio:
    """Renders frames of the mic on the studio backdrop (the pieces of make_turntable.py)."""

    def __init__(self, data: Path, seed: int) -> None:
        self.orbit = mt.load_orbit(data)
        side = int(round(self.orbit.size * SCALE))
        self.placement = mt.Placement(SCALE, (WIDTH - side) // 2, (HEIGHT - side) // 2, WIDTH, HEIGHT)
        seeds = np.random.SeedSequence(seed).spawn(4)
        rng_backdrop, rng_light, self.rng_flicker, self.rng_noise = (np.random.default_rng(s) for s in seeds)
        print("carving the visual hull for the contact shadow ...", file=sys.stderr)
        hull = mt.carve_visual_hull(self.orbit)
        self.shadow = mt.floor_shadow(hull, mt.floor_height(hull), rng_light)
        self.backdrop = mt.make_backdrop(rng_backdrop, HEIGHT, WIDTH)

    def render(self, shots: list[Shot]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """(H, W, 3) uint8 frames and (H, W) bool ground-truth masks."""
        drift = np.convolve(self.rng_flicker.normal(0, 1, len(shots) + 8), np.ones(5) / 5, mode="same")[4:-4]
        gains = 1 + 0.01 * np.clip(drift / (np.abs(drift).max() + 1e-9), -1, 1)
        frames, masks = [], []
        camera = self.placement.camera(self.orbit)
        for i, shot in enumerate(shots):
            image, alpha = self.backdrop, np.zeros((HEIGHT, WIDTH), np.float32)
            if shot.view is not None:
                fg, alpha = mt.place_render(mt.read_rgba(self.orbit.rgba_paths[shot.view]), self.placement)
                dark = 0.42 * mt.shadow_in_view(self.shadow, self.orbit.cam_to_world[shot.view], camera, WIDTH, HEIGHT)
                if shot.variant == "second":
                    fg, alpha, dark = second_product(fg, alpha, dark)
                image = fg + (1 - alpha[..., None]) * self.backdrop * (1 - dark[..., None])
            noisy = mt.sensor_noise(image * gains[i], self.rng_noise)
            frames.append(np.clip(np.round(noisy), 0, 255).astype(np.uint8))
            masks.append(np.round(alpha * 255) >= 128)
        return frames, masks


def second_product(fg: np.ndarray, alpha: np.ndarray, dark: np.ndarray) -> tuple[np.ndarray, ...]:
    """The same view as another product: mirrored, 80 % size about the stage point below the centre, red.

    `fg` is premultiplied RGB (0..255); the shadow layer `dark` moves with the product.
    """
    h, w = alpha.shape
    cx, cy, s = w / 2, 0.8 * h, 0.8
    warp = np.float32([[-s, 0, cx + s * cx], [0, s, cy - s * cy]])  # mirror x about cx, scale about (cx, cy)

    def move(layer: np.ndarray) -> np.ndarray:
        return cv2.warpAffine(layer, warp, (w, h), flags=cv2.INTER_AREA, borderValue=0)

    fg, alpha, dark = move(fg), move(alpha), move(dark)
    # Tint: keep each pixel's brightness, give it a red lacquer (premultiplied, so scale by alpha).
    grey = fg.mean(axis=2, keepdims=True)
    red = grey * np.float32([1.35, 0.55, 0.5])
    return np.clip(red, 0, 255 * alpha[..., None]), alpha, dark


class ListSource(FrameSource):
    """Frames held in memory (a camera stand-in for the live session)."""

    def __init__(self, images: list[np.ndarray], name: str) -> None:
        super().__init__(name, FPS, len(images), images[0].shape[:2])
        self.images = images

    def _frames(self):
        for i, image in enumerate(self.images):
            yield Frame(image, i, i / FPS, self.name)


def write_gt(folder: Path, masks: list[np.ndarray]) -> None:
    """gt.npz: key f<index> -> np.packbits of the frame's (H, W) bool mask (fixed zip times: reproducible)."""
    with zipfile.ZipFile(folder / "gt.npz", "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        for i, mask in enumerate(masks):
            buffer = io.BytesIO()
            np.save(buffer, np.packbits(mask.ravel()), allow_pickle=False)
            z.writestr(zipfile.ZipInfo(f"f{i}.npy", date_time=(1980, 1, 1, 0, 0, 0)), buffer.getvalue(),
                       compress_type=zipfile.ZIP_DEFLATED)


def record(folder: Path, frames: list[np.ndarray], config, description: str,
           events: dict[int, list[dict]] | None = None, attribution: dict | None = None, crf: int = CRF) -> None:
    """A `turncrop record`-style session (no live run): every frame, plus operator commands before frames."""
    extra = {"description": description, "attribution": attribution or ATTRIBUTION,
             "generator": "recordings/make_sessions.py", "ground_truth": "gt.npz"}
    with SessionRecorder(folder, config, FPS, (HEIGHT, WIDTH), source="recordings/make_sessions.py",
                         codec="h264", crf=crf, extra=extra) as recorder:
        for i, image in enumerate(frames):
            for event in (events or {}).get(i, []):
                recorder.event({"event": "command", "frame": i, "command": event})
            recorder.frame(Frame(image, i, i / FPS))


def record_live(folder: Path, frames: list[np.ndarray], config, description: str) -> None:
    """A session recorded by a live run at the stream's own rate (graph cut on this machine drops frames)."""
    out = folder.with_name(folder.name + ".live-out")
    shutil.rmtree(out, ignore_errors=True)
    with RealtimeSource(ListSource(frames, "recordings/make_sessions.py (live)"), MonotonicClock()) as source:
        report = run_live(source, out, config, handle_signals=False, record=folder, record_codec="h264")
    shutil.rmtree(out)
    # The recorder wrote the run's config and versions; add what a bundled session must say about itself.
    info = json.loads((folder / "session.json").read_text())
    info.update({"description": description, "attribution": ATTRIBUTION, "generator": "recordings/make_sessions.py",
                 "ground_truth": "gt.npz", "video": {**info["video"], "crf": CRF}})
    (folder / "session.json").write_text(json.dumps(info, indent=2) + "\n")
    s = report.stats
    print(f"  live run: {s.frames_processed} of {s.frames_in} frames processed, {s.frames_dropped} dropped",
          file=sys.stderr)


README = """# `{name}/`: a turncrop session (`turncrop replay recordings/{name} --check`)

{description}

| file | what |
|---|---|
| `session.json` | format and version, turncrop/torch/OpenCV/PyAV versions, the config, frame size and rate, this attribution |
| `video.mkv` | the frames: H.264 (crf {crf}, yuv420p) in Matroska, {width}x{height}, {fps:g} fps |
| `events.jsonl` | per-frame timestamps{live}{commands} |
| `gt.npz` | the exact ground-truth mask of every frame (`np.packbits`, key `f<frame>`), from the render's alpha >= 128 |
| `golden/` | the golden outputs `--check` compares against (rewrite on purpose with `--update-golden`) |

Made by `python recordings/make_sessions.py --data ../shared/data/nerf_mic_orbit --out recordings --only {name}`.

## Attribution and licence

- **Product model:** "mic" by [up3d.de](https://up3d.de), **CC-0** (as listed in the nerf_synthetic README).
- **Renders:** the `mic` scene of the NeRF synthetic dataset (nerf_synthetic), test views r_0..r_99, by
  Ben Mildenhall, Pratul P. Srinivasan, Matthew Tancik, Jonathan T. Barron, Ravi Ramamoorthi and Ren Ng,
  *NeRF: Representing Scenes as Neural Radiance Fields for View Synthesis*, ECCV 2020. Distributed under
  **CC BY 3.0** (https://creativecommons.org/licenses/by/3.0/). Copy used: `shared/data/nerf_mic_orbit`.
- **Changes made:** {changes}. Wherever this folder goes, this attribution and the note that the renders
  were changed must go with it (CC BY 3.0, section 4b).
"""


def write_readme(folder: Path, description: str, live: bool = False, commands: bool = False,
                 changes: str = ATTRIBUTION["changes"]) -> None:
    (folder / "README.md").write_text(README.format(
        name=folder.name, description=description, crf=STUDIO_CRF if folder.name == "studio_realistic" else CRF,
        width=WIDTH, height=HEIGHT, fps=FPS,
        live=", the live run's processed frames and keyframe hand-offs" if live else "",
        commands=", the operator's box and clicks" if commands else "", changes=changes))


DESCRIPTIONS = {
    "orbit_live": ("The single-product orbit: the empty stage (8 frames), one full turn of the mic (50 frames, "
                   "7.2 degrees a frame), the empty stage (6 frames). Recorded from a live graph-cut run paced at "
                   "15 fps, so it replays *as live*: the frames the live run dropped are skipped and each "
                   "background keyframe is taken and installed where the live run did."),
    "two_products": ("Two products in sequence: the empty stage (8 frames), the mic turning (25 frames), the empty "
                     "stage (8), a second product (24 frames), the empty stage (8). The second product is honestly "
                     "the same mic model, mirrored, scaled to 80 % and tinted red, standing in for a different "
                     "product. Recorded without a live run: it replays every frame."),
    "operator_clicks": ("Operator clicks that correct a mask. The stage model is off (`stage.enabled: false`), so "
                        "only the operator starts the product: at frame 6 a box that covers just the microphone's "
                        "head (the top 45 % of the product), at frame 14 two positive clicks on the stand and the "
                        "base. The golden masks after the clicks hold the whole product; a replay without the clicks "
                        "keeps only the head (tests/test_replay.py checks it). Replays every frame."),
    "studio_realistic": ("A real turntable session's troubles, made by `recordings/make_studio.py` (seed 0): the "
                         "empty stage with a turning platter (12 frames), the operator's arm reaching in from the "
                         "side and putting the mic down (it holds it for 3 frames, then leaves), the mic turning "
                         "with the platter (36 frames, 7.2 degrees a frame), the arm coming back to take it, the "
                         "empty stage (8 frames). Auto-exposure brightens the frame by 12 % while the mic is on "
                         "stage; the camera shakes by up to 1.5 px. The ground truth excludes the hand where it "
                         "covers the mic; `frames.json` tells per frame whether the mic and the arm are in view. The still "
                         "must come from a frame without the arm. Replays every frame."),
}
STUDIO_CRF = 22
STUDIO_SCENE = make_studio.Scene(width=WIDTH, height=HEIGHT, fps=int(FPS), arm=True, platter=True, exposure=0.12,
                                 shake=1.5, seed=0)
STUDIO_CHANGES = ("renders scaled to fit, composited over a synthetic studio sweep with a synthetic platter, contact "
                  "shadow, operator's arm, exposure ramp, camera shake and sensor noise, encoded as H.264; "
                  "empty-stage frames added")


def clicks_for(mask: np.ndarray, box: np.ndarray, n: int = 2) -> np.ndarray:
    """`n` points deep inside the product but outside `box`, spread out (farthest-point order)."""
    outside = mask.copy()
    x0, y0, x1, y1 = box.astype(int)
    outside[max(y0 - 8, 0):y1 + 8, max(x0 - 8, 0):x1 + 8] = False
    depth = cv2.distanceTransform(outside.astype(np.uint8), cv2.DIST_L2, 5)
    points = []
    for _ in range(n):
        y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
        points.append([float(x), float(y)])
        yy, xx = np.mgrid[:depth.shape[0], :depth.shape[1]]
        depth[(yy - y) ** 2 + (xx - x) ** 2 < (0.15 * depth.shape[0]) ** 2] = 0
    return np.float32(points)


def mask_box(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.float32([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="the nerf_mic_orbit folder")
    parser.add_argument("--out", type=Path, required=True, help="folder to hold the session folders (replaced)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=tuple(DESCRIPTIONS), action="append")
    args = parser.parse_args(argv)
    studio = Studio(args.data, args.seed) if not args.only or set(args.only) - {"studio_realistic"} else None
    graphcut = load_config("default", {"backend": "graphcut"})
    made = []

    def fresh(name: str) -> Path | None:
        if args.only and name not in args.only:
            return None
        folder = args.out / name
        shutil.rmtree(folder, ignore_errors=True)
        made.append(folder)
        return folder

    if folder := fresh("orbit_live"):
        shots = [Shot(None)] * 8 + [Shot(v) for v in range(0, 100, 2)] + [Shot(None)] * 6
        frames, masks = studio.render(shots)
        record_live(folder, frames, graphcut, DESCRIPTIONS["orbit_live"])
        write_gt(folder, masks)

    if folder := fresh("two_products"):
        shots = ([Shot(None)] * 8 + [Shot(v) for v in range(0, 100, 4)] + [Shot(None)] * 8
                 + [Shot(v, "second") for v in range(30, 100, 3)] + [Shot(None)] * 8)
        frames, masks = studio.render(shots)
        record(folder, frames, graphcut, DESCRIPTIONS["two_products"])
        write_gt(folder, masks)

    if folder := fresh("operator_clicks"):
        shots = [Shot(None)] * 6 + [Shot(v) for v in range(40, 100, 2)]
        frames, masks = studio.render(shots)
        start, fix = 6, 14
        whole = mask_box(masks[start])
        head = whole.copy()
        head[3] = whole[1] + 0.45 * (whole[3] - whole[1])  # only the top 45 %: the microphone's head
        points = clicks_for(masks[fix], head)
        events = {start: [{"kind": "box", "box": [round(float(v), 1) for v in head]}],
                  fix: [{"kind": "point", "points": [[round(float(x), 1), round(float(y), 1)] for x, y in points],
                         "labels": [1] * len(points)}]}
        config = load_config("default", {"backend": "graphcut", "stage.enabled": False})
        record(folder, frames, config, DESCRIPTIONS["operator_clicks"], events)
        write_gt(folder, masks)

    if folder := fresh("studio_realistic"):
        shots = list(make_studio.StudioClip(args.data, STUDIO_SCENE).shots())
        # crf 22: shake and noise cost bits, and the bundled sessions must stay small.
        record(folder, [s.image for s in shots], graphcut, DESCRIPTIONS["studio_realistic"],
               attribution={**ATTRIBUTION, "changes": STUDIO_CHANGES}, crf=STUDIO_CRF)
        write_gt(folder, [s.mask for s in shots])
        (folder / "frames.json").write_text(json.dumps([s.record(i) for i, s in enumerate(shots)]) + "\n")

    for folder in made:
        write_readme(folder, DESCRIPTIONS[folder.name], live=folder.name == "orbit_live",
                     commands=folder.name == "operator_clicks",
                     changes=STUDIO_CHANGES if folder.name == "studio_realistic" else ATTRIBUTION["changes"])
        # The golden outputs come from a replay of the session as it is now (on purpose).
        subprocess.run([sys.executable, "-m", "turncrop.stream.cli", "replay", str(folder), "--update-golden"],
                       check=True)
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        print(f"{folder}: {size / 1e6:.2f} MB", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
