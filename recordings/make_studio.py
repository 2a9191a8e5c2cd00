#!/usr/bin/env python
"""Make realistic studio-session clips with exact ground truth: what a real turntable rig adds to a clean orbit.

    python recordings/make_studio.py --data ../shared/data/nerf_mic_orbit --out /tmp/clip --arm --platter \
        --exposure 0.12 --shake 1.5 --seed 3

A clip is the empty stage, an operator's arm that reaches in and puts the product down, the product turning
on the stage, the arm that comes back and takes it, and the empty stage again. Each phenomenon can be
switched on alone, so a test can check that it costs nothing:

  --exposure G     auto-exposure: the whole frame brightens by G (e.g. 0.12) while the product is on stage,
                   ramping in over half a second after it appears and back after it leaves; negative darkens
  --white-balance S  auto white balance drifts the same way: red gain 1+S, blue gain 1-S
  --shake PX       camera shake: a smooth random translation of up to PX pixels, every frame
  --platter        a visible turntable platter under the product (a darker disc, a rim, marks on it) that
                   turns with the product, all session long (the motor runs)
  --arm            the operator's arm and hand enter from a side, put the product down, leave, and later
                   come back to take it; the hand covers part of the product while it holds it
  --backdrop NAME  sweep (light grey paper), white, grey (a grey card), black (velvet), blue
  --product NAME   as_is (the mic), white (near-white plastic), black
  --scale F        the product's render side as a fraction of the frame height

The product is the NeRF "mic" orbit (`../shared/data/nerf_mic_orbit`, CC BY 3.0 renders of a CC-0 model);
views that touch the render's border are skipped so that the product is whole in every frame. Its contact
shadow is a soft darkening under its own silhouette (a cheap stand-in for `make_turntable.py`'s ray-marched
one). Outputs in --out: video.mp4 (H.264), gt/NNNNN.png (255 where the product's alpha >= 128 and no hand
covers it) and clip.json (per frame: whether the product and the arm are in it, and whether the product is
alone on the stage). Bit-exact for a given set of arguments (and libx264 build), whatever the machine's load
(`H264Writer.bit_exact`).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_turntable as mt  # noqa: E402  (the sibling generator: renders, backdrop, noise, H.264)

GENERATOR_VERSION = "1.1.0"  # 1.1: bit-exact H.264 (no macroblock tree)
BACKDROPS = {  # mean level (0..1) and RGB tint of the paper
    "sweep": (0.86, (1.0, 1.0, 1.0)),
    "white": (0.95, (1.0, 1.0, 1.0)),
    "grey": (0.50, (1.0, 1.0, 0.99)),
    "black": (0.07, (1.0, 1.0, 1.05)),
    "blue": (0.62, (0.72, 0.86, 1.12)),
}
PRODUCTS = ("as_is", "white", "black")
SKIN = [(224, 172, 140), (198, 134, 98), (141, 85, 56), (236, 192, 160)]
SLEEVES = [(40, 48, 70), (120, 30, 34), (60, 60, 62), (200, 200, 196)]


@dataclass(frozen=True)
class Scene:
    """Everything that decides a clip (the defaults are the clean session)."""

    width: int = 480
    height: int = 360
    fps: int = 15
    crf: int = 18
    seed: int = 0
    scale: float = 0.8
    backdrop: str = "sweep"
    product: str = "as_is"
    exposure: float = 0.0
    white_balance: float = 0.0
    shake: float = 0.0
    platter: bool = False
    arm: bool = False
    view_step: int = 2  # every n-th usable view: the product turns 3.6 * n degrees a frame
    lead_in: int = 12
    lead_out: int = 8

    def __post_init__(self) -> None:
        if self.backdrop not in BACKDROPS:
            raise SystemExit(f"--backdrop: one of {', '.join(BACKDROPS)}, not {self.backdrop!r}")
        if self.product not in PRODUCTS:
            raise SystemExit(f"--product: one of {', '.join(PRODUCTS)}, not {self.product!r}")
        if not 0.2 <= self.scale <= 0.95:
            raise SystemExit(f"--scale must be in [0.2, 0.95], got {self.scale}")


@dataclass(frozen=True)
class Timeline:
    """Frame ranges of a clip. The product is on stage in [first, last]; the arm is in view in [arm_in, arm_out]
    while placing and in [take_in, take_out] while taking (all empty when there is no arm)."""

    frames: int
    first: int
    last: int
    place: tuple[int, int, int, int]  # arm enters, reaches, starts to leave, is gone
    take: tuple[int, int, int, int]


def timeline(scene: Scene, views: int) -> Timeline:
    first = scene.lead_in + (6 if scene.arm else 0)
    last = first + views - 1
    place = (first - 6, first, first + 3, first + 9) if scene.arm else (-1, -1, -1, -1)
    take = (last - 9, last - 3, last + 1, last + 7) if scene.arm else (-1, -1, -1, -1)
    frames = (take[3] + 1 if scene.arm else last + 1) + scene.lead_out
    return Timeline(frames, first, last, place, take)


def arm_reach(t: int, phases: tuple[int, int, int, int]) -> float:
    """How far the arm is in, 0 (out of view) to 1 (hand at the product), at frame t of one visit."""
    enter, reach, leave, gone = phases
    if t < enter or t >= gone:
        return 0.0
    if t < reach:
        return float(np.sin(0.5 * np.pi * (t - enter + 1) / (reach - enter + 1)))
    if t < leave:
        return 1.0
    return float(np.cos(0.5 * np.pi * (t - leave + 1) / (gone - leave)))


def usable_views(orbit: mt.Orbit) -> list[int]:
    """Views whose product does not touch the render border (it would show a straight cut)."""
    keep = []
    for i in range(len(orbit.rgba_paths)):
        a = orbit.alpha(i)
        if not (a[0].any() or a[-1].any() or a[:, 0].any() or a[:, -1].any()):
            keep.append(i)
    return keep


def make_backdrop(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) float32 paper: make_turntable's sweep (light falloff, vignette, unevenness) at another level and
    tint; velvet gets a fine pile texture."""
    base = mt.make_backdrop(rng, scene.height, scene.width)
    level, tint = BACKDROPS[scene.backdrop]
    out = base * (level * 255 / base.mean()) * np.float32(tint)
    if scene.backdrop == "black":
        pile = cv2.GaussianBlur(rng.normal(0, 1, out.shape[:2]).astype(np.float32), (0, 0), 1.2)
        out *= (1 + 0.25 * pile / (pile.std() + 1e-6))[..., None]
    return np.clip(out, 0, 255).astype(np.float32)


def recolour(rgb: np.ndarray, alpha: np.ndarray, product: str) -> np.ndarray:
    """(H, W, 3) premultiplied float32 product colour (alpha (H, W)), turned into a near-white or a black one."""
    if product == "white":
        return 0.78 * 255 * alpha[..., None] + 0.24 * rgb  # keep the shading, lift it to off-white plastic
    if product == "black":
        return 0.32 * rgb
    return rgb


class Platter:
    """A turntable disc on the floor seen in perspective: an ellipse, its front edge, a rim, marks that turn."""

    def __init__(self, scene: Scene, centre: tuple[float, float], radius: float, rng: np.random.Generator) -> None:
        self.size, self.centre = (scene.height, scene.width), centre
        self.rx, self.ry = radius, radius * 0.26
        self.marks = rng.uniform(0, 2 * np.pi, 9)
        self.shade = 0.72 + 0.04 * rng.standard_normal()

    def paint(self, image: np.ndarray, angle: float, offset: np.ndarray) -> np.ndarray:
        """The backdrop with the platter on it, turned by `angle` radians, seen moved by `offset` (dx, dy) px."""
        h, w = self.size
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        u, v = (x - self.centre[0] - offset[0]) / self.rx, (y - self.centre[1] - offset[1]) / self.ry
        r, phi = np.sqrt(u * u + v * v), np.arctan2(v, u)
        edge_v = np.sqrt(np.maximum(1 - u * u, 0))
        side = (np.abs(u) < 1) & (v > edge_v) & (v <= edge_v + 0.06 / 0.26) & (r > 0.98)
        out = image.copy()
        top = _soft(1.0 - r, 0.015)
        disc = self.shade - 0.05 * (1 - r)  # a little brighter to its rim, where it catches the light
        rim = _soft(r - 0.9, 0.01) * 0.18
        marks = np.zeros_like(r)
        for m in self.marks:
            d = np.angle(np.exp(1j * (phi - m - angle)))
            marks += np.exp(-((d / 0.05) ** 2) - ((r - 0.78) / 0.05) ** 2)
        seam = np.exp(-((np.angle(np.exp(1j * (phi - angle))) / 0.012) ** 2)) * (r < 0.9) * 0.25
        factor = disc * (1 - rim) * (1 + 0.45 * np.clip(marks, 0, 1) - seam)
        out *= (1 - top + top * factor)[..., None]
        out[side] *= 0.45
        return out


def _soft(d: np.ndarray, width: float) -> np.ndarray:
    return np.clip(0.5 + d / (2 * width), 0, 1).astype(np.float32)


class Arm:
    """The operator's forearm (in a sleeve) and hand, reaching in from one side towards the product's base."""

    def __init__(self, scene: Scene, target: tuple[float, float], rng: np.random.Generator) -> None:
        self.h, self.w = scene.height, scene.width
        self.from_left = bool(rng.integers(2))
        self.target = target
        self.skin = np.float32(SKIN[rng.integers(len(SKIN))])
        self.sleeve = np.float32(SLEEVES[rng.integers(len(SLEEVES))])
        self.width = 0.085 * scene.height
        self.start_y = target[1] + rng.uniform(-0.15, 0.05) * scene.height
        y, x = np.mgrid[0 : self.h, 0 : self.w].astype(np.float32)
        self.x, self.y = x, y

    def layer(self, reach: float, offset: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(H, W, 3) colour and (H, W) alpha of the arm `reach` of the way in (alpha all 0 at 0), moved by
        `offset` (dx, dy) px."""
        alpha = np.zeros((self.h, self.w), np.float32)
        colour = np.zeros((self.h, self.w, 3), np.float32)
        if reach <= 0:
            return colour, alpha
        edge = -0.1 * self.w if self.from_left else 1.1 * self.w
        tip = np.array([edge + reach * (self.target[0] - edge), self.start_y + reach * (self.target[1] - self.start_y)])
        root = np.array([edge - (0.3 * self.w if self.from_left else -0.3 * self.w), self.start_y - 0.05 * self.h])
        tip, root = tip + offset, root + offset
        d = tip - root
        length = np.linalg.norm(d)
        t = np.clip(((self.x - root[0]) * d[0] + (self.y - root[1]) * d[1]) / length**2, 0, 1)
        px, py = root[0] + t * d[0], root[1] + t * d[1]
        across = ((self.x - px) * -d[1] + (self.y - py) * d[0]) / length  # signed distance across the arm
        dist = np.hypot(self.x - px, self.y - py)
        half = self.width * (0.5 - 0.08 * t)
        forearm = _soft(half - dist, 0.8)
        hx, hy = tip + d / length * 0.06 * self.h
        hand = _soft(1 - np.hypot((self.x - hx) / (0.075 * self.h), (self.y - hy) / (0.055 * self.h)), 0.02)
        alpha = np.maximum(forearm, hand)
        shading = 0.75 + 0.3 * np.sqrt(np.clip(1 - (across / (half + 1e-3)) ** 2, 0, 1))
        in_sleeve = (t < 0.72)[..., None]
        base = np.where(in_sleeve, self.sleeve, self.skin)
        base = np.where((hand > forearm)[..., None], self.skin, base)
        colour = base * shading[..., None]
        return colour.astype(np.float32), alpha


def contact_shadow(alpha: np.ndarray) -> np.ndarray:
    """(H, W) darkening in [0, 0.4] that a soft overhead light casts from the product onto the floor: strongest
    just below its lowest parts, fading upwards and blurred like a penumbra."""
    rows = np.nonzero(alpha.max(1) > 0.5)[0]
    if not len(rows):
        return np.zeros_like(alpha)
    bottom, height = rows.max(), rows.max() - rows.min() + 1
    y = np.arange(alpha.shape[0], dtype=np.float32)[:, None]
    near_floor = np.clip(1 - (bottom - y) / (0.25 * height), 0, 1)
    footprint = cv2.GaussianBlur(alpha * near_floor, (0, 0), 0.025 * height + 1)
    shifted = np.roll(footprint, int(0.01 * height) + 1, axis=0)
    return np.clip(0.9 * shifted, 0, 0.4)


def photometric_gains(scene: Scene, tl: Timeline) -> np.ndarray:
    """(frames, 3) per-channel camera gains: auto-exposure and white balance that react to the product, each
    ramping over half a second after it appears and back after it leaves, plus the usual +-0.5 % flicker."""
    n = tl.frames
    ramp = max(2, scene.fps // 2)
    on = np.zeros(n)
    for i in range(n):
        up = np.clip((i - tl.first) / ramp, 0, 1)
        down = np.clip((i - tl.last) / ramp, 0, 1)
        on[i] = 0.5 - 0.5 * np.cos(np.pi * (up - down))
    flicker = 1 + 0.005 * np.sin(np.arange(n) * 2.1)
    gains = np.ones((n, 3)) * (1 + scene.exposure * on)[:, None]
    gains[:, 0] *= 1 + scene.white_balance * on
    gains[:, 2] *= 1 - scene.white_balance * on
    return gains * flicker[:, None]


def shake_offsets(scene: Scene, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 2) smooth random translations within +-shake px (a motor's vibration and a floor's wobble)."""
    if scene.shake <= 0:
        return np.zeros((n, 2))
    walk = np.stack([np.convolve(rng.normal(0, 1, n + 6), np.ones(3) / 3, "same")[3:-3] for _ in range(2)], 1)
    return scene.shake * walk / (np.abs(walk).max() + 1e-9)


def place_render(rgba: np.ndarray, placement: mt.Placement, offset: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """make_turntable's placement moved by a sub-pixel `offset`: the render is area-resampled to 4x the canvas,
    moved by whole pixels there and area-resampled down, as a sensor samples a moved scene (a bilinear shift
    of the frame would blur every edge, which shake does not do)."""
    if not offset.any():
        return mt.place_render(rgba, placement)
    k = 4
    big = mt.Placement(placement.scale * k, placement.left * k + int(round(k * offset[0])),
                       placement.top * k + int(round(k * offset[1])), placement.width * k, placement.height * k)
    fg, alpha = mt.place_render(rgba, big)
    size = (placement.width, placement.height)
    return cv2.resize(fg, size, interpolation=cv2.INTER_AREA), cv2.resize(alpha, size, interpolation=cv2.INTER_AREA)


def shift(image: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """A smooth layer (the backdrop) moved by `offset` (dx, dy) px."""
    if not offset.any():
        return image
    m = np.float32([[1, 0, offset[0]], [0, 1, offset[1]]])
    return cv2.warpAffine(image, m, (image.shape[1], image.shape[0]), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


@dataclass(frozen=True)
class Shot:
    """One rendered frame: (H, W, 3) uint8 RGB, the (H, W) bool ground truth and what is in view."""

    image: np.ndarray
    mask: np.ndarray
    arm_pixels: int

    def record(self, index: int) -> dict:
        product = bool(self.mask.any())
        return {"frame": index, "product": product, "arm_pixels": self.arm_pixels,
                "alone": product and self.arm_pixels == 0}


class StudioClip:
    """The frames of one `Scene`: the mic orbit on its stage, as the camera sees it."""

    def __init__(self, data: Path, scene: Scene) -> None:
        self.scene, self.orbit = scene, mt.load_orbit(data)
        self.views = usable_views(self.orbit)[:: scene.view_step]
        self.timeline = timeline(scene, len(self.views))
        rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(scene.seed).spawn(5)]
        self.backdrop = make_backdrop(scene, rngs[0])
        side = int(round(scene.height * scene.scale))
        left = int(round((scene.width - side) / 2 + rngs[1].uniform(-0.06, 0.06) * scene.width))
        top = int(round((scene.height - side) * 0.7))
        self.placement = mt.Placement(side / self.orbit.size, left, top, scene.width, scene.height)
        base = (left + side / 2, top + 0.86 * side)
        self.platter = Platter(scene, base, 0.42 * side, rngs[2]) if scene.platter else None
        self.arm = Arm(scene, (base[0] + 0.12 * side, base[1] - 0.18 * side), rngs[3]) if scene.arm else None
        self.gains = photometric_gains(scene, self.timeline)
        self.offsets = shake_offsets(scene, self.timeline.frames, rngs[4])
        self.noise = np.random.default_rng(np.random.SeedSequence(scene.seed).spawn(6)[5])

    def shots(self):
        """Every frame of the clip, in order (`Shot`)."""
        for i in range(self.timeline.frames):
            yield self.shot(i)

    def shot(self, i: int) -> Shot:
        scene, offset = self.scene, self.offsets[i]
        stage = shift(self.backdrop, offset)
        if self.platter is not None:
            stage = self.platter.paint(stage, np.radians(3.6 * scene.view_step) * i, offset)
        image, gt = stage, np.zeros((scene.height, scene.width), np.float32)
        view = i - self.timeline.first
        if 0 <= view < len(self.views):
            fg, alpha = place_render(mt.read_rgba(self.orbit.rgba_paths[self.views[view]]), self.placement, offset)
            shadow = 1 - contact_shadow(alpha)[..., None]
            image, gt = recolour(fg, alpha, scene.product) + (1 - alpha[..., None]) * stage * shadow, alpha
        reach = max(arm_reach(i, self.timeline.place), arm_reach(i, self.timeline.take)) if self.arm else 0.0
        operator = np.zeros_like(gt)
        if reach > 0:
            colour, operator = self.arm.layer(reach, offset)
            image = operator[..., None] * colour + (1 - operator[..., None]) * image
        image, gt = image * np.float32(self.gains[i]), gt * (1 - operator)
        rgb = np.clip(np.round(mt.sensor_noise(image, self.noise)), 0, 255).astype(np.uint8)
        return Shot(rgb, gt >= 0.5, int((operator >= 0.5).sum()))

    def description(self, records: list[dict]) -> dict:
        return {
            "generator": "recordings/make_studio.py", "generator_version": GENERATOR_VERSION,
            "scene": asdict(self.scene), "frame_count": self.timeline.frames,
            "product_frames": [self.timeline.first, self.timeline.last],
            "source_views": [int(v) for v in self.views],
            "licence": "CC BY 3.0 (renders, NeRF synthetic); product model CC-0", "attribution": mt.ATTRIBUTION,
            "frames": records,
        }


def render_clip(data: Path, scene: Scene, out: Path) -> dict:
    """Write video.mp4, gt/ and clip.json for `scene` into `out`; returns the clip description."""
    clip = StudioClip(data, scene)
    shutil.rmtree(out / "gt", ignore_errors=True)
    (out / "gt").mkdir(parents=True)
    writer = mt.H264Writer(out / "video.mp4", scene.width, scene.height, scene.fps, scene.crf, bit_exact=True)
    records = []
    for i, shot in enumerate(clip.shots()):
        writer.write(shot.image)
        cv2.imwrite(str(out / "gt" / f"{i:05d}.png"), shot.mask.astype(np.uint8) * 255)
        records.append(shot.record(i))
    writer.close()
    description = clip.description(records)
    (out / "clip.json").write_text(json.dumps(description, indent=1))
    return description


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="the nerf_mic_orbit folder")
    parser.add_argument("--out", type=Path, required=True, help="output folder (video.mp4, gt/, clip.json replaced)")
    defaults = Scene()
    for name in ("width", "height", "fps", "crf", "seed", "view_step", "lead_in", "lead_out"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    for name in ("scale", "exposure", "white_balance", "shake"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=float, default=getattr(defaults, name))
    parser.add_argument("--backdrop", default=defaults.backdrop, choices=list(BACKDROPS))
    parser.add_argument("--product", default=defaults.product, choices=list(PRODUCTS))
    parser.add_argument("--platter", action="store_true")
    parser.add_argument("--arm", action="store_true")
    parser.add_argument("--contact-sheet", type=Path, help="also write a contact sheet PNG here")
    args = vars(parser.parse_args(argv))
    data, out, sheet = args.pop("data"), args.pop("out"), args.pop("contact_sheet")
    clip = render_clip(data, Scene(**args), out)
    if sheet:
        mt.write_contact_sheet(out / "video.mp4", out / "gt", sheet, every=4)
    print(f"wrote {clip['frame_count']} frames to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
