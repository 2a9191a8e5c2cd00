"""Live frame sources: a recording paced at its own frame rate (a simulated camera) and a real camera.

    source = RealtimeSource(open_source("session.mp4"))        # frame i is delivered at its timestamp
    source = CameraSource("/dev/video0")                        # V4L2 through PyAV; an int is an OpenCV index

Both are `FrameSource`s: iterating yields `Frame`s (H, W, 3) uint8 RGB. A camera that drops out mid-stream
is reopened (with a back-off) before the source gives up with a `SourceError`; a camera that is not there
at all is a `SourceError` at once.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import av
import cv2
import numpy as np

from turncrop.stream.sources import DEFAULT_FPS, FrameSource, SourceError
from turncrop.tracking.frame import Frame

log = logging.getLogger(__name__)

__all__ = ["Capture", "CameraSource", "Clock", "MonotonicClock", "RealtimeSource", "open_capture"]


class Clock(Protocol):
    """Where a paced source gets its time from (injectable so tests can run faster than real time)."""

    def now(self) -> float:
        """Seconds, monotonic."""
        ...

    def sleep(self, seconds: float) -> None:
        ...


class MonotonicClock:
    """Wall time, optionally sped up: `speed=4` plays a 30 fps recording at 120 fps."""

    def __init__(self, speed: float = 1.0) -> None:
        if not speed > 0:
            raise ValueError(f"clock speed must be > 0, got {speed}")
        self.speed = speed

    def now(self) -> float:
        return time.monotonic() * self.speed

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds / self.speed)


class RealtimeSource(FrameSource):
    """Delivers another source's frames no earlier than their timestamps, as a camera would.

    The first frame is delivered at once and fixes the start time. A consumer that reads late gets the
    frame at once (no frame is skipped here: dropping stale frames is the live pipeline's job). Timestamps
    are passed on unchanged (the recording's own).
    """

    def __init__(self, inner: FrameSource, clock: Clock | None = None) -> None:
        super().__init__(inner.name, inner.fps, inner.frame_count, inner.size)
        self.inner = inner
        self.clock = clock or MonotonicClock()

    def _frames(self) -> Iterator[Frame]:
        start: float | None = None
        for frame in self.inner:
            if self._closed:
                return
            if start is None:
                start = self.clock.now() - frame.timestamp
            self.clock.sleep(start + frame.timestamp - self.clock.now())
            yield frame

    def close(self) -> None:
        super().close()
        self.inner.close()


class Capture(Protocol):
    """An open camera: `read` returns the next image (H, W, 3) uint8 RGB or raises OSError when it drops."""

    def read(self) -> np.ndarray:
        ...

    def close(self) -> None:
        ...


class _AvCapture:
    """A V4L2 device through PyAV (FFmpeg's video4linux2 demuxer)."""

    def __init__(self, device: str) -> None:
        self.container = av.open(device, format="v4l2")
        self.fps = float(self.container.streams.video[0].average_rate or 0) or None
        self._frames = self.container.decode(video=0)

    def read(self) -> np.ndarray:
        try:
            return next(self._frames).to_ndarray(format="rgb24")
        except StopIteration:
            raise OSError("the camera stopped delivering frames") from None
        except av.FFmpegError as e:
            raise OSError(str(e)) from e

    def close(self) -> None:
        self.container.close()


class _CvCapture:
    """A camera by OpenCV index."""

    def __init__(self, index: int) -> None:
        self.capture = cv2.VideoCapture(index)
        if not self.capture.isOpened():
            self.capture.release()
            raise OSError(f"OpenCV cannot open camera index {index}")
        self.fps = float(self.capture.get(cv2.CAP_PROP_FPS)) or None

    def read(self) -> np.ndarray:
        ok, image = self.capture.read()
        if not ok:
            raise OSError("the camera returned no frame")
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)

    def close(self) -> None:
        self.capture.release()


def open_capture(device: str | int) -> Capture:
    """Open a camera: a device path (V4L2 through PyAV) or an OpenCV index. Raises OSError if it cannot."""
    if isinstance(device, int):
        return _CvCapture(device)
    if not Path(device).exists():
        raise FileNotFoundError(f"no such device (connected cameras: {_devices() or 'none'})")
    try:
        return _AvCapture(device)
    except av.FFmpegError as e:
        raise OSError(str(e)) from e


def _devices() -> str:
    return ", ".join(sorted(str(p) for p in Path("/dev").glob("video*")))


class CameraSource(FrameSource):
    """Frames from a camera, reopened when it drops out.

    Frame i carries the time since the source opened (seconds, monotonic). When a read fails the camera is
    closed and reopened up to `reconnect_attempts` times, `reconnect_delay` seconds apart (doubling up to
    8x); the stream then goes on with the next index. A reopened camera with another resolution, or one
    that does not come back, ends the stream with a `SourceError`.
    """

    def __init__(self, device: str | int, *, fps: float | None = None, reconnect_attempts: int = 10,
                 reconnect_delay: float = 0.5, opener: Callable[[str | int], Capture] = open_capture,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        """Open `device` and read its first frame.

        Raises:
          SourceError: the camera is missing or cannot be opened, or delivers no frame.
        """
        self.device = device
        self._open = opener
        self._sleep = sleep
        self.reconnect_attempts = reconnect_attempts
        self.reconnect_delay = reconnect_delay
        self.reconnects = 0
        name = f"camera {device}"
        try:
            self._capture: Capture | None = opener(device)
            self._first: np.ndarray | None = self._capture.read()
        except OSError as e:
            raise SourceError(f"{name}: cannot open the camera: {e}") from e
        rate = fps or getattr(self._capture, "fps", None) or DEFAULT_FPS
        super().__init__(name, float(rate), None, self._first.shape[:2])

    def _frames(self) -> Iterator[Frame]:
        if self._capture is None:
            self._capture = self._reopen(OSError("reopened after close"))
        start = time.monotonic()
        index = 0
        while not self._closed:
            if self._first is not None:
                image, self._first = self._first, None
            else:
                try:
                    image = self._capture.read()
                except OSError as e:
                    self._capture = self._reopen(e)
                    continue
            if image.shape[:2] != self.size:
                raise SourceError(f"{self.name}: frame {index} is {image.shape[1]}x{image.shape[0]}, the camera "
                                  f"started at {self.size[1]}x{self.size[0]} (W x H)")
            yield Frame(np.ascontiguousarray(image), index, time.monotonic() - start, self.name)
            index += 1

    def _reopen(self, error: OSError) -> Capture:
        """Close the dropped camera and open it again; SourceError when every attempt fails."""
        log.warning("%s dropped (%s): reconnecting", self.name, error)
        if self._capture is not None:
            self._capture.close()
            self._capture = None
        delay = self.reconnect_delay
        for attempt in range(1, self.reconnect_attempts + 1):
            self._sleep(delay)
            try:
                capture = self._open(self.device)
            except OSError as e:
                log.warning("%s: reconnect attempt %d/%d failed: %s", self.name, attempt, self.reconnect_attempts, e)
                delay = min(2 * delay, 8 * self.reconnect_delay)
                continue
            self.reconnects += 1
            log.warning("%s: reconnected (attempt %d)", self.name, attempt)
            return capture
        raise SourceError(f"{self.name}: the camera dropped ({error}) and did not come back after "
                          f"{self.reconnect_attempts} attempts")

    def close(self) -> None:
        super().close()
        if self._capture is not None:
            self._capture.close()
            self._capture = None
