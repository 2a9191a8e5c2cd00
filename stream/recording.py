"""Recorded sessions: what the camera saw and what the operator did, in a folder that survives a crash.

A session folder is self-describing:

    session.json   format + format_version, when, versions (turncrop, torch, OpenCV, PyAV, numpy), the
                   config as a dict, the backend in use, the source, frame size and rate, the video codec
    video.mkv      every incoming frame, Matroska (FFV1 lossless by default, or H.264), written as it comes:
                   packets are flushed at once and clusters close every second, so a killed recorder
                   leaves a playable file holding all but the last moments
    events.jsonl   append-only, one JSON object a line, flushed per line:
                     {"kind": "header", "format": "turncrop-session", "format_version": 2}
                     {"frame": 12, "t": 0.4}                                   a frame arrived (its timestamp)
                     {"event": "processed", "frame": 12}                       the live run processed it
                     {"event": "keyframe_request", "frame": 12, "after": 13, "taken": "encode" | "skip"}
                                                                               the deferred keyframe (or
                                                                               refresh) of frame 12, taken
                                                                               after frame 13 was processed
                     {"event": "keyframe_installed", "frame": 12, "before": 15}
                                                                               ("before": "end": as the
                                                                               stream ended, format 2)
                     {"event": "command", "frame": 20, "command": {...}}       an operator command applied
                                                                               before frame 20 was processed
                     {"event": "live", "working_size": 640}                    a live run started (the size
                                                                               it segments frames at)
                     {"event": "end", "frames": 90, ...}                       the recorder closed cleanly
    prompt_mask.png  the initial prompt's mask (config prompt.mask, `--mask`), when there is one; the stored
                   config names it relative to the session folder
    golden/        expected replay outputs (written only by `turncrop replay --update-golden`)

Frames that arrived but were never processed are the live run's dropped frames. A recording without
any "processed" line (`turncrop record`) holds no live run to reproduce.

    recorder = SessionRecorder("sessions/monday", config, fps=30, size=(720, 1280))
    recorder.frame(frame)            # any thread; the recorder serialises its writers
    recorder.event({"event": "note", "text": "..."})
    recorder.close()

`open_session(folder)` reads and validates a session (`RecordingError` naming the file and what is wrong)
and `is_recording(path)` tells a session folder from anything else.
"""
from __future__ import annotations

import copy
import datetime as dt
import importlib.metadata
import json
import os
import platform
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

from turncrop.stream.config import BACKEND_NAMES, Config, ConfigError, load_config, read_prompt_mask
from turncrop.stream.sources import FrameSource, SourceError, VideoFileSource
from turncrop.tracking.frame import Frame

FORMAT = "turncrop-session"
FORMAT_VERSION = 2  # 2: keyframes installed as the stream ends ("before": "end")
STREAM_END = "end"
SESSION_FILE = "session.json"
VIDEO_FILE = "video.mkv"
EVENTS_FILE = "events.jsonl"
GOLDEN_DIR = "golden"
PROMPT_MASK_FILE = "prompt_mask.png"
CODECS = ("ffv1", "h264")
H264_PRESET = "veryfast"
TIME_BASE = Fraction(1, 1000)  # video timestamps in ms; events.jsonl keeps the exact seconds


class RecordingError(SourceError):
    """A session folder is missing, incomplete, corrupt or from a newer turncrop; the message says which file."""


def versions() -> dict[str, str]:
    """The versions that decide what a run produces, as stored in session.json."""
    out = {"python": platform.python_version(), "opencv": cv2.__version__, "pyav": av.__version__,
           "numpy": np.__version__}
    for package in ("turncrop", "torch"):
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[package] = "not installed"
    return out


# -- writing ---------------------------------------------------------------------------------------------


class _VideoWriter:
    """Frames into a Matroska file that stays playable when the process dies (see the module docstring)."""

    def __init__(self, path: Path, size: tuple[int, int], fps: float, codec: str, crf: int) -> None:
        h, w = size
        self.container = av.open(str(path), "w", format="matroska",
                                 container_options={"flush_packets": "1", "cluster_time_limit": "1000"})
        rate = Fraction(fps).limit_denominator(1001)
        if codec == "ffv1":
            # bgr0 keeps RGB exactly: what the replay decodes is bit for bit what the live run segmented.
            # Slices let FFmpeg encode on two threads (~30 ms a 960x720 frame on a loaded 2-core machine).
            stream = self.container.add_stream("ffv1", rate=rate, options={"level": "3", "slicecrc": "1",
                                                                           "slices": "4", "threads": "2"})
            stream.pix_fmt = "bgr0"
        else:
            # zerolatency: no lookahead or B-frames, so every frame is muxed as soon as it is encoded;
            # veryfast: ~20 ms a 960x720 frame (medium takes ~110 ms for ~10 % less size), in the source thread.
            stream = self.container.add_stream("libx264", rate=rate, options={
                "crf": str(crf), "preset": H264_PRESET, "tune": "zerolatency", "g": str(max(int(round(fps)), 1))})
            stream.pix_fmt = "yuv420p"
        stream.width, stream.height = w, h
        stream.time_base = TIME_BASE
        self.stream = stream
        self.last_pts = -1

    def write(self, image: np.ndarray, timestamp: float) -> None:
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        # Matroska needs increasing timestamps; two frames within a millisecond get consecutive ones.
        self.last_pts = max(self.last_pts + 1, int(round(timestamp / TIME_BASE)))
        frame.pts = self.last_pts
        frame.time_base = TIME_BASE
        self.container.mux(self.stream.encode(frame))

    def close(self) -> None:
        self.container.mux(self.stream.encode(None))
        self.container.close()


class SessionRecorder:
    """Writes a session folder: session.json at once, then every frame and event as it happens.

    Thread-safe: `frame` may be called from a source thread while `event` is called from others. Every
    method after `close` raises. The folder must be new or empty (a recording is never overwritten).
    """

    def __init__(self, folder: str | Path, config: Config, fps: float, size: tuple[int, int], *,
                 source: str = "", backend: str | None = None, codec: str = "ffv1", crf: int = 14,
                 extra: dict[str, Any] | None = None) -> None:
        """Start recording.

        Args:
          folder: the session folder (created; must not hold files yet).
          config: the run's configuration, stored so a replay uses the same.
          fps: the source's nominal frame rate.  size: (H, W) of every frame.
          source: what is being recorded (a camera, a file), for people.
          backend: the segmenter actually used (resolves config backend "auto").
          codec: "ffv1" (lossless, large) or "h264" (crf `crf`, yuv420p, small).
          extra: more JSON-safe facts for session.json (e.g. attribution of bundled material).
        """
        if codec not in CODECS:
            raise ValueError(f"codec must be one of {', '.join(CODECS)}, got {codec!r}")
        if not fps > 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        h, w = size
        if codec == "h264" and (h % 2 or w % 2):
            raise ValueError(f"h264 needs an even frame size, got {w}x{h} (use codec 'ffv1')")
        self.folder = Path(folder)
        if self.folder.exists() and (not self.folder.is_dir() or any(self.folder.iterdir())):
            raise RecordingError(f"{self.folder}: already exists and is not an empty folder; "
                                 "a recording is never overwritten")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.size = (int(h), int(w))
        self.frames = 0
        self._lock = threading.Lock()
        self._closed = False
        info = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "versions": versions(),
            "source": source,
            "width": int(w),
            "height": int(h),
            "fps": float(fps),
            "backend": backend or config.backend,
            "video": {"file": VIDEO_FILE, "codec": codec,
                      **({"crf": crf, "preset": H264_PRESET} if codec == "h264" else {"pix_fmt": "bgr0"})},
            "events": EVENTS_FILE,
            "config": _stored_config(config, self.folder),
            **(extra or {}),
        }
        _write_json(self.folder / SESSION_FILE, info)
        self._events = open(self.folder / EVENTS_FILE, "x", encoding="utf-8", buffering=1)
        self._line({"kind": "header", "format": FORMAT, "format_version": FORMAT_VERSION})
        self._video = _VideoWriter(self.folder / VIDEO_FILE, self.size, fps, codec, crf)

    def frame(self, frame: Frame) -> None:
        """Record one incoming frame (image and timestamp)."""
        if frame.size != self.size:
            raise ValueError(f"frame {frame.index} is {frame.size[1]}x{frame.size[0]}, the recording is "
                             f"{self.size[1]}x{self.size[0]} (W x H)")
        with self._lock:
            self._check_open()
            self._video.write(frame.image, frame.timestamp)
            self.frames += 1
            self._line({"frame": int(frame.index), "t": float(frame.timestamp)})

    def event(self, data: dict[str, Any]) -> None:
        """Append one event line, e.g. {"event": "processed", "frame": 12}."""
        if "event" not in data:
            raise ValueError(f"an event needs an 'event' key, got {data!r}")
        with self._lock:
            self._check_open()
            self._line(data)

    # The live pipeline's notes (stream/live.py), one small method each.

    def processed(self, frame_index: int) -> None:
        self.event({"event": "processed", "frame": int(frame_index)})

    def keyframe_request(self, frame_index: int, after: int | None = None, encoded: bool = True) -> None:
        """The live run took the request of frame `frame_index` after processing frame `after` (default: that
        same frame), to encode it or (`encoded` False) to drop it."""
        self.event({"event": "keyframe_request", "frame": int(frame_index),
                    "after": int(frame_index if after is None else after), "taken": "encode" if encoded else "skip"})

    def keyframe_installed(self, frame_index: int, before: int | None) -> None:
        """The live run installed the request of frame `frame_index` before processing frame `before`
        (None: after the last frame, as the stream ended)."""
        self.event({"event": "keyframe_installed", "frame": int(frame_index),
                    "before": STREAM_END if before is None else int(before)})

    def commands(self, events: list) -> None:
        """Record the operator commands applied in one frame's result events (CommandApplied)."""
        for e in events:
            command = getattr(e, "command", None)
            if command is not None and hasattr(command, "as_dict"):
                self.event({"event": "command", "frame": int(e.frame_index), "command": command.as_dict()})

    def close(self, summary: dict[str, Any] | None = None) -> None:
        """Finish the video and write the end line (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._video.close()
            finally:
                self._line({"event": "end", "frames": self.frames, **(summary or {})})
                self._events.close()

    def __enter__(self) -> SessionRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _line(self, data: dict[str, Any]) -> None:
        self._events.write(json.dumps(data, separators=(",", ":")) + "\n")
        self._events.flush()

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"{self.folder}: the recorder is closed")


def _stored_config(config: Config, folder: Path) -> dict[str, Any]:
    """`config` as session.json keeps it: a prompt mask is copied into the session, so replays find it."""
    data = config.to_dict()
    if config.prompt.mask is not None:
        mask = read_prompt_mask(config.prompt.mask)
        if not cv2.imwrite(str(folder / PROMPT_MASK_FILE), mask.astype(np.uint8) * 255):
            raise RecordingError(f"{folder / PROMPT_MASK_FILE}: cannot write the prompt's mask")
        data["prompt"]["mask"] = PROMPT_MASK_FILE
    return data


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


# -- reading ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FrameRecord:
    index: int
    t: float


@dataclass
class Session:
    """A validated session folder (see `open_session`).

    Attributes:
      info: session.json.  frames: every recorded frame in arrival order.  events: the event lines.
      closed: the recorder wrote its end line (a crash or kill leaves it out).
      warnings: what was tolerated while reading (a torn last line, a video shorter than the events).
    """

    folder: Path
    info: dict
    frames: list[FrameRecord]
    events: list[dict]
    closed: bool
    warnings: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def fps(self) -> float:
        return float(self.info["fps"])

    @property
    def size(self) -> tuple[int, int]:
        return int(self.info["height"]), int(self.info["width"])

    @property
    def video(self) -> Path:
        return self.folder / self.info.get("video", {}).get("file", VIDEO_FILE)

    @property
    def live(self) -> bool:
        """Whether a live run processed this session (so it can be reproduced as it ran)."""
        return any(e["event"] == "processed" for e in self.events)

    def of_kind(self, name: str) -> list[dict]:
        return [e for e in self.events if e["event"] == name]

    def config(self, overrides: dict[str, Any] | None = None, names: dict[str, str] | None = None) -> Config:
        """The recorded config, with backend "auto" resolved to the backend the recording used, and
        dotted `overrides` ({"graphcut.colour_weight": 2.0}) applied (`names`: as `load_config`'s)."""
        data = copy.deepcopy(self.info["config"])
        prompt = data.get("prompt")
        if isinstance(prompt, dict) and isinstance(prompt.get("mask"), str):  # stored inside the session
            prompt["mask"] = str(self.folder / prompt["mask"])
        if data.get("backend") == "auto" and self.info.get("backend") in BACKEND_NAMES:
            data["backend"] = self.info["backend"]
        recorded = {key: f"{self.folder / SESSION_FILE} (the recorded config)" for key in data}
        try:
            return load_config(None, {**data, **(overrides or {})}, {**recorded, **(names or {})})
        except ConfigError as e:
            raise RecordingError(f"the recorded config is not valid here: {e}") from None

    def read_frames(self) -> Iterator[Frame]:
        """The recorded frames, with the recorded indices and timestamps (not the video's).

        A recorder that was killed leaves a video shorter than its events (the last cluster) and maybe
        cut mid-packet: the frames that decode are yielded with a warning. A cleanly closed recording
        whose video holds fewer frames than its events is an error.
        """
        count = 0
        try:
            with VideoFileSource(self.video) as source:
                if source.size != self.size:
                    raise RecordingError(f"{self.video}: frames are {source.size[1]}x{source.size[0]}, "
                                         f"{SESSION_FILE} says {self.size[1]}x{self.size[0]}")
                for decoded in source:
                    if count == len(self.frames):
                        if not self.closed:  # killed between writing a frame and its line: that frame is lost
                            break
                        raise RecordingError(f"{self.video}: holds more frames than the {len(self.frames)} "
                                             f"listed in {EVENTS_FILE}")
                    record = self.frames[count]
                    yield Frame(decoded.image, record.index, record.t, str(self.folder))
                    count += 1
        except RecordingError:
            raise
        except SourceError as e:
            if self.closed:
                raise RecordingError(f"{self.video}: truncated or corrupt after {count} of {len(self.frames)} "
                                     f"recorded frames ({e})") from e
            self._short_video(count, str(e))
            return
        if count < len(self.frames):
            if self.closed:
                raise RecordingError(f"{self.video}: truncated: holds {count} frames, {EVENTS_FILE} lists "
                                     f"{len(self.frames)} (the recording was closed cleanly, so frames are missing)")
            self._short_video(count, "")

    def _short_video(self, count: int, error: str) -> None:
        message = (f"{self.name}: the recorder did not close (killed or crashed); its video holds {count} of "
                   f"{len(self.frames)} recorded frames" + (f" ({error})" if error else "") + "; replaying those")
        self.warnings.append(message)  # reported once, with the replay (`ReplayReport.warnings`)


class SessionSource(FrameSource):
    """A session's recorded frames as a `FrameSource` (recorded indices and timestamps)."""

    def __init__(self, session: Session) -> None:
        super().__init__(str(session.folder), session.fps, len(session.frames), session.size)
        self.session = session

    def _frames(self) -> Iterator[Frame]:
        for frame in self.session.read_frames():
            if self._closed:
                return
            yield frame


def is_recording(path: str | Path) -> bool:
    """True for a session folder written by `turncrop record` / `--record` (session.json names the format)."""
    p = Path(path)
    try:
        info = json.loads((p / SESSION_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and info.get("format") == FORMAT


def open_session(folder: str | Path) -> Session:
    """Read and validate a session folder; RecordingError naming the file and the problem."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RecordingError(f"{folder}: no such session folder")
    info = _read_info(folder / SESSION_FILE)
    events_path = folder / EVENTS_FILE
    if not events_path.is_file():
        raise RecordingError(f"{events_path}: missing (every session records its frames' timestamps there)")
    video = folder / info.get("video", {}).get("file", VIDEO_FILE)
    if not video.is_file():
        raise RecordingError(f"{video}: missing (the session's frames)")
    frames, events, warnings = _read_events(events_path)
    if not frames:
        raise RecordingError(f"{events_path}: lists no frames")
    session = Session(folder, info, frames, [e for e in events if e["event"] != "end"],
                      closed=any(e["event"] == "end" for e in events), warnings=warnings)
    return session


def _read_info(path: Path) -> dict:
    if not path.is_file():
        raise RecordingError(f"{path}: missing: not a turncrop session folder")
    try:
        info = json.loads(path.read_text())
    except ValueError as e:
        raise RecordingError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise RecordingError(f"{path}: not a turncrop session (format is {info.get('format') if isinstance(info, dict) else None!r}, "
                             f"expected {FORMAT!r})")
    _check_version(info.get("format_version"), path)
    for key, kind in (("width", int), ("height", int), ("fps", (int, float)), ("config", dict)):
        if not isinstance(info.get(key), kind) or isinstance(info.get(key), bool):
            raise RecordingError(f"{path}: {key} is missing or not a {getattr(kind, '__name__', 'number')}")
    return info


def _check_version(version: Any, path: Path) -> None:
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise RecordingError(f"{path}: format_version must be a positive integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise RecordingError(f"{path}: format_version {version} is newer than this turncrop reads "
                             f"(up to {FORMAT_VERSION}); update turncrop to replay it")


def _read_events(path: Path) -> tuple[list[FrameRecord], list[dict], list[str]]:
    """Parse events.jsonl. A torn last line (the writer was killed mid-line) is dropped with a warning;
    a bad line anywhere else is an error naming its line number."""
    lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the file ends with a newline
    torn = bool(lines) and not path.read_bytes().endswith(b"\n")
    frames: list[FrameRecord] = []
    events: list[dict] = []
    warnings: list[str] = []
    for number, text in enumerate(lines, 1):
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            if number == len(lines) and torn:
                # Reported once, with the replay (`ReplayReport.warnings`): a session is read more than once.
                warnings.append(f"{path}: last line {number} is incomplete (the recorder was killed); ignored")
                break
            raise RecordingError(f"{path}: line {number} is not a valid event ({e}): {text[:80]!r}") from None
        if number == 1:
            if data.get("kind") != "header" or data.get("format") != FORMAT:
                raise RecordingError(f"{path}: line 1 must be the {FORMAT} header, got {text[:80]!r}")
            _check_version(data.get("format_version"), path)
            continue
        if "frame" in data and "t" in data and "event" not in data:
            index, t = data["frame"], data["t"]
            if not isinstance(index, int) or not isinstance(t, (int, float)):
                raise RecordingError(f"{path}: line {number}: frame must be an integer and t a number: {text[:80]!r}")
            if frames and (index <= frames[-1].index or t < frames[-1].t):
                raise RecordingError(f"{path}: line {number}: frame {index} at t={t} does not follow frame "
                                     f"{frames[-1].index} at t={frames[-1].t}")
            frames.append(FrameRecord(index, float(t)))
        elif isinstance(data.get("event"), str):
            if data["event"] not in ("end", "live") and not isinstance(data.get("frame"), int):
                raise RecordingError(f"{path}: line {number}: event {data['event']!r} needs an integer frame")
            events.append(data)
        else:
            raise RecordingError(f"{path}: line {number}: neither a frame nor an event: {text[:80]!r}")
    if not lines:
        raise RecordingError(f"{path}: empty (no header line)")
    return frames, events, warnings
