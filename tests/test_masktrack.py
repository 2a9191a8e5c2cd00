"""The mask tracker's dense prompt: the mask carried forward by the flow, and what it may say where the frames jump."""
from __future__ import annotations

import numpy as np

from turncrop.models.base import Prompt
from turncrop.models.graphcut import GraphCutSegmenter
from turncrop.tracking.frame import Frame
from turncrop.tracking.keyframes import KeyframeOptions, KeyframePolicy
from turncrop.tracking.masktrack import MaskTracker
from turncrop.tracking.propagation import FlowPropagator


class _RecordingSegmenter(GraphCutSegmenter):
    """The weight-free segmenter, keeping every prompt it was asked to decode."""

    def __init__(self) -> None:
        super().__init__()
        self.prompts: list[Prompt] = []

    def decode(self, embedding, prompt, image):
        self.prompts.append(prompt)
        return super().decode(embedding, prompt, image)


def _frame(index: int, seed: int, side: int) -> Frame:
    """A textured gold square of `side` px centred at (100, 100) on a dark textured backdrop, both drawn from
    `seed`: the same seed is the same view, another one a photo taken from elsewhere."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 100, (200, 200, 3)).astype(np.uint8)
    lo = 100 - side // 2
    image[lo:lo + side, lo:lo + side] = (np.array([200, 160, 40]) + rng.integers(-40, 40, (side, side, 1)))
    return Frame(image, index, index / 30)


def _second_prior(second: Frame) -> np.ndarray:
    segmenter = _RecordingSegmenter()
    tracker = MaskTracker(segmenter, KeyframePolicy(KeyframeOptions(max_interval=1)), FlowPropagator())
    tracker.step(_frame(0, 0, 60), np.array([70, 70, 130, 130], np.float32))
    tracker.step(second, np.array([60, 60, 140, 140], np.float32))
    return segmenter.prompts[-1].mask_logits


def test_the_carried_mask_says_where_the_object_was_not_only_where_the_flow_explains_the_frame():
    # Video: the same view: outside the carried mask the prior says background.
    assert _second_prior(_frame(1, 0, 60)).min() < 0
    # The frames jumped (a photo from another place: a new backdrop, the object grown): the flow cannot carry
    # the mask's outline, and the object may now reach past it.
    prior = _second_prior(_frame(1, 1, 76))
    assert prior.min() == 0 and prior[100, 100] > 0
