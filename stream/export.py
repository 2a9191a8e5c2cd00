"""Writing a product's still: an RGBA cutout, a marketplace JPEG on white, and a JSON sidecar.

Per product `{id}` in `out_dir`:
  {id}.png   RGBA cutout at source resolution, cropped to the product with a small transparent margin.
  {id}.jpg   square, product composited on pure white, its longer side = fill x the output side, centred;
             every pixel of the outer JPEG blocks is exactly (255, 255, 255) after decoding.
  {id}.json  sidecar: where the still came from, its scores and the outputs; written last, so its
             presence means the product's files are complete.
Products without an acceptable still get only `{id}.json` with `"status": "no_still"`; the run gets
`manifest.json`. Every file is written atomically (temp file in the same directory, then `os.replace`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import numbers
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from turncrop.tracking.stills import Candidate

# Smallest JPEG side ever written. A product smaller than (this x fill) px is scaled up to reach it.
MIN_OUTPUT_SIDE = 64
MAX_OUTPUT_SIDE = 16384
MAX_FILL = 0.95
MAX_FEATHER_PX = 16.0
# JPEG codes 8x8 blocks independently (with 4:4:4 chroma, as written here). A block that is entirely
# white decodes to exactly 255 whenever the DC quantiser allows it, so the layout keeps the product out
# of every block that holds a border pixel: at least 8 px of white plus 1 px for rounding on each side.
JPEG_BLOCK = 8
LAYOUT_SLACK_PX = 1
# Guided filter regulariser on a [0, 1] grey guide: image edges with a contrast above ~sqrt(eps) (~8 grey
# levels) steer the alpha edge; flatter regions get a plain feather.
_GUIDED_EPS = 1e-3
# Alpha below this is not visible on white (< 5 grey levels even for a black product): the layout and
# the PNG crop are based on the extent of alpha >= it. Fainter tails may fall outside both.
VISIBLE_ALPHA = 0.02
_PNG_MARGIN_FRAC = 0.03
_PNG_MIN_MARGIN_PX = 4
_PRODUCT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_RESERVED_KEYS = frozenset(
    {
        "product_id", "status", "source", "frame_index", "timestamp", "frame_size", "box_xyxy",
        "alpha_box_xyxy", "scores", "alpha", "outputs", "options",
    }
)


def min_output_side(fill: float) -> int:
    """Smallest JPEG side for `fill`: 64 px, or more so that the white margin holds whole JPEG blocks.

    The margin on each side is (1 - fill) / 2 x side and must be >= 9 px: 120 px at fill 0.85,
    180 px at 0.9, 360 px at 0.95.
    """
    return max(MIN_OUTPUT_SIDE, math.ceil(2 * (JPEG_BLOCK + LAYOUT_SLACK_PX) / (1.0 - fill)))


def _is_real(x: object) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _is_int(x: object) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


@dataclass(frozen=True)
class ExportOptions:
    """How stills are written.

    Attributes:
      fill: product's longer side / JPEG side, in (0, 0.95].
      size: JPEG side in px, or None for the product's own resolution (scale 1). Never below
        `min_output_side(fill)`.
      upscale: allow scaling the product up to reach `size`. Without it a product too small for `size`
        keeps its source resolution and the JPEG side shrinks to product side / fill instead. (Only a
        product smaller than `min_output_side(fill)` x fill is scaled up regardless; the sidecar says so.)
      jpeg_quality: 1..100. If the JPEG border does not decode to exact white at this quality (possible
        only for a few low qualities), the JPEG is re-encoded at 100 and the sidecar records it.
      feather_px: soft-edge width: the guided filter's radius in px (0 = hard edge).
    """

    fill: float = 0.85
    size: int | None = None
    upscale: bool = False
    jpeg_quality: int = 95
    feather_px: float = 1.5

    def __post_init__(self) -> None:
        if not _is_real(self.fill) or not 0 < self.fill <= MAX_FILL:
            raise ValueError(
                f"ExportOptions.fill must be a number in (0, {MAX_FILL}], got {self.fill!r} "
                "(the JPEG needs a white margin around the product)"
            )
        if self.size is not None:
            if not _is_int(self.size):
                raise ValueError(f"ExportOptions.size must be an int number of pixels or None, got {self.size!r}")
            lo = min_output_side(self.fill)
            if not lo <= self.size <= MAX_OUTPUT_SIDE:
                raise ValueError(
                    f"ExportOptions.size must be in [{lo}, {MAX_OUTPUT_SIDE}] px at fill {self.fill}, got {self.size} "
                    f"({MIN_OUTPUT_SIDE} px floor, and a white margin of at least {JPEG_BLOCK + LAYOUT_SLACK_PX} px)"
                )
        if not isinstance(self.upscale, bool):
            raise ValueError(f"ExportOptions.upscale must be a bool, got {self.upscale!r}")
        if not _is_int(self.jpeg_quality) or not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"ExportOptions.jpeg_quality must be an int in [1, 100], got {self.jpeg_quality!r}")
        f = self.feather_px
        if not _is_real(f) or not (math.isfinite(f) and 0 <= f <= MAX_FEATHER_PX):
            raise ValueError(f"ExportOptions.feather_px must be a number in [0, {MAX_FEATHER_PX}], got {f!r}")


@dataclass(frozen=True)
class ExportRecord:
    """What `export_still` wrote.

    Attributes:
      product_id: the product.
      png, jpg, sidecar: paths of the files written.
      side: JPEG side in px.
      scale: output px per source px in the JPEG.
      sidecar_data: the JSON sidecar's content.
    """

    product_id: str
    png: Path
    jpg: Path
    sidecar: Path
    side: int
    scale: float
    sidecar_data: dict[str, Any]


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the whole new one, never a part.

    Writes a temp file in the same directory (same file system, so `os.replace` is atomic), fsyncs it,
    then renames it over `path`. On any error the temp file is removed and `path` is untouched.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def soft_alpha(image: np.ndarray, mask: np.ndarray, feather_px: float) -> np.ndarray:
    """A soft, edge-aware alpha from a binary mask.

    A guided filter (He et al. 2010, grey guide) of the mask, guided by the image, so the soft edge
    follows the product's real edge where the image has one and is a plain feather where it does not.
    It is then constrained to agree with the mask: pixels of the mask keep alpha >= 0.5 and the others
    <= 0.5, so the alpha only redistributes coverage across the edge and never contradicts the
    segmentation. That keeps thin structures (a 2 px cable) visible even where the filter would smear
    them, and keeps alpha exactly 0 / 1 farther than 2 x radius from the edge.

    Args:
      image: (h, w, 3) uint8 RGB.
      mask: (h, w) bool.
      feather_px: filter radius in px, rounded half up, >= 0 (0 returns the hard mask).

    Returns:
      (h, w) float32 alpha in [0, 1].
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"soft_alpha: image must be (h, w, 3) uint8 RGB, got {image.shape} {image.dtype}")
    if np.shape(mask) != image.shape[:2]:
        raise ValueError(f"soft_alpha: mask shape {np.shape(mask)} does not match image {image.shape[:2]}")
    if not (math.isfinite(feather_px) and feather_px >= 0):
        raise ValueError(f"soft_alpha: feather_px must be a finite number >= 0, got {feather_px!r}")
    m = np.asarray(mask).astype(bool)
    hard = m.astype(np.float32)
    r = int(feather_px + 0.5)
    if r == 0:
        return hard
    guide = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
    q = _guided_filter(guide, hard, r, _GUIDED_EPS)
    alpha = np.where(m, np.clip(q, 0.5, 1.0), np.clip(q, 0.0, 0.5)).astype(np.float32)
    # The filter can only change pixels within 2r of the mask edge; snap the rest back to exact 0 / 1
    # (float round-off there would tint the white JPEG background).
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (4 * r + 1, 4 * r + 1))
    m8 = m.astype(np.uint8)
    band = (cv2.dilate(m8, k) > 0) & (cv2.erode(m8, k) == 0)
    return np.where(band, alpha, hard).astype(np.float32)


def export_still(
    out_dir: str | os.PathLike[str],
    product_id: str,
    candidate: Candidate,
    meta: dict[str, Any],
    options: ExportOptions = ExportOptions(),
) -> ExportRecord:
    """Write `{product_id}.png`, `.jpg` and `.json` for the chosen candidate (see the module doc).

    Args:
      out_dir: output directory (created if missing).
      product_id: [A-Za-z0-9][A-Za-z0-9._-]{0,127}, used as the file stem.
      candidate: the still; its `alpha` is used when present, else `soft_alpha(image, mask, feather_px)`.
      meta: merged into the sidecar at top level (e.g. backend, keyframe statistics, run id); must be
        JSON-serialisable (numpy scalars/arrays and Paths are converted, NaN/inf become null) and must not
        use the sidecar's own keys (`_RESERVED_KEYS`).
      options: output options.

    Layout: the JPEG lays out the product's visible extent (alpha >= 0.02, including the soft edge), not
    the mask box, so the visible product is fill x side. With `size=None` the product keeps its source
    resolution (scale 1) and side = round(extent / fill).
    """
    check_product_id(product_id)
    clash = _RESERVED_KEYS & set(meta)
    if clash:
        raise ValueError(f"export_still: meta must not set the sidecar's own keys {sorted(clash)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    image, mask = candidate.image, candidate.mask
    if candidate.alpha is not None:
        alpha = np.clip(np.asarray(candidate.alpha, dtype=np.float32), 0.0, 1.0)
        alpha_kind = "candidate"
    else:
        alpha = soft_alpha(image, mask, options.feather_px)
        alpha_kind = "guided_filter" if options.feather_px >= 0.5 else "hard"
    if alpha.shape != image.shape[:2]:
        raise ValueError(f"export_still: candidate alpha {alpha.shape} does not match its image {image.shape[:2]}")
    x, y, bw, bh = cv2.boundingRect((alpha >= VISIBLE_ALPHA).astype(np.uint8))
    if bw == 0:
        raise ValueError(f"export_still: product {product_id!r}: the candidate's mask/alpha is empty")
    extent = (x, y, x + bw, y + bh)  # visible product, crop coordinates

    png_bytes, png_size, png_margin = _encode_png(image, alpha, extent)
    side, scale, forced = _layout(max(bw, bh), options)
    canvas = render_on_white(image, alpha, extent, side, scale)
    jpg_bytes, quality = encode_jpeg_white_border(canvas, options.jpeg_quality)

    ox, oy = candidate.offset
    sidecar = {
        "product_id": product_id,
        "status": "ok",
        "source": candidate.source,
        "frame_index": candidate.frame_index,
        "timestamp": candidate.timestamp,
        "frame_size": {"width": candidate.frame_size[1], "height": candidate.frame_size[0]},
        "box_xyxy": list(candidate.box),
        "alpha_box_xyxy": [extent[0] + ox, extent[1] + oy, extent[2] + ox, extent[3] + oy],
        "scores": candidate.score.as_dict(),
        "alpha": alpha_kind,
        "outputs": {
            "png": {"file": f"{product_id}.png", "width": png_size[0], "height": png_size[1], "margin_px": png_margin},
            "jpg": {
                "file": f"{product_id}.jpg",
                "side": side,
                "fill": options.fill,
                "scale": scale,
                "upscaled": scale > 1.0,
                "upscaled_to_min_side": forced,
                "quality": quality,
                "subsampling": "4:4:4",
            },
        },
        "options": dataclasses.asdict(options),
        **meta,
    }
    text = to_json(sidecar, "sidecar")  # before writing anything: a bad meta must not leave half a product

    png_path, jpg_path, json_path = out / f"{product_id}.png", out / f"{product_id}.jpg", out / f"{product_id}.json"
    atomic_write_bytes(png_path, png_bytes)
    atomic_write_bytes(jpg_path, jpg_bytes)
    atomic_write_bytes(json_path, text)
    return ExportRecord(product_id, png_path, jpg_path, json_path, side, scale, json.loads(text))


def write_no_still_record(
    out_dir: str | os.PathLike[str], product_id: str, reason: str, meta: dict[str, Any]
) -> Path:
    """Write `{product_id}.json` with `"status": "no_still"` and why; returns its path.

    `meta` is merged as in `export_still` (e.g. the best rejected score, frame range, backend).
    """
    check_product_id(product_id)
    if not isinstance(reason, str) or not reason.strip():
        raise ValueError("write_no_still_record: reason must be a non-empty string")
    clash = {"product_id", "status", "reason"} & set(meta)
    if clash:
        raise ValueError(f"write_no_still_record: meta must not set {sorted(clash)}")
    record = {"product_id": product_id, "status": "no_still", "reason": reason, **meta}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{product_id}.json"
    atomic_write_bytes(path, to_json(record, "no-still record"))
    return path


def write_manifest(out_dir: str | os.PathLike[str], manifest: dict[str, Any]) -> Path:
    """Write the run's `manifest.json` (JSON-serialisable dict, converted as in `export_still`)."""
    if not isinstance(manifest, dict):
        raise TypeError(f"write_manifest: manifest must be a dict, got {type(manifest).__name__}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "manifest.json"
    atomic_write_bytes(path, to_json(manifest, "manifest"))
    return path


def _guided_filter(guide: np.ndarray, src: np.ndarray, r: int, eps: float) -> np.ndarray:
    """He et al.'s guided filter with a grey guide; (h, w) float32 in and out, window (2r+1)^2."""

    def box(a: np.ndarray) -> np.ndarray:
        return cv2.boxFilter(a, -1, (2 * r + 1, 2 * r + 1), normalize=True, borderType=cv2.BORDER_REFLECT)

    mean_i, mean_p = box(guide), box(src)
    var_i = box(guide * guide) - mean_i * mean_i
    cov_ip = box(guide * src) - mean_i * mean_p
    a = cov_ip / (var_i + eps)
    b = mean_p - a * mean_i
    return box(a) * guide + box(b)


def _layout(extent_px: int, options: ExportOptions) -> tuple[int, float, bool]:
    """(JPEG side, scale, whether the minimum side forced an upscale) for a product `extent_px` long."""
    fill = options.fill
    if options.size is None:
        side, scale = round(extent_px / fill), 1.0
    else:
        side, scale = options.size, fill * options.size / extent_px
        if scale > 1.0 and not options.upscale:
            side, scale = round(extent_px / fill), 1.0
    lo = min_output_side(fill)
    if side < lo:
        return lo, fill * lo / extent_px, True
    return side, scale, False


def render_on_white(
    image: np.ndarray, alpha: np.ndarray, extent: tuple[int, int, int, int], side: int, scale: float
) -> np.ndarray:
    """(side, side, 3) uint8: the product scaled by `scale`, centred on white; border JPEG blocks white."""
    h, w = alpha.shape
    x0, y0, x1, y1 = extent
    # One px of context around the visible extent for the resampling kernel.
    cx0, cy0, cx1, cy1 = max(0, x0 - 1), max(0, y0 - 1), min(w, x1 + 1), min(h, y1 + 1)
    a = alpha[cy0:cy1, cx0:cx1]
    fg = image[cy0:cy1, cx0:cx1].astype(np.float32) * a[..., None]  # premultiplied: no dark fringes
    if scale != 1.0:
        dw, dh = max(1, round((cx1 - cx0) * scale)), max(1, round((cy1 - cy0) * scale))
        # Area for shrinking (no aliasing); linear for growing (no ringing halo on the white).
        interp = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
        fg = cv2.resize(fg, (dw, dh), interpolation=interp)
        a = np.clip(cv2.resize(a, (dw, dh), interpolation=interp), 0.0, 1.0)
    # Put the extent's centre at the canvas centre (continuous coordinates: x_out = scale * x_in + offset).
    ox = round(side / 2 - scale * ((x0 + x1) / 2 - cx0))
    oy = round(side / 2 - scale * ((y0 + y1) / 2 - cy0))
    canvas = np.full((side, side, 3), 255.0, dtype=np.float32)
    dh, dw = a.shape
    px0, py0, px1, py1 = max(0, ox), max(0, oy), min(side, ox + dw), min(side, oy + dh)
    if px1 > px0 and py1 > py0:
        src = (slice(py0 - oy, py1 - oy), slice(px0 - ox, px1 - ox))
        aa = a[src][..., None]
        canvas[py0:py1, px0:px1] = fg[src] + 255.0 * (1.0 - aa)
    out = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    # The layout keeps the product out of these blocks; this only clears sub-visible resampling tails,
    # which would otherwise make the border blocks non-constant and let JPEG ring into the border.
    last = JPEG_BLOCK * ((side - 1) // JPEG_BLOCK)
    out[:JPEG_BLOCK] = 255
    out[last:] = 255
    out[:, :JPEG_BLOCK] = 255
    out[:, last:] = 255
    return out


def encode_jpeg_white_border(canvas: np.ndarray, quality: int) -> tuple[bytes, int]:
    """JPEG bytes whose border pixels decode to exactly 255, and the quality used.

    4:4:4 chroma keeps each 8x8 block independent (4:2:0 would blend chroma across 16 px); an all-white
    block then decodes to exact white unless the DC quantiser rounds below it, which the decode check
    catches, falling back to quality 100 (DC quantiser 1: exact).
    """
    for q in dict.fromkeys((quality, 100)):
        buf = io.BytesIO()
        Image.fromarray(canvas, "RGB").save(buf, "JPEG", quality=q, subsampling=0, optimize=True)
        data = buf.getvalue()
        if _border_is_white(np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))):
            return data, q
    raise RuntimeError("export: JPEG border did not decode to pure white even at quality 100")


def _border_is_white(rgb: np.ndarray) -> bool:
    return bool(
        (rgb[0] == 255).all() and (rgb[-1] == 255).all() and (rgb[:, 0] == 255).all() and (rgb[:, -1] == 255).all()
    )


def _encode_png(
    image: np.ndarray, alpha: np.ndarray, extent: tuple[int, int, int, int]
) -> tuple[bytes, tuple[int, int], int]:
    """RGBA PNG of the visible extent plus a margin (transparent padding where the crop ends).

    Returns (bytes, (width, height), margin px). Fully transparent pixels are stored white, so viewers
    that ignore alpha show the product on white rather than on the studio background.
    """
    h, w = alpha.shape
    x0, y0, x1, y1 = extent
    margin = max(_PNG_MIN_MARGIN_PX, math.ceil(_PNG_MARGIN_FRAC * max(x1 - x0, y1 - y0)))
    ow, oh = x1 - x0 + 2 * margin, y1 - y0 + 2 * margin
    rgba = np.zeros((oh, ow, 4), dtype=np.uint8)
    rgba[..., :3] = 255
    sx0, sy0, sx1, sy1 = max(0, x0 - margin), max(0, y0 - margin), min(w, x1 + margin), min(h, y1 + margin)
    dx, dy = sx0 - (x0 - margin), sy0 - (y0 - margin)
    a8 = np.rint(alpha[sy0:sy1, sx0:sx1] * 255.0).astype(np.uint8)
    rgb = np.where((a8 > 0)[..., None], image[sy0:sy1, sx0:sx1], np.uint8(255))
    dst = (slice(dy, dy + sy1 - sy0), slice(dx, dx + sx1 - sx0))
    rgba[dst + (slice(0, 3),)] = rgb
    rgba[dst + (3,)] = a8
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, "PNG", compress_level=6)
    return buf.getvalue(), (ow, oh), margin


def check_product_id(product_id: str) -> None:
    """ValueError unless `product_id` is safe as a file name stem."""
    if not isinstance(product_id, str) or not _PRODUCT_ID.fullmatch(product_id):
        raise ValueError(
            f"product_id must match [A-Za-z0-9][A-Za-z0-9._-]{{0,127}} (it names files), got {product_id!r}"
        )


def to_json(obj: dict[str, Any], what: str) -> bytes:
    """`obj` as indented UTF-8 JSON; ValueError naming `what` for values JSON cannot hold (NaN, objects)."""
    return (json.dumps(_jsonable(obj, what), indent=2, allow_nan=False) + "\n").encode("utf-8")


def _jsonable(obj: Any, where: str) -> Any:
    """Plain JSON types from numpy scalars/arrays, Paths, tuples, dataclasses; NaN/inf -> None."""
    if obj is None or isinstance(obj, (bool, str, int)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, np.generic):
        return _jsonable(obj.item(), where)
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist(), where)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _jsonable(dataclasses.asdict(obj), where)
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise TypeError(f"{where}: JSON keys must be strings, got {k!r}")
            out[k] = _jsonable(v, f"{where}.{k}")
        return out
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    raise TypeError(f"{where}: {type(obj).__name__} is not JSON-serialisable")


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable; a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
