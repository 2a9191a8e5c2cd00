"""Writing a product's 360° spin set: numbered cutouts with one shared crop, `spin.json` and a viewer.

Per product, in `{out_dir}/{product_id}_spin/`:
  000.png ...  RGBA cutouts, all the same square size: one crop box (the union of every chosen view's
               visible extent plus a margin, made square) is used for every view, so the product turns in
               place without jumping or breathing. Transparent pixels are stored white.
  000.jpg ...  the same views on pure white (outer JPEG blocks exactly white), `size` px square.
  spin.json    period, and per view its phase, source frame and timestamp; written after the images.
  index.html   a self-contained viewer (inline JS, no network): drag or swipe to turn; written last.
A product without a full turn gets only `spin.json` with `"status": "no_spin"` and the reason.
Every file is written atomically (`atomic_write_bytes`).
"""
from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from turncrop.stream.export import (
    JPEG_BLOCK,
    LAYOUT_SLACK_PX,
    VISIBLE_ALPHA,
    atomic_write_bytes,
    check_product_id,
    encode_jpeg_white_border,
    render_on_white,
    soft_alpha,
    to_json,
)
from turncrop.tracking.spin import NoSpin, SpinPlan, SpinSample

# Margin around the union of the views' visible extents: this fraction of its longer side, at least
# the JPEG border blocks plus rounding, so no view touches the border in either output.
_MARGIN_FRAC = 0.05
_MIN_MARGIN_PX = JPEG_BLOCK + LAYOUT_SLACK_PX + 1


@dataclass(frozen=True)
class SpinRecord:
    """What `export_spin` wrote: the folder, the numbered files, and the `spin.json` content."""

    folder: Path
    pngs: list[Path]
    jpgs: list[Path]
    data: dict[str, Any]


def spin_folder(out_dir: str | os.PathLike[str], product_id: str) -> Path:
    """`{out_dir}/{product_id}_spin`."""
    check_product_id(product_id)
    return Path(out_dir) / f"{product_id}_spin"


def shared_box(samples: list[SpinSample], alphas: list[np.ndarray]) -> tuple[int, int, int]:
    """(x0, y0, side) in frame px: the square crop that holds every view's visible extent plus a margin.

    Args:
      samples: the chosen views (with crops).  alphas: their (h, w) float alpha, crop coordinates.
    """
    boxes = []
    for s, a in zip(samples, alphas):
        ys, xs = np.nonzero(a >= VISIBLE_ALPHA)
        if len(xs) == 0:
            raise ValueError(f"spin export: frame {s.frame_index} has an empty alpha")
        ox, oy = s.crop.offset
        boxes.append((xs.min() + ox, ys.min() + oy, xs.max() + 1 + ox, ys.max() + 1 + oy))
    b = np.array(boxes)
    x0, y0, x1, y1 = int(b[:, 0].min()), int(b[:, 1].min()), int(b[:, 2].max()), int(b[:, 3].max())
    longer = max(x1 - x0, y1 - y0)
    side = longer + 2 * max(_MIN_MARGIN_PX, math.ceil(_MARGIN_FRAC * longer))
    # Centre the union in the square (the crop may extend beyond the frame: that part is transparent).
    return (x0 + x1 - side) // 2, (y0 + y1 - side) // 2, side


def export_spin(out_dir: str | os.PathLike[str], product_id: str, samples: list[SpinSample], plan: SpinPlan,
                meta: dict[str, Any], *, size: int | None = None, feather_px: float = 1.5,
                jpeg_quality: int = 95) -> SpinRecord:
    """Write the spin set of one product (see the module doc).

    Args:
      out_dir: run output folder.  product_id: file-safe product name.
      samples: the recorder's samples; `plan.chosen` indexes them and every chosen one must have a crop.
      plan: from `plan_spin`.  meta: extra top-level keys for `spin.json` (JSON-serialisable).
      size: JPEG side in px, or None for the shared crop's own side (scale 1).
      feather_px: soft edge for views recorded without an alpha (as `soft_alpha`).
      jpeg_quality: 1..100.
    """
    folder = spin_folder(out_dir, product_id)
    views = [samples[int(i)] for i in plan.chosen]
    if any(v.crop is None for v in views):
        raise ValueError("export_spin: a chosen view has no crop")
    alphas = [(v.crop.alpha.astype(np.float32) / 255.0) if v.crop.alpha is not None
              else soft_alpha(v.crop.image, v.crop.mask, feather_px) for v in views]
    bx, by, side = shared_box(views, alphas)
    out_side = side if size is None else int(size)
    scale = out_side / side
    folder.mkdir(parents=True, exist_ok=True)
    pngs, jpgs, entries = [], [], []
    for k, (v, a) in enumerate(zip(views, alphas)):
        ox, oy = v.crop.offset
        png = _square_rgba(v.crop.image, a, (bx - ox, by - oy), side)
        extent = (bx - ox, by - oy, bx - ox + side, by - oy + side)  # the shared box, crop coordinates
        jpg, quality = encode_jpeg_white_border(render_on_white(v.crop.image, a, extent, out_side, scale),
                                                 jpeg_quality)
        pngs.append(folder / f"{k:03d}.png")
        jpgs.append(folder / f"{k:03d}.jpg")
        atomic_write_bytes(pngs[-1], png)
        atomic_write_bytes(jpgs[-1], jpg)
        entries.append({"view": k, "png": pngs[-1].name, "jpg": jpgs[-1].name,
                        "target_phase": round(float(plan.targets[k]), 6),
                        "phase": round(float(plan.phases[int(plan.chosen[k])]), 6),
                        "frame_index": v.frame_index, "timestamp": round(v.timestamp, 6),
                        "sharpness": round(v.sharpness, 3), "jpeg_quality": quality})
    data = {
        "product_id": product_id, "status": "ok", "views": len(views),
        "period_frames": round(plan.period_frames, 3), "period_seconds": round(plan.period_seconds, 4),
        "speed_drift_corrected": plan.drift,
        "crop": {"x0": bx, "y0": by, "side": side, "output_side": out_side, "scale": scale},
        "frames": entries, **meta,
    }
    atomic_write_bytes(folder / "spin.json", to_json(data, "spin.json"))
    atomic_write_bytes(folder / "index.html", viewer_html(len(views), product_id).encode("utf-8"))
    return SpinRecord(folder, pngs, jpgs, data)


def write_no_spin_record(out_dir: str | os.PathLike[str], product_id: str, result: NoSpin,
                         meta: dict[str, Any]) -> Path:
    """Write `{product_id}_spin/spin.json` with `"status": "no_spin"` and the reason; returns its path."""
    folder = spin_folder(out_dir, product_id)
    folder.mkdir(parents=True, exist_ok=True)
    record = {"product_id": product_id, "status": "no_spin", "reason": result.reason,
              "period_frames": None if result.period_frames is None else round(result.period_frames, 3), **meta}
    path = folder / "spin.json"
    atomic_write_bytes(path, to_json(record, "no-spin record"))
    return path


def _square_rgba(image: np.ndarray, alpha: np.ndarray, origin: tuple[int, int], side: int) -> bytes:
    """PNG bytes of the (side, side) square at `origin` (crop coordinates, may lie outside the crop)."""
    h, w = alpha.shape
    x, y = origin
    rgba = np.zeros((side, side, 4), np.uint8)
    rgba[..., :3] = 255
    sx0, sy0, sx1, sy1 = max(0, x), max(0, y), min(w, x + side), min(h, y + side)
    if sx1 > sx0 and sy1 > sy0:
        a8 = np.rint(alpha[sy0:sy1, sx0:sx1] * 255.0).astype(np.uint8)
        dst = (slice(sy0 - y, sy1 - y), slice(sx0 - x, sx1 - x))
        rgba[dst + (slice(0, 3),)] = np.where((a8 > 0)[..., None], image[sy0:sy1, sx0:sx1], np.uint8(255))
        rgba[dst + (3,)] = a8
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, "PNG", compress_level=6)
    return buf.getvalue()


def viewer_html(views: int, title: str) -> str:
    """A self-contained page showing `000.jpg` .. and turning them with mouse drag or touch swipe.

    The shown view's number is in `#view`'s `data-index` and in `#counter`; dragging one full width of
    the image turns the product once around.
    """
    return _VIEWER.replace("__N__", str(int(views))).replace("__TITLE__", _html_escape(title))


def _html_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


_VIEWER = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__ 360°</title>
<style>
 html, body { margin: 0; background: #fff; font: 14px sans-serif; color: #555; }
 #stage { max-width: 90vmin; margin: 2vmin auto; cursor: grab; touch-action: none; user-select: none; }
 #stage.dragging { cursor: grabbing; }
 #view { width: 100%; display: block; -webkit-user-drag: none; }
 #counter { text-align: center; }
</style></head>
<body>
<div id="stage"><img id="view" alt="__TITLE__, 360° view" data-index="0" src="000.jpg" draggable="false"></div>
<div id="counter">1 / __N__ - drag to turn</div>
<script>
(function () {
  "use strict";
  var n = __N__, index = 0, startX = null, startIndex = 0;
  var stage = document.getElementById("stage"), img = document.getElementById("view");
  var counter = document.getElementById("counter");
  function name(k) { return ("00" + k).slice(-3) + ".jpg"; }
  for (var k = 0; k < n; k++) { new Image().src = name(k); }  // preload: no flicker while turning
  function show(k) {
    index = ((k % n) + n) % n;
    img.src = name(index);
    img.setAttribute("data-index", String(index));
    counter.textContent = (index + 1) + " / " + n;
  }
  function begin(x) { startX = x; startIndex = index; stage.classList.add("dragging"); }
  function move(x) {
    if (startX === null) return;
    var width = stage.clientWidth || 1;  // one full width = one turn
    show(startIndex - Math.round((x - startX) / width * n));
  }
  function end() { startX = null; stage.classList.remove("dragging"); }
  stage.addEventListener("mousedown", function (e) { e.preventDefault(); begin(e.clientX); });
  window.addEventListener("mousemove", function (e) { move(e.clientX); });
  window.addEventListener("mouseup", end);
  stage.addEventListener("touchstart", function (e) { begin(e.touches[0].clientX); }, {passive: true});
  stage.addEventListener("touchmove", function (e) { e.preventDefault(); move(e.touches[0].clientX); },
                         {passive: false});
  stage.addEventListener("touchend", end);
  window.addEventListener("keydown", function (e) {
    if (e.key === "ArrowLeft") show(index + 1);
    if (e.key === "ArrowRight") show(index - 1);
  });
})();
</script>
</body></html>
"""
