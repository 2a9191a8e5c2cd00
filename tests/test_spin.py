"""360° spin sets: period and phase from the frames, evenly turned views, one shared crop, the viewer."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from data_paths import RECORDINGS, require_data
from PIL import Image

from turncrop.stream.cli import main
from turncrop.stream.config import ConfigError, load_config
from turncrop.stream.sources import open_source
from turncrop.stream.spin_export import export_spin, write_no_spin_record
from turncrop.tracking.frame import Frame
from turncrop.tracking.spin import NoSpin, SpinPlan, SpinRecorder, plan_spin

SOURCE_STEP_DEG = 3.6  # azimuth between consecutive orbit frames
SESSION = RECORDINGS / "mic_turntable"


# -- helpers -------------------------------------------------------------------------------------------

def plan_of(recorder: SpinRecorder, views: int) -> SpinPlan | NoSpin:
    s = recorder.samples
    return plan_spin(np.stack([x.descriptor for x in s]), np.array([x.timestamp for x in s]),
                     np.array([x.sharpness for x in s]), views, np.array([x.crop is not None for x in s]))


def spacing_errors(azimuths: np.ndarray) -> np.ndarray:
    """(N,) degrees each view is off an evenly spaced turn, against the best-fitting start angle."""
    n = len(azimuths)
    rel = np.radians(np.asarray(azimuths) - np.arange(n) * 360.0 / n)
    start = math.degrees(math.atan2(np.sin(rel).mean(), np.cos(rel).mean()))
    return (np.asarray(azimuths) - np.arange(n) * 360.0 / n - start + 180.0) % 360.0 - 180.0


@pytest.fixture(scope="module")
def orbit_rgba():
    """The 100 orbit renders at 400 x 400, RGBA uint8."""
    folder = require_data("nerf_mic_orbit")
    return [np.asarray(Image.open(p).convert("RGBA").resize((400, 400), Image.BILINEAR))
            for p in sorted((folder / "rgba").glob("*.png"))]


def composite(rgba: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image (480, 480, 3) uint8, mask (480, 480) bool, alpha float32): the render on a grey gradient."""
    h = w = 480
    y = np.linspace(0.0, 1.0, h)[:, None, None]
    back = np.broadcast_to(205.0 + 30.0 * y, (h, w, 3)).copy()
    alpha = np.zeros((h, w), np.float32)
    alpha[40:440, 40:440] = rgba[..., 3] / 255.0
    fg = np.zeros((h, w, 3), np.float32)
    fg[40:440, 40:440] = rgba[..., :3]
    img = fg * alpha[..., None] + back * (1.0 - alpha[..., None]) + rng.normal(0.0, 2.5, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8), alpha >= 0.5, alpha


def record_orbit(orbit_rgba, sources: np.ndarray, fps: float = 30.0, max_crops: int = 240) -> SpinRecorder:
    """A recorder fed the orbit frames `sources` (indices, wrapped) composited on a plain backdrop."""
    rng = np.random.default_rng(0)
    rec = SpinRecorder(max_crops)
    for t, src in enumerate(sources):
        image, mask, alpha = composite(orbit_rgba[int(src) % 100], rng)
        rec.add(Frame(image, t, t / fps), mask, alpha)
    return rec


@pytest.fixture(scope="module")
def session_recorder():
    """The bundled session's product frames (H.264 decoded) with their ground-truth masks, and azimuths."""
    require_data("nerf_mic_orbit")
    meta = json.loads((SESSION / "session.json").read_text())
    azimuth = {f["frame"]: f["azimuth_deg"] for f in meta["frames"]}
    first, last = meta["product_frames"]["first"], meta["product_frames"]["last"]
    rec = SpinRecorder()
    with open_source(SESSION / "video.mp4") as source:
        for frame in source:
            if first <= frame.index <= last:
                mask = cv2.imread(str(SESSION / "gt" / f"{frame.index:05d}.png"), cv2.IMREAD_GRAYSCALE) > 127
                rec.add(frame, mask)
    return rec, azimuth


# -- period, phase, selection -----------------------------------------------------------------------------

@pytest.mark.parametrize("views", [24, 36, 72])
def test_bundled_session_views_are_evenly_turned(session_recorder, views):
    rec, azimuth = session_recorder
    plan = plan_of(rec, views)
    assert isinstance(plan, SpinPlan), plan
    assert abs(plan.period_frames - 100.0) < 1.0
    az = np.array([azimuth[rec.samples[i].frame_index] for i in plan.chosen])
    assert np.abs(spacing_errors(az)).max() <= SOURCE_STEP_DEG


def test_other_speed_and_start_angle(orbit_rgba):
    # 1.37 frames per source frame, starting at orbit frame 37, 1.25 turns; nearest source frame each time.
    sources = np.rint(37 + np.arange(171) / 1.37).astype(int)
    rec = record_orbit(orbit_rgba, sources)
    plan = plan_of(rec, 36)
    assert isinstance(plan, SpinPlan), plan
    assert abs(plan.period_frames - 137.0) < 1.5
    az = (sources[plan.chosen] % 100) * SOURCE_STEP_DEG
    assert np.abs(spacing_errors(az)).max() <= SOURCE_STEP_DEG


def test_drifting_speed_is_followed(orbit_rgba):
    # Speed falls from 1/1.1 to 1/1.7 source frames per frame over ~2 turns: a constant period cannot fit.
    speed = np.linspace(1 / 1.1, 1 / 1.7, 260)
    exact = 12 + np.concatenate([[0.0], np.cumsum(speed)[:-1]])
    sources = np.rint(exact).astype(int)
    plan = plan_of(record_orbit(orbit_rgba, sources, max_crops=300), 36)  # a crop for every frame
    assert isinstance(plan, SpinPlan) and plan.drift
    az = (sources[plan.chosen] % 100) * SOURCE_STEP_DEG
    assert np.abs(spacing_errors(az)).max() <= SOURCE_STEP_DEG
    # Without the drift model (phase = t / period) the same views would be ~10° off: the test can fail.
    naive = np.array([np.argmin(np.abs(np.arange(260) / plan.period_frames - k / 36)) for k in range(36)])
    assert np.abs(spacing_errors((sources[naive] % 100) * SOURCE_STEP_DEG)).max() > 2 * SOURCE_STEP_DEG


def test_partial_turn_gets_no_spin_record(orbit_rgba, tmp_path):
    rec = record_orbit(orbit_rgba, np.arange(60))  # 60 % of the orbit
    plan = plan_of(rec, 36)
    assert isinstance(plan, NoSpin)
    path = write_no_spin_record(tmp_path, "product-001", plan, {"first_frame": 0})
    record = json.loads(path.read_text())
    assert record["status"] == "no_spin" and "turn" in record["reason"]
    assert not list(path.parent.glob("*.jpg"))


def test_recorder_memory_is_bounded_and_spread(orbit_rgba):
    rec = record_orbit(orbit_rgba, np.arange(100), max_crops=32)
    kept = [i for i, s in enumerate(rec.samples) if s.crop is not None]
    assert len(rec.samples) == 100 and len(kept) <= 32
    assert np.diff(kept).max() <= 4  # evenly thinned, never a long gap


# -- export -------------------------------------------------------------------------------------------------

def test_export_shares_one_crop_and_never_cuts_a_view(session_recorder, tmp_path):
    rec, azimuth = session_recorder
    plan = plan_of(rec, 24)
    record = export_spin(tmp_path, "product-001", rec.samples, plan, {"source": "video.mp4"})
    folder = tmp_path / "product-001_spin"
    assert [p.name for p in record.pngs] == [f"{k:03d}.png" for k in range(24)]
    sizes = set()
    for png, jpg in zip(record.pngs, record.jpgs):
        rgba = np.asarray(Image.open(png))
        sizes.add((rgba.shape, Image.open(jpg).size))
        a = rgba[..., 3]
        assert a.any()
        assert not a[0].any() and not a[-1].any() and not a[:, 0].any() and not a[:, -1].any()
    assert len(sizes) == 1  # same side for every view
    data = json.loads((folder / "spin.json").read_text())
    assert data["status"] == "ok" and len(data["frames"]) == 24 and abs(data["period_frames"] - 100) < 1
    # Same offset: each view's product sits where that frame's mask box sits in the shared crop.
    x0, y0 = data["crop"]["x0"], data["crop"]["y0"]
    for entry, png in zip(data["frames"], record.pngs):
        sample = next(s for s in rec.samples if s.frame_index == entry["frame_index"])
        ys, xs = np.nonzero(np.asarray(Image.open(png))[..., 3] >= 128)
        bx0, by0, bx1, by1 = sample.box
        assert abs(xs.min() + x0 - bx0) <= 1 and abs(ys.min() + y0 - by0) <= 1
    assert "000.jpg" in (folder / "index.html").read_text()


def test_spin_config_is_validated():
    assert load_config(overrides={"spin.views": 36}).spin.views == 36
    with pytest.raises(ConfigError, match="spin"):
        load_config(overrides={"spin.views": 3})
    with pytest.raises(ConfigError, match="spin"):
        load_config(overrides={"spin.views": 72, "spin.max_crops": 100})


def test_run_with_spin_end_to_end(tmp_path):
    """`turncrop run --spin 24` on every 2nd frame of the bundled session at half size (50 frames a turn)."""
    require_data("nerf_mic_orbit")
    meta = json.loads((SESSION / "session.json").read_text())
    azimuth = {f["frame"]: f["azimuth_deg"] for f in meta["frames"]}
    folder = tmp_path / "frames"
    folder.mkdir()
    with open_source(SESSION / "video.mp4") as source:
        for frame in source:
            if frame.index % 2 == 0:
                small = cv2.resize(frame.image, (480, 360), interpolation=cv2.INTER_AREA)
                cv2.imwrite(str(folder / f"{frame.index:05d}.png"), small[..., ::-1])
    out = tmp_path / "out"
    assert main(["run", str(folder), "--out", str(out), "--backend", "graphcut", "--no-progress",
                 "--spin", "24"]) == 0
    data = json.loads((out / "product-001_spin" / "spin.json").read_text())
    assert data["status"] == "ok" and len(data["frames"]) == 24
    assert abs(data["period_frames"] - 50) < 1.5
    # Image k of the folder is video frame 2k.
    az = np.array([azimuth[2 * f["frame_index"]] for f in data["frames"]])
    assert np.abs(spacing_errors(az)).max() <= 2 * SOURCE_STEP_DEG  # one frame of this copy
    assert len({Image.open(out / "product-001_spin" / f["png"]).size for f in data["frames"]}) == 1
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["products"][0]["spin"]["status"] == "ok"


# -- the viewer ---------------------------------------------------------------------------------------------

def test_viewer_turns_when_dragged(session_recorder, tmp_path):
    chromium = "/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else shutil.which("chromium")
    if chromium is None:
        pytest.skip("chromium not installed (apt-get install chromium; .ci/run does it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install playwright)")
    rec, _ = session_recorder
    record = export_spin(tmp_path, "product-001", rec.samples, plan_of(rec, 24), {})
    page_url = (record.folder / "index.html").as_uri()
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page(viewport={"width": 800, "height": 800})
            page.goto(page_url)
            page.wait_for_function("document.getElementById('view').complete")
            assert page.get_attribute("#view", "data-index") == "0"
            box = page.locator("#stage").bounding_box()
            x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
            page.mouse.move(x, y)
            page.mouse.down()
            page.mouse.move(x - box["width"] / 4, y, steps=8)  # a quarter width: a quarter turn
            page.mouse.up()
            index = int(page.get_attribute("#view", "data-index"))
            src = page.evaluate("document.getElementById('view').src")
            loaded = page.evaluate("document.getElementById('view').naturalWidth")
        finally:
            browser.close()
    assert index == 6 and src.endswith("006.jpg") and loaded > 0
