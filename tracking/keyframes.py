"""When to run the heavy image encoder, and why.

Every decision is logged with its reason so that a run can be explained (and, later, replayed).
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

log = logging.getLogger(__name__)

# Reasons, in the order they are checked.
FIRST = "first"
NEW_TRACK = "new_track"
OPERATOR = "operator"
RECOVERY = "recovery"
MAX_INTERVAL = "max_interval"
MOTION = "motion"
QUALITY_DROP = "quality_drop"
DISAGREEMENT = "disagreement"


@dataclass(frozen=True)
class KeyframeOptions:
    max_interval: int = 8  # frames between keyframes at most
    motion: float = 0.1  # object's displacement since the keyframe, as a fraction of its box size
    min_quality: float = 0.5  # re-key when the chosen mask's score falls below this ...
    quality_drop: float = 0.12  # ... or this far below the keyframe's own score
    min_agreement: float = 0.85  # re-key when decoded and propagated masks agree (IoU) less than this

    def __post_init__(self) -> None:
        if self.max_interval < 1:
            raise ValueError(f"keyframes.max_interval must be >= 1, got {self.max_interval}")
        for name in ("motion", "quality_drop"):
            if getattr(self, name) <= 0:
                raise ValueError(f"keyframes.{name} must be > 0, got {getattr(self, name)}")
        for name in ("min_quality", "min_agreement"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"keyframes.{name} must be in [0, 1], got {getattr(self, name)}")


@dataclass(frozen=True)
class Decision:
    frame_index: int
    keyframe: bool
    reason: str


class KeyframePolicy:
    """Decides per frame whether the encoder runs; counts decisions by reason.

    `before_decode` uses what is known before segmenting (time, motion, track events); `after_decode`
    judges the mask decoded on the old embedding and may demand a keyframe for this very frame.
    """

    def __init__(self, options: KeyframeOptions | None = None) -> None:
        self.options = options or KeyframeOptions()
        self.reasons: Counter[str] = Counter()
        self.frames = 0
        self._last_key: int | None = None
        self._key_score: float | None = None

    @property
    def keyframes(self) -> int:
        return sum(self.reasons.values())

    def reset(self) -> None:
        """Forget the last keyframe (a new product or track starts)."""
        self._last_key, self._key_score = None, None

    def before_decode(self, frame_index: int, *, motion: float = 0.0, new_track: bool = False,
                      operator: bool = False, recovery: bool = False) -> Decision:
        """`motion`: the object's displacement since the last keyframe, as a fraction of its box size.
        `recovery`: the object was lost (`tracking.recovery`) and is being searched for."""
        self.frames += 1
        if self._last_key is None:
            return self._key(frame_index, FIRST)
        if new_track:
            return self._key(frame_index, NEW_TRACK)
        if operator:
            return self._key(frame_index, OPERATOR)
        if recovery:
            return self._key(frame_index, RECOVERY)
        if frame_index - self._last_key >= self.options.max_interval:
            return self._key(frame_index, MAX_INTERVAL)
        if motion >= self.options.motion:
            return self._key(frame_index, MOTION, f"moved {motion:.3f} of its size")
        log.debug("frame %d: propagate (%d frames since keyframe, motion %.3f)", frame_index,
                  frame_index - self._last_key, motion)
        return Decision(frame_index, False, "propagate")

    def after_decode(self, frame_index: int, *, score: float, agreement: float | None) -> Decision:
        """Judge a non-keyframe's mask; a keyframe here means: encode this frame and decode again."""
        o = self.options
        if self._key_score is None:
            self._key_score = score
        if score < o.min_quality or score < self._key_score - o.quality_drop:
            return self._key(frame_index, QUALITY_DROP, f"score {score:.3f} (keyframe {self._key_score:.3f})")
        if agreement is not None and agreement < o.min_agreement:
            return self._key(frame_index, DISAGREEMENT, f"IoU with propagated mask {agreement:.3f}")
        log.debug("frame %d: propagated mask accepted (score %.3f, agreement %s)", frame_index, score,
                  "n/a" if agreement is None else f"{agreement:.3f}")
        return Decision(frame_index, False, "accepted")

    def keyframe_scored(self, score: float) -> None:
        """Record the score of the mask decoded on a fresh keyframe: later frames are judged against it."""
        self._key_score = score

    def _key(self, frame_index: int, reason: str, detail: str = "") -> Decision:
        self.reasons[reason] += 1
        self._last_key = frame_index
        log.info("keyframe at frame %d: %s%s", frame_index, reason, f" ({detail})" if detail else "")
        return Decision(frame_index, True, reason)
