"""Real studio sessions, end to end through `turncrop run`'s own code path, on clips `recordings/make_studio.py` makes
from the mic renders with exact ground truth: auto-exposure, white balance, shake, a turning platter, the
operator's arm putting the product down and taking it away.

Every clip is made twice: with the seed, backdrop and scale this was developed on, and with another seed, a blue
backdrop, a smaller product and a stronger exposure ramp. Thresholds below are what the stage model holds today;
where issue 10 asks for more (the platter and the arm within 0.01 of the clean clip, the realistic clip at 0.95,
white-on-white 0.90, black on velvet 0.95) the gap is stated in the test and in the README.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
from data_paths import REPO, require_data

from turncrop.stream.config import load_config
from turncrop.stream.metrics import region_similarity
from turncrop.stream.runner import run

sys.path.insert(0, str(REPO / "recordings"))
import make_studio  # noqa: E402  (the clip generator kept beside the bundled recordings)

pytestmark = pytest.mark.slow

VARIANTS = {  # the clip developed on, and one it was not tuned on
    "developed": {"seed": 1},
    "held_out": {"seed": 7, "backdrop": "blue", "scale": 0.65},
}


@dataclass
class Outcome:
    """What `turncrop run` made of one clip, scored against its ground truth."""

    clip: dict
    mean_j: float
    products: list[dict]
    false_alarm_frames: list[int]  # frames without the product whose mask covers > 0.5 % of the frame
    still_frame: int | None
    still_j: float | None
    encoder_calls_per_frame: float


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    data = require_data("nerf_mic_orbit")
    cache: dict[tuple, Outcome] = {}

    def outcome(variant: str, **scene) -> Outcome:
        key = (variant, tuple(sorted(scene.items())))
        if key not in cache:
            folder = tmp_path_factory.mktemp("studio")
            make_studio.render_clip(data, make_studio.Scene(**{**VARIANTS[variant], **scene}), folder)
            cache[key] = _run(folder)
        return cache[key]

    return outcome


def _run(folder: Path) -> Outcome:
    clip = json.loads((folder / "clip.json").read_text())
    gts = [cv2.imread(str(folder / "gt" / f"{i:05d}.png"), cv2.IMREAD_GRAYSCALE) > 127 for i in range(clip["frame_count"])]
    masks: dict[int, np.ndarray] = {}

    def keep(result) -> None:
        if len(result.detections):
            masks[result.frame.index] = result.detections.mask[0]

    out = folder / "out"
    summary = run(folder / "video.mp4", out, load_config(None, {"backend": "graphcut"}), on_frame=keep).as_dict()
    empty = np.zeros_like(gts[0])
    js = [region_similarity(masks.get(i, empty), g) for i, g in enumerate(gts) if g.any()]
    alarms = [i for i, g in enumerate(gts) if not g.any() and masks.get(i, empty).mean() > 0.005]
    still_frame = still_j = None
    ok = [p for p in summary["products"] if p["status"] == "ok"]
    if ok:
        still_frame = json.loads((out / f"{ok[0]['product_id']}.json").read_text())["frame_index"]
        still_j = region_similarity(masks.get(still_frame, empty), gts[still_frame])
    return Outcome(clip, float(np.mean(js)), summary["products"], alarms, still_frame, still_j,
                   summary["encoder_calls_per_frame"])


def _assert_one_clean_product(o: Outcome, min_still_j: float) -> None:
    assert len(o.products) == 1, o.products
    assert o.false_alarm_frames == [], f"masks on frames without the product: {o.false_alarm_frames}"
    assert o.still_frame is not None, o.products
    assert o.clip["frames"][o.still_frame]["alone"], f"still frame {o.still_frame} shows the operator"
    assert o.still_j >= min_still_j, (o.still_frame, o.still_j)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("camera", [{"exposure": 0.12}, {"exposure": -0.15}, {"white_balance": 0.06}],
                         ids=["exposure+12%", "exposure-15%", "white-balance"])
def test_auto_exposure_and_white_balance_cost_nothing(studio, variant, camera):
    # A darkening camera also lowers the product's contrast against the paper: -15 % costs 0.004 / 0.000 today.
    clean, drifted = studio(variant), studio(variant, **camera)
    assert drifted.mean_j >= clean.mean_j - 0.01, (clean.mean_j, drifted.mean_j)
    _assert_one_clean_product(drifted, min_still_j=0.93)


@pytest.mark.parametrize("variant", VARIANTS)
def test_camera_shake_costs_nothing(studio, variant):
    clean, shaken = studio(variant), studio(variant, shake=1.5)
    assert shaken.mean_j >= clean.mean_j - 0.01, (clean.mean_j, shaken.mean_j)
    _assert_one_clean_product(shaken, min_still_j=0.93)


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_turning_platter_is_stage(studio, variant):
    clean, platter = studio(variant), studio(variant, platter=True)
    # Issue 10 asks for 0.01: the developed clip loses 0.012 (0.006 of it its grille, a near tie for the graph
    # cut), the held-out one 0.030 where its small, dark cable lies on the platter's turning marks (README,
    # Known limits).
    assert platter.mean_j >= clean.mean_j - 0.035, (clean.mean_j, platter.mean_j)
    _assert_one_clean_product(platter, min_still_j=0.88)


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_operators_arm_is_not_the_product(studio, variant):
    clean, o = studio(variant), studio(variant, arm=True)
    # One product, nothing on the frames where only the arm is in view, a still from a frame without it.
    _assert_one_clean_product(o, min_still_j=0.94)
    assert o.mean_j >= clean.mean_j - 0.015, (clean.mean_j, o.mean_j)  # issue 10: 0.01 (0.006 / 0.009 today)


@pytest.mark.parametrize("variant", VARIANTS)
def test_realistic_session(studio, variant):
    o = studio(variant, arm=True, platter=True, exposure=0.12 if variant == "developed" else 0.15, shake=1.5)
    # Issue 10 asks for 0.95 and a still at 0.97: measured 0.955 / 0.982 developed, 0.911 / 0.941 held out.
    _assert_one_clean_product(o, min_still_j=0.93)
    assert o.mean_j >= 0.90, o.mean_j
    assert o.encoder_calls_per_frame <= 0.2, o.encoder_calls_per_frame  # 0.188 / 0.159


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_white_product_on_a_white_sweep_is_found_by_its_outline(studio, variant):
    # In colour it is a shadow; the stage finds it by its outline, and the shadow-like body that outline rings
    # (`stage_cues.enclosed_doubt`): 0.867 / 0.863 today, 0.47 / 0.64 by the outline alone.
    o = studio(variant, product="white", backdrop="white")
    assert len(o.products) == 1 and o.false_alarm_frames == [], (o.products, o.false_alarm_frames)
    assert o.still_frame is not None and o.mean_j >= 0.82, (o.still_frame, o.mean_j)


@pytest.mark.xfail(strict=True, reason="known limit: a near-white product on a white sweep (README, Known limits)")
def test_white_product_on_a_white_sweep(studio):
    assert studio("developed", product="white", backdrop="white").mean_j >= 0.90


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_mic_on_black_velvet(studio, variant):
    # Issue 10 asks for 0.95 on a black backdrop: 0.930 / 0.918 today, stills 0.96 / 0.91 (0.904 / 0.865 while
    # the product's own edge, in a window of the frame beside it, read as pile missing there). The thin cable's
    # dark edges on the velvet are what is lost.
    o = studio(variant, backdrop="black")
    _assert_one_clean_product(o, min_still_j=0.88)
    assert o.mean_j >= 0.90, o.mean_j


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_mic_on_a_grey_card(studio, variant):
    # Grey on grey: the stage takes most of the silver body for the card in shade (the stage alone J 0.54); the
    # segmenter's colour models and the mask carried from frame to frame hold it, but the grille's fine mesh,
    # blurred to a smooth grey at this size, is lost on some frames (README, Known limits): 0.896 / 0.884 today,
    # stills 0.95 / 0.94.
    o = studio(variant, backdrop="grey")
    _assert_one_clean_product(o, min_still_j=0.90)
    assert o.mean_j >= 0.86, o.mean_j


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_black_product_on_black_velvet_is_found_by_the_pile_it_hides(studio, variant):
    # A few levels off the velvet in colour; its pile is what the product hides (and its shadow keeps). The wide
    # body is found, the thin stand and cable hide too little pile (README, Known limits): 0.71 / 0.69 today,
    # 0.36 / 0.34 (and two products held out) by colour and edges alone.
    o = studio(variant, product="black", backdrop="black")
    assert len(o.products) == 1 and o.false_alarm_frames == [], (o.products, o.false_alarm_frames)
    assert o.still_frame is not None and o.mean_j >= 0.65, (o.still_frame, o.mean_j)


@pytest.mark.xfail(strict=True, reason="known limit: a black product on black velvet (README, Known limits)")
def test_black_product_on_black_velvet(studio):
    assert studio("developed", product="black", backdrop="black").mean_j >= 0.95
