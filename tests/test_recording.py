"""Session recording: a self-describing folder that survives a kill, and clear errors for bad recordings."""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest

from turncrop.stream.cli import main
from turncrop.stream.config import load_config
from turncrop.stream.recording import (
    FORMAT_VERSION,
    RecordingError,
    SessionRecorder,
    is_recording,
    open_session,
)
from turncrop.tracking.frame import Frame

REPO = Path(__file__).resolve().parents[1]


def _frames(n: int, size=(48, 64), seed=0) -> list[Frame]:
    """Smoothly textured frames with a moving square, timestamps at an uneven camera rate."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)
    base = cv2.resize(coarse, (size[1], size[0]), interpolation=cv2.INTER_CUBIC)
    frames, t = [], 0.0
    for i in range(n):
        image = base.copy()
        image[10:30, 5 + i:25 + i] = (200, 40, 40)
        frames.append(Frame(image, i, round(t, 6)))
        t += 1 / 30 + (0.004 if i % 3 == 0 else 0.0)
    return frames


def _record(folder: Path, frames: list[Frame], codec: str = "ffv1", close: bool = True) -> SessionRecorder:
    config = load_config(None, {"backend": "graphcut", "keyframes.max_interval": 5})
    recorder = SessionRecorder(folder, config, 30.0, frames[0].size, source="unit test", codec=codec)
    for frame in frames:
        recorder.frame(frame)
    recorder.event({"event": "command", "frame": 3, "command": {"kind": "rekey"}})
    if close:
        recorder.close({"note": "done"})
    return recorder


def test_session_folder_describes_itself_and_replays_the_exact_frames(tmp_path):
    frames = _frames(12)
    _record(tmp_path / "s", frames)
    info = json.loads((tmp_path / "s" / "session.json").read_text())
    assert info["format"] == "turncrop-session" and info["format_version"] == FORMAT_VERSION
    for key in ("turncrop", "torch", "opencv", "pyav"):
        assert info["versions"][key]
    assert info["config"]["keyframes"]["max_interval"] == 5
    assert (info["width"], info["height"], info["fps"]) == (64, 48, 30.0)
    assert info["video"]["codec"] == "ffv1"
    session = open_session(tmp_path / "s")
    assert session.closed and not session.warnings and not session.live
    assert session.config().keyframes.max_interval == 5
    assert [e["event"] for e in session.events] == ["command"]
    read = list(session.read_frames())
    assert [f.index for f in read] == [f.index for f in frames]
    assert [f.timestamp for f in read] == [f.timestamp for f in frames]  # recorded, not re-derived
    for a, b in zip(read, frames):
        assert np.array_equal(a.image, b.image)  # FFV1 in RGB is lossless
    assert is_recording(tmp_path / "s")
    assert not is_recording(REPO / "recordings" / "mic_turntable")  # a clip with its own session.json
    with pytest.raises(RecordingError, match="never overwritten"):
        _record(tmp_path / "s", frames)


def test_h264_recording_is_small_and_close(tmp_path):
    frames = _frames(10)
    _record(tmp_path / "s", frames, codec="h264")
    read = list(open_session(tmp_path / "s").read_frames())
    assert len(read) == 10
    error = np.abs(read[5].image.astype(int) - frames[5].image.astype(int)).mean()
    assert error < 4  # lossy, but the same picture


_KILLED_WRITER = textwrap.dedent("""
    import sys, time
    import numpy as np
    from turncrop.stream.config import load_config
    from turncrop.stream.recording import SessionRecorder
    from turncrop.tracking.frame import Frame
    recorder = SessionRecorder(sys.argv[1], load_config(None, {}), 30.0, (96, 128), codec=sys.argv[2])
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)
    for i in range(100000):
        recorder.frame(Frame(np.roll(base, i, axis=1), i, i / 30))
        print(i, flush=True)
        time.sleep(0.005)
""")


@pytest.mark.parametrize("codec", ["ffv1", "h264"])
def test_sigkilled_recorder_leaves_a_playable_session(tmp_path, codec):
    folder = tmp_path / "s"
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(folder), codec], stdout=subprocess.PIPE,
                            text=True)
    try:
        for line in proc.stdout:
            if int(line) >= 80:
                break
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    session = open_session(folder)
    assert not session.closed
    frames = list(session.read_frames())
    # All but the last moments survive: Matroska clusters close every second and packets are flushed.
    assert len(session.frames) >= 81 and len(frames) >= 50, (len(session.frames), len(frames))
    assert [f.index for f in frames] == list(range(len(frames)))
    if len(frames) < len(session.frames):
        assert "did not close" in session.warnings[-1]


def test_a_torn_last_line_is_tolerated_but_a_corrupt_line_is_an_error(tmp_path):
    folder = tmp_path / "s"
    _record(folder, _frames(6), close=False)._events.flush()
    events = folder / "events.jsonl"
    with events.open("a") as f:
        f.write('{"frame": 6, "t": 0.2')  # the writer died mid-line
    session = open_session(folder)
    assert len(session.frames) == 6 and "incomplete" in session.warnings[0]
    lines = events.read_text().splitlines()
    lines[3] = lines[3][:-3]  # a damaged line in the middle
    events.write_text("\n".join(lines) + "\n")
    with pytest.raises(RecordingError, match=r"events.jsonl: line 4 is not a valid event"):
        open_session(folder)


def _closed_session(tmp_path) -> Path:
    folder = tmp_path / "s"
    _record(folder, _frames(30), codec="h264")
    return folder


def test_a_truncated_video_is_a_clear_error(tmp_path):
    folder = _closed_session(tmp_path)
    video = folder / "video.mkv"
    video.write_bytes(video.read_bytes()[: video.stat().st_size // 2])
    with pytest.raises(RecordingError, match=r"video.mkv: truncated"):
        list(open_session(folder).read_frames())


def test_missing_events_and_newer_format_are_clear_errors(tmp_path, capsys):
    folder = _closed_session(tmp_path)
    events = folder / "events.jsonl"
    saved = events.read_bytes()
    events.unlink()
    with pytest.raises(RecordingError, match=r"events.jsonl: missing"):
        open_session(folder)
    assert main(["replay", str(folder)]) == 2
    assert "events.jsonl: missing" in capsys.readouterr().err

    events.write_bytes(saved)
    info = json.loads((folder / "session.json").read_text())
    info["format_version"] = FORMAT_VERSION + 1
    (folder / "session.json").write_text(json.dumps(info))
    with pytest.raises(RecordingError, match=rf"format_version {FORMAT_VERSION + 1} is newer than this turncrop"):
        open_session(folder)
    assert main(["replay", str(folder), "--check"]) == 2
    assert "update turncrop" in capsys.readouterr().err

    shutil.rmtree(folder)
    with pytest.raises(RecordingError, match="no such session folder"):
        open_session(folder)


def test_record_command_records_a_video_file(tmp_path, capsys):
    video = REPO / "recordings" / "mic_turntable" / "video.mp4"
    assert main(["record", str(video), "--out", str(tmp_path / "s"), "--codec", "h264", "--duration", "0",
                 "--backend", "graphcut"]) == 0
    session = open_session(tmp_path / "s")
    assert len(session.frames) == 1 and session.closed
    assert session.info["config"]["backend"] == "graphcut"
    assert "recorded 1 frames (duration)" in capsys.readouterr().out
