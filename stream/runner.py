"""Replay a recorded session (file or image folder) through the pipeline and export each product's still.

Products are exported the moment they end, so a failure later in the source never loses them. The
manifest is written (atomically) when the run starts, after every product and once more at the end;
until then it says `"finished": false`, so a killed run leaves a valid manifest that lists exactly the
products it exported and says it did not finish. The source ends the stream in one place, `segment`:
at its end, at a source error or when the run is stopped (SIGINT / SIGTERM), the product on stage is
finished and exported.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from turncrop.models.base import Segmenter
from turncrop.models.registry import build_segmenter
from turncrop.stream.config import Config, ConfigError, PromptOptions, read_prompt_mask
from turncrop.stream.export import export_still, write_manifest, write_no_still_record
from turncrop.stream.outputs import claim_output
from turncrop.stream.sources import FrameSource, SourceError, open_source
from turncrop.stream.spin_export import export_spin, write_no_spin_record
from turncrop.tracking.products import (
    FrameResult,
    InitialPrompt,
    ProductEnded,
    ProductPipeline,
)
from turncrop.tracking.spin import NoSpin, SpinPlan, SpinRecorder, plan_spin

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    source: str
    out_dir: Path
    backend: str
    frames: int = 0
    encoder_calls: int = 0
    seconds: float = 0.0
    products: list[dict] = field(default_factory=list)
    error: str | None = None
    last_frame: int | None = None  # index of the last frame processed
    finished: bool = False  # the run ended (its source ended, failed, or it was stopped) and wrote its manifest
    interrupted: bool = False  # stopped by SIGINT / SIGTERM before the source ended

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict:
        return {
            "source": self.source,
            "backend": self.backend,
            "frames": self.frames,
            "encoder_calls": self.encoder_calls,
            "encoder_calls_per_frame": round(self.encoder_calls / max(self.frames, 1), 4),
            "seconds": round(self.seconds, 3),
            "fps": round(self.fps, 3),
            "products": self.products,
            "last_frame": self.last_frame,
            "finished": self.finished,
            "interrupted": self.interrupted,
            "error": self.error,
        }


def segmenter_for(config: Config) -> Segmenter:
    """The backend `config` names, built with its encoder and graph-cut options."""
    e = config.encoder
    return build_segmenter(config.backend, checkpoint=config.checkpoint, precision=e.precision,
                           channels_last=e.channels_last, compile=e.compile, graphcut=config.graphcut,
                           device=e.device)


def build_pipeline(config: Config, segmenter: Segmenter | None = None, frame_rate: float = 30.0, *,
                   defer_keyframes: bool = False, source: FrameSource | None = None) -> ProductPipeline:
    """The pipeline a config describes (the segmenter is built from it unless one is given).

    `defer_keyframes`: leave keyframe encodes to the caller (the live pipeline; see `ProductPipeline`).
    `source`: check the config's prompt against its frame size and length first (`check_prompt`).
    """
    if source is not None:
        check_prompt(config.prompt, source.size, source.frame_count)
    if segmenter is None:
        segmenter = segmenter_for(config)
    return ProductPipeline(segmenter, config.pipeline_options(), prompt=initial_prompt(config),
                           detector=_detector(config), frame_rate=frame_rate, defer_keyframes=defer_keyframes)


def initial_prompt(config: Config) -> InitialPrompt | None:
    p = config.prompt
    if p.box is None and p.points is None and p.mask is None:
        return None
    points = labels = None
    if p.points is not None:
        points = np.asarray(p.points, np.float32)
        labels = np.asarray(p.labels if p.labels is not None else [1] * len(points), np.int64)
    box = np.asarray(p.box, np.float32) if p.box is not None else None
    mask = read_prompt_mask(p.mask) if p.mask is not None else None
    return InitialPrompt(frame_index=p.frame, box=box, points=points, point_labels=labels, mask=mask)


def check_prompt(prompt: PromptOptions, size: tuple[int, int], frame_count: int | None) -> None:
    """ConfigError naming the option when the prompt cannot apply to frames of `size` (H, W), `frame_count` long
    (None: not known up front; `segment` then reports a prompt frame the source never reached)."""
    h, w = size
    if prompt.box is not None:
        x0, y0, x1, y1 = prompt.box
        if x1 <= 0 or y1 <= 0 or x0 >= w or y0 >= h:
            raise ConfigError(f"--box / prompt.box {','.join(f'{v:g}' for v in prompt.box)} lies wholly outside "
                              f"the {w}x{h} frame (X0,Y0,X1,Y1 in pixels)")
    for x, y in prompt.points or ():
        if not (0 <= x < w and 0 <= y < h):
            raise ConfigError(f"--points / prompt.points: the point {x:g},{y:g} lies outside the {w}x{h} frame")
    if prompt.mask is not None:
        mh, mw = read_prompt_mask(prompt.mask).shape
        if (mh, mw) != (h, w):
            raise ConfigError(f"--mask / prompt.mask {prompt.mask} is {mw}x{mh} px, the source's frames are {w}x{h}")
    given = _prompt_options(prompt)
    if given and frame_count is not None and prompt.frame >= frame_count:
        raise ConfigError(f"{' / '.join(f'{o} ...@{prompt.frame}' for o in given)} / prompt.frame: the source has "
                          f"{frame_count} frames (0 to {frame_count - 1})")


def _prompt_options(prompt: PromptOptions) -> list[str]:
    """The options that gave the prompt's parts, for errors about its frame."""
    parts = (("--box", prompt.box), ("--points", prompt.points), ("--mask", prompt.mask))
    return [option for option, value in parts if value is not None]


def _detector(config: Config):
    if config.prompt.detector is None:
        return None
    from turncrop.models.detector import YoloDetector

    yolo = YoloDetector(Path(config.prompt.detector), classes=list(config.prompt.detector_classes or []) or None,
                        conf=config.prompt.detector_conf)
    return yolo.detect


def segment(source: FrameSource, pipeline: ProductPipeline,
            stop: threading.Event | None = None) -> Iterator[FrameResult]:
    """Run every frame of `source` through `pipeline` until the source ends or `stop` is set.

    Whatever ends the stream (the source's end, a `SourceError` from it, `stop`) ends it the same way:
    the last result, held back by one frame, is delivered carrying the end-of-stream events (the
    product on stage finished), and only then is a source error raised.
    """
    frames = iter(source)
    last: FrameResult | None = None
    error: SourceError | None = None
    while stop is None or not stop.is_set():
        try:
            frame = next(frames, None)
        except SourceError as exc:
            error = exc
            break
        if frame is None:
            break
        if last is not None:
            yield last
        last = pipeline.process(frame)
    if last is not None:
        last.events.extend(pipeline.finish(last.frame.index))
        yield last
    error = error or _prompt_not_reached(source, pipeline, last, stopped=stop is not None and stop.is_set())
    if error is not None:
        raise error


def _prompt_not_reached(source: FrameSource, pipeline: ProductPipeline, last: FrameResult | None,
                        stopped: bool) -> SourceError | None:
    """The source ended before the prompt's frame (a length not known up front, so not checked before)."""
    prompt = pipeline.prompt
    if prompt is None or stopped or (last is not None and last.frame.index >= prompt.frame_index):
        return None
    seen = f"after frame {last.frame.index}" if last is not None else "without a frame"
    return SourceError(f"{source.name}: the source ended {seen}, before frame {prompt.frame_index} of "
                       "--box / --points / --mask ...@FRAME / prompt.frame")


def run(source_path: str | Path, out_dir: str | Path, config: Config, *,
        on_frame: Callable[[FrameResult], None] | None = None, segmenter: Segmenter | None = None,
        handle_signals: bool = False, on_open: Callable[[FrameSource], None] | None = None) -> RunSummary:
    """Process a recording end to end: segment, pick stills, export them and the manifest.

    `segmenter`: use this one instead of building it from `config` (batch: encodes on a Ray actor).
    `on_open`: called with the source once it opened (its frame count sizes a progress bar).
    `handle_signals`: SIGINT and SIGTERM stop the run as the source's end would (the product on stage is
    exported, the manifest says `"interrupted": true`) instead of raising; main thread only.
    The output folder is claimed as `claim_output` says (a previous output is replaced whole).

    Raises:
      SourceError: the source cannot be opened.  ConfigError: the prompt does not fit the source.
      OutputError: the output folder cannot be used. A source error later is reported in the summary.
    """
    with open_source(source_path) as source:
        pipeline = build_pipeline(config, segmenter, frame_rate=source.fps or 30.0, source=source)
        if on_open is not None:
            on_open(source)
        with _stop_on_signals(handle_signals) as stop, claim_output(Path(out_dir), source_path) as folder:
            sink = ProductSink(folder, config, source, pipeline, source_name=str(source_path))
            try:
                for result in segment(source, pipeline, stop):
                    sink.frame(result)
                    if on_frame is not None:
                        on_frame(result)
            except SourceError as exc:  # the products it ended were exported; say why it stopped
                sink.summary.error = str(exc)
            sink.finish(interrupted=stop.is_set())
    sink.summary.out_dir = Path(out_dir)
    return sink.summary


@contextlib.contextmanager
def _stop_on_signals(enabled: bool) -> Iterator[threading.Event]:
    """An event that SIGINT and SIGTERM set while the block runs (if `enabled`); the program's own
    handlers are put back after it."""
    stop = threading.Event()
    if not enabled:
        yield stop
        return
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            if handler is not None:  # None: set outside Python, nothing to put back
                signal.signal(sig, handler)


class ProductSink:
    """Writes each ended product (still, spin set) and rewrites the manifest after each; shared by replay and live."""

    def __init__(self, out: Path, config: Config, source: FrameSource, pipeline: ProductPipeline,
                 source_name: str | None = None) -> None:
        self.out, self.config, self.pipeline = out, config, pipeline
        out.mkdir(parents=True, exist_ok=True)
        self.summary = RunSummary(source=source_name or source.name, out_dir=out, backend=pipeline.segmenter.name)
        self.head = _manifest_head(self.summary, config, source)
        self.started = time.perf_counter()
        self._spins: dict[int, SpinRecorder] = {}
        self.write_manifest()  # now: the folder shows a run's output (not finished) from its start

    def frame(self, result: FrameResult) -> int:
        """Record one frame's result and export the products it ended; returns how many were exported."""
        self.record(result)
        return self.events(result.events)

    def record(self, result: FrameResult) -> None:
        """Count one frame and keep its product view for a spin set (`events` exports, maybe elsewhere)."""
        self.summary.frames += 1
        self.summary.last_frame = result.frame.index
        _record_spin(self._spins, result, self.config)

    def events(self, events: list) -> int:
        exported = 0
        for event in events:
            if not isinstance(event, ProductEnded):
                continue
            if event.transient:
                self._spins.pop(event.product.number, None)
                continue
            entry = _export(self.out, event, self.summary.backend, self.summary.source, self.config)
            _export_spin(self.out, event, self._spins, entry, self.config)
            self.summary.products.append(entry)  # complete: a live session may announce it at once
            self.write_manifest()
            exported += 1
        return exported

    def write_manifest(self, live: dict | None = None) -> None:
        if live is not None:
            self.head["live"] = live
        _write_manifest(self.out, self.head, self.summary, self.pipeline, self.started)

    def finish(self, *, interrupted: bool = False, live: dict | None = None) -> None:
        """The stream has ended and its last products are exported: write the final manifest."""
        self.summary.finished, self.summary.interrupted = True, interrupted
        self.write_manifest(live)


def _export(out: Path, event: ProductEnded, backend: str, source: str, config: Config) -> dict:
    product = event.product
    product.cut_best()
    meta = {"backend": backend, "ended": event.reason, "keyframes": product.statistics()}
    best = product.pool.best()
    if best is None:
        reason = product.no_still_reason
    elif best.score.total < config.products.min_still_score:
        reason = (f"best still scored {best.score.total:.3f}, below products.min_still_score "
                  f"{config.products.min_still_score}")
        meta["best_rejected"] = {"frame_index": best.frame_index, "scores": best.score.as_dict()}
    else:
        record = export_still(out, product.product_id, best, meta, config.export)
        return {"product_id": product.product_id, "status": "ok", "frame_index": best.frame_index,
                "score": round(best.score.total, 4), "files": [record.png.name, record.jpg.name, record.sidecar.name],
                **product.statistics()}
    meta["source"] = source
    path = write_no_still_record(out, product.product_id, reason, meta)
    log.warning("%s: no still exported: %s", product.product_id, reason)
    return {"product_id": product.product_id, "status": "no_still", "reason": reason, "files": [path.name],
            **product.statistics()}


def _record_spin(spins: dict[int, SpinRecorder], result: FrameResult, config: Config) -> None:
    """Keep this frame's product view for its spin set (only when spin sets are on)."""
    if not config.spin.views or not result.alone or result.detections.mask is None or not len(result.detections):
        return
    number = int(result.detections.tracker_id[0])
    recorder = spins.setdefault(number, SpinRecorder(config.spin.max_crops))
    recorder.add(result.frame, result.detections.mask[0], result.alpha)


def _export_spin(out: Path, event: ProductEnded, spins: dict[int, SpinRecorder], entry: dict,
                 config: Config) -> None:
    """Plan and write the ended product's spin set (or its no_spin record); notes it in `entry`."""
    recorder = spins.pop(event.product.number, None)
    if not config.spin.views:
        return
    product_id = event.product.product_id
    samples = recorder.samples if recorder is not None else []
    meta = {"first_frame": event.product.first_frame, "last_frame": event.product.last_frame}
    plan: SpinPlan | NoSpin = NoSpin("no frame of the product had a mask")
    if samples:
        plan = plan_spin(np.stack([s.descriptor for s in samples]), np.array([s.timestamp for s in samples]),
                         np.array([s.sharpness for s in samples]), config.spin.views,
                         np.array([s.crop is not None for s in samples]))
    if isinstance(plan, NoSpin):
        path = write_no_spin_record(out, product_id, plan, meta)
        log.warning("%s: no spin set: %s", product_id, plan.reason)
        entry["spin"] = {"status": "no_spin", "reason": plan.reason, "file": str(path.relative_to(out))}
        return
    record = export_spin(out, product_id, samples, plan, meta, size=config.spin.size,
                         feather_px=config.export.feather_px, jpeg_quality=config.export.jpeg_quality)
    entry["spin"] = {"status": "ok", "views": len(record.jpgs), "period_frames": record.data["period_frames"],
                     "folder": record.folder.name}


def _manifest_head(summary: RunSummary, config: Config, source: FrameSource) -> dict:
    return {
        "tool": "turncrop",
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "source": {"path": summary.source, "fps": source.fps, "frame_count": source.frame_count,
                   "size": list(source.size) if source.size else None},
        "backend": summary.backend,
        "config": config.to_dict(),
    }


def _write_manifest(out: Path, head: dict, summary: RunSummary, pipeline: ProductPipeline, started: float) -> None:
    summary.encoder_calls = getattr(pipeline.segmenter, "encode_calls", pipeline.policy.keyframes)
    summary.seconds = time.perf_counter() - started
    write_manifest(out, {**head, **summary.as_dict(), "keyframe_reasons": dict(pipeline.policy.reasons)})
