"""Operator commands: clicks, boxes, re-key and next product steer a running pipeline."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from turncrop.stream.config import load_config
from turncrop.stream.runner import build_pipeline
from turncrop.stream.sources import ImageFolderSource
from turncrop.tracking.operator import CommandApplied, OperatorCommand
from turncrop.tracking.products import InitialPrompt, ProductEnded, ProductStarted

from data_paths import load_masks, write_short_session


@pytest.fixture(scope="module")
def session(tmp_path_factory) -> Path:
    return write_short_session(tmp_path_factory.mktemp("operator_session"))


@pytest.fixture(scope="module")
def truth(session) -> list[np.ndarray]:
    return load_masks(session / "gt")


def _run(session: Path, commands: dict[int, list[OperatorCommand]], last: int, *, stage: bool = True,
         prompt: InitialPrompt | None = None, pipeline_out: list | None = None) -> list:
    """Process frames 0..last, queueing `commands[i]` just before frame i; returns the FrameResults
    (and appends the pipeline to `pipeline_out` when given)."""
    config = load_config("default", {"backend": "graphcut", "stage.enabled": stage})
    pipeline = build_pipeline(config)
    pipeline.prompt = prompt
    if pipeline_out is not None:
        pipeline_out.append(pipeline)
    results = []
    with ImageFolderSource(session, fps=15.0) as source:
        for frame in source:
            if frame.index > last:
                break
            for command in commands.get(frame.index, []):
                pipeline.command(command)
            results.append(pipeline.process(frame))
    return results


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return np.count_nonzero(a & b) / max(np.count_nonzero(a | b), 1)


def _mask(result) -> np.ndarray:
    return result.detections.mask[0] if len(result.detections) else np.zeros(result.frame.image.shape[:2], bool)


def _events(results, kind) -> list:
    return [e for r in results for e in r.events if isinstance(e, kind)]


def test_commands_round_trip_through_json():
    commands = [
        OperatorCommand("point", points=[[10.5, 20.25], [30, 40]], labels=[1, 0]),
        OperatorCommand("box", box=[1, 2, 30, 40]),
        OperatorCommand("rekey"),
        OperatorCommand("next_product"),
    ]
    for command in commands:
        again = OperatorCommand.from_dict(json.loads(json.dumps(command.as_dict())))
        assert again.as_dict() == command.as_dict()
    assert commands[0].points.dtype == np.float32 and commands[0].labels.tolist() == [1, 0]


def test_commands_scale_to_the_working_size():
    half = OperatorCommand("point", points=[[100, 50]], labels=[0]).scaled(0.5)
    assert half.points.tolist() == [[50, 25]] and half.labels.tolist() == [0]
    assert OperatorCommand("box", box=[10, 20, 30, 40]).scaled(0.5).box.tolist() == [5, 10, 15, 20]
    assert OperatorCommand("rekey").scaled(0.5) == OperatorCommand("rekey")


@pytest.mark.parametrize("data, problem", [
    ({"kind": "wave"}, "unknown kind"),
    ({}, "missing 'kind'"),
    ({"kind": "point", "points": [[1, 2]]}, "missing 'labels'"),
    ({"kind": "point", "points": [[1, 2]], "labels": [2]}, "labels"),
    ({"kind": "point", "points": [1, 2], "labels": [1]}, "(N, 2)"),
    ({"kind": "point", "points": [["a", 2]], "labels": [1]}, "numbers"),
    ({"kind": "box", "box": [10, 10, 5, 20]}, "x1 > x0"),
    ({"kind": "box", "box": [0, 0, float("nan"), 5]}, "x1 > x0"),
    ({"kind": "rekey", "box": [0, 0, 5, 5]}, "takes no box"),
    ({"kind": "rekey", "colour": "red"}, "unknown field"),
    ("rekey", "expected an object"),
])
def test_bad_commands_name_the_problem(data, problem):
    with pytest.raises(ValueError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        OperatorCommand.from_dict(data)


def test_a_drawn_box_starts_a_product_where_nothing_would(session, truth):
    """After "next product" the mic on stage is not a new product, until the operator draws a box on it."""
    ys, xs = np.nonzero(truth[30])
    box = [float(xs.min()) - 4, float(ys.min()) - 4, float(xs.max()) + 5, float(ys.max()) + 5]
    commands = {20: [OperatorCommand("next_product")], 30: [OperatorCommand("box", box=box)]}
    results = _run(session, commands, last=36)
    assert [e.frame_index for e in _events(results, ProductStarted)] == [10, 30]
    assert [e.frame_index for e in _events(results, CommandApplied)] == [20, 30]
    assert not any(len(r.detections) for r in results[21:30])
    assert np.mean([_iou(_mask(r), truth[r.frame.index]) for r in results[30:]]) > 0.8


def test_next_product_ends_the_product_and_waits_for_an_empty_stage(session):
    results = _run(session, {25: [OperatorCommand("next_product")]}, last=69)
    ended = _events(results, ProductEnded)
    assert [(e.frame_index, e.reason) for e in ended][0] == (25, "operator: next product")
    # The mic stays on stage until frame 59: it is not a new product; after it the stage is empty.
    assert [e.frame_index for e in _events(results, ProductStarted)] == [10]
    assert not any(len(r.detections) for r in results[26:])


def test_clicks_correct_a_mask_that_missed_half_the_product(session, truth):
    """A box over only the top half of the mic gives half a mask; positive clicks on the missing half fix it."""
    start = 12
    ys, xs = np.nonzero(truth[start])
    top_half = np.array([xs.min(), ys.min(), xs.max() + 1, (ys.min() + ys.max()) / 2], np.float32)
    prompt = InitialPrompt(frame_index=start, box=top_half)
    click_at = 18
    ys, xs = np.nonzero(truth[click_at])
    lower = ys > (ys.min() + ys.max()) / 2 + 0.15 * (ys.max() - ys.min())
    picks = np.linspace(0, lower.sum() - 1, 3).astype(int)
    clicks = [[float(xs[lower][i]), float(ys[lower][i])] for i in picks]
    command = OperatorCommand("point", points=clicks, labels=[1] * len(clicks))

    # No stage model: nothing but the operator can fix the half mask.
    without = _run(session, {}, last=24, stage=False, prompt=prompt)
    pipelines: list = []
    corrected = _run(session, {click_at: [command]}, last=24, stage=False, prompt=prompt, pipeline_out=pipelines)

    def lower_half_recall(results):
        """Of the product's pixels below its box's middle, the fraction the masks hold (mean over frames)."""
        recalls = []
        for r in results[click_at:]:
            gt = truth[r.frame.index].copy()
            ys = np.nonzero(gt)[0]
            gt[: int((ys.min() + ys.max()) / 2)] = False
            recalls.append(np.count_nonzero(_mask(r) & gt) / max(np.count_nonzero(gt), 1))
        return float(np.mean(recalls))

    def mean_iou(results):
        return float(np.mean([_iou(_mask(r), truth[r.frame.index]) for r in results[click_at:]]))

    assert corrected[click_at].mask_result.keyframe and "operator" in corrected[click_at].mask_result.reason
    assert lower_half_recall(without) < 0.2
    assert lower_half_recall(corrected) > 0.6
    assert mean_iou(corrected) > mean_iou(without)
    # The masks before the correction were wrong: the still comes from after it.
    assert pipelines[0].product.pool.best().frame_index >= click_at
