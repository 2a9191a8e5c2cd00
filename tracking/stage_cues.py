"""The stage model's per-pixel cues beyond colour (`tracking/stage.py` weighs them): the brightness ratio's fine
detail and its steps (a shadow is smooth and soft-edged, a product is neither), the plate's own texture that a
product hides and a shadow keeps, and shadow-like regions that a product's outline rings.

`ratio` is the frame's brightness ratio against the plate, (H, W) float32 (1 on the bare backdrop, below 1 in
shade), `bb` the plate's squared brightness and `sigma` the per-pixel noise std; every cue is (H, W).
"""
from __future__ import annotations

import cv2
import numpy as np

_BACKDROP_RATIO_TOP = 1.1  # brightest ratio still the backdrop (noise, a little exposure left after the fit)
_TEXTURE_SEEN = 0.5  # least correlation of the frame with the plate's texture expected where it is a cue
_TEXTURE_REGION = 31  # px: the neighbourhood of which at least half must show texture for it to be a cue
_TEXTURE_SCATTER = 0.35  # a few grains of texture in a window: its correlation scatters this much
_GREY_NOISE = 0.15  # grey (BT.601) noise variance per unit of the three channels' summed noise variance
_PLATE_NOISE_MARGIN = 1.5  # plate noise taken off its texture energy, with room for a 7x7 window's scatter
_ENCLOSED = 0.5  # least share of a shadow-like region's rim on a step outline for the region to be product
_TEXTURE_OUTLIER = 2.0  # high-pass beyond this many std of the plate's texture and noise is an edge, not texture
_TEXTURE_KEPT = 0.5  # least share of a window left after those edges for its correlation to say anything


def ratio_detail(ratio: np.ndarray, bb: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """(H, W) local high-pass energy of a brightness ratio, in noise std of the backdrop at each pixel."""
    detail = ratio - cv2.GaussianBlur(ratio, (0, 0), 1.0)
    return np.sqrt(cv2.blur(detail * detail, (3, 3))) * np.sqrt(bb) / sigma


def step_excess(ratio: np.ndarray, bb: np.ndarray, sigma: np.ndarray, shadow_min: float,
                penumbra_px: float) -> np.ndarray:
    """(H, W) how much sharper than a soft shadow's edge the brightness ratio steps here, in noise std of the
    backdrop per px, spread over 5x5 so a silhouette is a band that survives the foreground's speckle opening.

    A shadow edge blurred over `penumbra_px` (a Gaussian's sigma) climbs at most 1 / (2.5 penumbra_px) of its
    depth per pixel, whatever the depth; a product's outline, blurred by the lens alone, several times that.
    The ratio is smoothed by normalised convolution over pixels in the shadow range only: a dark cable lying in
    its own contact shadow is not a step of that shadow (the cable is product on its own evidence).
    """
    shadowish = ((ratio >= shadow_min) & (ratio <= _BACKDROP_RATIO_TOP)).astype(np.float32)
    weight = cv2.GaussianBlur(shadowish, (0, 0), 1.0)
    smooth = cv2.GaussianBlur(ratio * shadowish, (0, 0), 1.0) / np.maximum(weight, 1e-3)
    gx, gy = cv2.Sobel(smooth, cv2.CV_32F, 1, 0) / 8, cv2.Sobel(smooth, cv2.CV_32F, 0, 1) / 8
    # At a step's midpoint the ratio is half its depth below 1: a penumbra's slope there is 2 / (2.5 sigma).
    allowed = (0.8 / penumbra_px) * np.abs(1.0 - smooth)
    excess = np.maximum(np.sqrt(gx * gx + gy * gy) - allowed, 0.0)
    step = cv2.dilate(excess * np.sqrt(bb) / sigma, np.ones((5, 5), np.uint8))
    # Beside anything darker or brighter than a shadow can be (a dark cable), the step is that object's own
    # anti-aliased edge, not the shadow's: the shadow it casts right there keeps its explanation. 11 px: the
    # smoothing, the Sobel and the spread above carry an edge's response 5 px away.
    beyond = cv2.dilate(np.uint8(1) - shadowish.astype(np.uint8), np.ones((11, 11), np.uint8)) > 0
    step[beyond] = 0.0
    return step


def missing_texture(x: np.ndarray, plate: np.ndarray, sigma: np.ndarray, ratio: np.ndarray, frames: int,
                     window: int = 7) -> np.ndarray:
    """(H, W) how much of the plate's fine texture is missing from the frame, in std of a correlation.

    Per `window`-sized neighbourhood: the normalised correlation of the frame's and the plate's high-pass grey
    (scale-free, so a shadow or an exposure change, which only scale it, keep it) against what the plate's
    texture lets one expect on the bare stage. The plate is a mean of `frames` noisy frames, so part of its
    high-pass energy is its own noise, not texture: a smooth sweep learnt from two frames shows "texture" that
    no later frame repeats. That part is taken off (with a margin for a 7x7 window's scatter) before expecting.

    A window on the bare stage beside a product holds the product's edge, whose high-pass drowns the texture
    that is there (a halo of "missing" texture 1-4 px wide round the mic on black velvet: the stage alone J
    0.71, 0.87 without it). Pixels whose high-pass is beyond what the plate's texture and the noise allow are
    left out of the correlation, and a window left with under half its pixels says nothing.
    """
    grey_x = cv2.cvtColor(x, cv2.COLOR_RGB2GRAY)
    grey_p = cv2.cvtColor(plate, cv2.COLOR_RGB2GRAY)
    k = (window, window)
    f = grey_x - cv2.blur(grey_x, k)
    p = grey_p - cv2.blur(grey_p, k)
    noise = _GREY_NOISE * sigma * sigma  # a frame's grey noise variance; sigma is over the three channels
    f2, p2 = f * f, p * p
    kept = (f2 <= _TEXTURE_OUTLIER ** 2 * (cv2.blur(p2, k) + noise)).astype(np.float32)
    share = cv2.blur(kept, k)
    fp, ff, pp = (cv2.blur(v * kept, k) / np.maximum(share, 1e-3) for v in (f * p, f2, p2))
    ncc = fp / np.sqrt(np.maximum(ff * pp, 1e-6))
    texture = np.maximum(pp - _PLATE_NOISE_MARGIN * noise / frames, 0.0)
    # corr(r t + noise, t + plate noise) = r T / sqrt((r^2 T + noise) pp), T the texture's variance
    expected = ratio * texture / np.sqrt(np.maximum((ratio * ratio * texture + noise) * pp, 1e-6))
    # Where the texture is faint against the noise the correlation is mostly noise, and a few grains that stand
    # out of a smooth sweep are no textured surface: only a textured region (velvet, a card, a platter) counts.
    seen = (expected >= _TEXTURE_SEEN).astype(np.float32)
    region = cv2.blur(seen, (_TEXTURE_REGION, _TEXTURE_REGION)) >= 0.5
    expected = np.where((seen > 0) & region, expected, 0.0)
    missing = expected * np.maximum(expected - ncc - _TEXTURE_SCATTER, 0.0) * window
    return np.where(share >= _TEXTURE_KEPT, missing, 0.0)


def speckle_free(evidence: np.ndarray) -> np.ndarray:
    """(H, W) bool: the pixels of (H, W) log-odds `evidence` that are product, cleaned of speckle (a 3x3 opening)."""
    return cv2.morphologyEx((evidence > 0).astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)) > 0


def enclosed_doubt(evidence: np.ndarray, outline: np.ndarray, shadow_doubt: float) -> np.ndarray:
    """(H, W) bool: shadow-like pixels (log-odds in [-shadow_doubt, 0]) of 4-connected regions at least
    `_ENCLOSED` of whose rim (the pixels 8-adjacent to them) is foreground on an `outline` (H, W) bool."""
    product = speckle_free(evidence)
    if not product.any():  # an empty stage: nothing to ring a region
        return product
    doubt = ((evidence >= -shadow_doubt) & ~product).astype(np.uint8)
    n, labels = cv2.connectedComponents(doubt, connectivity=4)
    if n <= 1:
        return np.zeros(evidence.shape, bool)
    kernel = np.ones((3, 3), np.uint8)
    # Each rim pixel counts for the largest label beside it (two regions seldom share a rim pixel).
    beside = cv2.dilate(labels.astype(np.float32), kernel)
    rim = (doubt == 0) & (beside > 0)
    owner = beside[rim].astype(np.int64)
    total = np.bincount(owner, minlength=n)
    on_outline = np.bincount(owner, weights=(product & outline)[rim].astype(np.float64), minlength=n)
    enclosed = on_outline >= _ENCLOSED * np.maximum(total, 1)
    enclosed[0] = False
    return enclosed[labels]
