"""`turncrop serve` with a real browser: Debian's Chromium, driven by Playwright, its fake camera playing
the bundled turntable session. Everything runs on 127.0.0.1 (HTTP, and ICE on both sides)."""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from data_paths import load_masks
from turncrop.stream.config import load_config
from turncrop.stream.serve import STATE, create_app
from webrtc_helpers import (EMPTY_FRAMES, PRODUCT_FRAMES, SAMPLE, SIZE, loopback_ice, overlay_contrast, serving,
                            turntable_frames)

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"Debian's Chromium is not installed at {CHROMIUM}")

# Flags for a headless Chromium whose WebRTC stays on this machine (see ../shared/ENVIRONMENT.md).
CHROMIUM_FLAGS = [
    "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream", "--allow-loopback-in-peer-connection",
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE localhost , EXCLUDE 127.0.0.1",
]


def write_y4m(path: Path, frames: list[np.ndarray], fps: int = 30) -> Path:
    """Frames (H, W, 3) RGB as a Y4M 4:2:0 file, the format of Chromium's fake camera (which loops it)."""
    height, width = frames[0].shape[:2]
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for frame in frames:
            f.write(b"FRAME\n")
            f.write(cv2.cvtColor(frame, cv2.COLOR_RGB2YUV_I420).tobytes())  # Y, then U, then V planes
    return path


def product_point() -> tuple[float, float]:
    """A pixel (x, y) of the test camera that is on the product in every frame of its turn (from the
    ground truth): where an operator clicks."""
    masks = load_masks(SAMPLE.parent / "gt")
    product = [m for m in masks if m.any()]
    always = np.logical_and.reduce([cv2.resize(m.astype(np.uint8), SIZE[::-1], interpolation=cv2.INTER_NEAREST) > 0
                                    for m in product])
    inner = cv2.erode(always.astype(np.uint8), np.ones((3, 3), np.uint8))
    ys, xs = np.nonzero(inner if inner.any() else always)
    i = len(ys) // 2
    return float(xs[i]), float(ys[i])


async def keep_loopback_candidates(route) -> None:
    """The page's offer, with only its 127.0.0.1 ICE candidates (the server gathers on 127.0.0.1 only)."""
    offer = json.loads(route.request.post_data)
    lines = offer["sdp"].split("\r\n")
    offer["sdp"] = "\r\n".join(l for l in lines if not l.startswith("a=candidate:") or " 127.0.0.1 " in l)
    await route.continue_(post_data=json.dumps(offer))


NETNS_ENV = "TURNCROP_TEST_NETNS"  # set inside the test's own network namespace


def _private_network_available() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    try:
        return subprocess.run(["unshare", "-rn", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def test_chromium_camera_preview_prompts_and_gallery(tmp_path, monkeypatch, request):
    # Chromium offers every interface and answers from any, so where it can, this test re-runs itself in a
    # network namespace of its own (unshare: a user + network namespace with only `lo` up): the browser then
    # has nothing but 127.0.0.1.
    if os.environ.get(NETNS_ENV) != "1" and _private_network_available():
        run = subprocess.run(
            ["unshare", "-rn", "sh", "-c", 'ip link set lo up && exec "$0" -m pytest -q -p no:cacheprovider "$1"',
             sys.executable, request.node.nodeid],
            cwd=request.config.rootpath, env={**os.environ, NETNS_ENV: "1"}, capture_output=True, text=True,
            timeout=180)
        assert run.returncode == 0 and "1 passed" in run.stdout, run.stdout[-6000:] + run.stderr[-3000:]
        return
    isolated = os.environ.get(NETNS_ENV) == "1"
    loopback_ice(monkeypatch)
    shots = turntable_frames()
    # The empty stage for 6 s (the session's pipeline starts meanwhile and learns it), then the product
    # turning for ~27 s. The fake camera starts the file when the page opens it and loops it: the scenario
    # needs ~13 s of the product here, and a loop back to the empty stage would end product-002 and start
    # others (seen once in CI on a slower machine, with 13 s of product), so the product phase is twice that.
    clip = [shots[i] for i in EMPTY_FRAMES] * 18 + [shots[i] for i in PRODUCT_FRAMES] * 16
    y4m = write_y4m(tmp_path / "camera.y4m", clip)
    # Chromium's singleton socket lives in TMPDIR and its path must stay short (< 108 bytes): not in tmp_path.
    scratch = Path(tempfile.mkdtemp(prefix="tc-"))
    for name in ("home", "tmp"):
        (scratch / name).mkdir()
    out = tmp_path / "out"
    config = load_config("default", {"backend": "graphcut", "keyframes.max_interval": 4, "serve.stats_every": 0.25})
    click_x, click_y = product_point()

    async def scenario() -> dict:
        from playwright.async_api import TimeoutError as PlaywrightTimeout
        from playwright.async_api import async_playwright

        app = create_app(out, config, token="t0ken")  # the page must carry it on every request it makes
        seen: dict = {}
        async with serving(app) as base, async_playwright() as pw:
            browser = await pw.chromium.launch_persistent_context(
                str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True,
                args=[*CHROMIUM_FLAGS, f"--use-file-for-fake-video-capture={y4m}"],
                env={**os.environ, "HOME": str(scratch / "home"), "TMPDIR": str(scratch / "tmp")},
            )
            page = browser.pages[0] if browser.pages else await browser.new_page()
            page.set_default_timeout(30_000)
            await page.route("**/offer*", keep_loopback_candidates)
            await page.goto(base + "?token=t0ken")
            await page.click("#start")

            async def until(what: str, condition: str) -> None:
                try:
                    await page.wait_for_function(condition)
                except PlaywrightTimeout:
                    state = await page.evaluate("({stats: window.turncrop.stats, events: window.turncrop.events, "
                                                "errors: window.turncrop.errors})")
                    raise AssertionError(f"timed out waiting for {what}; the page had {json.dumps(state)[-3000:]}")

            await until("the first processed frame", "() => window.turncrop.stats")
            seen["first_stats"] = await page.evaluate("window.turncrop.stats")
            await until("product_started", "() => window.turncrop.events.some(e => e.type === 'product_started')")
            await until("a mask", "() => window.turncrop.stats && window.turncrop.stats.mask_area > 500")
            # A product seen in fewer than products.min_frames processed frames would be a transient (no still).
            processed = await page.evaluate("window.turncrop.stats.frames_processed")
            await until("more frames of the product", f"() => window.turncrop.stats.frames_processed >= {processed} + 8"
                        " && window.turncrop.stats.mask_area > 500")
            session = app[STATE].sessions[await page.evaluate("window.turncrop.session")]
            seen["ice"] = _nominated_addresses(session)
            seen["playing"] = await page.evaluate("""async () => {
                const v = document.getElementById('preview'), t0 = v.currentTime;
                await new Promise(r => setTimeout(r, 1000));
                return {width: v.videoWidth, height: v.videoHeight, t0, t1: v.currentTime, paused: v.paused};
            }""")
            seen["stats_with_product"] = await page.evaluate("window.turncrop.stats")
            seen["preview"] = np.array(await page.evaluate("""() => {
                const v = document.getElementById('preview'), c = document.createElement('canvas');
                c.width = v.videoWidth; c.height = v.videoHeight;
                const g = c.getContext('2d'); g.drawImage(v, 0, 0);
                const d = g.getImageData(0, 0, c.width, c.height).data;
                const rgb = [];
                for (let y = 0; y < c.height; y++) { const row = [];
                  for (let x = 0; x < c.width; x++) {
                    const i = 4 * (y * c.width + x); row.push([d[i], d[i+1], d[i+2]]); }
                  rgb.push(row); }
                return rgb;
            }"""), np.uint8)

            await page.click("#next")
            await until("product-001 in the gallery",
                        "() => document.querySelector('.still[data-product=\"product-001\"] img')")
            seen["thumbnail_width"] = await page.evaluate("""async () => {
                const img = document.querySelector('.still[data-product="product-001"] img');
                await img.decode(); return img.naturalWidth; }""")
            seen["links"] = await page.eval_on_selector_all('.still[data-product="product-001"] a',
                                                            "as => as.map(a => a.textContent)")
            # "Next product" holds the pipeline until the stage is seen empty: no mask while the product turns on.
            ended = await page.evaluate("window.turncrop.events.find(e => e.type === 'product_ended').frame_index")
            await until("no mask after next product", f"""() => window.turncrop.stats.frame_index > {ended} + 2
                                                                && window.turncrop.stats.mask_area === 0""")
            seen["area_before_click"] = await page.evaluate("window.turncrop.stats.mask_area")

            async def on_preview(fx: float, fy: float) -> tuple[float, float]:
                """Page coordinates of camera pixel (fx, fy) on the preview."""
                return await page.evaluate("""([fx, fy]) => {
                    const v = document.getElementById('preview'), r = v.getBoundingClientRect();
                    const [w, h] = window.turncrop.stats.frame_size;
                    const s = Math.min(r.width / v.videoWidth, r.height / v.videoHeight);
                    const left = r.left + (r.width - v.videoWidth * s) / 2;
                    const top = r.top + (r.height - v.videoHeight * s) / 2;
                    return [left + (fx + 0.5) / w * v.videoWidth * s, top + (fy + 0.5) / h * v.videoHeight * s];
                }""", [fx, fy])

            # The operator clicks on the product in the preview: a point prompt starts the next product.
            await page.mouse.click(*await on_preview(click_x, click_y))
            await until("product-002 started by the click", "() => window.turncrop.events.some("
                        "e => e.type === 'product_started' && e.product_id === 'product-002')")
            await until("product-002's mask", "() => window.turncrop.stats.product_id === 'product-002' "
                        "&& window.turncrop.stats.mask_area > 500")
            seen["area_after_click"] = await page.evaluate("window.turncrop.stats.mask_area")
            processed = await page.evaluate("window.turncrop.stats.frames_processed")
            await until("more frames of product-002", f"() => window.turncrop.stats.frames_processed >= {processed} + 8")
            # A shift-click, a drag and the Re-key button reach the pipeline too.
            await page.keyboard.down("Shift")
            await page.mouse.click(*await on_preview(5, 5))
            await page.keyboard.up("Shift")
            await page.mouse.move(*await on_preview(40, 30))
            await page.mouse.down()
            await page.mouse.move(*await on_preview(150, 120), steps=5)
            await page.mouse.move(*await on_preview(280, 220), steps=5)
            await page.mouse.up()
            await page.click("#rekey")
            await until("five commands applied",
                        "() => window.turncrop.events.filter(e => e.type === 'command_applied').length >= 5")
            seen["events"] = await page.evaluate("window.turncrop.events")
            seen["errors"] = await page.evaluate("window.turncrop.errors")
            await browser.close()
            await asyncio.wait_for(session.closed.wait(), 20)  # the page went away: its session ends
            seen["session"] = session.id
            seen["frames_in"] = session.stats.frames_in
        return seen

    try:
        seen = asyncio.run(scenario())
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        y4m.unlink()  # ~115 MB
    assert seen["errors"] == []
    # The session's pipeline was up while the stage was still empty (it learns the stage from those frames).
    assert seen["first_stats"]["product_id"] is None, seen["first_stats"]
    assert seen["ice"][0] == "127.0.0.1"
    if isolated:
        assert seen["ice"][1] == "127.0.0.1"
    # The server received the camera (Chromium sends the Y4M's 320x240) and processed frames.
    assert seen["frames_in"] > 30 and seen["stats_with_product"]["frame_size"] == [320, 240]
    # The preview plays, annotated.
    playing = seen["playing"]
    assert playing["width"] > 0 and playing["t1"] > playing["t0"] + 0.5 and not playing["paused"]
    inside, outside = overlay_contrast(seen["preview"], seen["stats_with_product"]["box"])
    assert inside > 3 * outside + 5, (inside, outside)
    # Next product: a still on disk and in the page's gallery.
    folder = out / seen["session"]
    assert (folder / "product-001.jpg").stat().st_size > 0
    assert seen["thumbnail_width"] > 0
    assert set(seen["links"]) == {"product-001.png", "product-001.jpg", "product-001.json"}
    # The click prompt changed the mask: from none to the product's.
    assert seen["area_before_click"] == 0 and seen["area_after_click"] > 500
    applied = [e["command"] for e in seen["events"] if e["type"] == "command_applied"]
    assert applied[0] == {"kind": "next_product"}
    assert applied[1]["kind"] == "point" and applied[1]["labels"] == [1]
    assert abs(applied[1]["points"][0][0] - click_x) <= 2 and abs(applied[1]["points"][0][1] - click_y) <= 2
    by_kind = {c["kind"]: c for c in applied[2:]}
    assert set(by_kind) == {"point", "box", "rekey"}
    assert by_kind["point"]["labels"] == [0] and np.allclose(by_kind["point"]["points"], [[5, 5]], atol=2)
    assert np.allclose(by_kind["box"]["box"], [40, 30, 280, 220], atol=2)
    # Closing the page finished the second product too.
    assert seen["frames_in"] < len(clip), "the fake camera looped: the scenario outlasted its clip"
    manifest = json.loads((folder / "manifest.json").read_text())
    lives = [e for e in seen["events"] if e["type"] in ("product_started", "product_ended")]
    assert [p["product_id"] for p in manifest["products"]] == ["product-001", "product-002"], lives


def _nominated_addresses(session) -> tuple[str, str]:
    """(local, remote) IP of the ICE pair the server's session uses."""
    transport = session.pc.getTransceivers()[0].receiver.transport.transport
    pair = transport._connection._nominated[1]
    return pair.local_candidate.host, pair.remote_candidate.host
