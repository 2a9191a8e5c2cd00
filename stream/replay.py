"""Replay a recorded session deterministically: the recorded timestamps and events drive it, never the clock.

Two modes:

  as live      (default when the recording holds a live run) processes exactly the frames the live run
               processed (its drops are skipped), applies each operator command before the frame it was
               applied to, and runs each deferred keyframe encode synchronously: encoded where the live run
               took the request (or skipped where it found the encoder busy) and installed before the frame
               where the live run installed it (or as the stream ended). Any place where the replay's
               pipeline does not ask for the keyframe the live run asked for is reported in `divergences`.
  every frame  processes all recorded frames with keyframes encoded in place, commands as recorded.

    report = replay_session("recordings/orbit", "out/orbit")
    report.summary.products, report.mask(40), report.keyframes, report.divergences

The outputs in `out_dir` are those of `turncrop run` (products + manifest.json, with a "replay" section).
Nothing in the session folder is written.
"""
from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from turncrop.models.base import Segmenter
from turncrop.stream.config import Config
from turncrop.stream.outputs import claim_output
from turncrop.stream.recording import STREAM_END, RecordingError, SessionSource, open_session
from turncrop.stream.runner import ProductSink, RunSummary, build_pipeline
from turncrop.stream.sources import SourceError
from turncrop.tracking.masktrack import Keyframe
from turncrop.tracking.operator import OperatorCommand
from turncrop.tracking.products import FrameResult

log = logging.getLogger(__name__)

AS_LIVE, EVERY_FRAME = "as_live", "every_frame"


@dataclass
class ReplayReport:
    """What a replay produced.

    Attributes:
      summary: as `turncrop run` reports it (products, frames, encoder calls).
      mode: "as_live" or "every_frame".  size: (H, W) of the frames as segmented (as live: at the live
        working size).
      frames_recorded / processed: frames in the recording; indices of the frames replayed, in order.
      masks: frame index -> the product mask of that frame, bit-packed (`np.packbits` of the (H, W) bool
        mask, row-major); frames without a product are absent.
      keyframes: the keyframe decisions in order, {"frame", "kind", "reason"}; kind "encoded" (in place),
        "keyframe" / "refresh" (a deferred request, with "after": the frame it was taken after, and
        "taken": "encode" | "skip"), or "installed" (with "before": the frame it was installed before and
        "used": False if its product had ended).
      divergences: where an as-live replay did not ask for the keyframes the live run asked for.
      warnings: what was tolerated in the recording (a killed recorder's short video, a torn last line).
    """

    summary: RunSummary
    session: Path
    mode: str
    size: tuple[int, int]
    frames_recorded: int
    processed: list[int] = field(default_factory=list)
    masks: dict[int, np.ndarray] = field(default_factory=dict)
    keyframes: list[dict] = field(default_factory=list)
    divergences: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def fps(self) -> float:
        return len(self.processed) / self.seconds if self.seconds > 0 else 0.0

    def mask(self, frame_index: int) -> np.ndarray | None:
        """(H, W) bool mask of the product at `frame_index`, or None where there was none."""
        packed = self.masks.get(frame_index)
        return None if packed is None else unpack_mask(packed, self.size)

    def as_dict(self) -> dict:
        return {"session": str(self.session), "mode": self.mode, "frames_recorded": self.frames_recorded,
                "frames_processed": len(self.processed), "frames_with_mask": len(self.masks),
                "keyframes": self.keyframes, "divergences": self.divergences, "warnings": self.warnings,
                "seconds": round(self.seconds, 3), "fps": round(self.fps, 3)}


def pack_mask(mask: np.ndarray) -> np.ndarray:
    return np.packbits(np.asarray(mask, bool).ravel())


def unpack_mask(packed: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    return np.unpackbits(packed, count=h * w).reshape(h, w).astype(bool)


def replay_session(session_dir: str | Path, out_dir: str | Path, *, config: Config | None = None,
                   every_frame: bool = False, segmenter: Segmenter | None = None,
                   on_result: Callable[[FrameResult], None] | None = None) -> ReplayReport:
    """Replay a session folder into `out_dir` (products + manifest.json exactly like `turncrop run`).

    Args:
      config: use this instead of the recorded config (e.g. to see what a changed setting does).
      every_frame: process every recorded frame with keyframes in place, instead of as the live run did
        (a recording without a live run is always replayed this way).
      segmenter: use this segmenter instead of building the config's.

    Raises:
      RecordingError: the session is missing, corrupt, truncated or from a newer format; products that
        ended before the damage are still written.
    """
    session = open_session(session_dir)
    out = Path(out_dir).resolve()
    if out == session.folder.resolve() or session.folder.resolve() in out.parents:
        raise RecordingError(f"{out}: the replay's output folder must be outside the session folder "
                             f"{session.folder} (a replay never writes into a recording)")
    with claim_output(out, session.folder) as folder:
        report, error = _replay(session, folder, config or session.config(), every_frame, segmenter, on_result)
    report.summary.out_dir = out
    if error is not None:
        raise error
    return report


def _replay(session, out: Path, config: Config, every_frame: bool, segmenter: Segmenter | None,
            on_result: Callable[[FrameResult], None] | None) -> tuple[ReplayReport, RecordingError | None]:
    """`replay_session` into the claimed folder `out`; a damaged recording's error is returned, not raised."""
    as_live = session.live and not every_frame
    # The live run segmented frames at its working size (noted when it started); so does the replay.
    started = session.of_kind("live")
    working_size = started[0].get("working_size") if started else config.live.working_size
    if not session.live and not every_frame:
        log.info("%s holds no live run: processing every frame", session.name)
    source = SessionSource(session)
    pipeline = build_pipeline(config, segmenter, frame_rate=session.fps, defer_keyframes=as_live, source=source)
    script = _LiveScript(session.events) if as_live else None
    commands = _commands(session.events, session.folder)
    sink = ProductSink(out, config, source, pipeline, source_name=str(session.folder))
    report = ReplayReport(sink.summary, session.folder, AS_LIVE if as_live else EVERY_FRAME, session.size,
                          len(session.frames))
    started = time.perf_counter()
    last = -1
    error: RecordingError | None = None
    try:
        for frame in source:
            if script is not None and frame.index not in script.processed:
                continue  # the live run dropped this frame
            if script is not None:
                script.install_before(frame.index, pipeline, report)
            for when in [k for k in commands if k <= frame.index]:
                for command in commands.pop(when):
                    pipeline.command(command)
            result = pipeline.process(frame.scaled_to(working_size) if as_live and working_size else frame)
            last = frame.index
            report.size = result.frame.size
            report.processed.append(frame.index)
            if len(result.detections) and result.detections.mask is not None:
                report.masks[frame.index] = pack_mask(result.detections.mask[0])
            if result.keyframe:
                report.keyframes.append({"frame": frame.index, "kind": "encoded", "reason": result.mask_result.reason})
            if script is not None:
                script.after(frame.index, pipeline, report)
            sink.frame(result)
            if on_result is not None:
                on_result(result)
    except SourceError as e:  # raised by `replay_session` once the outputs are in place
        error = e if isinstance(e, RecordingError) else RecordingError(str(e))
        sink.summary.error = str(error)
    if script is not None:
        script.install_before(STREAM_END, pipeline, report)
    sink.events(pipeline.finish(last))
    report.seconds = time.perf_counter() - started
    report.warnings = list(session.warnings)
    sink.head["replay"] = report.as_dict()
    sink.finish()
    return report, error


def _commands(events: list[dict], folder: Path) -> dict[int, list[OperatorCommand]]:
    out: dict[int, list[OperatorCommand]] = defaultdict(list)
    for e in events:
        if e["event"] == "command":
            try:
                out[e["frame"]].append(OperatorCommand.from_dict(e.get("command")))
            except ValueError as exc:
                raise RecordingError(f"{folder}/events.jsonl: the command at frame {e['frame']} is invalid: {exc}") from None
    return dict(sorted(out.items()))


class _LiveScript:
    """What the live run did with frames and keyframe requests, replayed step by step.

    The live run takes the tracker's newest request after a frame when its encoder is free, encodes it in
    the background and installs it before a later frame. The replay takes a request after exactly the
    frames the live run took one, encodes it at once, and installs it before the recorded frame.
    """

    def __init__(self, events: list[dict]) -> None:
        self.processed = {e["frame"] for e in events if e["event"] == "processed"}
        requests = [e for e in events if e["event"] == "keyframe_request"]
        # Recordings note the frame a request was taken after; without it, it was taken after its own frame.
        self.taken = {e.get("after", e["frame"]): e for e in requests}
        # Before a frame the live run installs at most one; as the stream ends ("before": STREAM_END) up to two.
        self.installs: dict[int | str, list[int]] = defaultdict(list)
        for e in events:
            if e["event"] == "keyframe_installed":
                self.installs[e["before"]].append(e["frame"])
        self.pending: dict[int, Keyframe] = {}

    def install_before(self, index: int | str, pipeline, report: ReplayReport) -> None:
        """Install what the live run installed before frame `index` (STREAM_END: as the stream ended)."""
        where = "at the end" if index == STREAM_END else f"frame {index}"
        for request_frame in self.installs.get(index, []):
            keyframe = self.pending.pop(request_frame, None)
            if keyframe is None:
                report.divergences.append(f"{where}: the live run installed the request of frame "
                                          f"{request_frame} here; the replay has none from that frame")
                continue
            used = pipeline.install_keyframe(keyframe)
            report.keyframes.append({"frame": request_frame, "kind": "installed", "before": index, "used": used,
                                     "reason": keyframe.request.decision.reason})

    def after(self, index: int, pipeline, report: ReplayReport) -> None:
        recorded = self.taken.get(index)
        if recorded is None:
            return  # the live run's encoder was busy: the request stays with the tracker, as it did live
        request = pipeline.take_keyframe_request()
        if request is None:
            report.divergences.append(f"frame {index}: the live run took the request of frame "
                                      f"{recorded['frame']} here; the replay's pipeline had none")
            return
        if request.frame.index != recorded["frame"]:
            report.divergences.append(f"frame {index}: the live run took the request of frame "
                                      f"{recorded['frame']}, the replay's is of frame {request.frame.index}")
        taken = recorded.get("taken", "encode")
        report.keyframes.append({"frame": request.frame.index, "kind": "keyframe" if request.decision.keyframe
                                 else "refresh", "reason": request.decision.reason, "taken": taken, "after": index})
        if taken == "encode":
            self.pending[request.frame.index] = pipeline.encode_keyframe(request)
