"""StageModel: the empty-stage background model (shadows vs. product, boxes, matting)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from turncrop.models.base import Prompt
from turncrop.models.graphcut import GraphCutSegmenter
from turncrop.tracking.masks import resize_mask
from turncrop.tracking.stage import StageModel, StageOptions

H, W = 160, 200
NOISE = 2.0  # per-channel sensor noise, 8-bit levels
YY, XX = np.mgrid[0:H, 0:W].astype(np.float32)
# A light sweep: a colour gradient across and down the frame.
BACKDROP = np.stack([190 + 30 * XX / W, 192 + 25 * YY / H, 198 + 10 * XX / W], -1)


def _shot(linear: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A float RGB image -> a uint8 frame with fresh sensor noise."""
    return np.clip(linear + rng.normal(0, NOISE, linear.shape), 0, 255).astype(np.uint8)


def _learnt(rng: np.random.Generator, frames: int = 8, **options) -> StageModel:
    stage = StageModel(StageOptions(warmup_frames=frames, **options))
    for _ in range(frames):
        stage.learn_empty(_shot(BACKDROP, rng))
    assert stage.ready and stage.frames_learnt == frames
    return stage


def _disc(cx: float, cy: float, r: float) -> np.ndarray:
    return (XX - cx) ** 2 + (YY - cy) ** 2 <= r * r


def _texture(rng: np.random.Generator, std: float) -> np.ndarray:
    """Fine-grained zero-mean texture with the given standard deviation."""
    t = cv2.GaussianBlur(rng.normal(0, 1, (H, W)).astype(np.float32), (0, 0), 1.0)
    return t / t.std() * std


def _antialiased(cx: float, cy: float, r: float, r_in: float = 0.0, supersample: int = 4) -> np.ndarray:
    """Exact-ish coverage of a disc (or a ring r_in..r): rendered at 4x, box-filtered down."""
    s = supersample
    y, x = np.mgrid[0:H * s, 0:W * s].astype(np.float32)
    d2 = ((x + 0.5) / s - cx) ** 2 + ((y + 0.5) / s - cy) ** 2
    big = ((d2 <= r * r) & (d2 >= r_in * r_in)).astype(np.float32)
    return cv2.resize(big, (W, H), interpolation=cv2.INTER_AREA)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def stage(rng):
    return _learnt(rng)


# -- learning -----------------------------------------------------------------------------------------


def test_log_odds_before_warmup_raises(rng):
    stage = StageModel(StageOptions(warmup_frames=3))
    with pytest.raises(RuntimeError, match="before the empty stage"):
        stage.log_odds(_shot(BACKDROP, rng))
    for i in range(2):
        stage.learn_empty(_shot(BACKDROP, rng))
        assert not stage.ready
    with pytest.raises(RuntimeError):
        stage.foreground(_shot(BACKDROP, rng))
    stage.learn_empty(_shot(BACKDROP, rng))
    assert stage.ready
    assert stage.log_odds(_shot(BACKDROP, rng)).shape == (H, W)


def test_size_mismatch_raises_a_clear_error(stage, rng):
    small = _shot(BACKDROP[:100, :120], rng)
    with pytest.raises(ValueError, match=r"\(100, 120\).*\(160, 200\)"):
        stage.log_odds(small)


def test_learning_a_new_size_restarts_warmup(stage, rng):
    stage.learn_empty(_shot(BACKDROP[:100, :120], rng))
    assert stage.frames_learnt == 1 and not stage.ready


def test_learnt_mean_and_noise_match_the_empty_frames(rng):
    stage = _learnt(rng, frames=16)
    assert np.abs(stage._mean - BACKDROP).mean() < 1.0
    # Noise of the 3-vector residual: sqrt(3) * per-channel std (pooled, so close to the truth).
    assert np.median(stage._noise()) == pytest.approx(np.sqrt(3) * NOISE, rel=0.2)


def test_empty_frame_is_all_backdrop(stage, rng):
    frame = _shot(BACKDROP, rng)
    lo = stage.log_odds(frame)
    assert lo.dtype == np.float32
    assert not stage.foreground(frame).any()
    assert np.median(lo) < -3
    assert lo.min() >= -stage.options.evidence_clip and lo.max() <= stage.options.evidence_clip
    boxes, areas = stage.product_boxes(frame)
    assert boxes.shape == (0, 4) and areas.shape == (0,)


# -- shadows vs. product -----------------------------------------------------------------------------


def test_soft_shadow_is_not_foreground(stage, rng):
    # A smooth contact shadow darkening the backdrop by 40 % at its core.
    depth = np.exp(-(((XX - 100) / 30) ** 2 + ((YY - 80) / 22) ** 2))
    frame = _shot(BACKDROP * (1 - 0.4 * depth)[..., None], rng)
    # Without the shadow model the core is far from the backdrop (about 80 levels), so this is the
    # shadow explanation at work, not a weak detector.
    assert np.abs(frame.astype(float) - BACKDROP)[depth > 0.9].mean() > 60
    assert not stage.foreground(frame).any()
    lo = stage.log_odds(frame)[depth > 0.5]
    assert np.median(lo) < -1 and (lo > 0).mean() < 0.01  # isolated noise pixels at most


def test_textured_grey_object_is_found_though_a_soft_shadow_of_same_depth_is_not(stage, rng):
    obj = _disc(140, 80, 22)
    # A grey product darkening the backdrop by 40 % on average, with a fine surface texture
    # (brightness-ratio std 0.09, i.e. about 18 levels).
    textured = np.where(obj, 0.6 * (1 + _texture(rng, 0.15)), 1.0)
    image = _shot(BACKDROP * textured[..., None], rng)
    fg = stage.foreground(image)
    # The same darkening as a soft light casts it (a penumbra of several pixels) is a shadow ...
    soft = cv2.GaussianBlur(np.where(obj, 0.6, 1.0).astype(np.float32), (0, 0), 5.0)
    assert stage.foreground(_shot(BACKDROP * soft[..., None], rng))[obj].mean() < 0.05
    # ... the textured surface is marked in good part, and nothing outside it ...
    assert fg[obj].mean() > 0.15
    assert not fg[~_disc(140, 80, 24)].any()
    # ... and as the dense prompt of the weight-free segmenter it yields the whole product.
    boxes, _ = stage.product_boxes(image)
    seg = GraphCutSegmenter()
    masks = seg.decode(seg.encode(image), Prompt(box=boxes[0], mask_logits=stage.log_odds(image)), image)
    best = masks.masks[int(np.argmax(masks.scores))]
    assert (best & obj).sum() / (best | obj).sum() > 0.9


@pytest.mark.parametrize("depth", [0.12, 0.4])
def test_a_flat_product_darker_than_the_paper_is_found_by_its_outline(stage, rng, depth):
    # A near-white product on white paper: in colour a uniform darkening, i.e. a shadow. Its outline is a
    # step (a product's edge) where a shadow fades over several pixels, so the outline is product, and so is
    # the shadow-like body it rings ...
    obj = _antialiased(100, 80, 30)
    image = _shot(BACKDROP * (1 - depth * obj)[..., None], rng)
    fg = stage.foreground(image)
    rim = _disc(100, 80, 31) & ~_disc(100, 80, 27)
    assert fg[rim].mean() > 0.6 and fg[_disc(100, 80, 27)].mean() > 0.99
    assert not fg[~_disc(100, 80, 33)].any()
    # ... and a soft shadow of the same depth and size is not.
    soft = cv2.GaussianBlur(obj, (0, 0), 5.0)
    assert not stage.foreground(_shot(BACKDROP * (1 - depth * soft)[..., None], rng)).any()


def test_a_shadow_inside_a_dark_cable_loop_is_not_product(stage, rng):
    # A cable lying in a loop casts a soft shadow inside it: the shadow is ringed by product, but by a dark one
    # beside which no step of a shadow is counted (`stage_cues.step_excess`), not by a faint outline.
    loop = _antialiased(100, 80, 30, r_in=27)
    shade = 1 - 0.35 * cv2.GaussianBlur(_disc(100, 80, 29).astype(np.float32), (0, 0), 5.0)
    image = _shot((BACKDROP * shade[..., None]) * (1 - loop[..., None]) + 50.0 * loop[..., None], rng)
    fg = stage.foreground(image)
    assert fg[loop > 0.5].mean() > 0.9
    assert fg[_disc(100, 80, 24)].mean() < 0.01


def test_a_smooth_product_is_found_by_the_backdrop_texture_it_hides(rng):
    # Black velvet: a dark backdrop with a fixed fine pile (std 25 % of its level, i.e. about 5 levels), and a
    # smooth black product only a few levels off it, which colour alone cannot tell from the velvet.
    velvet = 20.0 * (1 + _texture(np.random.default_rng(7), 0.25))[..., None] * np.ones(3, np.float32)
    stage = StageModel(StageOptions(warmup_frames=8))
    for _ in range(8):
        stage.learn_empty(_shot(velvet, rng))
    obj = _disc(100, 80, 30)
    image = _shot(np.where(obj[..., None], 16.0, velvet), rng)
    fg = stage.foreground(image)
    # A good share of it (a correlation over a few pile grains scatters: the segmenter's colour models and
    # smoothness fill in the rest) and nothing beside it; without the texture term none of it.
    assert fg[_disc(100, 80, 26)].mean() > 0.15
    assert fg[~_disc(100, 80, 34)].mean() < 0.005
    blind = StageModel(StageOptions(warmup_frames=8, plate_texture=0.0))
    for _ in range(8):
        blind.learn_empty(_shot(velvet, rng))
    assert blind.foreground(image)[_disc(100, 80, 26)].mean() < 0.02
    # A soft shadow of the same size and darkening keeps the pile, only dimmer: it is not foreground.
    soft = cv2.GaussianBlur(np.where(obj, 0.8, 1.0).astype(np.float32), (0, 0), 6.0)
    assert stage.foreground(_shot(velvet * soft[..., None], rng))[obj].mean() < 0.05


@pytest.mark.parametrize("level", [60.0, 140.0])
def test_a_bright_product_on_velvet_has_no_halo_of_missing_pile(rng, level):
    # Beside a product's edge a window of the frame holds that edge, whose high-pass drowns the pile that is
    # there: taken for missing pile, it made a halo 1-4 px wide round the mic on black velvet. Beside the disc
    # 0.036 / 0.000 of the ring is foreground (0.081 / 0.348 when every pixel of a window counted).
    velvet = 20.0 * (1 + _texture(np.random.default_rng(7), 0.25))[..., None] * np.ones(3, np.float32)
    stage = StageModel(StageOptions(warmup_frames=8))
    for _ in range(8):
        stage.learn_empty(_shot(velvet, rng))
    coverage = _antialiased(100, 80, 30)[..., None]
    fg = stage.foreground(_shot(coverage * level + (1 - coverage) * velvet, rng))
    assert fg[_disc(100, 80, 29)].mean() > 0.99
    beside = _disc(100, 80, 36) & ~_disc(100, 80, 31.5)
    assert fg[beside].mean() < 0.05, fg[beside].mean()


@pytest.mark.parametrize("frames", [2, 3, 8])
def test_a_plate_learnt_from_few_frames_does_not_mistake_its_own_noise_for_texture(rng, frames):
    # A mean of two noisy frames of a smooth sweep has high-pass energy of its own (its noise), which no later
    # frame repeats: expecting it back would flag the whole empty stage.
    stage = _learnt(rng, frames=frames)
    assert stage.foreground(_shot(BACKDROP, rng)).mean() < 0.001


def test_darkening_beyond_the_deepest_shadow_is_foreground(stage, rng):
    obj = _disc(100, 80, 25)
    fg = stage.foreground(_shot(BACKDROP * np.where(obj, 0.2, 1.0)[..., None], rng))
    assert fg[_disc(100, 80, 23)].all()


def test_brightening_is_never_a_shadow(stage, rng):
    obj = _disc(100, 80, 25)
    bright = np.minimum(BACKDROP * np.where(obj, 1.15, 1.0)[..., None], 255)
    assert stage.foreground(_shot(bright, rng))[_disc(100, 80, 23)].all()


def test_hue_change_at_same_brightness_is_foreground(stage, rng):
    obj = _disc(100, 80, 25)
    img = BACKDROP.copy()
    img[obj] = img[obj][:, [2, 0, 1]] + np.array([25, -25, 0])  # a tint, brightness about the same
    assert stage.foreground(_shot(img, rng))[_disc(100, 80, 23)].mean() > 0.95


def test_thin_dark_line_is_foreground(stage, rng):
    line = np.zeros((H, W), np.uint8)
    cv2.line(line, (20, 140), (180, 150), 1, 2)
    img = np.where(line[..., None] > 0, 60.0, BACKDROP)
    fg = stage.foreground(_shot(img, rng))
    assert fg[line > 0].mean() > 0.9
    assert not (fg & (cv2.dilate(line, np.ones((5, 5), np.uint8)) == 0)).any()


# -- boxes ----------------------------------------------------------------------------------------------


def test_product_boxes_merges_nearby_parts_and_orders_by_area(stage, rng):
    img = BACKDROP.copy()
    # One product in two parts 3 px apart (a body and its cable) ...
    img[60:100, 40:80] = (50, 55, 60)
    img[78:82, 83:120] = (50, 55, 60)
    # ... and a second, smaller product far away.
    img[20:40, 160:185] = (150, 30, 30)
    # A speck below min_area.
    img[140:143, 20:23] = (0, 0, 0)
    boxes, areas = stage.product_boxes(_shot(img, rng))
    assert boxes.dtype == np.float32 and areas.dtype == np.float32
    assert len(boxes) == 2
    np.testing.assert_allclose(boxes[0], [40, 60, 120, 100], atol=1)
    np.testing.assert_allclose(boxes[1], [160, 20, 185, 40], atol=1)
    # Areas are the foreground pixels of each blob (the closing gap is not counted).
    np.testing.assert_allclose(areas, [(40 * 40 + 4 * 37) / (H * W), 20 * 25 / (H * W)], rtol=0.05)
    assert areas[0] > areas[1]


def test_product_boxes_min_area(rng):
    stage = _learnt(rng, min_area=0.04)
    img = BACKDROP.copy()
    img[60:100, 40:80] = (50, 55, 60)  # 1600 px = 5 % of the frame
    img[20:40, 160:185] = (150, 30, 30)  # 500 px, below
    boxes, areas = stage.product_boxes(_shot(img, rng))
    assert len(boxes) == 1
    np.testing.assert_allclose(boxes[0], [40, 60, 80, 100], atol=1)


# -- matting ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("colour", [(40, 60, 90), (150, 40, 40)])
def test_matte_moves_the_edge_to_half_coverage(stage, rng, colour):
    alpha = _antialiased(100.3, 80.6, 30.4)
    truth = alpha >= 0.5
    img = alpha[..., None] * np.array(colour, np.float32) + (1 - alpha[..., None]) * BACKDROP
    frame = _shot(img, rng)
    raw = stage.foreground(frame)
    refined, soft, decontaminated = stage.matte(frame, raw)
    raw_errors = int((raw ^ truth).sum())
    matted_errors = int((refined ^ truth).sum())
    # The raw mask grows by the anti-aliased rim (a few dozen pixels here); matting removes that bias.
    assert raw_errors > 30
    assert matted_errors <= raw_errors // 4
    assert refined.dtype == bool and refined.shape == (H, W)
    assert soft.dtype == np.float32 and soft.min() >= 0 and soft.max() <= 1
    edge = (alpha > 0.05) & (alpha < 0.95)
    assert np.abs(soft[edge] - alpha[edge]).mean() < 0.12
    # Away from the edge the input label is kept.
    far = cv2.dilate((raw ^ cv2.erode(raw.astype(np.uint8), np.ones((3, 3))).astype(bool)).astype(np.uint8),
                     np.ones((9, 9), np.uint8)) == 0
    assert (refined[far] == raw[far]).all()
    assert (soft[far] == raw[far]).all()
    # Edge pixels get the product's colour back: a cutout shows no fringe of the old backdrop.
    rim = (alpha > 0.2) & (alpha < 0.8)
    product = np.array(colour, np.float32)
    before = np.abs(frame[rim].astype(np.float32) - product).mean()
    after = np.abs(decontaminated[rim].astype(np.float32) - product).mean()
    assert after < before / 3, (before, after)
    assert (decontaminated[far] == frame[far]).all()


def test_matte_takes_the_product_colour_at_its_outline(stage, rng):
    """A shaded ball is darker toward its outline than inside: the colour the edge mixes with the backdrop is the
    one just inside it, not a mean from farther in (which put the alpha 0.07 off, the edge a pixel out)."""
    alpha = _antialiased(100.3, 80.6, 30.4)
    r = np.sqrt((XX + 0.5 - 100.3) ** 2 + (YY + 0.5 - 80.6) ** 2) / 30.4
    colour = np.array([150, 60, 50], np.float32) * np.clip(1 - 0.75 * r**4, 0.2, 1)[..., None]
    frame = _shot(alpha[..., None] * colour + (1 - alpha[..., None]) * BACKDROP, rng)
    refined, soft, _ = stage.matte(frame, stage.foreground(frame))
    edge = (alpha > 0.05) & (alpha < 0.95)
    assert np.abs(soft[edge] - alpha[edge]).mean() < 0.045
    assert int((refined ^ (alpha >= 0.5)).sum()) <= 2


def test_a_stage_learnt_at_a_working_size_mattes_the_source_frame(rng):
    """Live streams learn the stage and segment at a working size; the still is cut from the source frame
    with the model resized to it: the smooth plate and the source's own noise level are recovered."""
    half = (W // 2, H // 2)
    small = StageModel(StageOptions(warmup_frames=16))
    for _ in range(16):
        small.learn_empty(cv2.resize(_shot(BACKDROP, rng), half, interpolation=cv2.INTER_AREA))
    full = small.resized((H, W))
    assert small._mean.shape[:2] == (H // 2, W // 2)  # the working model itself is untouched
    assert np.abs(full._mean - BACKDROP).mean() < 1.0
    assert np.median(full._noise()) == pytest.approx(np.sqrt(3) * NOISE, rel=0.3)

    alpha = _antialiased(100.3, 80.6, 30.4)
    truth = alpha >= 0.5
    frame = _shot(alpha[..., None] * np.array((40, 60, 90), np.float32) + (1 - alpha[..., None]) * BACKDROP, rng)
    working = small.foreground(cv2.resize(frame, half, interpolation=cv2.INTER_AREA))
    upscaled = resize_mask(working, (H, W))
    refined, _, _ = full.matte(frame, upscaled, band=4)
    assert int((refined ^ truth).sum()) <= int((upscaled ^ truth).sum()) // 4  # measured: 162 -> 0
    assert (full.log_odds(_shot(BACKDROP, rng)) < 0).mean() > 0.99


def test_matte_leaves_holes_inside_the_mask_alone(stage, rng):
    # A ring-shaped product: the backdrop shows through its hole.
    outer, inner = 30.4, 18.0
    alpha = _antialiased(100.3, 80.6, outer, inner)
    truth = alpha >= 0.5
    colour = np.array((40, 60, 90), np.float32)
    frame = _shot(alpha[..., None] * colour + (1 - alpha[..., None]) * BACKDROP, rng)
    raw = stage.foreground(frame)
    assert not raw[_disc(100.3, 80.6, inner - 2)].any()  # the hole is in the mask
    refined, soft, _ = stage.matte(frame, raw)
    hole_side = _disc(100.3, 80.6, (outer + inner) / 2)
    # The hole's edge keeps the input label, pixel for pixel ...
    assert (refined[hole_side] == raw[hole_side]).all()
    assert (soft[hole_side] == raw[hole_side]).all()
    # ... while the outline is matted.
    assert ((refined ^ truth) & ~hole_side).sum() <= ((raw ^ truth) & ~hole_side).sum() // 4
    assert (refined != raw).any()


def test_matte_keeps_labels_where_the_product_looks_like_the_backdrop(stage, rng):
    # Product colour equal to the backdrop: alpha cannot be solved, the input label must stay.
    mask = _disc(100, 80, 30)
    frame = _shot(BACKDROP, rng)
    refined, soft, _ = stage.matte(frame, mask)
    assert (refined == mask).all()
    assert (soft == mask.astype(np.float32)).all()


# -- adaptation -------------------------------------------------------------------------------------------


def test_adapt_follows_local_lighting_drift_between_products(rng):
    # A lamp brightening one patch is no camera gain (no smooth field explains it): adaptation must learn it.
    stage = _learnt(rng, adapt_rate=0.2)
    h, w = BACKDROP.shape[:2]
    y, x = np.mgrid[0:h, 0:w]
    patch = 24 * np.exp(-(((x - 100) / 25.0) ** 2 + ((y - 80) / 20.0) ** 2))
    brighter = np.minimum(BACKDROP + patch[..., None], 255)
    assert stage.foreground(_shot(brighter, rng)).mean() > 0.02
    for _ in range(20):
        stage.adapt(_shot(brighter, rng))
    assert not stage.foreground(_shot(brighter, rng)).any()


@pytest.mark.parametrize("gains", [(1.2, 1.2, 1.2), (0.8, 0.8, 0.8), (1.08, 1.0, 0.92), (1.15, 1.12, 1.05)])
def test_camera_exposure_and_white_balance_are_not_foreground(rng, gains):
    stage = _learnt(rng)
    h, w = BACKDROP.shape[:2]
    product = _disc(100, 80, 30)
    frame = np.minimum(BACKDROP * np.float32(gains), 255)
    frame[product] = (40, 45, 50)  # a dark product drives auto-exposure: it must not bias the gain fit
    fg = stage.foreground(_shot(frame, rng))
    assert fg[~_disc(100, 80, 34)].mean() < 0.002, gains
    assert fg[_disc(100, 80, 26)].mean() > 0.99, gains


@pytest.mark.parametrize("shift", [(1.5, 0.0), (-1.2, 1.3), (0.4, -0.7)])
def test_camera_shake_is_registered_against_the_plate(rng, shift):
    # A backdrop with edges (a platter's rim, seams): unregistered, a pixel of shake lights up every edge.
    h, w = BACKDROP.shape[:2]
    y, x = np.mgrid[0:h, 0:w]
    edged = BACKDROP.copy()
    edged[((x // 25) + (y // 20)) % 2 == 0] *= 0.8
    edged = cv2.GaussianBlur(edged, (0, 0), 0.8)
    stage = StageModel(StageOptions(warmup_frames=8))
    for _ in range(8):
        stage.learn_empty(_shot(edged, rng))
    m = np.float32([[1, 0, shift[0]], [0, 1, shift[1]]])
    moved = cv2.warpAffine(edged, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    assert stage.foreground(_shot(moved, rng))[4:-4, 4:-4].mean() < 0.002


def _belt(step: int) -> np.ndarray:
    """The backdrop with a grey band across its lower part whose bright marks move 7 px a frame (a platter)."""
    img = BACKDROP.copy()
    band = (YY >= 100) & (YY < 130)
    marks = np.exp(-(((XX - 7.0 * step) % 20 - 10) / 2.5) ** 2)
    img[band] = (np.float32([120, 120, 125]) * (1 + 0.5 * marks[band, None]))
    return img


def test_stage_that_moves_while_empty_hides_nothing_lying_on_it(rng):
    # One mean of a moving platter smears its marks into a noise estimate of tens of levels, and a dark cable
    # lying on it would hide in that; compared with the nearest empty frame at the sensor's noise, it does not.
    stage = StageModel(StageOptions(warmup_frames=8))
    for step in range(8):
        stage.learn_empty(_shot(_belt(step), rng))
    band = (YY >= 100) & (YY < 130)
    for step in (9, 13):  # marks 3 px from anywhere an empty frame showed one: a few of their pixels stand out
        empty = _shot(_belt(step), rng)
        assert stage.foreground(empty)[band].mean() < 0.005 and len(stage.product_boxes(empty)[0]) == 0
    cable = np.zeros((H, W), np.uint8)
    cv2.line(cable, (20, 108), (180, 122), 1, 3)
    frame = np.where(cable[..., None] > 0, np.float32([60, 45, 40]), _belt(11))
    fg = stage.foreground(_shot(frame, rng))
    assert fg[cable > 0].mean() > 0.9
    # The marks are texture the cable hides: that cue reaches half its 7x7 window past the cable's end.
    assert not (fg & (cv2.dilate(cable, np.ones((9, 9), np.uint8)) == 0)).any()


def test_adapt_before_warmup_is_a_no_op(rng):
    stage = StageModel(StageOptions(warmup_frames=4))
    stage.learn_empty(_shot(BACKDROP, rng))
    before = stage._mean.copy()
    stage.adapt(_shot(BACKDROP * 0.5, rng))
    np.testing.assert_array_equal(stage._mean, before)


def test_adapt_rate_zero_freezes_the_stage(rng):
    stage = _learnt(rng, adapt_rate=0.0)
    before = stage._mean.copy()
    stage.adapt(_shot(BACKDROP * 0.5, rng))
    np.testing.assert_array_equal(stage._mean, before)


# -- options ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"warmup_frames": 0},
        {"shadow_min": 0.0},
        {"shadow_min": 1.0},
        {"adapt_rate": -0.1},
        {"adapt_rate": 1.0},
        {"noise_floor": 0.0},
        {"threshold": -1.0},
        {"evidence_scale": 0.0},
        {"evidence_clip": 0.0},
        {"min_area": 0.0},
    ],
)
def test_options_validation(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=f"stage.{name}"):
        StageOptions(**kwargs)


def test_options_defaults_are_valid():
    o = StageOptions()
    assert o.warmup_frames >= 1 and 0 < o.shadow_min < 1
