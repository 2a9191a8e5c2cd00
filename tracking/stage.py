"""The empty stage: a per-pixel background model learnt from frames with nothing on the turntable.

On a studio rig the camera and lights stay put, so the empty stage is the strongest cue there is: a pixel
that does not look like its own background is product, whatever its colour. Two things make the naive
difference wrong and are modelled here: sensor and compression noise (a per-pixel standard deviation
measured over the empty frames) and the product's own contact shadow, which darkens the backdrop without
changing its hue (Horprasert et al., 1999: brightness vs. chromaticity distortion). A grey product on a
grey sweep darkens the backdrop just like a shadow does; what tells them apart is texture: a soft shadow
scales the backdrop smoothly, a product's surface does not. So the shadow explanation is only granted
where the brightness ratio is locally smooth, and not on a step: a near-white product on a white sweep darkens
the paper like a shadow, but its outline is sharp where a soft light's penumbra is not, and what that outline
rings is its body (`stage_cues.enclosed_doubt`).

A real rig also shakes and re-exposes: every frame is compared with the plate as `tracking/plate.py` fits it
to that frame (shifted, and rescaled by a per-channel gain), and where the plate has edges (a platter's
rim, a seam) the residual a sub-pixel misregistration leaves is part of the noise. Where the stage itself moves
while it is empty (a turntable's platter, its marks and seam turning), one mean and a wide noise would hide a
dark cable lying there: those pixels keep every empty frame seen and are compared with the nearest of them,
at the sensor's noise (a sample-based background model, as ViBe's; Barnich & Van Droogenbroeck, 2011).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from turncrop.tracking.plate import PlateFit, fit_plate
from turncrop.tracking.stage_cues import enclosed_doubt, missing_texture, ratio_detail, speckle_free, step_excess


@dataclass(frozen=True)
class StageOptions:
    """Tuning of the empty-stage model."""

    warmup_frames: int = 8  # empty frames averaged before the stage is trusted
    noise_floor: float = 2.0  # minimum per-pixel noise std, in 8-bit levels (compression, quantisation)
    threshold: float = 6.0  # residual (in noise std) at which a pixel is as likely product as backdrop
    evidence_scale: float = 1.0  # log-odds per noise std beyond the threshold
    evidence_clip: float = 8.0
    shadow_min: float = 0.5  # darkest backdrop brightness ratio explained as a shadow (fill light keeps shadows above half)
    shadow_cost: float = 2.0  # residual (noise std) charged for the deepest allowed shadow
    shadow_texture: float = 1.0  # residual charged per noise std of brightness-ratio texture
    shadow_edge: float = 3.0  # residual charged per noise std of brightness-ratio step beyond a penumbra's
    plate_texture: float = 2.0  # residual charged per std of the plate's own texture missing from the frame
    penumbra_px: float = 5.0  # narrowest penumbra of a soft light's shadow (Gaussian sigma, px of the frame)
    shadow_doubt: float = 4.0  # strongest background log-odds a shadow-like pixel gets
    min_area: float = 0.002  # smallest product, as a fraction of the frame
    adapt_rate: float = 0.02  # how fast backdrop pixels far from the product follow lighting drift
    max_shift: float = 4.0  # largest camera shake (px) registered against the plate; 0 = a rigid camera
    registration_px: float = 0.5  # misregistration (px) left after that: plate edges get its residual as noise

    def __post_init__(self) -> None:
        if self.warmup_frames < 1:
            raise ValueError(f"stage.warmup_frames must be >= 1, got {self.warmup_frames}")
        if not 0.0 < self.shadow_min < 1.0:
            raise ValueError(f"stage.shadow_min must be in (0, 1), got {self.shadow_min}")
        if not 0.0 <= self.adapt_rate < 1.0:
            raise ValueError(f"stage.adapt_rate must be in [0, 1), got {self.adapt_rate}")
        for name in ("max_shift", "registration_px", "shadow_edge", "plate_texture"):
            if getattr(self, name) < 0:
                raise ValueError(f"stage.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("noise_floor", "penumbra_px", "threshold", "evidence_scale", "evidence_clip", "min_area",
                     "shadow_doubt"):
            if getattr(self, name) <= 0:
                raise ValueError(f"stage.{name} must be > 0, got {getattr(self, name)}")


MIN_EMPTY_FRAMES = 2  # a noise estimate needs at least two frames
MATTE_BAND = 2  # px each side of a mask's edge that matting may relabel
_STEP_NOISE = 0.5  # excess ratio step (noise std per px) left to noise, not charged
_MOVING_VARIANCE = 3.0  # empty-stage variance over the sensor's that marks the stage as moving there
_MIN_SAMPLES = 4  # empty frames kept before moving stage is compared with the nearest of them
_ENCLOSED_EVIDENCE = 2.0  # log-odds of a shadow-like region a step outline rings: likely product, not sure


class StageModel:
    """Per-pixel backdrop mean and noise, and foreground log-odds of a frame against them.

    Images are (H, W, 3) uint8 RGB. Learning is Welford's running mean/variance over empty frames.
    """

    def __init__(self, options: StageOptions | None = None) -> None:
        self.options = options or StageOptions()
        self._count = 0
        self._mean: np.ndarray | None = None  # (H, W, 3) float32
        self._m2: np.ndarray | None = None  # (H, W, 3) float32, sum of squared deviations
        self._sigma: np.ndarray | None = None  # (H, W) float32, noise std per pixel
        self._edges: np.ndarray | None = None  # (H, W) float32, plate gradient magnitude (levels per px)
        self._sealed = False
        self._outliers: np.ndarray | None = None  # (H, W) bool, the last frame's foreground, grown
        self._fits: list[tuple[np.ndarray, PlateFit]] = []  # the fits of the last frames seen (kept alive)
        self._empties: list[np.ndarray] = []  # the registered empty frames, (H, W, 3) uint8
        self._moving: np.ndarray | None = None  # (H, W) bool: stage that moved while empty (`_noise`)
        self._shaken = False  # whether the camera was ever seen moved against the plate
        self._seen: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # the last frame's (image, plate, sigma)

    @property
    def ready(self) -> bool:
        return self._count >= self.options.warmup_frames or self._sealed

    def seal(self) -> bool:
        """End the warm-up early (something appeared on stage); False if too few frames were learnt."""
        self._sealed = self._count >= MIN_EMPTY_FRAMES
        return self._sealed

    def something_appeared(self, image: np.ndarray) -> bool:
        """During warm-up: whether `image` shows a product-sized blob against the frames learnt so far."""
        return self._count >= MIN_EMPTY_FRAMES and len(self.product_boxes(image, self._log_odds(image))[0]) > 0

    @property
    def frames_learnt(self) -> int:
        return self._count

    def learn_empty(self, image: np.ndarray) -> None:
        """Add a frame known to show the empty stage."""
        x = image.astype(np.float32)
        if self._mean is None or self._mean.shape != x.shape:
            self._count, self._mean, self._m2, self._empties = 0, np.zeros_like(x), np.zeros_like(x), []
        elif self._count >= MIN_EMPTY_FRAMES:
            x = self._to_plate(x, self._fit(image))  # learn the stage, not the camera's shake and exposure
        self._empties.append(np.clip(np.round(x), 0, 255).astype(np.uint8))
        self._count += 1
        delta = x - self._mean
        self._mean += delta / self._count
        self._m2 += delta * (x - self._mean)
        self._sigma = self._edges = self._seen = None

    def adapt(self, image: np.ndarray) -> None:
        """Follow slow lighting drift with a frame known to show the empty stage.

        Never called while a product is on: its moving shadow would be learnt as backdrop.
        """
        if not self.ready:
            return
        x = self._to_plate(image.astype(np.float32), self._fit(image))
        self._mean += self.options.adapt_rate * (x - self._mean)
        self._outliers = self._seen = None

    def log_odds(self, image: np.ndarray) -> np.ndarray:
        """(H, W) float32 log-odds that each pixel is not backdrop (positive = product)."""
        if not self.ready:
            raise RuntimeError("StageModel.log_odds before the empty stage was learnt")
        return self._log_odds(image)

    def _log_odds(self, image: np.ndarray) -> np.ndarray:
        o = self.options
        if image.shape != self._mean.shape:
            raise ValueError(f"frame size {image.shape[:2]} differs from the stage's {self._mean.shape[:2]}")
        plate, sigma = self._plate_for(image)
        x = image.astype(np.float32)
        xb, xx, bb_raw = self._dot_products(x, plate)
        bb = np.maximum(bb_raw, 1.0)
        # Brightness ratio that best explains x as a scaled backdrop; only shading below 1 is a shadow.
        raw_ratio = xb / bb
        ratio = np.clip(raw_ratio, o.shadow_min, 1.0)
        # |x - r b|^2 = |x|^2 - 2 r x.b + r^2 |b|^2, for r = 1 (the plain backdrop) and r = ratio.
        plain = np.sqrt(np.maximum(xx - 2.0 * xb + bb_raw, 0.0)) / sigma
        shaded = np.sqrt(np.maximum(xx - 2.0 * ratio * xb + ratio * ratio * bb_raw, 0.0)) / sigma
        # Texture: fine-scale (high-pass) energy of the brightness ratio, in noise units of this pixel's
        # backdrop. A penumbra is a smooth ramp without detail; a mesh or a print has plenty. For the shadow
        # explanation the ratio is clipped to the shadow range so a dark cable lying in its own contact shadow
        # does not count as detail of the shadow. A sharp contact-shadow edge still has some: that is why it
        # is charged at one noise std per std of detail and no more.
        shaded += o.shadow_cost * (1.0 - ratio) / (1.0 - o.shadow_min)
        shaded += o.shadow_texture * ratio_detail(ratio, bb, sigma)
        # Edges: a soft light's shadow fades into the backdrop over many pixels, a product's silhouette is a
        # step. A near-white product on a white sweep is exactly a uniform darkening of the paper, a shadow in
        # colour; only its outline (and any print on it) gives it away.
        step = step_excess(raw_ratio, bb, sigma, o.shadow_min, o.penumbra_px)
        shaded += o.shadow_edge * np.maximum(step - _STEP_NOISE, 0.0)
        # The plate's own texture (velvet's pile, a card's grain, wood): a shadow keeps it, only dimmer; a product
        # hides it. This is what finds a black product on black velvet, a few levels off the pile.
        missing = o.plate_texture * missing_texture(x, plate, sigma, ratio, self._count)
        plain += missing
        shaded += missing
        # Only the backdrop itself is sure background. A shadow could as well be a smooth grey product:
        # that explanation leaves a doubt, which the segmenter's colour models and edges settle.
        as_backdrop = o.evidence_scale * (plain - o.threshold)
        as_shadow = np.maximum(o.evidence_scale * (shaded - o.threshold), -o.shadow_doubt)
        evidence = np.clip(np.minimum(as_backdrop, as_shadow), -o.evidence_clip, o.evidence_clip).astype(np.float32)
        # A region that is only shadow-like, ringed mostly by a step outline, is a faint body (a white product on
        # a white sweep shades the paper like a shadow). A cast shadow fades into the bare backdrop around most
        # of it, or is hemmed in by darker parts (a cable, a tripod's legs), beside which no step is counted.
        evidence[enclosed_doubt(evidence, step > _STEP_NOISE, o.shadow_doubt)] = _ENCLOSED_EVIDENCE
        grown = cv2.dilate((evidence > 0).astype(np.uint8), np.ones((3, 3), np.uint8), iterations=3)
        self._outliers = grown.astype(bool)
        return evidence

    def _fit(self, image: np.ndarray) -> PlateFit:
        """This frame's plate fit (`tracking/plate.py`), computed once per frame."""
        for seen, fit in self._fits:
            if seen is image:
                return fit
        previous = self._fits[-1][1].shift if self._fits else (0.0, 0.0)
        outliers = self._outliers if self._outliers is not None and self._outliers.shape == image.shape[:2] else None
        fit = fit_plate(image, self._mean, outliers, max_shift=self.options.max_shift, initial=previous)
        self._fits = [*self._fits[-1:], (image, fit)]
        self._shaken |= fit.moved
        return fit

    def _to_plate(self, x: np.ndarray, fit: PlateFit) -> np.ndarray:
        """A frame brought back to the plate's position and exposure (the inverse of `PlateFit.apply`)."""
        if fit.gain is not None:
            x = x / fit.gain
        return x if not fit.moved else PlateFit(shift=(-fit.shift[0], -fit.shift[1])).apply(x)

    def _plate_for(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The plate as this frame sees it, (H, W, 3) float32, and its noise std (H, W) float32: the sensor's,
        plus what the registration's remaining error leaves on the plate's edges. Computed once per frame (its
        log-odds and its matte both ask)."""
        if self._seen is not None and self._seen[0] is image:
            return self._seen[1], self._seen[2]
        fit = self._fit(image)
        sigma = self._noise()
        edges, plate = self._edges, self._mean
        if self._moving is not None:
            plate = self._nearest_empty(image, fit)
        if fit.moved:
            sigma, edges = PlateFit(shift=fit.shift).apply(np.dstack([sigma, edges])).transpose(2, 0, 1)
        if self._shaken:  # a rigid camera's plate needs no allowance for misregistration
            sigma = np.sqrt(sigma * sigma + (self.options.registration_px * edges) ** 2)
        plate = np.minimum(fit.apply(plate), 255.0)
        self._seen = (image, plate, sigma)
        return plate, sigma

    def _nearest_empty(self, image: np.ndarray, fit: PlateFit) -> np.ndarray:
        """The plate (H, W, 3) float32, in plate coordinates, with each moving pixel replaced by the empty frame
        that looked most like `image` there."""
        ys, xs = np.nonzero(self._moving)
        x = self._to_plate(image.astype(np.float32), fit)[ys, xs]
        samples = np.stack([e[ys, xs] for e in self._empties]).astype(np.float32)  # (K, N, 3)
        nearest = ((samples - x) ** 2).sum(-1).argmin(0)
        plate = self._mean.copy()
        plate[ys, xs] = samples[nearest, np.arange(len(ys))]
        return plate

    def _dot_products(self, x: np.ndarray, plate: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per pixel x.b, x.x and b.b of the (H, W, 3) float32 image `x` and the backdrop b, each (H, W)."""
        xs, bs = cv2.split(x), cv2.split(plate)  # split once: three products of the same planes
        return _dot(xs, bs), _dot(xs, xs), _dot(bs, bs)

    def foreground(self, image: np.ndarray, evidence: np.ndarray | None = None) -> np.ndarray:
        """(H, W) bool: pixels unlike the backdrop, cleaned of speckle (`evidence`: this frame's log_odds)."""
        return speckle_free(self.log_odds(image) if evidence is None else evidence)

    def product_boxes(self, image: np.ndarray, evidence: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Boxes of foreground blobs large enough to be a product (`evidence`: this frame's log_odds).

        Returns (xyxy (N, 4) float32, area fraction (N,) float32), largest first. Pieces closer than
        4 % of the frame's larger side (a cable loop, a tripod foot, a textured surface that is only
        partly unlike the backdrop) are one product; each box is tight around its own pixels.
        """
        fg = self.foreground(image, evidence).astype(np.uint8)
        h, w = fg.shape
        k = max(3, int(round(0.04 * max(h, w))) | 1)
        grouped = cv2.dilate(fg, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
        n, labels = cv2.connectedComponents(grouped, connectivity=8)
        labels = np.where(fg > 0, labels, 0)
        boxes, areas = [], []
        for i in range(1, n):
            ys, xs = np.nonzero(labels == i)
            area = len(xs) / (h * w)
            if area < self.options.min_area:
                continue
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            areas.append(area)
        order = np.argsort(areas)[::-1]
        return (
            np.asarray(boxes, np.float32).reshape(-1, 4)[order],
            np.asarray(areas, np.float32)[order],
        )

    def matte(self, image: np.ndarray, mask: np.ndarray, evidence: np.ndarray | None = None,
              band: int = MATTE_BAND) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Refine a mask's edge to the 50 % coverage line using the known backdrop (difference matting).

        Edge pixels mix product colour F and backdrop B: I = a F + (1 - a) B, so
        a = (I - B).(F - B) / |F - B|^2. F is taken from the nearest interior pixels of the mask. B is the stage
        as shaded right there: the plate times the brightness ratio of nearby pixels outside the mask,
        because the product's own contact shadow darkens exactly the backdrop beside its edges. A mask
        that only asks "unlike the backdrop?" grows by the anti-aliased rim; a >= 0.5 removes that bias.

        Args:
          evidence: this frame's `log_odds` if already computed.
        Returns (mask (H, W) bool, alpha (H, W) float32 in [0, 1], colour (H, W, 3) uint8): pixels
        farther than `band` from the edge, or whose product colour is too close to the backdrop to solve
        for, keep the input label. `colour` is the image with edge pixels replaced by their product
        colour F, so a cutout composited on any background shows no fringe of the old backdrop.
        """
        if evidence is None:
            evidence = self.log_odds(image)
        plate, sigma = self._plate_for(image)
        m = mask.astype(np.uint8)
        kernel = np.ones((3, 3), np.uint8)
        # Only the outer outline is matted: holes inside the mask (a grille's mesh) keep their label.
        filled = _fill_holes(m)
        inner = cv2.erode(filled, kernel, iterations=band)
        rim = cv2.dilate(m, kernel, iterations=band) > inner
        x = image.astype(np.float32)
        b = self._shaded_plate(x, plate, filled, band)
        # Product colour: the mean of the nearest pixels `band - 1` in from the edge (one in, at the native
        # size), or on the centre line of a structure too thin to survive that. A product's colour changes
        # toward its outline (shading, a rim, a dark cable's sheen): a 9x9 mean of pixels `band` in cost J 0.008
        # on a held-out clip. A mask upscaled from a working size is uncertain by its larger pixels (the wider
        # `band`), so the depth and the mean's reach grow with it: one px in, such an edge is often still backdrop.
        dist = cv2.distanceTransform(m, cv2.DIST_L2, 3)
        ridge = (dist > 0) & (dist >= cv2.dilate(dist, kernel))  # past the anti-aliased rim the mask grew by
        thin = ridge & (evidence >= self.options.evidence_clip)
        core = (cv2.erode(filled, kernel, iterations=band - 1) > 0) | thin
        fg, found = _local_mean(x, core, sigma=band / MATTE_BAND)
        d = cv2.split(fg - b)
        dd = _dot(d, d)
        alpha = np.clip(_dot(cv2.split(x - b), d) / np.maximum(dd, 1e-6), 0.0, 1.0)
        solvable = rim & found & (np.sqrt(dd) > 4.0 * sigma)
        refined = np.where(solvable, alpha >= 0.5, mask)
        soft = np.where(solvable, alpha, mask.astype(np.float32)).astype(np.float32)
        colour = np.where(solvable[..., None], np.clip(fg, 0, 255), x).astype(np.uint8)
        return refined, soft, colour

    def _shaded_plate(self, x: np.ndarray, plate: np.ndarray, filled: np.ndarray, band: int) -> np.ndarray:
        """(H, W, 3) float32: the plate times the brightness ratio of the pixels just outside the mask's rim,
        i.e. the backdrop as the product's own contact shadow darkens it beside its edges."""
        outside = (cv2.dilate(filled, np.ones((3, 3), np.uint8), iterations=band + 1) == 0).astype(np.float32)
        xb, _, bb_raw = self._dot_products(x, plate)
        ratio = xb / np.maximum(bb_raw, 1.0)
        near = cv2.blur(outside, (9, 9))
        shade = np.where(near > 0.01, cv2.blur(ratio * outside, (9, 9)) / np.maximum(near, 1e-6), 1.0)
        return plate * np.minimum(shade, 1.0)[..., None]

    def resized(self, size: tuple[int, int]) -> StageModel:
        """This model for frames of (H, W) `size` (e.g. the source frames of a stream segmented at a working
        size): the plate is resized bilinearly, which a smooth backdrop allows; the noise variance is scaled
        by the ratio of pixel counts, as area-averaging n pixels of independent noise divides it by n."""
        if self._mean is None:
            raise RuntimeError("StageModel.resized before the empty stage was learnt")
        h, w = size
        area_ratio = (h * w) / (self._mean.shape[0] * self._mean.shape[1])
        model = StageModel(self.options)
        model._count, model._sealed = self._count, self._sealed
        model._mean = cv2.resize(self._mean, (w, h), interpolation=cv2.INTER_LINEAR)
        model._m2 = cv2.resize(self._m2, (w, h), interpolation=cv2.INTER_LINEAR) * np.float32(area_ratio)
        model._empties = [cv2.resize(e, (w, h), interpolation=cv2.INTER_AREA) for e in self._empties]
        return model

    def _noise(self) -> np.ndarray:
        if self._sigma is None:
            var = self._m2.sum(-1) / max(self._count - 1, 1)
            # Few frames give a noisy variance: pool it over a neighbourhood, never below the floor.
            var = cv2.blur(var, (15, 15))
            self._moving = None
            if self.ready and len(self._empties) >= _MIN_SAMPLES:
                sensor = float(np.median(var))
                moving = var > _MOVING_VARIANCE * max(sensor, self.options.noise_floor**2)
                if moving.any():
                    # Compared with one empty frame, not a mean: twice the sensor's noise variance.
                    self._moving, var = moving, np.where(moving, 2.0 * sensor, var)
            sigma = np.sqrt(var)
            self._sigma = np.maximum(sigma, self.options.noise_floor).astype(np.float32)
            gx, gy = cv2.Sobel(self._mean, cv2.CV_32F, 1, 0) / 8, cv2.Sobel(self._mean, cv2.CV_32F, 0, 1) / 8
            self._edges = np.sqrt((gx * gx + gy * gy).sum(-1)).astype(np.float32)
            if self._moving is not None:  # the mean's edges there are a blur of what moved, not the plate's
                self._edges[self._moving] = 0.0
        return self._sigma


def _dot(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> np.ndarray:
    """Per pixel dot product (H, W) of two (H, W, 3) float32 images given as their `cv2.split` planes: numpy's
    sums over a trailing axis of 3 are several times slower."""
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _local_mean(image: np.ndarray, source: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """The Gaussian-weighted mean colour of the (H, W) bool `source` pixels of the (H, W, 3) float32 `image`
    around each pixel, and where there are any within ~3 `sigma` px to take it from ((H, W, 3), (H, W) bool)."""
    size = (2 * math.ceil(4 * sigma) + 1,) * 2
    weight = cv2.GaussianBlur(source.astype(np.float32), size, sigma)
    mean = cv2.GaussianBlur(image * source[..., None], size, sigma) / np.maximum(weight, 1e-12)[..., None]
    return mean, weight > 1e-3


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """(H, W) uint8 0/1 -> the same with every background region not connected to the border filled."""
    padded = np.pad(1 - mask, 1, constant_values=1)
    n, labels = cv2.connectedComponents(padded.astype(np.uint8), connectivity=4)
    outside = labels == labels[0, 0]
    return (~outside[1:-1, 1:-1]).astype(np.uint8)
