"""Product life: one object seen first in part is one product; another object taking the stage is another."""
from __future__ import annotations

import numpy as np
import supervision as sv

from turncrop.models.graphcut import GraphCutSegmenter
from turncrop.tracking.frame import Frame
from turncrop.tracking.products import PipelineOptions, ProductEnded, ProductPipeline, ProductStarted

H, W = 240, 320
FIRST = (110, 70, 170, 170)  # x0, y0, x1, y1 of the first object
SECOND = (230, 40, 290, 120)  # the second object, elsewhere on the stage


def _frame(index: int, box: tuple[int, int, int, int], colour: tuple[int, int, int]) -> Frame:
    rng = np.random.default_rng(index)
    image = np.clip(rng.normal(200, 3, (H, W, 3)), 0, 255).astype(np.uint8)
    x0, y0, x1, y1 = box
    image[y0:y1, x0:x1] = colour
    image[y0 + 10:y0 + 20, x0 + 5:x1 - 5] = (240, 220, 40)  # some texture for the colour model
    return Frame(image, index, index / 30.0)


class ScriptedDetector:
    """Returns, for each call, the boxes scripted for that frame (the frames are processed in order)."""

    def __init__(self, boxes: list[list[tuple[int, int, int, int]]]) -> None:
        self.boxes, self.calls = boxes, 0

    def __call__(self, image: np.ndarray) -> sv.Detections:
        boxes = self.boxes[self.calls]
        self.calls += 1
        if not boxes:
            return sv.Detections.empty()
        return sv.Detections(xyxy=np.asarray(boxes, np.float32), confidence=np.full(len(boxes), 0.9, np.float32))


def _run(frames: list[Frame], detector: ScriptedDetector) -> list:
    pipeline = ProductPipeline(GraphCutSegmenter(), PipelineOptions(use_stage=False), detector=detector)
    return [e for f in frames for e in pipeline.process(f).events]


def test_an_object_first_detected_in_part_stays_one_product():
    x0, y0, x1, y1 = FIRST
    corner = (x0, y0, x0 + 15, y0 + 25)  # a sixteenth of the object: ByteTrack gives the whole a new id
    frames = [_frame(i, FIRST, (30, 60, 160)) for i in range(20)]
    detector = ScriptedDetector([[corner]] * 6 + [[FIRST]] * 14)
    events = _run(frames, detector)
    assert [e.frame_index for e in events if isinstance(e, ProductStarted)] == [0]
    assert not [e for e in events if isinstance(e, ProductEnded)]


def test_another_object_taking_the_stage_is_another_product():
    frames = [_frame(i, FIRST, (30, 60, 160)) for i in range(12)] + \
             [_frame(i, SECOND, (150, 40, 40)) for i in range(12, 24)]
    detector = ScriptedDetector([[FIRST]] * 12 + [[SECOND]] * 12)
    events = _run(frames, detector)
    assert [e.frame_index for e in events if isinstance(e, ProductStarted)] == [0, 12]
    assert [(e.frame_index, e.reason) for e in events if isinstance(e, ProductEnded)] == \
        [(12, "another product took the stage")]
