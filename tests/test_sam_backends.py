"""SamSegmenter's encode/decode contract, dense-prompt geometry, speed options and the backend registry.

Random-weight models only (no weights can be downloaded here): these tests check plumbing, shapes, the
frames prompts are mapped into and numerical agreement between speed options, not segmentation quality.
MobileSAM (vit_t, ~1-2 s an encode) is encoded a handful of times; vit_b is never encoded (~12 s).
"""
from __future__ import annotations

import copy
import os

import numpy as np
import pytest
import torch
from segment_anything.utils.transforms import ResizeLongestSide

from turncrop.models.base import Embedding, MaskSet, Prompt, Segmenter
from turncrop.models.registry import BACKENDS, build_segmenter, resolve_backend
from turncrop.models.sam import (
    MASK_LOGIT_CLIP,
    SamFeatures,
    SamSegmenter,
    mask_logits_to_mask_input,
)
from turncrop.models.weights import WeightsError, load_state_dict

H, W = 256, 320
BOX = np.array([100.0, 60.0, 240.0, 200.0], np.float32)


def _frame(seed: int) -> np.ndarray:
    """(H, W, 3) uint8: noisy background with a coloured box where BOX is."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 80, (H, W, 3), dtype=np.uint8)
    img[60:200, 100:240] = rng.integers(0, 256, 3, dtype=np.uint8)
    return img


def _box_prior() -> np.ndarray:
    logits = np.full((H, W), -6.0, np.float32)
    logits[60:200, 100:240] = 6.0
    return logits


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))


@pytest.fixture(scope="module")
def vit_t_model(vit_t_checkpoint):
    return load_state_dict(vit_t_checkpoint, "vit_t")


@pytest.fixture(scope="module")
def seg(vit_t_model) -> SamSegmenter:
    return SamSegmenter(vit_t_model)


@pytest.fixture(scope="module")
def emb_a(seg) -> Embedding:
    return seg.encode(_frame(1), frame_index=7)


# ---- encode / decode contract ---------------------------------------------------------------------------


def test_is_a_segmenter_named_after_its_checkpoint(seg):
    assert isinstance(seg, Segmenter)
    assert (seg.name, seg.arch) == ("mobile_sam", "vit_t")


def test_encode_returns_features_and_sizes(emb_a):
    assert emb_a.image_size == (H, W) and emb_a.frame_index == 7
    data = emb_a.data
    assert isinstance(data, SamFeatures)
    assert data.features.shape == (1, 256, 64, 64) and data.features.dtype == torch.float32
    assert data.original_size == (H, W)
    assert data.input_size == (819, 1024)  # ResizeLongestSide(1024) of 256x320
    assert torch.isfinite(data.features).all()
    assert emb_a.stats["encode_ms"] > 0


def test_decode_contract(seg, emb_a):
    before = seg.decode_calls
    out = seg.decode(emb_a, Prompt(box=BOX), _frame(1))
    assert isinstance(out, MaskSet)
    assert out.masks.shape == out.logits.shape == (3, H, W)
    assert out.masks.dtype == bool and out.logits.dtype == np.float32
    assert out.scores.shape == (3,) and out.scores.dtype == np.float32
    assert ((out.scores >= 0) & (out.scores <= 1)).all()
    np.testing.assert_array_equal(out.masks, out.logits > 0)
    assert out.masks.any(axis=(1, 2)).any() and not out.masks.all()
    assert seg.decode_calls == before + 1
    d = seg.last_decoder_inputs
    assert d.had_box and not d.had_mask_input and not d.had_points and d.output_size == (H, W)


def test_decode_reuses_an_embedding_after_another_image_was_encoded(seg, emb_a):
    prompt = Prompt(box=BOX, mask_logits=_box_prior())
    first = seg.decode(emb_a, prompt, _frame(1))
    calls = seg.encode_calls
    emb_b = seg.encode(_frame(2))
    assert seg.encode_calls == calls + 1
    again = seg.decode(emb_a, prompt, _frame(3))  # a later frame: only its size matters
    np.testing.assert_array_equal(again.logits, first.logits)
    np.testing.assert_array_equal(again.scores, first.scores)
    other = seg.decode(emb_b, prompt, _frame(2))
    assert not np.allclose(other.logits, first.logits)


def test_box_mask_and_points_reach_the_prompt_encoder(seg, emb_a, monkeypatch):
    pe = seg.model.prompt_encoder
    original, seen = pe.forward, {}

    def spy(points, boxes, masks):
        seen.update(points=points, boxes=boxes, masks=masks, threads=torch.get_num_threads())
        return original(points, boxes, masks)

    monkeypatch.setattr(pe, "forward", spy)
    prior = _box_prior()
    pts = np.array([[170.0, 130.0], [10.0, 10.0]], np.float32)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # as if another library had lowered it
    try:
        with_mask = seg.decode(emb_a, Prompt(points=pts, point_labels=np.array([1, 0]), box=BOX, mask_logits=prior),
                               _frame(1))
        assert torch.get_num_threads() == 1  # restored
    finally:
        torch.set_num_threads(previous)
    assert seen["threads"] == seg.num_threads
    scale = 1024 / W  # SAM's input frame: long side 1024
    torch.testing.assert_close(seen["boxes"], torch.from_numpy(BOX * scale)[None], atol=0.5, rtol=0)
    coords, labels = seen["points"]
    assert coords.shape == (1, 2, 2) and labels.tolist() == [[1, 0]]
    torch.testing.assert_close(coords[0], torch.tensor(pts * scale), atol=0.5, rtol=0)
    assert seen["masks"].shape == (1, 1, 256, 256) and seen["masks"].dtype == torch.float32
    assert seen["masks"] is seg.last_decoder_inputs.mask_input
    without_mask = seg.decode(emb_a, Prompt(points=pts, point_labels=np.array([1, 0]), box=BOX), _frame(1))
    assert seen["masks"] is None
    assert not np.allclose(with_mask.logits, without_mask.logits)  # the dense prompt changes the result


def test_prompts_on_a_larger_frame_map_to_the_same_sam_coordinates(seg, emb_a):
    seg.decode(emb_a, Prompt(box=BOX), _frame(1))
    ref = seg.last_decoder_inputs.box
    big = np.zeros((2 * H, 2 * W, 3), np.uint8)
    out = seg.decode(emb_a, Prompt(box=BOX * 2), big)
    torch.testing.assert_close(seg.last_decoder_inputs.box, ref)
    assert out.masks.shape == (3, 2 * H, 2 * W)


def test_decode_rejects_bad_inputs(seg, emb_a, vit_b_checkpoint):
    with pytest.raises(ValueError, match="at least one of points, box or mask_logits"):
        seg.decode(emb_a, Prompt(), _frame(1))
    with pytest.raises(ValueError, match=r"mask_logits is \(10, 10\), the decoded image is \(256, 320\)"):
        seg.decode(emb_a, Prompt(mask_logits=np.zeros((10, 10), np.float32)), _frame(1))
    foreign = Embedding(image_size=(H, W), data={"colour_model": 1})
    with pytest.raises(ValueError, match="not made by a SAM backend"):
        seg.decode(foreign, Prompt(box=BOX), _frame(1))
    vit_b_feats = SamFeatures(emb_a.data.features, (819, 1024), (H, W), "vit_b")
    with pytest.raises(ValueError, match="comes from a vit_b model, this one is vit_t"):
        seg.decode(Embedding((H, W), data=vit_b_feats), Prompt(box=BOX), _frame(1))
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        seg.encode(np.zeros((H, W), np.uint8))
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        seg.encode(np.zeros((H, W, 3), np.float32))


def test_vit_b_decodes_through_segment_anything(vit_b_checkpoint):
    """SAM (vit_b) shares the code path; its encoder is skipped (12 s): features are made up."""
    sam_b = SamSegmenter.from_checkpoint("vit_b", vit_b_checkpoint)
    assert (sam_b.name, sam_b.arch) == ("sam_vit_b", "vit_b")
    assert type(sam_b.model.mask_decoder).__module__.startswith("segment_anything")
    feats = SamFeatures(torch.randn(1, 256, 64, 64), (819, 1024), (H, W), "vit_b")
    out = sam_b.decode(Embedding((H, W), data=feats), Prompt(box=BOX, mask_logits=_box_prior()), _frame(1))
    assert out.masks.shape == (3, H, W)
    np.testing.assert_array_equal(out.masks, out.logits > 0)


# ---- the dense prompt in SAM's frame --------------------------------------------------------------------


def test_mask_input_geometry_clipping_and_padding():
    prior = _box_prior()
    prior[0, 0], prior[-1, -1] = np.inf, -np.inf
    mi = mask_logits_to_mask_input(prior)
    assert mi.shape == (1, 1, 256, 256) and mi.dtype == torch.float32
    assert float(mi.max()) <= MASK_LOGIT_CLIP and float(mi.min()) >= -MASK_LOGIT_CLIP
    # 256x320 -> long side 256: 205x256 (ResizeLongestSide rounding), padded bottom with background.
    assert (mi[0, 0, 205:] == -MASK_LOGIT_CLIP).all() and (mi[0, 0, :205] > -MASK_LOGIT_CLIP).all()
    inside = mi[0, 0, 50:158, 82:190]  # the box scaled by 0.8, two pixels inside its edges
    outside = mi[0, 0, 2:205, :78]  # (0, 0) holds the +inf corner
    assert (inside > 5.5).all() and (outside < -5.5).all()
    with pytest.raises(ValueError, match="NaN"):
        mask_logits_to_mask_input(np.full((4, 4), np.nan, np.float32))


def test_mask_input_is_the_inverse_of_sams_own_upsampling(vit_t_model):
    """Upsampling mask_input with SAM's postprocess_masks (what SAM does to its low-res logits) must give the
    prior back: that is what "in SAM's frame" means. An off-by-a-few-pixels frame would fail the edge test."""
    rng = np.random.default_rng(0)
    for h, w in ((H, W), (720, 1280), (480, 360)):
        y0, x0 = int(rng.integers(h // 8, h // 3)), int(rng.integers(w // 8, w // 3))
        truth = np.zeros((h, w), bool)
        truth[y0: y0 + h // 2, x0: x0 + w // 2] = True
        mi = mask_logits_to_mask_input(np.where(truth, 8.0, -8.0).astype(np.float32))
        input_size = ResizeLongestSide.get_preprocess_shape(h, w, 1024)
        back = vit_t_model.postprocess_masks(mi, input_size, (h, w))[0, 0].numpy() > 0
        iou = (back & truth).sum() / (back | truth).sum()
        assert iou > 0.98, (h, w, iou)
        ys, xs = np.nonzero(back)
        assert abs(ys.min() - y0) <= 3 and abs(xs.min() - x0) <= 3  # no shift


# ---- speed options against fp32 on the same weights ----------------------------------------------------


def test_channels_last_matches_fp32(vit_t_model, emb_a):
    cl = SamSegmenter(copy.deepcopy(vit_t_model), channels_last=True)  # converts its encoder in place
    feats = cl.encode(_frame(1)).data.features
    assert feats.is_contiguous()  # stored in the standard layout whatever the encoder ran in
    ref = emb_a.data.features
    # Same maths, other conv kernels: float32 rounding only (measured max |diff| ~1e-5 on |x| <= ~4).
    torch.testing.assert_close(feats, ref, atol=1e-4 * float(ref.abs().max()), rtol=1e-4)


def test_bf16_encoder_is_close_to_fp32(vit_t_model, emb_a):
    bf = SamSegmenter(vit_t_model, precision="bf16")
    feats = bf.encode(_frame(1)).data.features
    ref = emb_a.data.features
    assert feats.dtype == torch.float32
    # bfloat16 keeps 8 mantissa bits (~0.4% per op); measured on this random-weight vit_t: cosine 0.9998,
    # relative L2 error ~0.02. Bounds leave ~3x margin yet fail on a real precision bug (e.g. fp32 not restored).
    assert _cosine(feats, ref) > 0.995
    assert float((feats - ref).norm() / ref.norm()) < 0.06
    assert not torch.equal(feats, ref)  # autocast really ran
    out = bf.decode(Embedding((H, W), data=SamFeatures(feats, (819, 1024), (H, W), "vit_t")), Prompt(box=BOX),
                    _frame(1))
    assert out.logits.dtype == np.float32


def test_compile_failure_degrades_to_eager_with_a_warning(vit_t_model, emb_a, monkeypatch):
    def broken_compile(module, *args, **kwargs):
        def run(*a, **k):
            raise RuntimeError("InductorError: no working C++ compiler")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    seg_c = SamSegmenter(vit_t_model, compile=True)
    assert seg_c.compile_status == "pending"
    with pytest.warns(RuntimeWarning, match="torch.compile of the vit_t image encoder failed.*C\\+\\+ compiler"):
        feats = seg_c.encode(_frame(1)).data.features
    assert seg_c.compile_status.startswith("failed: RuntimeError")
    torch.testing.assert_close(feats, emb_a.data.features)


def test_compile_refused_at_wrap_time_also_degrades(vit_t_model, monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("Dynamo is not supported on this Python")

    monkeypatch.setattr(torch, "compile", refuse)
    with pytest.warns(RuntimeWarning, match="falling back to the eager encoder"):
        seg_c = SamSegmenter(vit_t_model, compile=True)
    assert seg_c.compile_status.startswith("failed")


@pytest.mark.skipif(
    os.environ.get("TURNCROP_TEST_COMPILE") != "1",
    reason="compiling the MobileSAM encoder takes ~100 s on 2 cores with a cold inductor cache (it passes here, "
    "~25 s warm); set TURNCROP_TEST_COMPILE=1 to run it",
)
def test_compiled_encoder_matches_fp32(vit_t_model, emb_a):
    seg_c = SamSegmenter(vit_t_model, compile=True)
    feats = seg_c.encode(_frame(1)).data.features
    if seg_c.compile_status != "on":
        pytest.skip(f"torch.compile does not work on this machine: {seg_c.compile_status}")
    ref = emb_a.data.features
    torch.testing.assert_close(feats, ref, atol=1e-4 * float(ref.abs().max()), rtol=1e-4)


def test_options_are_validated(vit_t_model):
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16"):
        SamSegmenter(vit_t_model, precision="fp16")
    with pytest.raises(TypeError, match="channels_last must be a bool"):
        SamSegmenter(vit_t_model, channels_last="yes")
    with pytest.raises(ValueError, match="num_threads"):
        SamSegmenter(vit_t_model, num_threads=0)
    with pytest.raises(TypeError, match="no image_encoder"):
        SamSegmenter(torch.nn.Linear(2, 2))


# ---- registry -------------------------------------------------------------------------------------------


def test_registry_names_and_unknown_name():
    assert BACKENDS == ("graphcut", "mobile_sam", "sam_vit_b", "sam_vit_l", "sam_vit_h")
    with pytest.raises(ValueError, match="unknown backend 'sam2'; valid names: auto, graphcut, mobile_sam"):
        build_segmenter("sam2")


def test_auto_is_graphcut_without_mobilesam_weights_and_mobile_sam_with(turncrop_cache, vit_t_checkpoint):
    assert resolve_backend("auto") == "graphcut"
    assert resolve_backend("auto", checkpoint=vit_t_checkpoint) == "mobile_sam"
    (turncrop_cache / "mobile_sam.pt").write_bytes(vit_t_checkpoint.read_bytes())
    assert resolve_backend("auto") == "mobile_sam"
    built = build_segmenter("auto", precision="bf16", channels_last=True)
    assert isinstance(built, SamSegmenter) and isinstance(built, Segmenter)
    assert (built.name, built.precision, built.channels_last) == ("mobile_sam", "bf16", True)


def test_sam_backend_without_weights_says_how_to_fetch(turncrop_cache):
    with pytest.raises(WeightsError, match="turncrop weights fetch sam_vit_h.*weight-free backend 'graphcut'"):
        build_segmenter("sam_vit_h")


def test_graphcut_takes_no_checkpoint(vit_t_checkpoint):
    with pytest.raises(ValueError, match="weight-free"):
        build_segmenter("graphcut", checkpoint=vit_t_checkpoint)


def test_graphcut_builds_when_available(turncrop_cache):
    graphcut = pytest.importorskip("turncrop.models.graphcut", reason="models/graphcut.py is another engineer's")
    built = build_segmenter("auto")
    assert isinstance(built, graphcut.GraphCutSegmenter) and isinstance(built, Segmenter)
    options = graphcut.GraphCutOptions()
    assert build_segmenter("graphcut", graphcut=options).options is options


# ---- device -------------------------------------------------------------------------------------------------


def test_device_auto_is_the_cpu_without_a_gpu_and_embeddings_live_on_the_cpu(seg, emb_a):
    from turncrop.models.sam import resolve_device

    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert emb_a.data.features.device.type == "cpu"  # picklable to another process or machine
    assert str(next(seg.model.parameters()).device) == "cpu"


@pytest.mark.parametrize("name, problem", [("gpu", "auto, cpu, cuda"), ("cuda:x", "auto, cpu, cuda"),
                                           ("meta", "auto, cpu, cuda")])
def test_bad_device_names_are_refused(name, problem):
    from turncrop.models.sam import resolve_device

    with pytest.raises(ValueError, match=problem):
        resolve_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error(vit_t_model):
    with pytest.raises(ValueError, match="no CUDA GPU"):
        SamSegmenter(vit_t_model, device="cuda")


def test_a_segmenter_pickles_to_another_process_and_encodes_the_same(seg, emb_a):
    import pickle

    again = pickle.loads(pickle.dumps(seg))
    assert again.arch == seg.arch and again.device == seg.device
    torch.testing.assert_close(again.encode(_frame(1)).data.features, emb_a.data.features)
