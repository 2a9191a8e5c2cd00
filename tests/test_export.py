"""Writing stills: marketplace JPEG, soft-alpha PNG, sidecars, atomic writes (synthetic product)."""
from __future__ import annotations

import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from marketplace import check_marketplace_jpeg
from turncrop.stream import export
from turncrop.stream.export import (
    ExportOptions,
    atomic_write_bytes,
    export_still,
    min_output_side,
    soft_alpha,
    write_manifest,
    write_no_still_record,
)
from turncrop.tracking.frame import Frame
from turncrop.tracking.stills import Candidate, CandidatePool, score_still

H, W = 480, 640
CABLE_LEN = 80


def product_frame(
    centre: tuple[int, int] = (260, 240), axes: tuple[int, int] = (90, 70), cable: bool = True, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int]]:
    """A dark brown textured ellipse with a 2 px cable to its right, on grey.

    Coloured on purpose: a grey product has no chroma, which would hide chroma ringing in the JPEG.

    Returns (H, W, 3) uint8 image, (H, W) bool mask, and the cable's (row, x_start, x_end).
    """
    rng = np.random.default_rng(seed)
    img = np.clip(128 + rng.normal(0, 1.5, (H, W, 3)), 0, 255)
    tex = cv2.GaussianBlur(rng.normal(0, 1, (H, W)).astype(np.float32), (0, 0), 1.5)
    tex = np.clip(50 + 20 * tex / tex.std(), 10, 90)
    mask = np.zeros((H, W), np.uint8)
    cv2.ellipse(mask, centre, axes, 0, 0, 360, 1, -1)
    mask = mask.astype(bool)
    img[mask] = tex[mask][:, None] * np.array([1.3, 0.8, 0.45])
    cx, cy = centre
    x_start, x_end = cx + axes[0] - 3, min(W, cx + axes[0] + CABLE_LEN)
    if cable:
        img[cy - 1 : cy + 1, x_start:x_end] = 35
        mask[cy - 1 : cy + 1, x_start:x_end] = True
    return img.astype(np.uint8), mask, (cy - 1, x_start, x_end)


def candidate_for(img: np.ndarray, mask: np.ndarray, index: int = 12) -> Candidate:
    pool = CandidatePool()
    s = score_still(img, mask, confidence=0.93, stability=0.9)
    assert pool.offer(Frame(img, index, index / 30, source="turntable.mp4"), mask, s)
    return pool.best()


def load_rgba(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.mode == "RGBA"
        return np.asarray(im)


def load_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def no_temp_files(d: Path) -> bool:
    return not [p for p in d.iterdir() if p.name.startswith(".") or p.suffix == ".tmp"]


@pytest.fixture(scope="module")
def product() -> tuple[np.ndarray, np.ndarray, tuple[int, int, int], Candidate]:
    img, mask, cable = product_frame()
    return img, mask, cable, candidate_for(img, mask)


def test_default_export_passes_the_marketplace_check(tmp_path: Path, product) -> None:
    rec = export_still(tmp_path, "p1", product[3], {"backend": "weightfree"})
    assert check_marketplace_jpeg(rec.jpg) == []
    assert rec.scale == 1.0  # size=None: the product keeps its source resolution
    assert {p.name for p in tmp_path.iterdir()} == {"p1.png", "p1.jpg", "p1.json"}


def test_png_has_soft_alpha_and_the_cable_survives(tmp_path: Path, product) -> None:
    _, mask, (row, xs, xe), cand = product
    rec = export_still(tmp_path, "p1", cand, {})
    rgba = load_rgba(rec.png)
    a = rgba[..., 3]
    ax0, ay0 = rec.sidecar_data["alpha_box_xyxy"][:2]
    m = rec.sidecar_data["outputs"]["png"]["margin_px"]
    to_png = lambda x, y: (y - ay0 + m, x - ax0 + m)  # noqa: E731 - source px -> PNG (row, col)

    assert ((a > 0) & (a < 255)).sum() > 200  # a soft edge, not a hard cut-out
    assert a[0].max() == 0 and a[:, -1].max() == 0  # transparent margin
    r, c = to_png(260, 240)
    assert a[r, c] == 255  # deep inside
    cable = np.array([a[to_png(x, y)] for y in (row, row + 1) for x in range(xs + 5, xe)])
    assert cable.min() >= 128 and cable.mean() > 200
    # ... and the cable is still dark in the JPEG (scale 1: x_jpg = x - extent centre + side / 2).
    jpg = load_rgb(rec.jpg).min(axis=2)
    ex0, ey0, ex1, ey1 = rec.sidecar_data["alpha_box_xyxy"]
    dx, dy = round(rec.side / 2 - (ex0 + ex1) / 2), round(rec.side / 2 - (ey0 + ey1) / 2)
    along = jpg[row + dy - 1 : row + dy + 3, xs + 5 + dx : xe - 5 + dx].min(axis=0)
    assert along.max() < 90


def test_soft_alpha_keeps_a_thin_structure_the_image_does_not_show() -> None:
    img = np.full((60, 60, 3), 128, np.uint8)  # no contrast: the guide cannot help
    mask = np.zeros((60, 60), bool)
    mask[29:31, 5:55] = True
    a = soft_alpha(img, mask, 3.0)
    assert a.dtype == np.float32 and a.min() >= 0.0 and a.max() <= 1.0
    assert a[mask].min() >= 0.5 and a[~mask].max() <= 0.5
    assert a[:10].max() == 0.0  # far from the edge: exactly 0
    np.testing.assert_array_equal(soft_alpha(img, mask, 0.0), mask.astype(np.float32))
    with pytest.raises(ValueError, match="mask shape"):
        soft_alpha(img, mask[1:], 1.5)


def test_soft_alpha_follows_the_image_edge() -> None:
    # The image edge is at x=30; the mask edge, 1 px too far, at x=31. Guided by the image, the alpha
    # stays high just inside the true edge and drops on the wrongly included column (to the 0.5 floor),
    # where a plain feather of the same radius would blur across both.
    img = np.full((40, 60, 3), 220, np.uint8)
    img[:, :30] = 30
    mask = np.zeros((40, 60), bool)
    mask[:, :31] = True
    a = soft_alpha(img, mask, 2.0)
    plain_feather = cv2.blur(mask.astype(np.float32), (5, 5))
    assert a[20, 29] > 0.95 > plain_feather[20, 29]
    assert a[20, 30] == pytest.approx(0.5, abs=0.01)
    assert a[20, 30] < plain_feather[20, 30]
    assert a[20, 31] < plain_feather[20, 31]
    assert a[20, 36:].max() == 0.0


def test_sidecar_has_the_keys_and_merges_meta(tmp_path: Path, product) -> None:
    cand = product[3]
    meta = {"backend": "mobile_sam", "keyframes": {"count": np.int64(4), "mean_ms": np.float32(812.5)}, "run": "r1"}
    rec = export_still(tmp_path, "p1", cand, meta)
    data = json.loads(rec.sidecar.read_text())
    assert data == rec.sidecar_data
    for key in ("product_id", "status", "source", "frame_index", "timestamp", "frame_size", "box_xyxy",
                "scores", "outputs", "options", "backend", "keyframes", "run"):
        assert key in data, key
    assert data["status"] == "ok" and data["source"] == "turntable.mp4"
    assert data["frame_index"] == 12 and data["timestamp"] == pytest.approx(0.4)
    assert data["box_xyxy"] == list(cand.box)
    assert data["keyframes"] == {"count": 4, "mean_ms": 812.5}
    assert data["scores"]["total"] == pytest.approx(cand.score.total)
    with Image.open(rec.jpg) as jpg, Image.open(rec.png) as png:
        assert [jpg.width, jpg.height] == [data["outputs"]["jpg"]["side"]] * 2
        assert [png.width, png.height] == [data["outputs"]["png"]["width"], data["outputs"]["png"]["height"]]


def test_small_product_is_not_upscaled(tmp_path: Path) -> None:
    img, mask, _ = product_frame(axes=(50, 35), cable=False)
    rec = export_still(tmp_path, "small", candidate_for(img, mask), {}, ExportOptions(size=1000))
    out = rec.sidecar_data["outputs"]["jpg"]
    assert rec.scale == 1.0 and not out["upscaled"]
    assert 100 / 0.85 <= rec.side <= 106 / 0.85  # product side / fill, not 1000
    assert check_marketplace_jpeg(rec.jpg) == []


def test_tiny_product_is_raised_to_the_minimum_side(tmp_path: Path) -> None:
    img, mask, _ = product_frame(axes=(15, 12), cable=False)
    rec = export_still(tmp_path, "tiny", candidate_for(img, mask), {})
    assert rec.side == min_output_side(0.85) and rec.scale > 1.0
    assert rec.sidecar_data["outputs"]["jpg"]["upscaled_to_min_side"] is True
    assert check_marketplace_jpeg(rec.jpg) == []


def test_upscale_flag_reaches_the_requested_size(tmp_path: Path) -> None:
    img, mask, _ = product_frame(axes=(50, 35), cable=False)
    rec = export_still(tmp_path, "big", candidate_for(img, mask), {}, ExportOptions(size=600, upscale=True))
    assert rec.side == 600 and rec.scale > 4.5
    assert rec.sidecar_data["outputs"]["jpg"]["upscaled"] is True
    assert check_marketplace_jpeg(rec.jpg) == []


def test_requested_size_smaller_than_the_product_downscales(tmp_path: Path, product) -> None:
    rec = export_still(tmp_path, "p1", product[3], {}, ExportOptions(size=200, fill=0.8))
    assert rec.side == 200 and rec.scale < 1.0
    assert check_marketplace_jpeg(rec.jpg, fill_range=(0.76, 0.84)) == []


@pytest.mark.parametrize("quality", [5, 20, 44, 50, 75, 95, 100])
def test_border_is_pure_white_at_any_quality(tmp_path: Path, product, quality: int) -> None:
    rec = export_still(tmp_path, "p1", product[3], {}, ExportOptions(jpeg_quality=quality, size=160))
    assert check_marketplace_jpeg(rec.jpg) == []
    used = rec.sidecar_data["outputs"]["jpg"]["quality"]
    # At 5, 20 and 44 the IJG DC quantiser rounds white down to 254: re-encoded at 100.
    assert used == (100 if quality in (5, 20, 44) else quality)


def test_product_hugging_the_frame_edge_gets_white_padding(tmp_path: Path) -> None:
    img, mask, _ = product_frame(centre=(85, 240), cable=False)  # ellipse reaches x = -5: cut at the edge
    cand = candidate_for(img, mask)
    assert cand.offset[0] == 0 and cand.box[0] == 0
    rec = export_still(tmp_path, "edge", cand, {})
    assert check_marketplace_jpeg(rec.jpg) == []
    a = load_rgba(rec.png)[..., 3]
    m = rec.sidecar_data["outputs"]["png"]["margin_px"]
    assert a[:, :m].max() == 0  # transparent padding where the frame ended
    assert a[:, m].max() == 255  # the product starts right after it


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"fill": 0.0}, "fill"),
        ({"fill": 1.0}, "fill"),
        ({"fill": float("nan")}, "fill"),
        ({"size": 50}, "size must be in"),
        ({"size": 300.0}, "size must be an int"),
        ({"upscale": "yes"}, "upscale"),
        ({"jpeg_quality": 0}, "jpeg_quality"),
        ({"jpeg_quality": 101}, "jpeg_quality"),
        ({"feather_px": -1.0}, "feather_px"),
        ({"feather_px": float("inf")}, "feather_px"),
    ],
)
def test_bad_options_raise_clear_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ExportOptions(**kwargs)


def test_min_output_side_keeps_whole_jpeg_blocks_white() -> None:
    assert min_output_side(0.5) == 64
    assert min_output_side(0.85) == 120
    for fill in (0.5, 0.85, 0.9, 0.95):
        side = min_output_side(fill)
        assert (1 - fill) * side / 2 >= 9


def test_bad_product_id_or_meta_writes_nothing(tmp_path: Path, product) -> None:
    with pytest.raises(ValueError, match="product_id"):
        export_still(tmp_path, "../p1", product[3], {})
    with pytest.raises(ValueError, match="frame_index"):
        export_still(tmp_path, "p1", product[3], {"frame_index": 3})
    with pytest.raises(TypeError, match="sidecar.stats"):
        export_still(tmp_path, "p1", product[3], {"stats": object()})
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_leaves_no_temp_files_and_never_half_a_file(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "x.json"
    atomic_write_bytes(target, b"old")
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new" and no_temp_files(tmp_path)
    assert (target.stat().st_mode & 0o777) == 0o644

    def crash(*_args, **_kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(export.os, "fsync", crash)  # dies after the data went into the temp file
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(target, b"half")
    assert target.read_bytes() == b"new" and no_temp_files(tmp_path)


def test_export_leaves_no_temp_files(tmp_path: Path, product) -> None:
    export_still(tmp_path, "p1", product[3], {})
    write_manifest(tmp_path, {"products": ["p1"]})
    assert no_temp_files(tmp_path)


def test_no_still_record_and_manifest(tmp_path: Path) -> None:
    reason = "every frame cut by the edge"
    path = write_no_still_record(tmp_path / "out", "p2", reason, {"best_total": np.float64(0.02)})
    assert json.loads(path.read_text()) == {
        "product_id": "p2", "status": "no_still", "reason": reason, "best_total": 0.02
    }
    with pytest.raises(ValueError, match="reason"):
        write_no_still_record(tmp_path, "p2", " ", {})
    m = write_manifest(tmp_path / "out", {"run": "r1", "products": {"p2": "no_still"}, "fps": float("nan")})
    assert m.name == "manifest.json"
    assert json.loads(m.read_text()) == {"run": "r1", "products": {"p2": "no_still"}, "fps": None}


# --- the checker itself must catch what it claims to ------------------------------------------------


def _jpeg(tmp_path: Path, rgb: np.ndarray) -> Path:
    path = tmp_path / "t.jpg"
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=100, subsampling=0)
    path.write_bytes(buf.getvalue())
    return path


def test_checker_catches_bad_images(tmp_path: Path) -> None:
    good = np.full((200, 200, 3), 255, np.uint8)
    good[15:185, 40:160] = 40  # longer side 170 = 0.85
    assert check_marketplace_jpeg(_jpeg(tmp_path, good)) == []
    grey_border = good.copy()
    grey_border[0, 100] = 240
    assert any("border" in p for p in check_marketplace_jpeg(_jpeg(tmp_path, grey_border)))
    assert any("square" in p for p in check_marketplace_jpeg(_jpeg(tmp_path, good[:, :190])))
    small = np.full((200, 200, 3), 255, np.uint8)
    small[50:150, 50:150] = 40
    assert any("fills" in p for p in check_marketplace_jpeg(_jpeg(tmp_path, small)))
    off = np.full((200, 200, 3), 255, np.uint8)
    off[10:180, 10:100] = 40
    assert any("centre" in p for p in check_marketplace_jpeg(_jpeg(tmp_path, off)))
    assert any("no product" in p for p in check_marketplace_jpeg(_jpeg(tmp_path, np.full((64, 64, 3), 255, np.uint8))))
