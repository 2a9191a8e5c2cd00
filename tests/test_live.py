"""The live pipeline: paced sources, the latest-frame slot, background keyframes, failures, SIGINT, cameras."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from turncrop.models.base import Prompt
from turncrop.models.graphcut import GraphCutSegmenter
from turncrop.stream.cli import main
from turncrop.stream.config import load_config
from turncrop.stream.encoder_process import run_in_encoder_process, start_encoder_process
from turncrop.stream.live import LatestFrame, run_live
from turncrop.stream.live_sources import CameraSource, MonotonicClock, RealtimeSource
from turncrop.stream.replay import replay_session
from turncrop.stream.runner import ProductSink, build_pipeline
from turncrop.stream.sources import FrameSource, ImageFolderSource, SourceError
from turncrop.tracking.frame import Frame
from turncrop.tracking.keyframes import Decision, KeyframeOptions, KeyframePolicy
from turncrop.tracking.masks import mask_iou
from turncrop.tracking.masktrack import KeyframeRequest, MaskTracker
from turncrop.tracking.products import ProductEnded
from turncrop.tracking.propagation import FlowPropagator

from data_paths import load_masks, write_short_session

FPS = 15.0  # every 2nd frame of the 30 fps recording


@pytest.fixture(scope="module")
def short_session(tmp_path_factory) -> Path:
    """Every 2nd frame of the sample (70 frames: 10 empty, 50 with the product, 10 empty) at 480x360."""
    return write_short_session(tmp_path_factory.mktemp("live_session"))


def _config(**overrides):
    return load_config("default", {"backend": "graphcut", "keyframes.max_interval": 4, **overrides})


def _paced(folder: Path, speed: float = 1.0) -> RealtimeSource:
    return RealtimeSource(ImageFolderSource(folder, fps=FPS), MonotonicClock(speed))


class SlowEncoder:
    """Graph cut whose encode sleeps `delay` seconds (a heavy encoder) and optionally raises on call `fail_on`."""

    def __init__(self, delay: float = 0.0, fail_on: int | None = None) -> None:
        self.inner = GraphCutSegmenter()
        self.name = "slow_graphcut"
        self.delay, self.fail_on = delay, fail_on
        self.calls = 0

    def encode(self, image, frame_index=-1):
        self.calls += 1
        if self.calls == self.fail_on:
            raise RuntimeError("simulated encoder failure")
        time.sleep(self.delay)
        return self.inner.encode(image, frame_index)

    def decode(self, embedding, prompt, image):
        return self.inner.decode(embedding, prompt, image)


def _product_written(out: Path, context: object = None) -> dict:
    manifest = json.loads((out / "manifest.json").read_text())
    assert [p["status"] for p in manifest["products"]] == ["ok"], (manifest["products"], context)
    for name in manifest["products"][0]["files"]:
        assert (out / name).stat().st_size > 0
    return manifest


# -- the live pipeline ---------------------------------------------------------------------------------


def test_live_replay_exports_the_product(short_session, tmp_path):
    with _paced(short_session) as source:
        report = run_live(source, tmp_path, _config(), handle_signals=False)
    stats = report.stats
    assert stats.frames_in == 70
    # Every frame read was either processed or dropped by the latest-frame slot (the source ended).
    assert stats.frames_processed + stats.frames_dropped == stats.frames_in
    assert stats.frames_processed >= 10 and stats.products == 1
    manifest = _product_written(tmp_path)
    assert manifest["live"]["frames_processed"] == stats.frames_processed
    # The stage model's evidence is the mask until the first keyframe arrives: no encode on the frame path.
    assert stats.keyframes_first == 0 and stats.keyframes_encoded >= 1


def test_slow_encoder_runs_off_the_frame_path(short_session, tmp_path):
    with _paced(short_session, speed=0.5) as source:  # 7.5 fps: time for several 0.5 s encodes per product
        report = run_live(source, tmp_path, _config(), segmenter=SlowEncoder(delay=0.5), handle_signals=False)
    stats = report.stats
    assert stats.keyframes_encoded >= 1
    # Frames kept being segmented (masks carried forward) while background encodes were in flight.
    assert stats.frames_during_encode >= 2 * stats.keyframes_encoded
    assert stats.frames_processed + stats.frames_dropped == stats.frames_in
    _product_written(tmp_path)


def test_encoder_failure_is_logged_and_the_stream_goes_on(short_session, tmp_path, caplog):
    caplog.set_level(logging.ERROR, logger="turncrop.stream.live")
    segmenter = SlowEncoder(fail_on=2)  # call 1 is the product's first keyframe; call 2 the first deferred one
    with _paced(short_session) as source:
        report = run_live(source, tmp_path, _config(), segmenter=segmenter, handle_signals=False)
    stats = report.stats
    assert stats.encoder_errors == 1
    assert "keyframe encode failed (RuntimeError: simulated encoder failure)" in caplog.text
    assert stats.keyframes_encoded >= 1  # a later keyframe succeeded
    assert stats.frames_processed + stats.frames_dropped == stats.frames_in
    _product_written(tmp_path)


def test_sigint_finishes_the_product_in_progress(short_session, tmp_path):
    seen = []

    def on_result(result) -> None:
        if len(result.detections):
            seen.append(result.frame.index)
            if len(seen) == 8:  # well past products.min_frames: a product, not a transient
                os.kill(os.getpid(), signal.SIGINT)

    def program_handler(signum, frame) -> None:  # the embedding program's own, to be put back
        raise AssertionError("the live runner's handler should have taken the signal")

    previous = signal.signal(signal.SIGTERM, program_handler)
    try:
        with _paced(short_session, speed=0.5) as source:  # a loaded CI host drops no frame at 7.5 fps
            report = run_live(source, tmp_path, _config(), on_result=on_result)
        assert signal.getsignal(signal.SIGTERM) is program_handler  # the live runner put it back
    finally:
        signal.signal(signal.SIGTERM, previous)
    stats = report.stats.as_dict()
    assert 8 <= len(seen) <= 10, (seen, stats)  # stopped within a frame or two of the signal
    assert report.stats.frames_in < 70, stats
    manifest = _product_written(tmp_path, stats)
    sidecar = json.loads((tmp_path / "product-001.json").read_text())
    assert "source ended" in json.dumps(sidecar)
    assert manifest["products"][0]["last_frame"] == seen[-1], (manifest["products"], seen, stats)


def test_a_product_stopped_before_its_first_keyframe_arrives_still_gets_its_cutout(short_session, tmp_path):
    """Stopped while the product's first keyframe is still encoding (the masks so far were carried, and live
    stills come only from decoded masks): the stream waits for that job, installs it, and the product is
    exported from it. The recording notes the hand-off at the end, so the replay does the same."""
    seen = []

    def on_result(result) -> None:
        if len(result.detections):
            seen.append(result.frame.index)
            if len(seen) == 8:  # about 0.5 s in: the 3 s encode of the first keyframe is still running
                os.kill(os.getpid(), signal.SIGINT)

    with _paced(short_session) as source:
        report = run_live(source, tmp_path / "live", _config(), segmenter=SlowEncoder(delay=3.0),
                          on_result=on_result, record=tmp_path / "session")
    assert report.stats.keyframes_encoded == 1 and report.stats.frames_during_encode >= 7
    manifest = _product_written(tmp_path / "live")
    events = [json.loads(line) for line in (tmp_path / "session" / "events.jsonl").read_text().splitlines()]
    installed = [e["frame"] for e in events if e.get("event") == "keyframe_installed"]
    assert [e["before"] for e in events if e.get("event") == "keyframe_installed"] == ["end"]
    assert manifest["products"][0]["frame_index"] == installed[0] == seen[0]  # the decoded mask is the still

    replayed = replay_session(tmp_path / "session", tmp_path / "replay", segmenter=GraphCutSegmenter())
    assert replayed.divergences == []
    assert [(p["status"], p["frame_index"]) for p in replayed.summary.products] == [("ok", installed[0])]


def test_live_stills_are_cut_from_the_source_resolution_frame(short_session):
    """A live stream segments at `live.working_size`; its product's still is cut from the source frame (the
    mask upscaled and matted there), not from the working copy. Run here as the live pipeline runs it, with
    each deferred request encoded at once and installed before the next frame."""
    config = _config(**{"live.working_size": 240})  # the frames are 480x360
    pipeline = build_pipeline(config, None, frame_rate=FPS, defer_keyframes=True)
    gt = load_masks(short_session / "gt")
    ended, ready = [], None
    with ImageFolderSource(short_session, fps=FPS) as source:
        for frame in source:
            if ready is not None:
                pipeline.install_keyframe(ready)
            result = pipeline.process(frame.scaled_to(config.live.working_size))
            assert result.frame.size == (180, 240) and result.frame.original is frame
            request = pipeline.take_keyframe_request()
            ready = pipeline.encode_keyframe(request) if request is not None else None
            ended += [e for e in result.events if isinstance(e, ProductEnded) and not e.transient]
    assert len(ended) == 1
    ended[0].product.cut_best()  # as the export does
    still = ended[0].product.pool.best()
    assert still.frame_size == (360, 480) and still.alpha is not None
    cut = np.zeros(still.frame_size, bool)
    x, y = still.offset
    cut[y:y + still.alpha.shape[0], x:x + still.alpha.shape[1]] = still.alpha >= 0.5
    assert mask_iou(cut, gt[still.frame_index]) >= 0.9  # measured 0.92


def test_a_request_run_in_the_encoder_process_comes_back_as_the_same_request(short_session):
    """Only the outcome crosses back from the worker: the Keyframe holds the caller's own request, whose
    frame still knows its source-resolution original (which never went to the worker)."""
    frame = next(iter(ImageFolderSource(short_session, fps=FPS))).scaled_to(240)
    request = KeyframeRequest(frame, Prompt(box=np.array([10, 10, 100, 100], np.float32)), None,
                              np.zeros(frame.size, np.uint8), Decision(0, True, "first"), generation=0)

    async def scenario():
        with start_encoder_process(GraphCutSegmenter()) as pool:
            return await run_in_encoder_process(pool, request)

    keyframe = asyncio.run(scenario())
    assert keyframe.request is request and keyframe.request.frame.original is not None
    assert keyframe.result.mask.shape == (180, 240) and keyframe.encoded


def test_exporting_a_product_does_not_hold_up_the_frame_path(short_session, tmp_path, monkeypatch):
    """The final cut and the image files of an ended product take longer than a frame period: they are made
    on the export worker while frames go on being processed."""
    processed, exports = [], []
    original_events = ProductSink.events

    def slow_events(sink, events):
        if any(isinstance(e, ProductEnded) for e in events):
            exports.append((threading.current_thread().name, len(processed)))
            time.sleep(0.5)  # 7 frames at 15 fps
            exports.append((threading.current_thread().name, len(processed)))
        return original_events(sink, events)

    monkeypatch.setattr(ProductSink, "events", slow_events)
    with _paced(short_session) as source:
        report = run_live(source, tmp_path, _config(), handle_signals=False,
                          on_result=lambda result: processed.append(result.frame.index))
    (thread, before), (_, after) = exports
    assert thread.startswith("turncrop-export") and after >= before + 4
    assert report.stats.products == 1
    _product_written(tmp_path)


class ThreadedSegmenter(GraphCutSegmenter):
    num_threads = 99  # like SamSegmenter: the intra-op threads it runs with


def _encoder_threads() -> tuple[int, int, int]:
    from turncrop.stream import encoder_process
    return torch.get_num_threads(), cv2.getNumThreads(), encoder_process._segmenter.num_threads


def test_the_encoder_process_leaves_a_cpu_to_the_frame_path():
    """On a 2-core machine an encoder on both cores delayed every frame behind it (MobileSAM live p95 58 ms,
    dozens of frames dropped; with one core left: 28 ms, 1 dropped)."""
    expected = max(1, len(os.sched_getaffinity(0)) - 1)
    with start_encoder_process(ThreadedSegmenter()) as pool:
        assert pool.submit(_encoder_threads).result(timeout=120) == (expected, expected, expected)


def test_latest_frame_slot_keeps_the_newest():
    import asyncio

    async def scenario():
        slot = LatestFrame()
        frames = [Frame(np.zeros((2, 2, 3), np.uint8), i, i / 30) for i in range(3)]
        for f in frames:
            slot.put(f)
        got, _ = await slot.get()
        slot.close()
        return got.index, slot.dropped, await slot.get()

    assert asyncio.run(scenario()) == (2, 2, None)


# -- deferred keyframes in the tracker -------------------------------------------------------------------


def _square_frames(n: int) -> list[Frame]:
    frames = []
    for i in range(n):
        image = np.full((120, 160, 3), 200, np.uint8)
        image[40:80, 50 + i:90 + i] = (30, 60, 160)
        frames.append(Frame(image, i, i / 30))
    return frames


def test_live_tracker_carries_masks_and_leaves_the_decoding_to_the_worker():
    tracker = MaskTracker(GraphCutSegmenter(), KeyframePolicy(KeyframeOptions(max_interval=2)), FlowPropagator(),
                          defer_keyframes=True)
    frames = _square_frames(5)
    box = np.array([50, 40, 90, 80], np.float32)
    first = tracker.step(frames[0], box)
    assert first.keyframe and tracker.take_request() is None  # the first keyframe is encoded in place
    decodes = tracker.segmenter.decode_calls
    second = tracker.step(frames[1], None)
    refresh = tracker.take_request()
    assert second.reason == "carried" and second.mask[60, 71]  # propagated with the square
    assert refresh is not None and not refresh.decision.keyframe and refresh.embedding is not None
    third = tracker.step(frames[2], None)  # max_interval: a keyframe, in the background
    assert not third.keyframe and "in the background" in third.reason
    tracker.step(frames[3], None)  # the worker was busy: the newer frame takes the keyframe's place
    request = tracker.take_request()
    assert request.frame.index == 3 and request.decision.keyframe and request.embedding is None
    assert tracker.segmenter.decode_calls == decodes  # nothing was decoded on the frame path
    keyframe = tracker.encode_keyframe(request)
    tracker.step(frames[4], None)
    assert tracker.install(keyframe)
    assert tracker.step(frames[4], None).mask[60, 74]
    tracker.reset()
    tracker.step(frames[0], box)
    assert not tracker.install(keyframe)  # belonged to the object before the reset


# -- sources -----------------------------------------------------------------------------------------------


class ListSource(FrameSource):
    def __init__(self, frames: list[Frame]) -> None:
        super().__init__("list", 10.0, len(frames), frames[0].size)
        self.frames = frames

    def _frames(self) -> Iterator[Frame]:
        yield from self.frames


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self.sleeps.append(round(seconds, 6))
            self.t += seconds


def test_realtime_source_paces_at_the_timestamps():
    clock = FakeClock()
    frames = [Frame(np.zeros((2, 2, 3), np.uint8), i, t) for i, t in enumerate([0.0, 0.1, 0.25, 0.3])]
    source = RealtimeSource(ListSource(frames), clock)
    got = []
    for frame in source:
        got.append((frame.index, round(clock.t - 100.0, 6)))
        if frame.index == 1:
            clock.t += 0.2  # the consumer is late: frame 2 is due already, frame 3 a little later
    assert got == [(0, 0.0), (1, 0.1), (2, 0.3), (3, 0.3)]
    assert clock.sleeps == [0.1]


def test_realtime_source_speeds_up_with_the_clock(short_session):
    start = time.monotonic()
    with RealtimeSource(ImageFolderSource(short_session, fps=FPS), MonotonicClock(20.0)) as source:
        count = sum(1 for _ in source)
    elapsed = time.monotonic() - start
    assert count == 70
    assert 69 / FPS / 20 * 0.9 <= elapsed < 3.0


def test_missing_camera_is_a_clear_error(capsys):
    with pytest.raises(SourceError, match=r"camera /dev/video9: cannot open the camera: no such device"):
        CameraSource("/dev/video9")
    assert main(["live", "--camera", "/dev/video9", "--out", "unused"]) == 2
    assert "camera /dev/video9" in capsys.readouterr().err


class FakeCapture:
    def __init__(self, frames: int, shape=(4, 6, 3)) -> None:
        self.left, self.shape, self.closed = frames, shape, False

    def read(self) -> np.ndarray:
        if self.left == 0:
            raise OSError("device unplugged")
        self.left -= 1
        return np.zeros(self.shape, np.uint8)

    def close(self) -> None:
        self.closed = True


def test_camera_reconnects_after_a_drop_then_gives_up():
    # Opens: the first camera gives 3 frames; reopening fails twice, then a camera gives 2 more frames;
    # after that the device never comes back.
    plan: list = [FakeCapture(3), OSError("busy"), OSError("busy"), FakeCapture(2)]
    opened: list[FakeCapture] = []

    def opener(device):
        outcome = plan.pop(0) if plan else OSError("no such device")
        if isinstance(outcome, OSError):
            raise outcome
        opened.append(outcome)
        return outcome

    sleeps: list[float] = []
    camera = CameraSource("/dev/fake", opener=opener, sleep=sleeps.append, reconnect_attempts=3,
                          reconnect_delay=0.5)
    indices = []
    with pytest.raises(SourceError, match="did not come back after 3 attempts"):
        for frame in camera:
            indices.append(frame.index)
    assert indices == [0, 1, 2, 3, 4]
    assert camera.reconnects == 1
    assert sleeps == [0.5, 1.0, 2.0, 0.5, 1.0, 2.0]  # back-off doubles per failed attempt
    assert all(c.closed for c in opened)


def test_camera_missing_at_start_is_not_retried():
    calls = []

    def opener(device):
        calls.append(device)
        raise FileNotFoundError("no such device")

    with pytest.raises(SourceError, match="cannot open the camera"):
        CameraSource(3, opener=opener)
    assert calls == [3]


def test_live_cli_needs_realtime_for_a_file(short_session, capsys):
    assert main(["live", str(short_session), "--out", "unused"]) == 2
    assert "--realtime" in capsys.readouterr().err
