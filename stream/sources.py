"""Frame sources: video files and image folders, read lazily as a stream of `Frame`s.

    with open_source("turntable.mp4") as source:
        print(source.name, source.fps, source.frame_count, source.size)
        for frame in source:          # one decoded frame at a time, never the whole video
            ...

Every problem with the input (missing, not a video, empty, corrupt, truncated, an unreadable or
differently sized image) surfaces as `SourceError`, whose message names the file. A source that fails
part-way raises after the frames it could decode have been yielded, so a consumer keeps what it made.
"""
from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import av
import cv2
import numpy as np

from turncrop.tracking.frame import Frame

__all__ = [
    "DEFAULT_FPS",
    "IMAGE_SUFFIXES",
    "MIN_FRAME_SIDE",
    "FrameSource",
    "ImageFolderSource",
    "SourceError",
    "VideoFileSource",
    "natural_key",
    "open_source",
]

DEFAULT_FPS = 30.0
# Frames smaller than this on a side cannot be processed: OpenCV's DIS optical flow fails on them, or
# crashes the process (seen from 1 px up to 28 px high), and they could not give a usable still.
MIN_FRAME_SIDE = 32
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})


class SourceError(Exception):
    """A frame source cannot be opened or read; the message names the file and what is wrong."""


def natural_key(name: str) -> tuple[tuple[int, str | int], ...]:
    """Sort key that orders digit runs by value: `frame2` < `frame10`, case-insensitive."""
    # re.split with a capture group alternates text (even positions) and digit runs (odd positions),
    # so an int is only ever compared with an int.
    parts = re.split(r"(\d+)", name.lower())
    return tuple((0, int(p)) if i % 2 else (1, p) for i, p in enumerate(parts))


class FrameSource(ABC):
    """An iterable of `Frame`s read lazily from somewhere.

    Attributes:
      name: what `Frame.source` carries (the path as given).
      fps: nominal frame rate (frames per second).
      frame_count: number of frames if the source knows it up front, else None.
      size: (H, W) of every frame, known once the source is open.

    Iterating returns a generator that reads one frame per step; a finite source can be iterated
    again from the start. `close()` (or leaving a `with` block) ends any iteration in progress.
    """

    def __init__(self, name: str, fps: float, frame_count: int | None, size: tuple[int, int]) -> None:
        self.name = name
        self.fps = fps
        self.frame_count = frame_count
        self.size = size
        self._closed = False

    def __iter__(self) -> Iterator[Frame]:
        if self._closed:
            raise ValueError(f"{self.name}: source is closed")
        return self._frames()

    @abstractmethod
    def _frames(self) -> Iterator[Frame]:
        """Yield the frames in order; stop early once `self._closed` is set."""

    @property
    def closed(self) -> bool:
        """True once `close()` was called."""
        return self._closed

    def close(self) -> None:
        """Release what the source holds; idempotent."""
        self._closed = True

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.name!r}, fps={self.fps:g}, frames={self.frame_count}, "
            f"size={self.size})"
        )


class VideoFileSource(FrameSource):
    """Frames of the first video stream of any file PyAV can demux (mp4, mkv, webm, mov, ...).

    Each frame's timestamp is its presentation time, pts * time_base, counted from the stream's start;
    frames without a pts get index / fps. Frames come upright as a player shows them: a display rotation
    in the container (phones record portrait video as rotated landscape) is applied, so `size` is the
    displayed (H, W). Opening probes the file (demux + decode of the first frame), so a file that opens
    has at least one decodable frame and a known size.
    """

    def __init__(self, path: str | Path, fps: float | None = None) -> None:
        """Open `path`.

        Args:
          path: the video file.
          fps: rate to use when the container reports none (default 30); a reported rate wins.

        Raises:
          SourceError: missing, empty, not a video, no video stream, no decodable frame, frames under
            MIN_FRAME_SIDE px.
        """
        self.path = Path(path)
        name = str(path)
        _check_file(self.path)
        container = self._open_container(name)
        try:
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            nominal = float(rate) if rate else (fps or DEFAULT_FPS)
            first = self._first_frame(container, stream, name)
            count = stream.frames or None  # 0 means the container does not say (mkv, webm)
        finally:
            container.close()
        size = (first.width, first.height) if _quarter_turns(first.rotation) % 2 else (first.height, first.width)
        _check_frame_size(name, size)
        super().__init__(name, nominal, count, size)
        self._open_containers: set[av.container.InputContainer] = set()

    def _open_container(self, name: str) -> av.container.InputContainer:
        try:
            container = av.open(str(self.path), mode="r")
        except av.FFmpegError as e:
            raise SourceError(f"{name}: not a readable video (unsupported or corrupt): {e}") from e
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            container.close()
            raise SourceError(f"{name}: has no video stream (streams: {', '.join(kinds)})")
        return container

    @staticmethod
    def _first_frame(
        container: av.container.InputContainer, stream: av.video.stream.VideoStream, name: str
    ) -> av.VideoFrame:
        try:
            for av_frame in container.decode(stream):
                return av_frame
        except av.FFmpegError as e:
            raise SourceError(f"{name}: corrupt video, cannot decode its first frame: {e}") from e
        raise SourceError(f"{name}: video stream has no frames")

    def _frames(self) -> Iterator[Frame]:
        container = self._open_container(self.name)
        self._open_containers.add(container)
        try:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            time_base = stream.time_base
            start = stream.start_time or 0
            index = 0
            damaged_at: int | None = None
            decoded = self._decode(container, stream)
            while not self._closed:
                try:
                    av_frame, corrupt = next(decoded)
                    image = np.rot90(av_frame.to_ndarray(format="rgb24"), _quarter_turns(av_frame.rotation))
                except StopIteration:
                    break
                except av.FFmpegError as e:
                    raise SourceError(f"{self.name}: corrupt video, decoding failed at frame {index}: {e}") from e
                if corrupt and damaged_at is None:
                    damaged_at = index
                if image.shape[:2] != self.size:
                    raise SourceError(
                        f"{self.name}: frame {index} is {image.shape[1]}x{image.shape[0]}, the video started at "
                        f"{self.size[1]}x{self.size[0]} (W x H); a resolution change mid-stream is not supported"
                    )
                if av_frame.pts is not None and time_base is not None:
                    timestamp = float((av_frame.pts - start) * time_base)
                else:
                    timestamp = index / self.fps
                yield Frame(np.ascontiguousarray(image), index, timestamp, self.name)
                index += 1
            # The demuxer flags a packet it could only partly read: a file cut short (or damaged data).
            # Raise at the end so that every frame that could be decoded has been delivered.
            if damaged_at is not None and not self._closed:
                raise SourceError(
                    f"{self.name}: truncated or damaged video: corrupt data near frame {damaged_at}, "
                    f"stream ended after {index} frames"
                    + (f" of {self.frame_count} declared" if self.frame_count else "")
                )
        finally:
            self._open_containers.discard(container)
            container.close()

    @staticmethod
    def _decode(
        container: av.container.InputContainer, stream: av.video.stream.VideoStream
    ) -> Iterator[tuple[av.VideoFrame, bool]]:
        """Yield (frame, came from a packet flagged corrupt) in presentation order."""
        for packet in container.demux(stream):
            # The last packet demux yields is an empty one that flushes the decoder's delayed frames.
            for av_frame in packet.decode():
                yield av_frame, bool(packet.is_corrupt)

    def close(self) -> None:
        """Close every container an unfinished iteration still holds."""
        super().close()
        for container in list(self._open_containers):
            container.close()
        self._open_containers.clear()


class ImageFolderSource(FrameSource):
    """The images of one folder as frames, in natural name order (`frame2` before `frame10`).

    Images are png/jpg/jpeg/bmp/tif/tiff/webp (other files and hidden files are ignored), read one at
    a time; frame i has timestamp i / fps. Every image must have the size of the first.
    """

    def __init__(self, folder: str | Path, fps: float | None = None) -> None:
        """Open `folder`.

        Args:
          folder: the directory holding the images.
          fps: the frame rate to time-stamp with (default 30).

        Raises:
          SourceError: missing, not a folder, no images, first image unreadable or under MIN_FRAME_SIDE px.
          ValueError: fps <= 0.
        """
        self.folder = Path(folder)
        name = str(folder)
        if fps is not None and not fps > 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        if not self.folder.exists():
            raise SourceError(f"{name}: no such folder")
        if not self.folder.is_dir():
            raise SourceError(f"{name}: not a folder")
        # Hidden files (e.g. macOS '._frame1.png' resource forks) share the suffix but are not images.
        self.files: list[Path] = sorted(
            (
                p
                for p in self.folder.iterdir()
                if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()
            ),
            key=lambda p: (natural_key(p.name), p.name),
        )
        if not self.files:
            suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
            raise SourceError(f"{name}: folder has no images ({suffixes})")
        first = self._read(self.files[0], 0, name)
        _check_frame_size(f"{name}/{self.files[0].name}", first.shape[:2])
        super().__init__(name, float(fps or DEFAULT_FPS), len(self.files), first.shape[:2])

    @staticmethod
    def _read(path: Path, index: int, name: str) -> np.ndarray:
        """(H, W, 3) uint8 RGB of one image; 16-bit and grey images are converted."""
        image = cv2.imread(str(path), cv2.IMREAD_COLOR_RGB)
        if image is None:
            raise SourceError(f"{name}: cannot read image {path.name} (frame {index}): unreadable or not an image")
        return image

    def _frames(self) -> Iterator[Frame]:
        for index, path in enumerate(self.files):
            if self._closed:
                return
            image = self._read(path, index, self.name)
            if image.shape[:2] != self.size:
                raise SourceError(
                    f"{self.name}: image {path.name} (frame {index}) is {image.shape[1]}x{image.shape[0]}, "
                    f"but {self.files[0].name} is {self.size[1]}x{self.size[0]} (W x H)"
                )
            yield Frame(np.ascontiguousarray(image), index, index / self.fps, self.name)


def _quarter_turns(rotation: float) -> int:
    """Counter-clockwise quarter turns (0..3) that make a frame upright, from PyAV's `frame.rotation`
    (degrees counter-clockwise, from the display matrix; -90 for a phone held upright)."""
    return round(rotation / 90) % 4


def _check_frame_size(name: str, size: tuple[int, int]) -> None:
    if min(size) < MIN_FRAME_SIDE:
        raise SourceError(f"{name}: frames are {size[1]}x{size[0]} px (W x H); turncrop needs at least "
                          f"{MIN_FRAME_SIDE} px on each side")


def _check_file(path: Path) -> None:
    if not path.exists():
        raise SourceError(f"{path}: no such file or folder")
    if not path.is_file():
        raise SourceError(f"{path}: not a regular file")
    if path.stat().st_size == 0:
        raise SourceError(f"{path}: file is empty (0 bytes)")


def open_source(path: str | Path, fps: float | None = None) -> FrameSource:
    """Open a video file or an image folder as a `FrameSource`, chosen by what `path` is.

    Args:
      path: a folder of images, or a video file in any container PyAV can demux (the extension does
        not matter; the content decides).
      fps: for a folder, the frame rate to time-stamp with (default 30); for a video, used only when
        the container reports no rate.

    Raises:
      SourceError: the path is missing, a single image, empty, not a video, corrupt, has no frames, or its
        frames are under MIN_FRAME_SIDE px.
      ValueError: fps <= 0.
    """
    if fps is not None and not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    p = Path(path)
    if p.is_dir():
        return ImageFolderSource(p, fps)
    _check_file(p)
    if p.suffix.lower() in IMAGE_SUFFIXES:
        raise SourceError(f"{path}: a single image, not a video; pass the folder holding the frames")
    return VideoFileSource(p, fps)
