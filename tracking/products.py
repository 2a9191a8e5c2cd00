"""Products on the stage: when one starts and ends, its mask in every frame, its best still candidates.

A product is one object on the stage from its appearance until the stage is empty again, or until another
object takes its place. It is found by one of three prompts, checked in this order:
  1. an explicit prompt (box and/or points) for a given frame, e.g. from the command line;
  2. the empty-stage model: frames before any product teach it the backdrop, and a blob unlike the
     backdrop is a product;
  3. an object detector, when one is configured.
Boxes get ids from ByteTrack; the mask of every frame comes from `MaskTracker`.

While it runs an operator can steer it with `OperatorCommand`s (`command`): clicks and boxes prompt a
keyframe on the next frame (starting a product if none is on stage), "re-key" forces one, "next product"
ends the product on stage; the stage must then be seen empty before the stage model starts another.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import supervision as sv

from turncrop.models.base import Segmenter
from turncrop.tracking.boxes import BoxTracker
from turncrop.tracking.frame import Frame
from turncrop.tracking.intruders import IntruderOptions, IntruderTracker
from turncrop.tracking.keyframes import KeyframeOptions, KeyframePolicy
from turncrop.tracking.masks import mask_box, mask_iou, resize_mask
from turncrop.tracking.masktrack import Keyframe, KeyframeRequest, MaskResult, MaskTracker
from turncrop.tracking.operator import CommandApplied, OperatorCommand
from turncrop.tracking.propagation import FlowPropagator, PropagationOptions
from turncrop.tracking.recovery import ObjectWatch, RecoveryOptions, watched_step
from turncrop.tracking.stage import MATTE_BAND, StageModel, StageOptions
from turncrop.tracking.stills import CandidatePool, StillScore, StillWeights, score_still

log = logging.getLogger(__name__)

Detector = Callable[[np.ndarray], sv.Detections]


@dataclass(frozen=True)
class InitialPrompt:
    """The operator's prompt for the product visible at `frame_index`, in the source's pixels.

    Attributes:
      box: (4,) XYXY pixels or None.  points: (N, 2) pixels or None, labels (N,) 1 = product, 0 = not.
      mask: (H, W) bool, the product's pixels on that frame (the source's frame size), or None. It becomes
        the dense prompt of the product's first frame, and its bounding box the box when none is given.
    """

    frame_index: int = 0
    box: np.ndarray | None = None
    points: np.ndarray | None = None
    point_labels: np.ndarray | None = None
    mask: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.box is None and self.points is None and self.mask is None:
            raise ValueError("an initial prompt needs a box, points or a mask")
        if self.frame_index < 0:
            raise ValueError(f"the initial prompt's frame must be >= 0, got {self.frame_index}")
        if self.mask is not None and (self.mask.ndim != 2 or self.mask.dtype != bool or not self.mask.any()):
            raise ValueError(f"the initial prompt's mask must be a non-empty (H, W) bool array, got "
                             f"{self.mask.shape} {self.mask.dtype}")


@dataclass(frozen=True)
class ProductOptions:
    min_frames: int = 5  # a product seen for fewer frames was a transient (a hand, a flicker)
    end_frames: int = 3  # consecutive frames without the product that end it
    candidates: int = 8  # best stills kept per product
    min_still_score: float = 0.35  # a best still below this is not exported; the product gets a record
    # A new track whose box and the product's last track box overlap this much (intersection over the
    # smaller box, so a product seen whole after a part of it is the same product) is the same product.
    same_product_overlap: float = 0.3
    track_buffer: int = 15  # frames ByteTrack keeps a lost box

    def __post_init__(self) -> None:
        for name in ("min_frames", "end_frames", "candidates", "track_buffer"):
            if getattr(self, name) < 1:
                raise ValueError(f"products.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("min_still_score", "same_product_overlap"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"products.{name} must be in [0, 1], got {getattr(self, name)}")


@dataclass(frozen=True)
class PipelineOptions:
    """Everything time-related, grouped by stage. Validation lives in each part's own dataclass."""

    stage: StageOptions = field(default_factory=StageOptions)
    use_stage: bool = True  # learn the empty stage from the frames before the first product
    keyframes: KeyframeOptions = field(default_factory=KeyframeOptions)
    propagation: PropagationOptions = field(default_factory=PropagationOptions)
    products: ProductOptions = field(default_factory=ProductOptions)
    stills: StillWeights = field(default_factory=StillWeights)
    intruders: IntruderOptions = field(default_factory=IntruderOptions)
    recovery: RecoveryOptions = field(default_factory=RecoveryOptions)


@dataclass(frozen=True)
class FinalCut:
    """What a live product's best still is cut from when it is exported (`Product.cut_best`): matting, and a
    frame at the source resolution, cost more than a frame's budget, and only the best is exported.

    Attributes:
      frame: the frame at the source resolution.  mask: (h, w) bool decoded mask, at the working size.
      evidence: the stage's (h, w) log-odds when the frame is at the working size too, else None.
      stage: a copy of the stage model at the frame's size (it goes on adapting on the stream), or None:
        the mask is only resized.  band: px each side of the edge the matte may relabel.
    """

    frame: Frame
    mask: np.ndarray
    evidence: np.ndarray | None
    stage: StageModel | None
    band: int


@dataclass
class Product:
    """One product's life on the stage and what was learnt about it."""

    number: int
    first_frame: int
    first_timestamp: float
    pool: CandidatePool
    last_frame: int = -1
    last_timestamp: float = 0.0
    frames: int = 0
    keyframes: int = 0
    keyframe_reasons: Counter = field(default_factory=Counter)
    track_id: int | None = None
    box: np.ndarray | None = None  # the last mask's box
    track_box: np.ndarray | None = None  # the last box of its track (stage model or detector)
    missing: int = 0
    prompted: bool = False  # an operator's or the command line's prompt started it: never a transient
    frames_not_alone: int = 0  # frames with an intruder (the operator's hand) in view: no still from them
    uncut_best: tuple | None = None  # live: (frame, mask, evidence) of the best still so far
    final_cut: FinalCut | None = None  # live: the best still's cut, prepared as the product ends

    def cut_best(self) -> None:
        """Make the best live still's final cut (`FinalCut`), once; nothing to do otherwise. Safe on another
        thread than the pipeline's: it touches only this ended product."""
        cut, self.final_cut = self.final_cut, None
        if cut is None:
            return
        frame, mask, alpha = cut.frame, resize_mask(cut.mask, cut.frame.size), None
        if cut.stage is not None:
            mask, alpha, frame = _matte(cut.stage, frame, mask, cut.evidence, cut.band)
        self.pool.refine(frame, mask, alpha)

    @property
    def product_id(self) -> str:
        return f"product-{self.number:03d}"

    @property
    def no_still_reason(self) -> str:
        """Why no frame of this product gave a still candidate."""
        if self.frames and self.frames_not_alone == self.frames:
            return "the operator (a hand or arm) was in view in every frame of the product"
        return "no frame had a usable mask"

    def statistics(self) -> dict:
        return {
            "first_frame": self.first_frame,
            "last_frame": self.last_frame,
            "first_timestamp": round(self.first_timestamp, 6),
            "last_timestamp": round(self.last_timestamp, 6),
            "frames": self.frames,
            "encoder_calls": self.keyframes,
            "encoder_calls_per_frame": round(self.keyframes / max(self.frames, 1), 4),
            "frames_with_operator": self.frames_not_alone,
            "keyframe_reasons": dict(self.keyframe_reasons),
        }


@dataclass(frozen=True)
class ProductStarted:
    product: Product
    frame_index: int


@dataclass(frozen=True)
class ProductEnded:
    """A product left the stage (or the source ended). `transient` ones are too short to be products."""

    product: Product
    frame_index: int
    reason: str
    transient: bool


@dataclass
class FrameResult:
    """What the pipeline made of one frame.

    Attributes:
      detections: the product's mask as `sv.Detections` (0 or 1 rows): xyxy, mask (1, H, W), confidence
        (the mask score), tracker_id (product number), data["keyframe"], data["reason"].
      alpha: (H, W) float32 soft alpha of the product, or None.
      still: this frame's still score, or None.
      events: ProductStarted / ProductEnded that happened at this frame.
      alone: False when anything but the product (an operator's hand) is on the stage: no still or spin view.
    """

    frame: Frame
    detections: sv.Detections
    alpha: np.ndarray | None = None
    mask_result: MaskResult | None = None
    still: StillScore | None = None
    events: list = field(default_factory=list)
    alone: bool = True

    @property
    def keyframe(self) -> bool:
        return self.mask_result is not None and self.mask_result.keyframe


class ProductPipeline:
    """Frame in, product masks and product events out. One instance per stream; not thread-safe.

    With `defer_keyframes=True` (live streams) keyframes after a product's first are not encoded inside
    `process`: the caller takes each `take_keyframe_request()`, runs `encode_keyframe` elsewhere and hands
    the result to `install_keyframe` (see `MaskTracker`).
    """

    def __init__(self, segmenter: Segmenter, options: PipelineOptions | None = None, *,
                 prompt: InitialPrompt | None = None, detector: Detector | None = None,
                 frame_rate: float = 30.0, defer_keyframes: bool = False) -> None:
        self.options = options or PipelineOptions()
        self.segmenter = segmenter
        self.prompt = prompt
        self.detector = detector
        self.stage = StageModel(self.options.stage) if self.options.use_stage else None
        self.intruders = IntruderTracker(self.options.intruders)
        self._intruded_frames: deque[int] = deque(maxlen=512)  # recent frames with an intruder in view
        self._last_mask: np.ndarray | None = None  # the product's mask in the previous frame
        self._intruder_mask: np.ndarray | None = None  # this frame's intruder pixels
        self.policy = KeyframePolicy(self.options.keyframes)
        self.masks = MaskTracker(segmenter, self.policy, FlowPropagator(self.options.propagation),
                                 defer_keyframes=defer_keyframes)
        self.watch = ObjectWatch(self.options.recovery)
        self.boxes = BoxTracker(frame_rate, lost_track_buffer=self.options.products.track_buffer)
        self.product: Product | None = None
        self.products_started = 0
        self.frames_seen = 0
        self._commands: deque[OperatorCommand] = deque()  # appended by any thread, taken by `process`
        self._hold_until_empty = False  # after "next product": the same object is not a new product

    def command(self, command: OperatorCommand) -> None:
        """Queue an operator command for the next `process` call. Safe from any thread."""
        if not isinstance(command, OperatorCommand):
            raise TypeError(f"expected an OperatorCommand, got {type(command).__name__}")
        self._commands.append(command)

    def process(self, frame: Frame) -> FrameResult:
        self.frames_seen += 1
        events: list = []
        operator = self._apply_commands(frame, events)
        if operator.get("prompt") is not None:
            if self.stage is not None and not self.stage.ready:
                self.stage.seal()  # the operator prompted during warm-up: the frames before were the stage
        elif self._warming_up(frame):
            return FrameResult(frame, sv.Detections.empty(), events=events)
        evidence = self._stage_evidence(frame)
        detections = self._detect(frame, evidence)
        if self.product is not None and self._product_gone(detections) and operator.get("prompt") is None:
            self._end(frame.index, "left the stage", events)
        if self.product is None:
            start = operator.get("prompt") or self._find_start(frame, detections)
            if start is None:
                if not len(detections) and not self.intruders.present:
                    self._learn_empty(frame)
                return FrameResult(frame, sv.Detections.empty(), events=events, alone=not self.intruders.present)
            self._begin(frame, events)
            self.product.track_id, self.product.prompted = start.get("track_id"), "points" in start
            if start.get("mask") is not None:
                self.masks.seed(start["mask"])
            return self._segment(frame, evidence, start, events, initial=True)
        prompt = self._track(frame, detections)
        if operator.get("prompt") is not None:
            prompt = self._operator_prompt(operator["prompt"], prompt)
        prompt["rekey"] = operator.get("rekey", False)
        return self._segment(frame, evidence, prompt, events, initial=False)

    def finish(self, frame_index: int) -> list:
        """The source ended: close the product on the stage, if any."""
        events: list = []
        if self.product is not None:
            self._end(frame_index, "source ended", events)
        return events

    @property
    def product_without_still(self) -> bool:
        """A product is on the stage and no frame of it has given a still candidate yet."""
        return self.product is not None and self.product.pool.best() is None

    def take_keyframe_request(self) -> KeyframeRequest | None:
        """The newest request for the live worker (keyframe or refresh), if any; handed out once."""
        return self.masks.take_request()

    def encode_keyframe(self, request: KeyframeRequest) -> Keyframe:
        """Run a deferred request's encode (keyframes only) and decode; safe on a worker thread."""
        return self.masks.encode_keyframe(request)

    def install_keyframe(self, keyframe: Keyframe) -> bool:
        """Use a finished deferred keyframe; False if its product has ended meanwhile."""
        if self.product is None or not self.masks.install(keyframe):
            return False
        if keyframe.encoded:
            self.product.keyframes += 1
            self.product.keyframe_reasons[keyframe.request.decision.reason] += 1
        frame, result = keyframe.request.frame, keyframe.result
        if result.mask.any() and frame.index not in self._intruded_frames:
            evidence = self.stage.log_odds(frame.image) if self.stage is not None and self.stage.ready else None
            self._offer_live(frame, result.mask, self._score(frame, result.mask, result, evidence), evidence)
        return True

    def _stage_evidence(self, frame: Frame) -> np.ndarray | None:
        """The stage model's log-odds for this frame with the intruders (an operator's arm) made background."""
        if self.stage is None or not self.stage.ready:
            return None
        evidence = self.stage.log_odds(frame.image)
        prior = self._last_mask if self.product is not None else None
        intruders = self.intruders.update(frame.image, self.stage.foreground(frame.image, evidence), prior)
        self._intruder_mask = intruders
        if not self.intruders.present:
            return evidence
        self._intruded_frames.append(frame.index)
        return np.where(intruders, np.float32(-self.options.stage.evidence_clip), evidence)

    # -- operator ----------------------------------------------------------------------------------------

    def _apply_commands(self, frame: Frame, events: list) -> dict:
        """Take the queued commands for this frame: {"prompt": dict | None, "rekey": bool}.

        Several commands queued for one frame combine: clicks accumulate, the last box wins, and "next
        product" ends the product on stage before any prompt starts the next one.
        """
        taken = []
        while self._commands:
            taken.append(self._commands.popleft())
        if not taken:
            return {}
        points, labels, box, rekey = [], [], None, False
        for command in taken:
            events.append(CommandApplied(frame.index, command))
            log.info("frame %d: operator %s", frame.index, command.as_dict())
            if command.kind == "next_product":
                if self.product is not None:
                    self._end(frame.index, "operator: next product", events)
                self._hold_until_empty = True
                points, labels, box = [], [], None
            elif command.kind == "rekey":
                rekey = True
            elif command.kind == "box":
                box, points, labels = command.box, [], []
            else:
                points.extend(command.points)
                labels.extend(command.labels)
        if box is None and not points:
            return {"prompt": None, "rekey": rekey}
        self._hold_until_empty = False
        prompt = {"box": box, "points": np.asarray(points, np.float32) if points else None,
                  "point_labels": np.asarray(labels, np.int32) if points else None}
        return {"prompt": prompt, "rekey": True}

    def _operator_prompt(self, operator: dict, tracked: dict) -> dict:
        """The prompt for a product on stage when the operator prompted: a drawn box starts the mask over
        (no carried-forward prior); clicks keep the tracked box, grown to hold every positive click. Still
        candidates from before are dropped: the operator has just said those masks were wrong."""
        self.product.pool = CandidatePool(self.options.products.candidates)
        if operator["box"] is not None:
            self.masks.reset()
            return {"box": operator["box"], "points": operator["points"], "point_labels": operator["point_labels"]}
        box = tracked.get("box")
        if box is None and self.product.box is not None:
            box = self.product.box
        positive = operator["points"][operator["point_labels"] > 0]
        if box is not None and len(positive):
            box = np.concatenate([np.minimum(box[:2], positive.min(0)), np.maximum(box[2:], positive.max(0) + 1)])
        return {**tracked, "box": box, "points": operator["points"], "point_labels": operator["point_labels"]}

    # -- finding products ------------------------------------------------------------------------

    def _detect(self, frame: Frame, evidence: np.ndarray | None) -> sv.Detections:
        """Candidate product boxes in this frame from the stage model or the detector (maybe none)."""
        if evidence is not None:
            boxes, areas = self.stage.product_boxes(frame.image, evidence)
            return sv.Detections(xyxy=boxes, confidence=np.ones(len(boxes), np.float32),
                                 data={"area": areas})
        if self.detector is not None:
            return self.detector(frame.image)
        return sv.Detections.empty()

    def _find_start(self, frame: Frame, detections: sv.Detections) -> dict | None:
        p = self.prompt
        if p is not None and frame.index == p.frame_index and self.products_started == 0:
            return _start_prompt(p, frame)
        if p is not None and self.products_started == 0 and frame.index < p.frame_index:
            return None  # waiting for the operator's frame; these frames teach the stage
        if self._hold_until_empty:
            self._hold_until_empty = len(detections) > 0
            return None
        if len(detections):
            tracked = self.boxes.update(detections[:1], frame.timestamp)
            box = tracked.data["track_xyxy"][0] if len(tracked) else detections.xyxy[0]
            return {"box": np.asarray(box, np.float32), "track_id": _first_id(tracked)}
        return None

    def _warming_up(self, frame: Frame) -> bool:
        """Teach the stage model an empty frame; True while this frame was used for that.

        A product put down before the warm-up is over ends it early, so it is never learnt as backdrop.
        """
        stage = self.stage
        if stage is None or stage.ready or self.product is not None:
            return False
        if self.prompt is not None and self.products_started == 0:
            if frame.index >= self.prompt.frame_index:
                stage.seal()  # the operator's product is here: the frames before it are the stage
                return False
            stage.learn_empty(frame.image)
            return True
        if stage.something_appeared(frame.image):
            stage.seal()
            log.info("stage warm-up ended early at frame %d (%d empty frames): something appeared",
                     frame.index, stage.frames_learnt)
            return False
        stage.learn_empty(frame.image)
        return True

    def _learn_empty(self, frame: Frame) -> None:
        if self.stage is not None and self.stage.ready:
            self.stage.adapt(frame.image)

    def _track(self, frame: Frame, detections: sv.Detections) -> dict:
        """This frame's prompt for the product on stage: its tracked box when something was detected."""
        if not self._detecting:
            return {"box": None}  # the watch's anchor (`watched_step`), not a box that follows the masks
        product = self.product
        if not len(detections):
            return {"box": None}
        tracked = self.boxes.update(detections, frame.timestamp)
        if not len(tracked):
            return {"box": None}
        ids = [int(i) for i in tracked.tracker_id]
        if product.track_id in ids:
            row = ids.index(product.track_id)
            product.track_box = np.asarray(tracked.xyxy[row], np.float32)
            return {"box": product.track_box}
        # The product's track is gone: the track overlapping its last box most is either the same
        # product under a new id (re-key) or another product (the caller decides by the overlap). The
        # track's own last box is the reference: a mask still growing over the product can be far smaller.
        last = product.track_box if product.track_box is not None else product.box
        overlaps = sv.box_iou_batch(last[None], tracked.data["track_xyxy"], overlap_metric=sv.OverlapMetric.IOS)[0] \
            if last is not None else np.ones(len(tracked))
        row = int(np.argmax(overlaps))
        new_track = product.track_id is not None
        product.track_id = ids[row]
        product.track_box = np.asarray(tracked.xyxy[row], np.float32)
        return {"box": product.track_box, "new_track": new_track,
                "overlap": float(overlaps[row])}

    @property
    def _detecting(self) -> bool:
        """Whether products are seen independently of their masks (stage model or detector)."""
        return (self.stage is not None and self.stage.ready) or self.detector is not None

    def _product_gone(self, detections: sv.Detections) -> bool:
        product = self.product
        if self._detecting:
            product.missing = 0 if len(detections) else product.missing + 1
        return product.missing >= self.options.products.end_frames

    # -- segmenting ------------------------------------------------------------------------------------

    def _segment(self, frame: Frame, evidence: np.ndarray | None, prompt: dict, events: list,
                 initial: bool) -> FrameResult:
        """Segment the product on stage; `evidence` is the stage model's log-odds for this frame."""
        if not initial and prompt.get("new_track") and \
                prompt.get("overlap", 1.0) < self.options.products.same_product_overlap:
            self._end(frame.index, "another product took the stage", events)
            self._begin(frame, events)
            initial = True
        product = self.product
        later = not initial  # a product's first frame is a keyframe anyway
        step = dict(evidence=evidence, points=prompt.get("points"), point_labels=prompt.get("point_labels"),
                    new_track=later and prompt.get("new_track", False), rekey=later and prompt.get("rekey", False))
        # Only its own masks see a product without a detector: guard them against loss (`tracking.recovery`).
        result = self.masks.step(frame, prompt.get("box"), **step) if self._detecting else \
            watched_step(self.masks, self.watch, frame, prompt.get("box"), initial, **step)
        mask, alpha, still_frame = result.mask, None, frame
        alone = not self.intruders.present
        if not alone:
            mask = mask & ~self._intruder_mask  # never a pixel of the operator
            product.frames_not_alone += 1
        # Live streams show carried masks but take stills only from decoded ones (`install_keyframe`).
        live = self.masks.defer_keyframes
        if evidence is not None and mask.any() and not live:
            mask, alpha, still_frame = _matte(self.stage, frame, mask, evidence)
        product.frames += 1
        product.last_frame, product.last_timestamp = frame.index, frame.timestamp
        if result.keyframe:
            product.keyframes += 1
            product.keyframe_reasons[result.reason] += 1
        self._last_mask = mask
        if not mask.any():
            if not self._detecting and not self.watch.searching:
                product.missing += 1  # without a detector an empty mask it gave up searching for
            return FrameResult(frame, sv.Detections.empty(), mask_result=result, events=events, alone=alone)
        if not self._detecting:
            product.missing = 0
        box = np.asarray(mask_box(mask), np.float32)
        product.box = box
        if not self._detecting:
            # No detector: the mask's own box keeps the product's track (and id) alive.
            self.boxes.update(sv.Detections(xyxy=box[None], confidence=np.ones(1, np.float32)), frame.timestamp)
        still = None
        if alone and (not live or result.keyframe):
            still = self._score(frame, mask, result, evidence)
            if live:
                self._offer_live(frame, mask, still, evidence)
            else:
                product.pool.offer(still_frame, mask, still, alpha=alpha)
        detections = sv.Detections(
            xyxy=box[None], mask=mask[None], confidence=np.array([result.score], np.float32),
            tracker_id=np.array([product.number]),
            data={"keyframe": np.array([result.keyframe]), "reason": np.array([result.reason])},
        )
        return FrameResult(frame, detections, alpha=alpha, mask_result=result, still=still, events=events, alone=alone)

    def _score(self, frame: Frame, mask: np.ndarray, result: MaskResult, evidence: np.ndarray | None) -> StillScore:
        return score_still(frame.image, mask, confidence=result.score, stability=result.stability,
                           prior_agreement=result.agreement,
                           evidence_agreement=None if evidence is None else mask_iou(mask, evidence > 0),
                           weights=self.options.stills)

    def _offer_live(self, frame: Frame, mask: np.ndarray, still: StillScore, evidence: np.ndarray | None) -> None:
        """Offer a live still candidate as it is: matting (and a frame at the source resolution) costs more
        than a frame's budget, and only the best is exported, so the best is cut once, when the product ends
        (`FinalCut`)."""
        product = self.product
        kept = product.pool.offer(frame, mask, still)
        if kept and product.pool.best().frame_index == frame.index:
            product.uncut_best = (frame, mask, evidence)

    def _prepare_final_cut(self, product: Product) -> None:
        """As a live product ends: what its best still will be cut from (`FinalCut`), from the camera's frame
        when the stream is segmented at a working size."""
        if product.uncut_best is None:
            return
        frame, mask, evidence = product.uncut_best
        product.uncut_best = None
        best = product.pool.best()
        if best is None or best.frame_index != frame.index or (frame.original is None and evidence is None):
            return  # the candidate is already its own cut
        stage = self.stage if evidence is not None else None
        band = MATTE_BAND
        if frame.original is not None:
            # The upscaled edge is as uncertain as the working size's pixels are large.
            band = math.ceil(MATTE_BAND * frame.original.size[0] / frame.size[0])
            frame, evidence = frame.original, None
        product.final_cut = FinalCut(frame, mask, evidence, stage.resized(frame.size) if stage else None, band)

    # -- product life ------------------------------------------------------------------------------------

    def _begin(self, frame: Frame, events: list) -> None:
        self.products_started += 1
        self.product = Product(
            number=self.products_started, first_frame=frame.index, first_timestamp=frame.timestamp,
            pool=CandidatePool(self.options.products.candidates),
        )
        self.masks.reset()
        log.info("%s started at frame %d", self.product.product_id, frame.index)
        events.append(ProductStarted(self.product, frame.index))

    def _end(self, frame_index: int, reason: str, events: list) -> None:
        product = self.product
        transient = product.frames < self.options.products.min_frames and not product.prompted
        if not transient:
            self._prepare_final_cut(product)
        log.info("%s ended at frame %d: %s%s", product.product_id, frame_index, reason,
                 " (transient, ignored)" if transient else "")
        events.append(ProductEnded(product, frame_index, reason, transient))
        if transient:
            self.products_started -= 1
        self.product = None
        self._last_mask = None
        self.masks.reset()
        self.boxes.reset()


def _matte(stage: StageModel, frame: Frame, mask: np.ndarray, evidence: np.ndarray | None,
           band: int = MATTE_BAND) -> tuple[np.ndarray, np.ndarray, Frame]:
    """The stage model's matte: (refined mask, soft alpha, the frame with decontaminated edge colour)."""
    mask, alpha, colour = stage.matte(frame.image, mask, evidence, band=band)
    return mask, alpha, dataclasses.replace(frame, image=colour)


def _first_id(tracked: sv.Detections) -> int | None:
    return int(tracked.tracker_id[0]) if len(tracked) else None


def _start_prompt(prompt: InitialPrompt, frame: Frame) -> dict:
    """The initial prompt as a start prompt for its frame, which a live stream may segment scaled down from
    the source's size: {"box", "points", "point_labels", "mask"}, in the frame's pixels."""
    source = frame.original.size if frame.original is not None else frame.size
    scale = frame.size[1] / source[1]
    box = prompt.box
    if box is None and prompt.mask is not None:
        box = np.asarray(mask_box(prompt.mask), np.float32)  # the mask's bounding box where a box is needed
    if box is not None:  # a box padded past the frame's edge reaches to the edge: no pixels lie beyond it
        box = sv.clip_boxes((box * scale)[None], frame.size[::-1])[0]
    return {"box": box,
            "points": None if prompt.points is None else prompt.points * scale,
            "point_labels": prompt.point_labels,
            "mask": None if prompt.mask is None else resize_mask(prompt.mask, frame.size)}
