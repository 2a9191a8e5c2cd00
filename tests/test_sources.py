"""Frame sources: video containers, image folders, and every way an input can be bad."""
from __future__ import annotations

import inspect
import json
import struct
import threading
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from data_paths import RECORDINGS, SHARED_DATA, load_masks, require_data
from turncrop.stream.sources import (
    FrameSource,
    ImageFolderSource,
    SourceError,
    VideoFileSource,
    natural_key,
    open_source,
)
from turncrop.tracking.frame import Frame

H, W = 48, 64


def pattern_image(index: int) -> np.ndarray:
    """(H, W, 3) RGB: red left half, blue right half, a green bottom band, index coded in the top left."""
    image = np.zeros((H, W, 3), np.uint8)
    image[:, : W // 2] = (230, 20, 20)
    image[:, W // 2 :] = (20, 20, 230)
    image[-12:, :] = (20, 230, 20)
    image[:8, :8] = min(255, index * 8)
    return image


def write_clip(path: Path, codec: str, n: int = 12, rate: int = 30, faststart: bool = False) -> Path:
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        for i in range(n):
            for packet in stream.encode(av.VideoFrame.from_ndarray(pattern_image(i), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def consume(source: FrameSource, timeout: float = 20.0) -> tuple[list[Frame], BaseException | None]:
    """All frames the source yields before it ends or raises; fails the test if it hangs."""
    return consume_iterator(iter(source), timeout)


def consume_iterator(
    frames_in: Iterator[Frame], timeout: float = 20.0
) -> tuple[list[Frame], BaseException | None]:
    """The frames left in `frames_in` and the exception that ended it, if any; fails on a hang."""
    frames: list[Frame] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            for frame in frames_in:
                frames.append(frame)
        except BaseException as e:  # handed back to the test to assert on its type
            error.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"reading frames hung for {timeout} s"
    return frames, (error[0] if error else None)


CONTAINERS = [("clip.mp4", "libx264"), ("clip.mkv", "libx264"), ("clip.mov", "libx264"), ("clip.webm", "libvpx-vp9")]


@pytest.mark.parametrize("filename,codec", CONTAINERS)
def test_video_containers_decode_every_frame_in_order(tmp_path: Path, filename: str, codec: str) -> None:
    if codec not in av.codecs_available:
        pytest.skip(f"encoder {codec} not in this PyAV build")
    path = write_clip(tmp_path / filename, codec, n=12)
    with open_source(path) as source:
        assert isinstance(source, VideoFileSource)
        assert source.size == (H, W)
        assert source.fps == pytest.approx(30.0)
        assert source.frame_count in (12, None)  # mkv and webm do not declare a count
        frames, error = consume(source)
    assert error is None
    assert [f.index for f in frames] == list(range(12))
    times = [f.timestamp for f in frames]
    assert times[0] == pytest.approx(0.0, abs=1e-3)
    assert all(b > a for a, b in zip(times, times[1:]))
    assert times[-1] == pytest.approx(11 / 30, abs=2e-3)
    for f in frames:
        assert f.image.shape == (H, W, 3) and f.image.dtype == np.uint8 and f.image.flags.c_contiguous
        assert f.source == str(path)
    # Frame order survives B-frame reordering: the top-left block codes the index.
    levels = [float(f.image[2:6, 2:6].mean()) for f in frames]
    assert levels == sorted(levels)


def test_video_is_rgb_and_upright(tmp_path: Path) -> None:
    frame = next(iter(open_source(write_clip(tmp_path / "c.mp4", "libx264"))))
    left = frame.image[12:30, 4 : W // 2 - 4].reshape(-1, 3).mean(0)
    right = frame.image[12:30, W // 2 + 4 : -4].reshape(-1, 3).mean(0)
    bottom = frame.image[-8:, 4:-4].reshape(-1, 3).mean(0)
    assert left[0] > 190 and left[1] < 60 and left[2] < 60, left
    assert right[2] > 190 and right[0] < 60 and right[1] < 60, right
    assert bottom[1] > 190 and bottom[0] < 60 and bottom[2] < 60, bottom


def test_portrait_phone_video_comes_upright(tmp_path: Path) -> None:
    # A phone held upright records landscape frames plus a display matrix that turns them 90 degrees
    # clockwise (tkhd matrix a=0, b=1, c=-1, d=0). Write that matrix into a plain mp4.
    path = write_clip(tmp_path / "portrait.mp4", "libx264", n=3)
    data = bytearray(path.read_bytes())
    tkhd = data.find(b"tkhd")
    assert data[tkhd + 4] == 0  # version 0: 32-bit times
    matrix = tkhd + 4 + 4 + 20 + 8 + 8  # fourcc, version/flags, times/id/duration, reserved, layer..volume
    data[matrix : matrix + 36] = struct.pack(">9i", 0, 0x10000, 0, -0x10000, 0, 0, 0, 0, 0x40000000)
    path.write_bytes(bytes(data))
    source = open_source(path)
    assert source.size == (W, H)
    image = next(iter(source)).image
    assert image.shape == (W, H, 3)
    # Turned clockwise: the red left half is now on top, the green bottom band on the left.
    assert image[4 : W // 2 - 4, 20:36, 0].mean() > 190 and image[W // 2 + 4 : -4, 20:36, 2].mean() > 190
    assert image[4:-4, :8, 1].mean() > 190


def test_resolution_change_mid_stream(tmp_path: Path) -> None:
    # MPEG-TS files concatenate byte-wise into one valid stream; here the second part is larger.
    parts = []
    for width, height in [(W, H), (W + 32, H + 16)]:
        part = tmp_path / f"{width}.ts"
        with av.open(str(part), "w", format="mpegts") as container:
            stream = container.add_stream("libx264", rate=30)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            for _ in range(4):
                black = np.zeros((height, width, 3), np.uint8)
                container.mux(stream.encode(av.VideoFrame.from_ndarray(black, format="rgb24")))
            container.mux(stream.encode(None))
        parts.append(part.read_bytes())
    path = tmp_path / "joined.ts"
    path.write_bytes(b"".join(parts))
    frames, error = consume(open_source(path))
    assert len(frames) == 4
    assert isinstance(error, SourceError) and "frame 4 is 96x64" in str(error)


def test_video_is_streamed_lazily(tmp_path: Path) -> None:
    # Noise frames make ~5 KB packets, so the file is far bigger than the demuxer's read-ahead.
    path = tmp_path / "noise.mkv"
    rng = np.random.default_rng(2)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 128, 96, "yuv420p"
        for _ in range(40):
            noise = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(noise, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    source = open_source(path)
    frames = iter(source)
    assert inspect.isgenerator(frames)
    assert next(frames).index == 0
    # Cut the file under the open reader: a lazy reader has not got that far and runs out early.
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 10)
    rest, error = consume_iterator(frames)
    assert error is None or isinstance(error, SourceError), repr(error)
    assert len(rest) < 20


def test_close_ends_iteration_in_progress(tmp_path: Path) -> None:
    source = open_source(write_clip(tmp_path / "c.mp4", "libx264", n=10))
    frames = iter(source)
    next(frames)
    source.close()
    assert list(frames) == []
    with pytest.raises(ValueError, match="closed"):
        iter(source)


def test_video_can_be_iterated_twice(tmp_path: Path) -> None:
    source = open_source(write_clip(tmp_path / "c.mkv", "libx264", n=5))
    assert [f.index for f in source] == [f.index for f in source] == list(range(5))


def test_timestamps_follow_pts_for_other_rates(tmp_path: Path) -> None:
    source = open_source(write_clip(tmp_path / "c.mp4", "libx264", n=6, rate=25))
    assert source.fps == pytest.approx(25.0)
    assert [round(f.timestamp, 4) for f in source] == [round(i / 25, 4) for i in range(6)]


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="nope.mp4.*no such"):
        open_source(tmp_path / "nope.mp4")


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(SourceError, match=r"empty\.mp4.*empty \(0 bytes\)"):
        open_source(tmp_path / "empty.mp4")


def test_garbage_with_video_extension(tmp_path: Path) -> None:
    path = tmp_path / "garbage.mp4"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 20_000, dtype=np.uint8).tobytes())
    with pytest.raises(SourceError, match=r"garbage\.mp4.*not a readable video"):
        open_source(path)


def test_file_without_video_stream(tmp_path: Path) -> None:
    path = tmp_path / "sound.mka"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = 8000, 0, Fraction(1, 8000)
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)
    with pytest.raises(SourceError, match=r"sound\.mka.*no video stream"):
        open_source(path)


@pytest.mark.parametrize("faststart", [False, True], ids=["moov-at-end", "faststart"])
def test_truncated_mp4_gives_source_error_or_shorter_stream(tmp_path: Path, faststart: bool) -> None:
    full = write_clip(tmp_path / "full.mp4", "libx264", n=60, faststart=faststart)
    data = full.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    try:
        source = open_source(cut)
    except SourceError as e:  # index at the end of the file: nothing to read
        assert "cut.mp4" in str(e)
        return
    frames, error = consume(source)
    assert error is None or isinstance(error, SourceError), repr(error)
    assert 0 < len(frames) < 60
    if error is not None:
        assert "cut.mp4" in str(error) and f"after {len(frames)} frames" in str(error)
    assert [f.index for f in frames] == list(range(len(frames)))


def test_garbage_mid_file_gives_shorter_stream_or_source_error(tmp_path: Path) -> None:
    # Overwrite the second half of an mkv (no index, so it still opens) with garbage.
    path = write_clip(tmp_path / "c.mkv", "libx264", n=60)
    data = bytearray(path.read_bytes())
    half = len(data) // 2
    data[half:] = np.random.default_rng(1).integers(0, 256, len(data) - half, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    frames, error = consume(open_source(path))
    assert error is None or isinstance(error, SourceError), repr(error)
    assert 0 < len(frames) < 60
    assert [f.index for f in frames] == list(range(len(frames)))


def test_decoder_error_mid_stream_keeps_yielded_frames(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # FFmpeg's own resilience makes a real mid-stream raise hard to provoke on demand: inject one.
    real_decode = VideoFileSource._decode

    def failing_decode(container: av.container.InputContainer, stream: av.video.stream.VideoStream):
        for i, item in enumerate(real_decode(container, stream)):
            if i == 4:
                raise av.error.InvalidDataError(1094995529, "Invalid data found", "avcodec_send_packet()")
            yield item

    monkeypatch.setattr(VideoFileSource, "_decode", staticmethod(failing_decode))
    path = write_clip(tmp_path / "c.mp4", "libx264", n=12)
    frames, error = consume(open_source(path))
    assert [f.index for f in frames] == [0, 1, 2, 3]
    assert isinstance(error, SourceError)
    assert "c.mp4" in str(error) and "frame 4" in str(error)
    assert isinstance(error.__cause__, av.FFmpegError)


# --- image folders -------------------------------------------------------------------------------


def write_images(folder: Path, names: list[str]) -> None:
    folder.mkdir(exist_ok=True)
    for i, name in enumerate(names):
        assert cv2.imwrite(str(folder / name), cv2.cvtColor(pattern_image(i), cv2.COLOR_RGB2BGR))


def test_natural_key_orders_numbers_by_value() -> None:
    names = ["frame10.png", "frame2.png", "Frame1.png", "frame02b.png", "a.png", "frame100.png"]
    assert sorted(names, key=natural_key) == [
        "a.png", "Frame1.png", "frame2.png", "frame02b.png", "frame10.png", "frame100.png"
    ]


def test_image_folder_in_natural_order(tmp_path: Path) -> None:
    names = [f"frame{i}.png" for i in range(12)]  # written in index order, so colour codes the index
    write_images(tmp_path / "seq", names)
    (tmp_path / "seq" / "notes.txt").write_text("not an image")
    (tmp_path / "seq" / ".frame5.png").write_bytes(b"hidden resource fork")
    with open_source(tmp_path / "seq", fps=10) as source:
        assert isinstance(source, ImageFolderSource)
        assert (source.frame_count, source.size, source.fps) == (12, (H, W), 10.0)
        frames = list(source)
    assert [f.index for f in frames] == list(range(12))
    assert [f.timestamp for f in frames] == pytest.approx([i / 10 for i in range(12)])
    assert [int(f.image[2, 2, 0]) for f in frames] == [min(255, i * 8) for i in range(12)]
    assert frames[0].image[20, 5].tolist() == [230, 20, 20]  # RGB, not BGR


def test_image_folder_mixed_formats_default_fps(tmp_path: Path) -> None:
    write_images(tmp_path / "seq", ["f1.jpg", "f2.bmp", "f3.tif", "f4.webp", "f5.jpeg"])
    source = open_source(tmp_path / "seq")
    assert source.fps == 30.0
    frames = list(source)
    assert len(frames) == 5
    for f in frames:
        assert np.abs(f.image[20, 5].astype(int) - [230, 20, 20]).max() < 30


def test_image_folder_is_read_lazily(tmp_path: Path) -> None:
    write_images(tmp_path / "seq", ["1.png", "2.png", "3.png"])
    frames = iter(open_source(tmp_path / "seq"))
    assert next(frames).index == 0
    (tmp_path / "seq" / "3.png").write_bytes(b"damaged after opening")
    assert next(frames).index == 1
    with pytest.raises(SourceError, match=r"3\.png \(frame 2\)"):
        next(frames)


def test_folder_without_images(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "readme.txt").write_text("x")
    with pytest.raises(SourceError, match="docs.*no images"):
        open_source(tmp_path / "docs")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="empty.*no images"):
        open_source(tmp_path / "empty")


def test_folder_with_differently_sized_image(tmp_path: Path) -> None:
    write_images(tmp_path / "seq", ["f1.png", "f2.png"])
    cv2.imwrite(str(tmp_path / "seq" / "f3.png"), np.zeros((H + 2, W, 3), np.uint8))
    frames, error = consume(open_source(tmp_path / "seq"))
    assert len(frames) == 2
    assert isinstance(error, SourceError)
    assert "f3.png (frame 2)" in str(error) and f"{W}x{H + 2}" in str(error)


def test_folder_with_unreadable_image(tmp_path: Path) -> None:
    write_images(tmp_path / "seq", ["f1.png"])
    (tmp_path / "seq" / "f2.png").write_bytes(b"\x89PNG broken")
    frames, error = consume(open_source(tmp_path / "seq"))
    assert len(frames) == 1 and isinstance(error, SourceError) and "f2.png (frame 1)" in str(error)


def test_single_image_is_not_a_video(tmp_path: Path) -> None:
    write_images(tmp_path, ["one.png"])
    with pytest.raises(SourceError, match="single image"):
        open_source(tmp_path / "one.png")


@pytest.mark.parametrize("opener", [open_source, ImageFolderSource])
def test_bad_fps_is_rejected(tmp_path: Path, opener: Callable[..., FrameSource]) -> None:
    write_images(tmp_path / "seq", ["f1.png"])
    with pytest.raises(ValueError, match="fps"):
        opener(tmp_path / "seq", fps=0)


# --- the bundled recording and the data helpers --------------------------------------------------


def test_bundled_recording_matches_its_session_and_ground_truth() -> None:
    folder = RECORDINGS / "mic_turntable"
    session = json.loads((folder / "session.json").read_text())
    assert (folder / "video.mp4").stat().st_size < 6e6
    assert sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) < 8e6
    with open_source(folder / "video.mp4") as source:
        assert source.size == (session["height"], session["width"])
        assert source.fps == pytest.approx(session["fps"])
        assert source.frame_count == session["frame_count"]
        frames = list(source)
    masks = load_masks(folder / "gt")
    assert len(frames) == len(masks) == session["frame_count"]
    assert all(m.shape == source.size for m in masks)
    assert [round(f.timestamp * session["fps"]) for f in frames] == list(range(len(frames)))

    first, last = session["product_frames"]["first"], session["product_frames"]["last"]
    assert [r["frame"] for r in session["frames"]] == list(range(first, last + 1))
    assert first >= 10 and last <= len(frames) - 11  # opens and closes on the empty stage
    assert not any(m.any() for i, m in enumerate(masks) if not first <= i <= last)

    # The GT covers what differs from the empty stage: the product (dark on a light sweep) and, near
    # it, its contact shadow.
    stage = np.median(np.stack([f.image for f in frames[:first]]), axis=0).astype(np.float32)
    for i in range(first, last + 1, 9):
        changed = np.abs(frames[i].image.astype(np.float32) - stage).max(axis=2) > 40
        gt = masks[i]
        near_gt = cv2.dilate(gt.astype(np.uint8), np.ones((31, 31), np.uint8)) > 0
        assert 0.05 < gt.mean() < 0.25
        assert (changed & gt).sum() / gt.sum() > 0.85, f"frame {i}: GT pixels that look like the empty stage"
        assert (changed & near_gt).sum() / changed.sum() > 0.85, f"frame {i}: changes far from the GT"
    # Empty frames are not identical: sensor noise and flicker differ frame to frame.
    assert not np.array_equal(frames[0].image, frames[1].image)


def test_require_data_skips_when_missing() -> None:
    with pytest.raises(pytest.skip.Exception, match="no_such_set"):
        require_data("no_such_set")
    if SHARED_DATA.is_dir():
        present = next(p.name for p in SHARED_DATA.iterdir() if p.is_dir())
        assert require_data(present) == SHARED_DATA / present


def test_load_masks_sorted_bool(tmp_path: Path) -> None:
    for i, value in [(2, 255), (0, 0), (1, 200)]:
        cv2.imwrite(str(tmp_path / f"{i:05d}.png"), np.full((4, 5), value, np.uint8))
    masks = load_masks(tmp_path)
    assert [m.dtype for m in masks] == [np.dtype(bool)] * 3
    assert [bool(m.all()) for m in masks] == [False, True, True]
    assert masks[0].shape == (4, 5)


def test_a_scaled_frame_keeps_its_source_resolution_original() -> None:
    frame = Frame(np.full((360, 480, 3), 7, np.uint8), 5, 0.2, "cam")
    small = frame.scaled_to(240)
    assert small.size == (180, 240) and (small.index, small.timestamp, small.source) == (5, 0.2, "cam")
    assert small.original is frame and small.scaled_to(120).original is frame  # always the source's frame
    assert frame.scaled_to(480) is frame and frame.scaled_to(None) is frame and frame.original is None
