"""One object's mask through time: keyframe encodes, dense-prompt propagation in between.

On a keyframe the segmenter encodes the frame and decodes it with the box (and any prior). On the frames
after it the previous mask is warped forward by optical flow, turned into log-odds and decoded, together
with the tracked box, on the last keyframe's embedding. Of the decoder's candidates the one with the best
predicted quality and agreement with the propagated mask wins; a poor or disagreeing result makes the
policy re-key on the spot.

Live streams (`defer_keyframes=True`): a 30 fps stream leaves ~30 ms a frame, less than one decode costs
on a CPU, so once an object has an embedding nothing is encoded or decoded on the frame path. Each frame's
mask is the carried one: the propagated prior plus the caller's evidence (the empty-stage model), cut at
zero inside the tracked box. Every frame also leaves a `KeyframeRequest` for the caller (`take_request`,
newest wins): a keyframe when the policy decided one since the last request was taken (encode + decode),
otherwise a refresh (decode with the dense prompt on the current embedding). The caller runs
`encode_keyframe` in a worker whenever it is free and hands the result to `install`: the decoded mask is
warped by one flow step from its frame to the last frame segmented and becomes the prior of the next one;
masks already returned are kept. An object's first keyframe is encoded in place unless the caller gives
evidence (the empty-stage model) to carry as the mask until the background keyframe arrives.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from turncrop.models.base import Embedding, MaskSet, Prompt, Segmenter
from turncrop.tracking.frame import Frame
from turncrop.tracking.keyframes import Decision, KeyframePolicy
from turncrop.tracking.masks import mask_agreement, mask_box, mask_iou
from turncrop.tracking.propagation import FlowPropagator, Motion

AGREEMENT_WEIGHT = 0.5  # how much agreement with the propagated prior counts against predicted quality
CARRY_BOX_MARGIN = 0.05  # a carried live mask may reach this fraction of the box size beyond the box


@dataclass(frozen=True)
class MaskResult:
    """The chosen mask of one frame.

    Attributes:
      mask: (H, W) bool.  logits: (H, W) float32, positive = object.
      score: the segmenter's predicted quality of the chosen mask, in [0, 1].
      stability: IoU of the mask thresholded at logit +1 and -1 (SAM's stability score).
      agreement: `mask_agreement` with the mask propagated from the previous frame (None on an object's first frame).
      keyframe / reason: whether the encoder ran for this frame, and the policy's reason.
      motion: the flow from the previous frame over the previous mask (None on an object's first frame).
    """

    mask: np.ndarray
    logits: np.ndarray
    score: float
    stability: float
    agreement: float | None
    keyframe: bool
    reason: str
    candidate: int
    motion: Motion | None = None


@dataclass(frozen=True)
class KeyframeRequest:
    """Work left for a live stream's worker: decode `frame`, encoding it first when it is a keyframe.

    Attributes:
      frame: the frame.  prompt: its prompt (box, dense prior).  propagated: (H, W) bool mask propagated
      to it, or None.  grey: its flow image (the propagator's grey).  decision: the policy's decision
      (`decision.keyframe` False: a refresh on `embedding`).  generation: the tracker's generation when
      requested; a reset makes the request stale.  embedding: the embedding a refresh decodes on.
    """

    frame: Frame
    prompt: Prompt
    propagated: np.ndarray | None
    grey: np.ndarray
    decision: Decision
    generation: int
    embedding: Embedding | None = None


@dataclass(frozen=True)
class Keyframe:
    """The outcome of a request: the embedding decoded on (new when `encoded`) and the mask decoded."""

    request: KeyframeRequest
    embedding: Embedding
    result: MaskResult
    encoded: bool = True


class BoxAnchor(Protocol):
    """A box prompt carried by the object's motion (`tracking.recovery.ObjectWatch`)."""

    def move(self, shift: np.ndarray) -> None: ...

    def box(self, size: tuple[int, int]) -> np.ndarray | None: ...


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
        self._score = 0.0  # predicted quality of the last decoded mask, carried by live frames
        self._owed_keyframe: Decision | None = None  # a refresh judged poor asks the next request to re-key
        self._seed: np.ndarray | None = None  # the object's mask given for the next frame (`seed`)

    @property
    def active(self) -> bool:
        return self._prev_mask is not None

    def reset(self) -> None:
        self._embedding = self._prev_grey = self._prev_mask = None
        self._drift[:] = 0
        self._generation += 1  # keyframes requested before the reset belong to another object
        self._request = None
        self._score = 0.0
        self._owed_keyframe = None
        self._seed = None
        self.policy.reset()

    def seed(self, mask: np.ndarray) -> None:
        """The object's (H, W) bool mask on the next frame `step` segments, known beforehand (an operator's
        mask prompt). It is that frame's dense prompt, turned into log-odds as a propagated mask is, and is
        kept alongside clicks on it: both are the operator's word, not a guess carried forward."""
        self._seed = np.asarray(mask, bool)

    def step(self, frame: Frame, box: np.ndarray | None, evidence: np.ndarray | None = None,
             points: np.ndarray | None = None, point_labels: np.ndarray | None = None,
             new_track: bool = False, rekey: bool = False, recovery: bool = False,
             anchor: BoxAnchor | None = None) -> MaskResult:
        """Segment `frame`.

        Args:
          box: (4,) XYXY tracked box of the object, or None to use the propagated mask's box.
          evidence: (H, W) float32 extra log-odds added to the dense prompt (e.g. the empty-stage model).
          points, point_labels: operator clicks (N, 2) / (N,), 1 positive, 0 negative.
          new_track / rekey / recovery: force a keyframe (a new track id; the operator asked; the object
            was lost).
          anchor: a box that moves with the object's flow and is the box prompt when `box` is None.
        """
        grey = self.propagator.grey(frame.image)
        motion = 0.0
        seeded, self._seed = self._seed, None
        flow, propagated, prior, box = self._carry(frame, grey, seeded, box, anchor)
        if box is None and prior is None and points is None:
            raise ValueError(f"frame {frame.index}: nothing to segment from (no box, no points, no prior mask)")
        if box is not None and self._embedding is not None:
            size = max(float(box[2] - box[0]), float(box[3] - box[1]), 1.0)
            motion = float(np.hypot(*self._drift)) / size
        # The operator's clicks overrule the carried-forward mask, not a mask the operator gave.
        dense = prior if points is None or seeded is not None else None
        if evidence is not None:
            dense = evidence if dense is None else dense + evidence
        prompt = Prompt(points=points, point_labels=point_labels, box=box, mask_logits=dense)

        decision = self.policy.before_decode(frame.index, motion=motion, new_track=new_track, operator=rekey,
                                             recovery=recovery)
        # Live, with the caller's evidence (the stage model) to carry, even an object's first keyframe is
        # encoded in the background: until it arrives the evidence alone is the mask.
        carry_first = self.defer_keyframes and self._embedding is None and evidence is not None and points is None
        defer = self.defer_keyframes and (self._embedding is not None or carry_first)
        if points is not None and seeded is None:
            propagated = None  # ranking candidates by agreement with the mask being corrected defeats the clicks
        if (self._embedding is None and not carry_first) or (decision.keyframe and not defer):
            result = self._keyframe(frame, prompt, propagated, decision)
        elif defer:
            result = self._carried(frame, grey, prompt, propagated, decision)
        else:
            result = choose_mask(self.segmenter.decode(self._embedding, prompt, frame.image), propagated,
                                  decision)
            verdict = self.policy.after_decode(frame.index, score=result.score, agreement=result.agreement)
            if verdict.keyframe:
                result = self._keyframe(frame, prompt, propagated, verdict)
        self._prev_grey, self._prev_mask = grey, result.mask
        if result.keyframe:
            self._drift[:] = 0
        return dataclasses.replace(result, motion=flow)

    def _carry(self, frame: Frame, grey: np.ndarray, seeded: np.ndarray | None, box: np.ndarray | None,
               anchor: BoxAnchor | None) -> tuple[Motion | None, np.ndarray | None, np.ndarray | None,
                                                  np.ndarray | None]:
        """The previous mask carried to `frame`: (flow, propagated (H, W) bool, its prior log-odds, box prompt).

        The operator's `seeded` mask stands in for the propagated one; `box` None is the anchor's box when an
        `anchor` is given, else the propagated mask's box. Each is None where there is nothing to carry. The
        flow also moves the anchor and adds to the drift the keyframe policy measures.
        """
        prior, propagated, flow = None, None, None
        if self._prev_mask is not None:
            flow = self.propagator.motion(self._prev_grey, grey, frame.size, region=self._prev_mask)
            propagated = self.propagator.warp(self._prev_mask.astype(np.float32), flow) > 0.5
            self._drift += flow.shift
            if anchor is not None:
                anchor.move(flow.shift)
                box = anchor.box(frame.size) if box is None else box
        if seeded is not None:
            propagated = seeded
        if anchor is not None and propagated is not None and not propagated.any() and box is not None:
            propagated = None  # a lost mask carried forward as "background everywhere" would keep it lost
        if propagated is not None:
            prior = self.propagator.prior_logits(propagated)
            if seeded is None and flow is not None and self.propagator.jumped(flow):
                # Where the flow explains little of the change (photos taken walking round an object) the
                # carried mask still says where the object was, not where it was not: it may have grown.
                prior = np.maximum(prior, 0)
            if box is None and propagated.any():
                box = np.asarray(mask_box(propagated), np.float32)
        return flow, propagated, prior, box

    def forget_mask(self) -> None:
        """Drop the carried-forward mask (it was judged lost): the next frame has no dense prior, and its
        motion is measured over the whole frame."""
        if self._prev_mask is not None:
            self._prev_mask = np.zeros_like(self._prev_mask)

    def take_request(self) -> KeyframeRequest | None:
        """The newest request for the worker (keyframe or refresh), if any; handed out once."""
        request, self._request = self._request, None
        return request

    def encode_keyframe(self, request: KeyframeRequest) -> Keyframe:
        """`run_request` with this tracker's segmenter. Safe on a worker thread: touches no tracker state."""
        return run_request(self.segmenter, request)

    def install(self, keyframe: Keyframe) -> bool:
        """Use a finished request; False (and nothing changes) if it is stale.

        A keyframe's embedding is used from now on. The decoded mask, warped from its frame to the last
        frame segmented, becomes the prior of the next frame; masks already returned are left as they were.
        A refresh the policy judges poor or disagreeing turns the next request into a keyframe.
        """
        request = keyframe.request
        if request.generation != self._generation or self._prev_mask is None:
            return False
        result = keyframe.result
        if keyframe.encoded:
            self._embedding = keyframe.embedding
            self.policy.keyframe_scored(result.score)
        else:
            verdict = self.policy.after_decode(request.frame.index, score=result.score, agreement=result.agreement)
            if verdict.keyframe:
                self._owed_keyframe = verdict
        self._score = result.score
        mask = result.mask
        if request.grey is not self._prev_grey:  # frames were segmented while it encoded
            m = self.propagator.motion(request.grey, self._prev_grey, request.frame.size, region=mask)
            mask = self.propagator.warp(mask.astype(np.float32), m) > 0.5
        self._prev_mask = mask
        return True

    def _carried(self, frame: Frame, grey: np.ndarray, prompt: Prompt, propagated: np.ndarray | None,
                 decision: Decision) -> MaskResult:
        """A live frame: the carried mask now, a request (keyframe or refresh) for the worker."""
        h, w = frame.size
        logits = prompt.mask_logits if prompt.mask_logits is not None else np.zeros((h, w), np.float32)
        mask = logits > 0
        if prompt.box is not None:
            x0, y0, x1, y1 = _grown(prompt.box, CARRY_BOX_MARGIN, w, h)
            inside = np.zeros_like(mask)
            inside[y0:y1, x0:x1] = True
            mask &= inside
        owed = self._request is not None and self._request.decision.keyframe
        if not decision.keyframe and owed:
            decision = self._request.decision  # a keyframe not yet taken: the newer frame takes its place
        elif not decision.keyframe and self._owed_keyframe is not None:
            decision = self._owed_keyframe
        if decision.keyframe:
            self._owed_keyframe = None
            self._drift[:] = 0  # the policy counts from this keyframe on; so does the motion measure
        self._request = KeyframeRequest(frame, prompt, propagated, grey, decision, self._generation,
                                        embedding=None if decision.keyframe else self._embedding)
        reason = f"{decision.reason}, encoding in the background" if decision.keyframe else "carried"
        return MaskResult(mask=mask, logits=logits, score=self._score,
                          stability=mask_iou(logits > 1.0, logits > -1.0), agreement=None, keyframe=False,
                          reason=reason, candidate=-1)

    def _keyframe(self, frame: Frame, prompt: Prompt, propagated: np.ndarray | None,
                  decision: Decision) -> MaskResult:
        self._embedding = self.segmenter.encode(frame.image, frame.index)
        result = choose_mask(self.segmenter.decode(self._embedding, prompt, frame.image), propagated, decision)
        self.policy.keyframe_scored(result.score)
        self._score = result.score
        return result


def run_request(segmenter: Segmenter, request: KeyframeRequest) -> Keyframe:
    """A live request's work: encode the frame (keyframes only), decode it, choose the mask.

    Pure: it reads only `segmenter` and `request`, so it may run on a worker thread or in another process.
    """
    embedding = request.embedding
    encoded = request.decision.keyframe or embedding is None
    if encoded:
        embedding = segmenter.encode(request.frame.image, request.frame.index)
    masks = segmenter.decode(embedding, request.prompt, request.frame.image)
    return Keyframe(request, embedding, choose_mask(masks, request.propagated, request.decision), encoded)


def choose_mask(masks: MaskSet, propagated: np.ndarray | None, decision: Decision) -> MaskResult:
    """Of the decoder's candidates, the best by predicted quality plus agreement with the propagated mask."""
    agreements = [None] * len(masks.scores)
    ranking = masks.scores.astype(np.float64).copy()
    if propagated is not None:
        agreements = [mask_agreement(m, propagated) for m in masks.masks]
        ranking += AGREEMENT_WEIGHT * np.asarray(agreements)
    best = int(np.argmax(ranking))
    logits = masks.logits[best]
    return MaskResult(
        mask=masks.masks[best],
        logits=logits,
        score=float(masks.scores[best]),
        stability=mask_iou(logits > 1.0, logits > -1.0),
        agreement=agreements[best],
        keyframe=decision.keyframe,
        reason=decision.reason,
        candidate=best,
    )


def _grown(box: np.ndarray, margin: float, w: int, h: int) -> tuple[int, int, int, int]:
    """`box` grown by `margin` of its size on every side, as integer pixel bounds inside the frame."""
    x0, y0, x1, y1 = (float(v) for v in box)
    dx, dy = margin * (x1 - x0), margin * (y1 - y0)
    return (max(0, int(x0 - dx)), max(0, int(y0 - dy)), min(w, int(np.ceil(x1 + dx))), min(h, int(np.ceil(y1 + dy))))
