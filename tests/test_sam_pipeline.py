"""MobileSAM and SAM run the whole pipeline through the real loaders (random-initialised checkpoints).

Random weights make the masks meaningless, so these tests check the contract, not quality: the encoder
runs on keyframes only, every other frame is decoded on the last keyframe's embedding with the tracked box
and the propagated mask as `mask_input`, and the run ends in exported files and a manifest.
"""
from __future__ import annotations

import json

import cv2
import pytest
from data_paths import RECORDINGS

from turncrop.models.registry import build_segmenter
from turncrop.stream.config import load_config
from turncrop.stream.runner import build_pipeline, run, segment
from turncrop.stream.sources import open_source

CONTRACT = {  # keyframes by time only: random weights would otherwise re-key on every quality check
    "keyframes.min_quality": 0.0,
    "keyframes.quality_drop": 1.0,
    "keyframes.min_agreement": 0.0,
    "keyframes.max_interval": 4,
}


@pytest.fixture(scope="module")
def short_session(tmp_path_factory):
    """The sample session's first 30 frames (20 empty, 10 with the product) as an image folder."""
    folder = tmp_path_factory.mktemp("short")
    with open_source(RECORDINGS / "mic_turntable" / "video.mp4") as source:
        for frame in source:
            if frame.index >= 30:
                break
            cv2.imwrite(str(folder / f"{frame.index:05d}.png"), frame.image[..., ::-1])
    return folder


class DecodeSpy:
    """Records, per decode, which embedding was used and what reached SAM's prompt encoder."""

    def __init__(self, segmenter) -> None:
        self.segmenter, self.name = segmenter, segmenter.name
        self.calls: list[dict] = []

    @property
    def encode_calls(self) -> int:
        return self.segmenter.encode_calls

    def encode(self, image, frame_index=-1):
        return self.segmenter.encode(image, frame_index)

    def decode(self, embedding, prompt, image):
        out = self.segmenter.decode(embedding, prompt, image)
        inputs = self.segmenter.last_decoder_inputs
        self.calls.append({"embedding_frame": embedding.frame_index, "box": inputs.had_box,
                           "mask_input": inputs.had_mask_input})
        return out


def _run_contract(backend: str, checkpoint, folder) -> None:
    config = load_config(None, {"backend": backend, "checkpoint": str(checkpoint), **CONTRACT})
    spy = DecodeSpy(build_segmenter(backend, checkpoint=checkpoint))
    results = []
    with open_source(folder) as source:
        pipeline = build_pipeline(config, segmenter=spy, frame_rate=source.fps)
        results = [r for r in segment(source, pipeline) if r.mask_result is not None]

    keyframes = [r.frame.index for r in results if r.keyframe]
    assert results, "the stage model found no product in the sample"
    assert results[0].keyframe and results[0].mask_result.reason == "first"
    assert spy.encode_calls == len(keyframes) == pipeline.policy.keyframes
    assert len(keyframes) < len(results), "the encoder ran on every frame"
    decodes = iter(spy.calls)
    last_key = None
    for result in results:
        call = next(decodes)
        if result.keyframe:
            last_key = result.frame.index
        else:
            # Propagated frame: decoded on the last keyframe's embedding with box and dense prompt.
            assert call["embedding_frame"] == last_key, (result.frame.index, call)
            assert call["box"] and call["mask_input"], (result.frame.index, call)


def test_mobile_sam_encodes_only_keyframes(vit_t_checkpoint, short_session):
    _run_contract("mobile_sam", vit_t_checkpoint, short_session)


@pytest.mark.slow
def test_sam_vit_b_encodes_only_keyframes(vit_b_checkpoint, tmp_path):
    # Six product frames: the vit_b encoder costs ~10 s a call on these CPUs.
    folder = tmp_path / "six"
    folder.mkdir()
    with open_source(RECORDINGS / "mic_turntable" / "video.mp4") as source:
        for frame in source:
            if frame.index >= 26:
                break
            cv2.imwrite(str(folder / f"{frame.index:05d}.png"), frame.image[..., ::-1])
    _run_contract("sam_vit_b", vit_b_checkpoint, folder)


def test_mobile_sam_run_exports_and_writes_the_manifest(vit_t_checkpoint, short_session, tmp_path):
    config = load_config(None, {"backend": "mobile_sam", "checkpoint": str(vit_t_checkpoint), **CONTRACT})
    summary = run(short_session, tmp_path, config)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["backend"] == "mobile_sam" == summary.backend
    assert manifest["frames"] == 30
    assert len(manifest["products"]) == 1
    product = manifest["products"][0]
    assert product["encoder_calls"] == summary.encoder_calls
    # Random weights: the still may be rejected, but the product always leaves a record saying which.
    record = json.loads((tmp_path / f"{product['product_id']}.json").read_text())
    assert record["status"] in ("ok", "no_still") and record["backend"] == "mobile_sam"
