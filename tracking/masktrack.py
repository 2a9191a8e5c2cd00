"""One object's mask through time: keyframe encodes, dense-prompt propagation in between.

On a keyframe the segmenter encodes the frame and decodes it with the box (and any prior). On the frames
after it the previous mask is warped forward by optical flow, turned into log-odds and decoded, together
with the tracked box, on the last keyframe's embedding. Of the decoder's candidates the one with the best
predicted quality and agreement with the propagated mask wins; a poor or disagreeing result makes the
policy re-key on the spot.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from turncrop.models.base import Embedding, MaskSet, Prompt, Segmenter
from turncrop.tracking.frame import Frame
from turncrop.tracking.keyframes import Decision, KeyframePolicy
from turncrop.tracking.masks import mask_box
from turncrop.tracking.propagation import FlowPropagator

AGREEMENT_WEIGHT = 0.5  # how much agreement with the propagated prior counts against predicted quality


@dataclass(frozen=True)
class MaskResult:
    """The chosen mask of one frame.

    Attributes:
      mask: (H, W) bool.  logits: (H, W) float32, positive = object.
      score: the segmenter's predicted quality of the chosen mask, in [0, 1].
      stability: IoU of the mask thresholded at logit +1 and -1 (SAM's stability score).
      agreement: IoU with the mask propagated from the previous frame (None on an object's first frame).
      keyframe / reason: whether the encoder ran for this frame, and the policy's reason.
    """

    mask: np.ndarray
    logits: np.ndarray
    score: float
    stability: float
    agreement: float | None
    keyframe: bool
    reason: str
    candidate: int


class MaskTracker:
    """Segments one object frame after frame. Not thread-safe; one instance per object."""

    def __init__(self, segmenter: Segmenter, policy: KeyframePolicy, propagator: FlowPropagator) -> None:
        self.segmenter = segmenter
        self.policy = policy
        self.propagator = propagator
        self._embedding: Embedding | None = None
        self._prev_grey: np.ndarray | None = None
        self._prev_mask: np.ndarray | None = None
        self._drift = np.zeros(2, np.float32)

    @property
    def active(self) -> bool:
        return self._prev_mask is not None

    def reset(self) -> None:
        self._embedding = self._prev_grey = self._prev_mask = None
        self._drift[:] = 0
        self.policy.reset()

    def step(self, frame: Frame, box: np.ndarray | None, evidence: np.ndarray | None = None,
             points: np.ndarray | None = None, point_labels: np.ndarray | None = None,
             new_track: bool = False, rekey: bool = False) -> MaskResult:
        """Segment `frame`.

        Args:
          box: (4,) XYXY tracked box of the object, or None to use the propagated mask's box.
          evidence: (H, W) float32 extra log-odds added to the dense prompt (e.g. the empty-stage model).
          points, point_labels: operator clicks (N, 2) / (N,), 1 positive, 0 negative.
          new_track / rekey: force a keyframe (a new track id; the operator asked).
        """
        grey = self.propagator.grey(frame.image)
        prior, propagated = None, None
        motion = 0.0
        if self._prev_mask is not None:
            m = self.propagator.motion(self._prev_grey, grey, frame.size, region=self._prev_mask)
            propagated = self.propagator.warp(self._prev_mask.astype(np.float32), m) > 0.5
            prior = self.propagator.prior_logits(propagated)
            self._drift += m.shift
            if box is None and propagated.any():
                box = np.asarray(mask_box(propagated), np.float32)
        if box is None and prior is None and points is None:
            raise ValueError(f"frame {frame.index}: nothing to segment from (no box, no points, no prior mask)")
        if box is not None and self._embedding is not None:
            size = max(float(box[2] - box[0]), float(box[3] - box[1]), 1.0)
            motion = float(np.hypot(*self._drift)) / size
        dense = prior
        if evidence is not None:
            dense = evidence if dense is None else dense + evidence
        prompt = Prompt(points=points, point_labels=point_labels, box=box, mask_logits=dense)

        decision = self.policy.before_decode(frame.index, motion=motion, new_track=new_track, operator=rekey)
        if decision.keyframe or self._embedding is None:
            result = self._keyframe(frame, prompt, propagated, decision)
        else:
            result = self._choose(self.segmenter.decode(self._embedding, prompt, frame.image), propagated,
                                  decision)
            verdict = self.policy.after_decode(frame.index, score=result.score, agreement=result.agreement)
            if verdict.keyframe:
                result = self._keyframe(frame, prompt, propagated, verdict)
        self._prev_grey, self._prev_mask = grey, result.mask
        if result.keyframe:
            self._drift[:] = 0
        return result

    def _keyframe(self, frame: Frame, prompt: Prompt, propagated: np.ndarray | None,
                  decision: Decision) -> MaskResult:
        self._embedding = self.segmenter.encode(frame.image, frame.index)
        result = self._choose(self.segmenter.decode(self._embedding, prompt, frame.image), propagated, decision)
        self.policy.keyframe_scored(result.score)
        return result

    def _choose(self, masks: MaskSet, propagated: np.ndarray | None, decision: Decision) -> MaskResult:
        agreements = [None] * len(masks.scores)
        ranking = masks.scores.astype(np.float64).copy()
        if propagated is not None:
            agreements = [_iou(m, propagated) for m in masks.masks]
            ranking += AGREEMENT_WEIGHT * np.asarray(agreements)
        best = int(np.argmax(ranking))
        logits = masks.logits[best]
        return MaskResult(
            mask=masks.masks[best],
            logits=logits,
            score=float(masks.scores[best]),
            stability=_iou(logits > 1.0, logits > -1.0),
            agreement=agreements[best],
            keyframe=decision.keyframe,
            reason=decision.reason,
            candidate=best,
        )


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 1.0
