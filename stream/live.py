"""The live pipeline: a camera (or a paced recording) in, products exported as they leave the stage.

Single-worker pools keep the asyncio event loop free for scheduling, statistics and signals:

  source   reads the next frame (camera I/O, video decode) into a size-1 "latest" slot: when the frame
           path is behind, the older frame is dropped and counted, so nothing queues up;
  frame    runs the cheap per-frame path for every frame it takes, at the working size (config
           `live.working_size`): tracking, propagation (the carried mask), scoring;
  export   cuts an ended product's best still from the camera's full-size frame and writes its files;
  encoder  a process with its own copy of the segmenter (`encoder_process`) runs the decoder and, on
           keyframes, the encoder (`ProductPipeline(defer_keyframes=True)`): each time it is free it takes
           the newest request (a keyframe, or a refresh on the current embedding); a finished one is
           installed before the next frame (see `MaskTracker` for how masks are reconciled). A failed job
           is logged and the stream goes on by propagation until one succeeds.

With the empty-stage model a product's first keyframe is encoded in the background too (the stage's
evidence is the mask until it arrives); without one it is encoded on the frame path, and frames arriving
meanwhile are dropped by the slot. `stop()` (SIGINT/SIGTERM with `install_signal_handlers`, or
the duration running out) ends the stream: the job in flight is installed (and, for a product on stage
with no still yet, its newest request is run), the product is finished and its files are written.
"""
from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from turncrop.models.base import Segmenter
from turncrop.stream.config import Config
from turncrop.stream.encoder_process import encoder_started, run_in_encoder_process, start_encoder_process
from turncrop.stream.outputs import claim_output
from turncrop.stream.recording import SessionRecorder
from turncrop.stream.runner import ProductSink, RunSummary, build_pipeline
from turncrop.stream.sources import FrameSource, SourceError
from turncrop.tracking.frame import Frame, scale_to_fit
from turncrop.tracking.masktrack import Keyframe
from turncrop.tracking.operator import OperatorCommand
from turncrop.tracking.products import FrameResult, ProductEnded, ProductPipeline

log = logging.getLogger(__name__)

LATENCY_SAMPLES = 10_000  # latency percentiles are over the last this many frames


@dataclass
class LiveStats:
    """Counters of a live run. `latency_ms`: arrival in the slot -> frame path done, per processed frame."""

    frames_in: int = 0
    frames_processed: int = 0
    frames_dropped: int = 0
    keyframes_encoded: int = 0  # background encodes installed
    keyframes_first: int = 0  # products' first keyframes encoded on the frame path (no stage model)
    refreshes: int = 0  # background decodes on the current embedding installed (no encode)
    keyframes_stale: int = 0  # finished after their product ended
    encoder_errors: int = 0
    frames_during_encode: int = 0  # frames segmented while a deferred encode was in flight
    products: int = 0
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None
    latency_ms: deque = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))

    @property
    def seconds(self) -> float:
        return (self.ended or time.monotonic()) - self.started

    @property
    def fps_in(self) -> float:
        return self.frames_in / self.seconds if self.seconds > 0 else 0.0

    @property
    def fps_out(self) -> float:
        return self.frames_processed / self.seconds if self.seconds > 0 else 0.0

    def latency(self, q: float) -> float | None:
        """The q-th percentile (0..100) of the added latency in ms, or None before any frame."""
        return float(np.percentile(np.asarray(self.latency_ms), q)) if self.latency_ms else None

    def as_dict(self) -> dict:
        p50, p95 = self.latency(50), self.latency(95)
        return {
            "seconds": round(self.seconds, 3),
            "frames_in": self.frames_in,
            "frames_processed": self.frames_processed,
            "frames_dropped": self.frames_dropped,
            "fps_in": round(self.fps_in, 2),
            "fps_out": round(self.fps_out, 2),
            "latency_ms_p50": None if p50 is None else round(p50, 1),
            "latency_ms_p95": None if p95 is None else round(p95, 1),
            "keyframes_first": self.keyframes_first,
            "keyframes_encoded": self.keyframes_encoded,
            "refreshes": self.refreshes,
            "keyframes_stale": self.keyframes_stale,
            "encoder_errors": self.encoder_errors,
            "frames_during_encode": self.frames_during_encode,
            "products": self.products,
        }

    def line(self) -> str:
        """One-line progress report."""
        p95 = self.latency(95)
        return (f"{self.seconds:6.1f} s  in {self.fps_in:5.1f} fps  out {self.fps_out:5.1f} fps  "
                f"dropped {self.frames_dropped}  keyframes {self.keyframes_first + self.keyframes_encoded}"
                f" (+{self.refreshes} refreshes, {self.encoder_errors} failed)  "
                f"p95 {'-' if p95 is None else f'{p95:.0f} ms'}  products {self.products}")


class LatestFrame:
    """A size-1 slot where the newest frame wins; the frame it replaces is dropped and counted.

    Each frame is stored with its arrival time (`time.monotonic()`). Single producer, single consumer,
    both on the event loop.
    """

    def __init__(self) -> None:
        self._item: tuple[Frame, float] | None = None
        self._closed = False
        self._ready = asyncio.Event()
        self.dropped = 0

    def put(self, frame: Frame) -> None:
        if self._item is not None:
            self.dropped += 1
        self._item = (frame, time.monotonic())
        self._ready.set()

    def close(self) -> None:
        """No more frames: `get` returns what is left, then None."""
        self._closed = True
        self._ready.set()

    def discard(self) -> None:
        """Drop the waiting frame unprocessed (shutting down); it is not counted as dropped."""
        self._item = None

    async def get(self) -> tuple[Frame, float] | None:
        """The newest frame and its arrival time, or None once closed and empty."""
        while self._item is None:
            if self._closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        item, self._item = self._item, None
        return item


class PushSource(FrameSource):
    """Frames handed in from outside (a WebRTC track's receive loop), newest wins, until `close()`.

    `put` never waits (call it on the event loop as frames arrive); iterating blocks until the next frame,
    so the live pipeline's source worker reads it like a camera. A frame replaced before it was read is
    dropped and counted in `dropped`. `close()` ends the iteration; a frame still waiting is discarded.
    Iterating a source closed before it was read yields nothing (the peer left before the stream began).
    `convert`, if given, turns what was put into a `Frame` on the reading worker, so the producer only
    hands over (a WebRTC frame is converted to RGB only if it is read, never on the event loop).
    """

    def __init__(self, name: str, size: tuple[int, int], fps: float = 30.0,
                 convert: Callable[[Any], Frame] | None = None) -> None:
        super().__init__(name, fps, None, size)
        self.dropped = 0
        self.convert = convert
        self._frame: Any = None
        self._changed = threading.Condition()

    def put(self, frame: Any) -> None:
        with self._changed:
            if self._closed:
                return
            if self._frame is not None:
                self.dropped += 1
            self._frame = frame
            self._changed.notify()

    def __iter__(self) -> Iterator[Frame]:
        return self._frames()

    def _frames(self) -> Iterator[Frame]:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._frame is not None or self._closed)
                if self._closed:
                    self._frame = None
                    return
                frame, self._frame = self._frame, None
            yield self.convert(frame) if self.convert is not None else frame

    def close(self) -> None:
        with self._changed:
            super().close()
            self._changed.notify_all()


class LivePipeline:
    """Runs a `FrameSource` through a deferred-keyframe `ProductPipeline` in real time (module docstring)."""

    def __init__(self, source: FrameSource, pipeline: ProductPipeline, sink: ProductSink, *,
                 on_result: Callable[[FrameResult], None] | None = None,
                 recorder: SessionRecorder | None = None, working_size: int | None = None) -> None:
        if not pipeline.masks.defer_keyframes:
            raise ValueError("LivePipeline needs a ProductPipeline built with defer_keyframes=True")
        self.source, self.pipeline, self.sink = source, pipeline, sink
        self.on_result = on_result
        self.recorder = recorder  # notes every frame, drop, keyframe hand-off and command for a replay
        self.working_size = working_size  # frames are processed at most this big (config live.working_size)
        self.stats = LiveStats()
        self.error: str | None = None
        self.interrupted = False
        self._stop: asyncio.Event | None = None
        self._encoding: asyncio.Future | None = None
        self._ready: Keyframe | None = None  # a finished encode, installed before the next frame
        self._exporting: set[asyncio.Future] = set()  # products being exported
        self._last_index = -1
        self._upstream_before = 0

    def command(self, command: OperatorCommand) -> None:
        """Queue an operator command given in camera pixels; the pipeline gets it at the working size.
        Safe from the event loop while frames are processed."""
        self.pipeline.command(command.scaled(scale_to_fit(self.source.size, self.working_size)))

    def stop(self) -> None:
        """Ask the stream to end after the frame in progress (safe from a signal handler on the loop)."""
        if self._stop is not None and not self._stop.is_set():
            log.info("live: stopping")
            self._stop.set()

    def interrupt(self) -> None:
        """`stop()` for SIGINT / SIGTERM: the manifest then says the stream was interrupted."""
        self.interrupted = True
        self.stop()

    async def run(self, duration: float | None = None, *, stats_every: float = 1.0,
                  on_stats: Callable[[LiveStats], None] | None = None) -> LiveStats:
        """Process frames until the source ends, `duration` seconds pass or `stop()` is called."""
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        slot = LatestFrame()
        with ThreadPoolExecutor(1, "turncrop-source") as source_pool, \
                ThreadPoolExecutor(1, "turncrop-frame") as frame_pool, \
                ThreadPoolExecutor(1, "turncrop-export") as export_pool, \
                (await loop.run_in_executor(None, start_encoder_process, self.pipeline.segmenter)) as encoder_pool:
            # The stream starts once the model is loaded in the worker, so its first keyframes are not lost.
            await self._until_started(encoder_pool)
            self.stats = LiveStats()
            self._upstream_before = self._upstream_dropped(since_start=False)  # replaced while starting up
            if self.recorder is not None:
                self.recorder.event({"event": "live", "working_size": self.working_size})
            timer = loop.call_later(duration, self.stop) if duration is not None else None
            reader = asyncio.create_task(self._read(slot, source_pool))
            reporter = asyncio.create_task(self._report(stats_every, on_stats)) if on_stats else None
            try:
                await self._consume(slot, frame_pool, encoder_pool, export_pool)
            finally:
                self._stop.set()
                slot.close()
                if timer is not None:
                    timer.cancel()
                if isinstance(self.source, PushSource):
                    self.source.close()  # its reader waits for frames that will not come now
                await reader  # returns after the frame being read (a frame period at most)
                self.stats.ended = time.monotonic()  # the stream's rates are over its frames, not the wrap-up
                if reporter is not None:
                    reporter.cancel()
                await self._finish_keyframes(frame_pool, encoder_pool)
                self._export(self.pipeline.finish(self._last_index), export_pool)
                await asyncio.gather(*self._exporting, return_exceptions=True)  # `_exported` logs failures
                self.stats.frames_dropped = slot.dropped + self._upstream_dropped()
                self.sink.summary.error = self.error
                self.sink.finish(interrupted=self.interrupted, live=self.stats.as_dict())
                # Spawning (it pickles the segmenter) and joining the encoder process take up to seconds:
                # neither runs on the event loop, which other streams may share (turncrop serve).
                await loop.run_in_executor(None, encoder_pool.shutdown)
        if on_stats is not None:
            on_stats(self.stats)
        return self.stats

    async def _until_started(self, encoder_pool: ProcessPoolExecutor) -> None:
        """Wait for the encoder process to hold the segmenter, or for `stop()`; a failed start is logged
        (every background job will then fail and be counted, and masks are carried by propagation)."""
        started = asyncio.wrap_future(encoder_started(encoder_pool))
        stopping = asyncio.create_task(self._stop.wait())
        await asyncio.wait({started, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if started.done() and started.exception() is not None:
            error = started.exception()
            log.error("the encoder process did not start (%s: %s)", type(error).__name__, error)

    async def _read(self, slot: LatestFrame, pool: ThreadPoolExecutor) -> None:
        loop = asyncio.get_running_loop()
        frames = iter(self.source)
        read = 0
        try:
            while not self._stop.is_set():
                frame = await loop.run_in_executor(pool, next, frames, None)
                if frame is None:
                    break
                read += 1
                slot.put(frame)
                if self.recorder is not None:
                    await loop.run_in_executor(pool, self.recorder.frame, frame)
                self.stats.frames_in = read + self._upstream_dropped()
                self.stats.frames_dropped = slot.dropped + self._upstream_dropped()
        except SourceError as e:
            self.error = str(e)  # the summary carries it (the manifest, the CLI's one error line)
        finally:
            slot.close()

    async def _consume(self, slot: LatestFrame, frame_pool: ThreadPoolExecutor,
                       encoder_pool: ProcessPoolExecutor, export_pool: ThreadPoolExecutor) -> None:
        loop = asyncio.get_running_loop()
        while not self._stop.is_set():
            item = await slot.get()
            if item is None or self._stop.is_set():
                slot.discard()
                return
            frame, arrived = item
            in_flight = self._encoding is not None and not self._encoding.done()
            self._collect()
            ready, self._ready = self._ready, None
            result = await loop.run_in_executor(frame_pool, self._step, frame, ready)
            self.stats.latency_ms.append(1000.0 * (time.monotonic() - arrived))
            self.stats.frames_processed += 1
            self.stats.frames_during_encode += int(in_flight)
            self._last_index = frame.index
            if self.recorder is not None:
                self.recorder.processed(frame.index)
                self.recorder.commands(result.events)
            self._collect()
            # The worker takes the newest request when it is free; the tracker merges the ones it missed.
            request = self.pipeline.take_keyframe_request() if self._encoding is None else None
            if request is not None:
                if self.recorder is not None:
                    self.recorder.keyframe_request(request.frame.index, after=frame.index)
                self._encoding = asyncio.ensure_future(run_in_encoder_process(encoder_pool, request))
            self._export(result.events, export_pool)
            if self.on_result is not None:
                self.on_result(result)

    def _export(self, events: list, export_pool: ThreadPoolExecutor) -> None:
        """Export the products that `events` ended on the export worker, in order: a product's final cut
        and its image files take longer than a frame period, and the frame path goes on meanwhile."""
        if not any(isinstance(e, ProductEnded) for e in events):
            return
        exporting = asyncio.get_running_loop().run_in_executor(export_pool, self.sink.events, events)
        self._exporting.add(exporting)
        exporting.add_done_callback(self._exported)

    def _exported(self, exporting: asyncio.Future) -> None:
        self._exporting.discard(exporting)
        if exporting.exception() is not None:
            error = exporting.exception()
            log.error("exporting a product failed (%s: %s)", type(error).__name__, error)
        else:
            self.stats.products += exporting.result()

    def _upstream_dropped(self, since_start: bool = True) -> int:
        """Frames a push source replaced before the source worker read them (they never reached the slot),
        since the stream started (not those that arrived while the encoder process was starting)."""
        if not isinstance(self.source, PushSource):
            return 0
        return self.source.dropped - (self._upstream_before if since_start else 0)

    async def _finish_keyframes(self, frame_pool: ThreadPoolExecutor, encoder_pool: ProcessPoolExecutor) -> None:
        """The stream is ending: install the job in flight (it cannot be interrupted, and its mask may be the
        product's best still) and, if the product on stage has no still yet, run its newest request and
        install that too, so a product stopped early still gets its cutout. One job more at most."""
        await self._settle(frame_pool)
        request = self.pipeline.take_keyframe_request() if self.pipeline.product_without_still else None
        if request is not None:
            log.info("live: running the pending %s of frame %d before the product is closed",
                     "keyframe" if request.decision.keyframe else "refresh", request.frame.index)
            if self.recorder is not None:
                self.recorder.keyframe_request(request.frame.index, after=self._last_index)
            self._encoding = asyncio.ensure_future(run_in_encoder_process(encoder_pool, request))
            await self._settle(frame_pool)

    async def _settle(self, frame_pool: ThreadPoolExecutor) -> None:
        """Install the finished job waiting for a frame, then wait for the job in flight and install it."""
        await self._install_ready(frame_pool)
        if self._encoding is not None:
            await asyncio.gather(self._encoding, return_exceptions=True)
            self._collect()
            await self._install_ready(frame_pool)

    async def _install_ready(self, frame_pool: ThreadPoolExecutor) -> None:
        ready, self._ready = self._ready, None
        if ready is not None:
            await asyncio.get_running_loop().run_in_executor(frame_pool, self._install, ready, None)

    def _install(self, ready: Keyframe, before: int | None) -> None:
        """Hand a finished request to the pipeline before frame `before` (None: at the end of the stream)."""
        if self.recorder is not None:
            self.recorder.keyframe_installed(ready.request.frame.index, before=before)
        if not self.pipeline.install_keyframe(ready):
            self.stats.keyframes_stale += 1
        elif ready.encoded:
            self.stats.keyframes_encoded += 1
        else:
            self.stats.refreshes += 1

    def _step(self, frame: Frame, ready: Keyframe | None) -> FrameResult:
        """The frame path (on the frame worker): install a finished request, segment, export."""
        if ready is not None:
            self._install(ready, frame.index)
        result = self.pipeline.process(frame.scaled_to(self.working_size))
        if result.keyframe:
            self.stats.keyframes_first += 1
        self.sink.record(result)
        return result

    def _collect(self) -> None:
        """Take the in-flight encode's outcome if it has finished (its keyframe waits in `_ready`)."""
        future = self._encoding
        if future is None or not future.done():
            return
        self._encoding = None
        error = future.exception()
        if error is not None:
            self.stats.encoder_errors += 1
            log.error("keyframe encode failed (%s: %s); continuing by propagation", type(error).__name__, error)
            return
        self._ready = future.result()

    async def _report(self, every: float, on_stats: Callable[[LiveStats], None]) -> None:
        while True:
            await asyncio.sleep(every)
            on_stats(self.stats)


def install_signal_handlers(live: LivePipeline) -> Callable[[], None]:
    """Make SIGINT and SIGTERM stop `live` cleanly; returns a function that removes the handlers and puts
    back the ones the program had (asyncio alone would leave Python's defaults).

    Must be called from the thread running the event loop (the main thread).
    """
    loop = asyncio.get_running_loop()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        loop.add_signal_handler(sig, live.interrupt)

    def remove() -> None:
        for sig, handler in previous.items():
            loop.remove_signal_handler(sig)
            if handler is not None:  # None: set outside Python, nothing to put back
                signal.signal(sig, handler)

    return remove


@dataclass
class LiveReport:
    summary: RunSummary
    stats: LiveStats


async def run_live_async(source: FrameSource, out_dir: str | Path, config: Config, *,
                         segmenter: Segmenter | None = None, duration: float | None = None,
                         handle_signals: bool = True, stats_every: float = 1.0,
                         on_stats: Callable[[LiveStats], None] | None = None,
                         on_result: Callable[[FrameResult], None] | None = None,
                         record: str | Path | None = None, record_codec: str = "ffv1") -> LiveReport:
    """Run `source` live into `out_dir` (products as `turncrop run` writes them, plus live stats in the
    manifest under "live"). The source is not closed here. `record`: also record the session into this
    new folder (`turncrop replay` reproduces the run from it)."""
    pipeline = build_pipeline(config, segmenter, frame_rate=source.fps or 30.0, defer_keyframes=True, source=source)
    with claim_output(Path(out_dir), source.name) as folder:
        sink = ProductSink(folder, config, source, pipeline)
        recorder = None
        if record is not None:
            recorder = SessionRecorder(record, config, source.fps or 30.0, source.size, source=source.name,
                                       backend=pipeline.segmenter.name, codec=record_codec)
        live = LivePipeline(source, pipeline, sink, on_result=on_result, recorder=recorder,
                            working_size=config.live.working_size)
        remove = install_signal_handlers(live) if handle_signals else None
        try:
            stats = await live.run(duration, stats_every=stats_every, on_stats=on_stats)
        finally:
            if remove is not None:
                remove()
            if recorder is not None:
                recorder.close({"live": live.stats.as_dict()})
    sink.summary.out_dir = Path(out_dir)
    return LiveReport(sink.summary, stats)


def run_live(source: FrameSource, out_dir: str | Path, config: Config, **options) -> LiveReport:
    """`run_live_async` in a fresh event loop (`asyncio.run`); options as there."""
    return asyncio.run(run_live_async(source, out_dir, config, **options))
