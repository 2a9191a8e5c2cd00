#!/usr/bin/env python
"""Make the bundled turntable sample: the NeRF "mic" orbit shot as a studio turntable session.

    python recordings/make_turntable.py --data ../shared/data/nerf_mic_orbit --out recordings/mic_turntable

The 100 RGBA renders of one 360-degree orbit (exact alpha) are composited over a photographic studio
sweep and encoded as lossy H.264, with ground-truth masks for every frame:

  * the session opens and closes on the empty stage (`--lead-in` / `--lead-out` frames);
  * the backdrop is a seamless light-grey sweep: a key-light hotspot, vertical and horizontal falloff,
    a vignette and mild low-frequency unevenness;
  * the contact shadow is physically derived: the visual hull of the product is carved from the 100
    calibrated alpha masks, an overhead soft box (plus short-range ambient occlusion) is ray-marched
    through it onto the floor plane, and each frame shows that floor shadow through its own camera, so
    the shadow sits under the tripod feet and the cable and moves with the product;
  * every frame gets a little exposure flicker and fresh sensor noise (read noise + shot noise);
  * H.264 (libx264, yuv420p, BT.709, crf 21) adds real compression artefacts.

Outputs in --out: video.mp4, gt/NNNNN.png (255 where the product's alpha >= 128, all zero on the empty
stage) and session.json (frame ranges, per-frame source azimuth/elevation, seed, licence). The result is
deterministic given --seed (and the same libx264 build).
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
from av.video.reformatter import ColorRange, Colorspace

GENERATOR_VERSION = "1.0.0"

ATTRIBUTION = {
    "product": "mic by up3d.de, CC-0 (public domain dedication)",
    "renders": (
        "NeRF synthetic dataset (nerf_synthetic), test views r_0..r_99 of the 'mic' scene, by Ben Mildenhall, "
        "Pratul P. Srinivasan, Matthew Tancik, Jonathan T. Barron, Ravi Ramamoorthi, Ren Ng: 'NeRF: Representing "
        "Scenes as Neural Radiance Fields for View Synthesis', ECCV 2020; licensed CC BY 3.0 "
        "(https://creativecommons.org/licenses/by/3.0/)"
    ),
    "changes": (
        "renders scaled by 0.9, composited over a synthetic studio backdrop with a synthetic contact shadow, "
        "exposure flicker and sensor noise, encoded as H.264; empty-stage frames added before and after"
    ),
}


# --- the source orbit ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Orbit:
    """The calibrated source renders.

    Attributes:
      rgba_paths: N RGBA PNGs, each (S, S, 4) uint8 with straight (unassociated) alpha.
      cam_to_world: (N, 3, 4) Blender/NeRF camera-to-world poses (camera looks down -z, y up).
      focal: focal length in source pixels; the principal point is the image centre.
      size: S, the square source resolution.
      azimuth_deg, elevation_deg: (N,) camera angles from MANIFEST.txt.
    """

    rgba_paths: list[Path]
    cam_to_world: np.ndarray
    focal: float
    size: int
    azimuth_deg: np.ndarray
    elevation_deg: np.ndarray

    def alpha(self, i: int) -> np.ndarray:
        """(S, S) uint8 alpha of render i."""
        return read_rgba(self.rgba_paths[i])[..., 3]


def read_rgba(path: Path) -> np.ndarray:
    """(H, W, 4) uint8 RGBA."""
    bgra = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if bgra is None or bgra.ndim != 3 or bgra.shape[2] != 4:
        raise SystemExit(f"{path}: not an 8-bit RGBA image")
    return cv2.cvtColor(bgra, cv2.COLOR_BGRA2RGBA)


def load_orbit(data: Path) -> Orbit:
    """Read rgba/*.png, transforms_test.json and the per-frame angles of MANIFEST.txt in `data`."""
    paths = sorted((data / "rgba").glob("*.png"))
    if not paths:
        raise SystemExit(f"{data}/rgba: no RGBA renders found")
    meta = json.loads((data / "transforms_test.json").read_text())
    angles: dict[int, tuple[float, float]] = {}
    line = re.compile(r"^\s*(\d+)\s*<-\s*\S*/r_(\d+)\.png\s+cam azimuth\s+(-?[\d.]+) deg, elevation\s+(-?[\d.]+) deg")
    for text in (data / "MANIFEST.txt").read_text().splitlines():
        if m := line.match(text):
            if int(m[1]) != int(m[2]):
                raise SystemExit(f"MANIFEST.txt: frame {m[1]} is view r_{m[2]}; expected the same index")
            angles[int(m[1])] = (float(m[3]), float(m[4]))
    if missing := [i for i in range(len(paths)) if i not in angles]:
        raise SystemExit(f"MANIFEST.txt: no camera angles for frames {missing[:5]}...")
    poses = []
    for i, path in enumerate(paths):
        entry = meta["frames"][i]
        if not entry["file_path"].endswith(f"r_{i}"):
            raise SystemExit(f"transforms_test.json frame {i} is {entry['file_path']}, expected r_{i}")
        poses.append(np.asarray(entry["transform_matrix"], np.float64)[:3])
    size = read_rgba(paths[0]).shape[0]
    return Orbit(
        rgba_paths=paths,
        cam_to_world=np.stack(poses),
        focal=0.5 * size / np.tan(0.5 * meta["camera_angle_x"]),
        size=size,
        azimuth_deg=np.array([angles[i][0] for i in range(len(paths))]),
        elevation_deg=np.array([angles[i][1] for i in range(len(paths))]),
    )


def project(points: np.ndarray, cam_to_world: np.ndarray, focal: float, cx: float, cy: float) -> tuple[np.ndarray, ...]:
    """Pixel coordinates (u, v) and depth of (P, 3) world points seen by a (3, 4) NeRF camera."""
    rot, centre = cam_to_world[:, :3], cam_to_world[:, 3]
    cam = (points - centre) @ rot  # rows are R^T (p - c)
    depth = -cam[:, 2]
    return cx + focal * cam[:, 0] / depth, cy - focal * cam[:, 1] / depth, depth


# --- contact shadow --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hull:
    """A voxel visual hull: occupied[i, j, k] at (xs[i], ys[j], zs[k]) in world units, spacing `step`."""

    occupied: np.ndarray
    xs: np.ndarray
    ys: np.ndarray
    zs: np.ndarray
    step: float


def carve_visual_hull(orbit: Orbit, step: float = 0.0175, min_views: int = 10) -> Hull:
    """Keep the voxels whose projection is inside the product's alpha in every render that sees them.

    A voxel outside a render's field of view is not carved by it (the product leaves the frame in some
    views); one seen by fewer than `min_views` renders is dropped as unconstrained.
    """
    xs = np.arange(-1.4, 1.4, step, dtype=np.float32)
    ys = np.arange(-1.4, 1.4, step, dtype=np.float32)
    zs = np.arange(-0.9, 1.5, step, dtype=np.float32)
    grid = np.stack(np.meshgrid(xs, ys, zs, indexing="ij"), -1).reshape(-1, 3)
    alive = np.arange(len(grid))
    seen = np.zeros(len(grid), np.int32)
    centre = (orbit.size - 1) / 2
    for i in range(len(orbit.rgba_paths)):
        # Dilate so that thin parts (the cable) survive rounding to the voxel grid.
        alpha = cv2.dilate(orbit.alpha(i), np.ones((5, 5), np.uint8))
        u, v, depth = project(grid[alive], orbit.cam_to_world[i], orbit.focal, centre, centre)
        ui, vi = np.round(u).astype(np.int64), np.round(v).astype(np.int64)
        inside = (depth > 0) & (ui >= 0) & (ui < orbit.size) & (vi >= 0) & (vi < orbit.size)
        keep = ~inside
        keep[inside] = alpha[vi[inside], ui[inside]] >= 64
        seen[alive[inside]] += 1
        alive = alive[keep]
    occupied = np.zeros(len(grid), bool)
    occupied[alive[seen[alive] >= min_views]] = True
    return Hull(occupied.reshape(len(xs), len(ys), len(zs)), xs, ys, zs, step)


def floor_height(hull: Hull) -> float:
    """World z of the floor the product stands on.

    The cable and the tripod feet lie on the floor, so the bottom of the hull is a flat layer: take the
    lowest slice holding a good share of that layer (ignoring a few stray voxels below it).
    """
    counts = hull.occupied.sum(axis=(0, 1))
    filled = np.nonzero(counts)[0]
    bottom = counts[filled[0] : filled[0] + 8]
    k = filled[0] + int(np.argmax(bottom >= 0.25 * bottom.max()))
    return float(hull.zs[k] - hull.step / 2)


@dataclass(frozen=True)
class FloorShadow:
    """Occlusion of the floor plane z = `z`, sampled on a grid: texel (r, c) is at (x0 + c*step, y0 + r*step).

    `amount` is (R, C) float32 in [0, 1]: 0 = fully lit, 1 = fully shadowed.
    """

    amount: np.ndarray
    x0: float
    y0: float
    step: float
    z: float


def _cone_directions(rng: np.random.Generator, n: int, half_angle_deg: float) -> np.ndarray:
    """(n, 3) unit directions, cosine-weighted, within `half_angle_deg` of straight up (stratified)."""
    sin_max = np.sin(np.radians(half_angle_deg))
    k = int(np.ceil(np.sqrt(n)))
    cells = (np.stack(np.meshgrid(np.arange(k), np.arange(k)), -1).reshape(-1, 2) + rng.random((k * k, 2))) / k
    cells = cells[rng.permutation(len(cells))[:n]]
    r = sin_max * np.sqrt(cells[:, 0])  # uniform on the disc = cosine-weighted on the cap
    phi = 2 * np.pi * cells[:, 1]
    return np.stack([r * np.cos(phi), r * np.sin(phi), np.sqrt(1 - r**2)], -1)


def floor_shadow(hull: Hull, z_floor: float, rng: np.random.Generator, margin: float = 0.8) -> FloorShadow:
    """Ray-march light directions from every floor texel through the hull.

    Key light: a big overhead soft box, directions within 40 degrees of vertical. Ambient occlusion:
    the cosine-weighted hemisphere, but only occluders within 0.25 world units count, which darkens the
    floor right where the cable and feet touch it. Returns `0.8 * key + 0.4 * ambient`, clipped to 1.
    """
    pad = int(round(margin / hull.step))
    above = hull.zs > z_floor
    slabs = hull.occupied[:, :, above].astype(np.float32)  # (X, Y, K)
    heights = hull.zs[above] - z_floor
    # Texel (row, col) = (y, x); pad so that shadows may fall beyond the hull's box.
    slabs = np.pad(slabs.transpose(1, 0, 2), ((pad, pad), (pad, pad), (0, 0)))
    rows, cols = slabs.shape[:2]

    def occlusion(n: int, half_angle_deg: float, max_distance: float) -> np.ndarray:
        directions = _cone_directions(rng, n, half_angle_deg)
        # At height h the n rays fan out over a disc of radius ~h * tan(half angle), one sample per
        # pi r^2 / n: blur each slab by about half that spacing so the shadow of a high part is a
        # smooth penumbra rather than n separate copies.
        reach = np.minimum(heights * np.tan(np.radians(half_angle_deg)), max_distance)
        sigmas = 0.5 * reach * np.sqrt(np.pi / n) / hull.step
        total = np.zeros((rows, cols), np.float32)
        filtered = [
            cv2.GaussianBlur(slabs[:, :, k], (0, 0), float(s)) if s > 0.5 else slabs[:, :, k]
            for k, s in enumerate(sigmas)
        ]
        for d in directions:
            blocked = np.zeros((rows, cols), np.float32)
            for k, h in enumerate(heights):
                if h / d[2] > max_distance:
                    break
                # The ray from texel p reaches height h at p + h * (dx, dy) / dz: sample slab k there.
                shift = np.float32([[1, 0, h * d[0] / d[2] / hull.step], [0, 1, h * d[1] / d[2] / hull.step]])
                sampled = cv2.warpAffine(
                    filtered[k], shift, (cols, rows), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
                )
                np.maximum(blocked, sampled, out=blocked)
            total += blocked
        return total / len(directions)

    key = occlusion(64, 40.0, np.inf)
    ambient = occlusion(64, 85.0, 0.25)
    amount = np.clip(0.8 * key + 0.4 * ambient, 0, 1)
    # The hull is voxel-blocky; a slight blur stands in for the soft box's finite sampling.
    amount = cv2.GaussianBlur(amount, (0, 0), 1.0)
    x0, y0 = float(hull.xs[0]) - pad * hull.step, float(hull.ys[0]) - pad * hull.step
    return FloorShadow(amount, x0, y0, hull.step, z_floor)


# --- the shot -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Placement:
    """Where the square source render sits on the canvas: scaled by `scale`, top-left at (`left`, `top`)."""

    scale: float
    left: int
    top: int
    width: int
    height: int

    def cut_edges(self, alpha: np.ndarray) -> list[str]:
        """Sides where the (S, S) alpha reaches the render's border but the render does not reach the
        canvas border, so the product would show a straight cut there."""
        side = int(round(alpha.shape[0] * self.scale))
        reaches = {
            "top": alpha[0].any(),
            "bottom": alpha[-1].any(),
            "left": alpha[:, 0].any(),
            "right": alpha[:, -1].any(),
        }
        flush = {
            "top": self.top == 0,
            "bottom": self.top + side == self.height,
            "left": self.left == 0,
            "right": self.left + side == self.width,
        }
        return [edge for edge, hit in reaches.items() if hit and not flush[edge]]

    def camera(self, orbit: Orbit) -> tuple[float, float, float]:
        """(focal, cx, cy) of the source camera in canvas pixels."""
        centre = (orbit.size - 1) / 2
        return orbit.focal * self.scale, self.left + centre * self.scale, self.top + centre * self.scale


def shadow_in_view(
    shadow: FloorShadow, cam_to_world: np.ndarray, camera: tuple[float, float, float], width: int, height: int
) -> np.ndarray:
    """(H, W) float32 shadow amount each canvas pixel sees on the floor through this camera."""
    focal, cx, cy = camera
    u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    rays = np.stack([(u - cx) / focal, -(v - cy) / focal, -np.ones_like(u)], -1) @ cam_to_world[:, :3].T
    origin = cam_to_world[:, 3]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (shadow.z - origin[2]) / rays[..., 2]
    hits = np.isfinite(t) & (t > 0)
    t = np.where(hits, t, 0)
    col = ((origin[0] + t * rays[..., 0] - shadow.x0) / shadow.step).astype(np.float32)
    row = ((origin[1] + t * rays[..., 1] - shadow.y0) / shadow.step).astype(np.float32)
    col[~hits] = -1e6
    seen = cv2.remap(shadow.amount, col, row, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return seen


def make_backdrop(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(H, W, 3) float32 RGB in 0..255: a light-grey seamless sweep under a key light from the left.

    The wall (top) falls off away from the light, the floor (bottom) catches more of it; the sweep's
    curve between them is a smooth tonal roll, not a line. A vignette and low-frequency unevenness
    (paper sag, uneven light) keep it from looking synthetic.
    """
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    yn, xn = y / (height - 1), x / (width - 1)
    sweep = 1 / (1 + np.exp(-(yn - 0.42) / 0.09))  # 0 on the wall, 1 on the floor
    level = 0.84 + 0.06 * sweep - 0.07 * (1 - yn) ** 2
    level += 0.06 * np.exp(-(((xn - 0.42) / 0.38) ** 2 + ((yn - 0.5) / 0.45) ** 2))  # hotspot behind the product
    level -= 0.035 * (xn - 0.5)  # key light from the left
    r2 = ((xn - 0.5) / 0.5) ** 2 + ((yn - 0.5) / 0.5) ** 2
    level *= 1 - 0.11 * r2 ** 1.3  # lens vignette, ~ -20 % in the corners
    uneven = cv2.resize(rng.normal(0, 1, (5, 7)).astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
    uneven = cv2.GaussianBlur(uneven, (0, 0), width / 14)
    level *= 1 + 0.012 * uneven / (np.abs(uneven).max() + 1e-6)
    # Neutral grey paper; the floor picks up a faint warm bounce, the wall stays a touch cooler.
    tint = np.stack([0.995 + 0.01 * sweep, np.full_like(sweep, 1.0), 1.012 - 0.014 * sweep], -1)
    return np.clip(255 * level[..., None] * tint, 0, 255).astype(np.float32)


def place_render(rgba: np.ndarray, placement: Placement) -> tuple[np.ndarray, np.ndarray]:
    """The render on the canvas: (H, W, 3) premultiplied RGB float32 (0..255) and (H, W) alpha in 0..1."""
    alpha = rgba[..., 3:].astype(np.float32) / 255
    premult = np.concatenate([rgba[..., :3].astype(np.float32) * alpha, alpha * 255], -1)
    side = int(round(rgba.shape[0] * placement.scale))
    # Resample premultiplied colour so that the edge pixels do not pick up the render's (black) background.
    small = cv2.resize(premult, (side, side), interpolation=cv2.INTER_AREA)
    canvas = np.zeros((placement.height, placement.width, 4), np.float32)
    canvas[placement.top : placement.top + side, placement.left : placement.left + side] = small
    return canvas[..., :3], canvas[..., 3] / 255


def sensor_noise(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) float32 0..255 plus read noise and signal-dependent shot noise, mostly luminance."""
    # ~3.7 levels on the light backdrop, ~2.2 on the dark product: a phone-class sensor indoors. The
    # encoder smooths much of it away, leaving the ~1-2 levels of temporal noise real footage shows.
    sigma = np.sqrt(1.8**2 + 0.045 * image)
    shared = rng.standard_normal(image.shape[:2], dtype=np.float32)[..., None]
    own = rng.standard_normal(image.shape, dtype=np.float32)
    return image + sigma * (0.8 * shared + 0.6 * own)


# --- output ---------------------------------------------------------------------------------------


class H264Writer:
    """Writes RGB frames as H.264 (libx264, yuv420p, BT.709 limited range) in an mp4."""

    def __init__(self, path: Path, width: int, height: int, fps: int, crf: int, bit_exact: bool = False) -> None:
        """`bit_exact` makes the output the same from run to run, whatever the machine's load: libx264 on one thread
        and without its macroblock tree, whose rate control read differently from run to run under load even on one
        thread (measured: three encodes of the same frames, three files)."""
        self.container = av.open(str(path), "w", options={"movflags": "faststart"})
        options = {"crf": str(crf), "preset": "slow", "g": str(2 * fps)}
        if bit_exact:
            options["x264-params"] = "mbtree=0"
        self.stream = self.container.add_stream("libx264", rate=fps, options=options)
        if bit_exact:
            self.stream.codec_context.thread_count = 1
        self.stream.width, self.stream.height, self.stream.pix_fmt = width, height, "yuv420p"
        ctx = self.stream.codec_context
        ctx.colorspace = ctx.color_primaries = ctx.color_trc = 1  # BT.709, tagged so players agree
        ctx.color_range = 1  # limited ("MPEG") range
        self.stream.time_base = Fraction(1, fps)
        self.count = 0

    def write(self, rgb: np.ndarray) -> None:
        """Encode one (H, W, 3) uint8 RGB frame."""
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(
            format="yuv420p", dst_colorspace=Colorspace.ITU709, dst_color_range=ColorRange.MPEG
        )
        frame.pts = self.count
        self.count += 1
        self.container.mux(self.stream.encode(frame))

    def close(self) -> None:
        self.container.mux(self.stream.encode(None))
        self.container.close()


def write_contact_sheet(video: Path, gt_dir: Path, out: Path, columns: int = 6, every: int = 7) -> None:
    """Every `every`-th decoded frame, 1/4 size, with the ground-truth outline in green, as one PNG."""
    tiles = []
    with av.open(str(video)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i % every:
                continue
            rgb = frame.to_ndarray(format="rgb24")
            mask = cv2.imread(str(gt_dir / f"{i:05d}.png"), cv2.IMREAD_GRAYSCALE)
            contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            cv2.drawContours(rgb, contours, -1, (0, 200, 0), 2)
            tile = cv2.resize(rgb, (rgb.shape[1] // 4, rgb.shape[0] // 4), interpolation=cv2.INTER_AREA)
            cv2.putText(tile, str(i), (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
            tiles.append(tile)
    while len(tiles) % columns:
        tiles.append(np.zeros_like(tiles[0]))
    rows = [np.concatenate(tiles[i : i + columns], 1) for i in range(0, len(tiles), columns)]
    cv2.imwrite(str(out), cv2.cvtColor(np.concatenate(rows, 0), cv2.COLOR_RGB2BGR))


def session_json(session: dict) -> str:
    """Indented JSON with one line per frame record, so the file stays readable."""
    head = json.dumps({k: v for k, v in session.items() if k != "frames"}, indent=2)
    frames = ",\n".join("    " + json.dumps(record) for record in session["frames"])
    return head[:-2] + ',\n  "frames": [\n' + frames + "\n  ]\n}\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", type=Path, required=True, help="the nerf_mic_orbit folder (rgba/, MANIFEST.txt, transforms_test.json)"
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="output folder (its video.mp4, gt/ and session.json are replaced)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lead-in", type=int, default=20, help="empty-stage frames before the product")
    parser.add_argument("--lead-out", type=int, default=20, help="empty-stage frames after the product")
    parser.add_argument("--width", type=int, default=960)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--scale", type=float, default=0.9, help="render scale on the canvas")
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--crf", type=int, default=21)
    parser.add_argument(
        "--contact-sheet", type=Path, help="also write a contact sheet PNG here (keep it out of the repo)"
    )
    args = parser.parse_args(argv)

    orbit = load_orbit(args.data)
    side = int(round(orbit.size * args.scale))
    if side > args.height or side > args.width:
        parser.error(f"a {orbit.size}px render at scale {args.scale} does not fit {args.width}x{args.height}")
    placement = Placement(args.scale, (args.width - side) // 2, (args.height - side) // 2, args.width, args.height)
    seeds = np.random.SeedSequence(args.seed).spawn(4)
    rng_backdrop, rng_light, rng_flicker, rng_noise = (np.random.default_rng(s) for s in seeds)

    print("carving the visual hull from the alpha masks ...", file=sys.stderr)
    hull = carve_visual_hull(orbit)
    z_floor = floor_height(hull)
    print(f"  {int(hull.occupied.sum())} voxels, floor at z = {z_floor:.3f}; ray-marching ...", file=sys.stderr)
    shadow = floor_shadow(hull, z_floor, rng_light)
    backdrop = make_backdrop(rng_backdrop, args.height, args.width)

    n_product = len(orbit.rgba_paths)
    total = args.lead_in + n_product + args.lead_out
    # Exposure wanders a little (light flicker, auto-exposure hunting): smoothed noise, within +-1 %.
    drift = np.convolve(rng_flicker.normal(0, 1, total + 8), np.ones(5) / 5, mode="same")[4:-4]
    gains = 1 + 0.01 * np.clip(drift / (np.abs(drift).max() + 1e-9), -1, 1)

    gt_dir = args.out / "gt"
    # Replace only what this script writes: --out may be pointed at a folder holding other things.
    shutil.rmtree(gt_dir, ignore_errors=True)
    gt_dir.mkdir(parents=True)
    writer = H264Writer(args.out / "video.mp4", args.width, args.height, args.fps, args.crf)
    camera = placement.camera(orbit)
    product_frames = []
    for index in range(total):
        source = index - args.lead_in
        image = backdrop
        mask = np.zeros((args.height, args.width), np.uint8)
        if 0 <= source < n_product:
            rgba = read_rgba(orbit.rgba_paths[source])
            if cut := placement.cut_edges(rgba[..., 3]):
                raise SystemExit(f"{orbit.rgba_paths[source]}: the product would show a cut at its {'/'.join(cut)}")
            fg, alpha = place_render(rgba, placement)
            darkening = 0.42 * shadow_in_view(shadow, orbit.cam_to_world[source], camera, args.width, args.height)
            image = fg + (1 - alpha[..., None]) * backdrop * (1 - darkening[..., None])
            mask[np.round(alpha * 255) >= 128] = 255
            product_frames.append(
                {
                    "frame": index,
                    "source": f"rgba/{orbit.rgba_paths[source].name}",
                    "azimuth_deg": float(orbit.azimuth_deg[source]),
                    "elevation_deg": float(orbit.elevation_deg[source]),
                }
            )
        noisy = sensor_noise(image * gains[index], rng_noise)
        writer.write(np.clip(np.round(noisy), 0, 255).astype(np.uint8))
        cv2.imwrite(str(gt_dir / f"{index:05d}.png"), mask)
    writer.close()

    session = {
        "generator": "recordings/make_turntable.py",
        "generator_version": GENERATOR_VERSION,
        "seed": args.seed,
        "source": "nerf_synthetic 'mic', test views r_0..r_99 (one 360-degree orbit), via shared/data/nerf_mic_orbit",
        "video": "video.mp4",
        "codec": {"encoder": "libx264", "crf": args.crf, "preset": "slow", "pix_fmt": "yuv420p", "colorspace": "bt709"},
        "fps": args.fps,
        "frame_count": total,
        "width": args.width,
        "height": args.height,
        "product_frames": {"first": args.lead_in, "last": args.lead_in + n_product - 1},
        "empty_frames": [[0, args.lead_in - 1], [args.lead_in + n_product, total - 1]],
        "ground_truth": "gt/NNNNN.png: 8-bit, 255 where the product's render alpha >= 128, all 0 on the empty stage",
        "placement": {"scale": args.scale, "left": placement.left, "top": placement.top},
        "floor_z_world": round(z_floor, 4),
        "frames": product_frames,
        "licence": "CC BY 3.0 (renders, NeRF synthetic); product model CC-0",
        "attribution": ATTRIBUTION,
    }
    (args.out / "session.json").write_text(session_json(session))
    if args.contact_sheet:
        write_contact_sheet(args.out / "video.mp4", gt_dir, args.contact_sheet)
    size_mb = (args.out / "video.mp4").stat().st_size / 1e6
    print(f"wrote {total} frames ({args.width}x{args.height}, {size_mb:.2f} MB) to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
