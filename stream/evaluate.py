"""Measure a configuration against ground-truth masks: J, F, J&F, encoder calls per frame, speed.

Scored frames are the product's frames, those whose ground truth is not empty; frames where the ground
truth is empty but a mask was produced are counted separately as false alarms.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from turncrop.stream.config import Config
from turncrop.stream.metrics import SequenceScores
from turncrop.stream.runner import build_pipeline, segment
from turncrop.stream.sources import SourceError, natural_key, open_source

_MASK_SUFFIXES = {".png", ".bmp", ".tif", ".tiff"}


def ground_truth_files(gt_dir: str | Path) -> list[Path]:
    folder = Path(gt_dir)
    if not folder.is_dir():
        raise SourceError(f"{folder}: ground-truth mask folder does not exist")
    files = sorted((p for p in folder.iterdir() if p.suffix.lower() in _MASK_SUFFIXES),
                   key=lambda p: natural_key(p.name))
    if not files:
        raise SourceError(f"{folder}: no mask images (png, bmp, tif) in the ground-truth folder")
    return files


def _read_mask(path: Path, size: tuple[int, int]) -> np.ndarray:
    m = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if m is None:
        raise SourceError(f"{path}: cannot read ground-truth mask")
    if m.shape != size:
        raise SourceError(f"{path}: mask is {m.shape[1]}x{m.shape[0]}, frame is {size[1]}x{size[0]}")
    return m >= 128


def evaluate(source_path: str | Path, gt_dir: str | Path, config: Config) -> dict[str, Any]:
    """Run the pipeline over `source_path` and score every frame against `gt_dir` (sorted masks)."""
    gt_files = ground_truth_files(gt_dir)
    scores = SequenceScores()
    false_alarms = 0
    per_frame: list[dict[str, Any]] = []
    started = time.perf_counter()
    with open_source(source_path) as source:
        if source.frame_count is not None and source.frame_count != len(gt_files):
            raise SourceError(f"{gt_dir}: {len(gt_files)} masks for {source.frame_count} frames of {source_path}")
        pipeline = build_pipeline(config, frame_rate=source.fps or 30.0, source=source)
        frames = 0
        for result in segment(source, pipeline):
            if frames >= len(gt_files):
                raise SourceError(f"{gt_dir}: only {len(gt_files)} masks, the source has more frames")
            gt = _read_mask(gt_files[frames], result.frame.size)
            pred = result.detections.mask[0] if len(result.detections) else np.zeros(result.frame.size, bool)
            frames += 1
            if not gt.any():
                false_alarms += int(pred.any())
                continue
            j, f = scores.add(pred, gt)
            per_frame.append({"frame": result.frame.index, "J": round(j, 5), "F": round(f, 5),
                              "keyframe": result.keyframe})
    seconds = time.perf_counter() - started
    encoder_calls = getattr(pipeline.segmenter, "encode_calls", pipeline.policy.keyframes)
    return {
        "source": str(source_path),
        "backend": pipeline.segmenter.name,
        "J_mean": scores.J_mean,
        "F_mean": scores.F_mean,
        "JF_mean": scores.JF_mean,
        "frames": frames,
        "scored_frames": scores.frames,
        "false_alarm_frames": false_alarms,
        "encoder_calls": encoder_calls,
        "encoder_calls_per_frame": encoder_calls / max(frames, 1),
        "fps": frames / seconds if seconds > 0 else 0.0,
        "products": pipeline.products_started,
        "keyframe_reasons": dict(pipeline.policy.reasons),
        "frames_detail": per_frame,
    }


def evaluate_with_baseline(source_path: str | Path, gt_dir: str | Path, config: Config) -> dict[str, Any]:
    """`evaluate`, plus the same backend with the encoder on every frame under the key `per_frame`."""
    report = evaluate(source_path, gt_dir, config)
    every_frame = dataclasses.replace(config, keyframes=dataclasses.replace(config.keyframes, max_interval=1))
    baseline = evaluate(source_path, gt_dir, every_frame)
    report["per_frame"] = {k: baseline[k] for k in
                           ("J_mean", "F_mean", "JF_mean", "frames", "encoder_calls", "encoder_calls_per_frame", "fps")}
    report["J_gap"] = baseline["J_mean"] - report["J_mean"]
    return report
