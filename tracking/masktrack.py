"""One object's mask through time: keyframe encodes, dense-prompt propagation in between.

On a keyframe the segmenter encodes the frame and decodes it with the box (and any prior). On the frames
after it the previous mask is warped forward by optical flow, turned into log-odds and decoded, together
with the tracked box, on the last keyframe's embedding. Of the decoder's candidates the one with the best
predicted quality and agreement with the propagated mask wins; a poor or disagreeing result makes the
policy re-key on the spot.

Deferred keyframes (the live pipeline): with `defer_keyframes=True` a keyframe decided while an embedding
exists does not encode on the frame path. The frame is decoded on the previous embedding and a
`KeyframeRequest` is left for the caller (`take_request`), who runs `encode_keyframe` in a worker and later
hands the result to `install`. Reconciliation is deliberately simple: frames segmented meanwhile keep their
propagated masks; the keyframe's own mask is warped by one flow step from the keyframe to the last frame
segmented and replaces that frame's mask as the prior for the next frame; the new embedding is used from
then on. An object's first keyframe (no embedding yet, nothing to propagate) is always encoded in place.
"""
from __future__ import annotations

import dataclasses
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


@dataclass(frozen=True)
class KeyframeRequest:
    """A keyframe decided at `frame` whose encode was deferred.

    Attributes:
      frame: the keyframe.  prompt: its prompt (box, dense prior).  propagated: (H, W) bool mask propagated
      to it, or None.  grey: its flow image (the propagator's grey).  decision: the policy's decision.
      generation: the tracker's generation when requested; a reset makes the request stale.
    """

    frame: Frame
    prompt: Prompt
    propagated: np.ndarray | None
    grey: np.ndarray
    decision: Decision
    generation: int


@dataclass(frozen=True)
class Keyframe:
    """The outcome of a deferred keyframe: its embedding and the mask decoded on it at the keyframe."""

    request: KeyframeRequest
    embedding: Embedding
    result: MaskResult


class MaskTracker:
    """Segments one object frame after frame. Not thread-safe; one instance per object.

    Only `encode_keyframe` may run on another thread (it reads the segmenter, never the tracker's state).
    """

    def __init__(self, segmenter: Segmenter, policy: KeyframePolicy, propagator: FlowPropagator, *,
                 defer_keyframes: bool = False) -> None:
        self.segmenter = segmenter
        self.policy = policy
        self.propagator = propagator
        self.defer_keyframes = defer_keyframes
        self._embedding: Embedding | None = None
        self._prev_grey: np.ndarray | None = None
        self._prev_mask: np.ndarray | None = None
        self._drift = np.zeros(2, np.float32)
        self._generation = 0
        self._request: KeyframeRequest | None = None

    @property
    def active(self) -> bool:
        return self._prev_mask is not None

    def reset(self) -> None:
        self._embedding = self._prev_grey = self._prev_mask = None
        self._drift[:] = 0
        self._generation += 1  # keyframes requested before the reset belong to another object
        self._request = None
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
        dense = prior if points is None else None  # the operator's clicks overrule the carried-forward mask
        if evidence is not None:
            dense = evidence if dense is None else dense + evidence
        prompt = Prompt(points=points, point_labels=point_labels, box=box, mask_logits=dense)

        decision = self.policy.before_decode(frame.index, motion=motion, new_track=new_track, operator=rekey)
        defer = self.defer_keyframes and self._embedding is not None
        if points is not None:
            propagated = None  # ranking candidates by agreement with the mask being corrected defeats the clicks
        if self._embedding is None or (decision.keyframe and not defer):
            result = self._keyframe(frame, prompt, propagated, decision)
        elif decision.keyframe:
            result = self._deferred(frame, grey, prompt, propagated, decision)
        else:
            result = self._choose(self.segmenter.decode(self._embedding, prompt, frame.image), propagated,
                                  decision)
            verdict = self.policy.after_decode(frame.index, score=result.score, agreement=result.agreement)
            if verdict.keyframe and defer:
                self._defer(frame, grey, prompt, propagated, verdict)
                result = dataclasses.replace(result, reason=f"{verdict.reason}, encoding deferred")
            elif verdict.keyframe:
                result = self._keyframe(frame, prompt, propagated, verdict)
        self._prev_grey, self._prev_mask = grey, result.mask
        if result.keyframe:
            self._drift[:] = 0
        return result

    def take_request(self) -> KeyframeRequest | None:
        """The keyframe the last `step` deferred, if any (handed out once)."""
        request, self._request = self._request, None
        return request

    def encode_keyframe(self, request: KeyframeRequest) -> Keyframe:
        """Encode and decode a deferred keyframe. Safe on a worker thread: touches no tracker state."""
        embedding = self.segmenter.encode(request.frame.image, request.frame.index)
        masks = self.segmenter.decode(embedding, request.prompt, request.frame.image)
        return Keyframe(request, embedding, self._choose(masks, request.propagated, request.decision))

    def install(self, keyframe: Keyframe) -> bool:
        """Use a deferred keyframe's embedding from now on; False (and nothing changes) if it is stale.

        The keyframe's mask, warped from the keyframe to the last frame segmented, becomes the prior of
        the next frame; masks already returned are left as they were.
        """
        request = keyframe.request
        if request.generation != self._generation or self._prev_mask is None:
            return False
        self._embedding = keyframe.embedding
        self.policy.keyframe_scored(keyframe.result.score)
        mask = keyframe.result.mask
        if request.grey is not self._prev_grey:  # frames were segmented while it encoded
            m = self.propagator.motion(request.grey, self._prev_grey, request.frame.size, region=mask)
            mask = self.propagator.warp(mask.astype(np.float32), m) > 0.5
        self._prev_mask = mask
        return True

    def _deferred(self, frame: Frame, grey: np.ndarray, prompt: Prompt, propagated: np.ndarray | None,
                  decision: Decision) -> MaskResult:
        """A keyframe decided before decoding: decode on the old embedding now, encode later."""
        result = self._choose(self.segmenter.decode(self._embedding, prompt, frame.image), propagated, decision)
        self._defer(frame, grey, prompt, propagated, decision)
        return dataclasses.replace(result, keyframe=False, reason=f"{decision.reason}, encoding deferred")

    def _defer(self, frame: Frame, grey: np.ndarray, prompt: Prompt, propagated: np.ndarray | None,
               decision: Decision) -> None:
        self._request = KeyframeRequest(frame, prompt, propagated, grey, decision, self._generation)
        self._drift[:] = 0  # the policy counts from this keyframe on; so does the motion measure

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
