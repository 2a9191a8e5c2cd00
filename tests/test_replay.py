"""Replay of recorded sessions: as the live run did, every frame, golden checks, the bundled sessions."""
from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from turncrop.stream.cli import main
from turncrop.stream.config import load_config
from turncrop.stream.golden import CheckResult, Golden, Tolerances, _check_masks, load_golden, write_golden
from turncrop.stream.live import LivePipeline, run_live
from turncrop.stream.live_sources import MonotonicClock, RealtimeSource
from turncrop.stream.recording import RecordingError, SessionRecorder, open_session
from turncrop.stream.replay import AS_LIVE, EVERY_FRAME, ReplayReport, pack_mask, replay_session
from turncrop.stream.runner import ProductSink, build_pipeline
from turncrop.stream.sources import ImageFolderSource
from turncrop.tracking.operator import OperatorCommand

from data_paths import RECORDINGS, write_short_session

BUNDLED = ["orbit_live", "two_products", "operator_clicks", "studio_realistic"]


def _tree_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*")):
        digest.update(str(path.relative_to(folder)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def live_session(tmp_path_factory) -> dict:
    """A live run of 47 frames (every 3rd of the sample at 320x240, 10 fps), recorded losslessly, with the
    masks the live run made and its manifest."""
    root = tmp_path_factory.mktemp("live_record")
    frames = write_short_session(root / "frames", size=(320, 240), step=3)
    masks: dict[int, np.ndarray] = {}

    def keep(result) -> None:
        if len(result.detections):
            masks[result.frame.index] = pack_mask(result.detections.mask[0])

    config = load_config("default", {"backend": "graphcut", "keyframes.max_interval": 3})
    # Twice real time: the frame path falls behind, so the slot drops frames the recording must note.
    with RealtimeSource(ImageFolderSource(frames, fps=10.0), MonotonicClock(2.0)) as source:
        report = run_live(source, root / "live_out", config, handle_signals=False, record=root / "session",
                          on_result=keep)
    return {"folder": root / "session", "masks": masks, "stats": report.stats, "frames": frames,
            "manifest": json.loads((root / "live_out" / "manifest.json").read_text())}


def test_as_live_replay_reproduces_the_live_run(live_session, tmp_path):
    folder = live_session["folder"]
    session = open_session(folder)
    stats = live_session["stats"]
    assert session.closed and session.live
    assert len(session.frames) == stats.frames_in == 47
    processed = [e["frame"] for e in session.of_kind("processed")]
    assert len(processed) == stats.frames_processed  # the others are the live run's drops

    report = replay_session(folder, tmp_path / "out")
    assert report.mode == AS_LIVE and report.processed == processed
    assert report.divergences == []
    live_masks = live_session["masks"]
    assert set(report.masks) == set(live_masks) and len(live_masks) >= 5
    for index, packed in live_masks.items():
        assert np.array_equal(report.masks[index], packed), f"frame {index}"
    # The keyframe hand-offs happened where the live run noted them.
    taken = [(e["frame"], e["after"]) for e in session.of_kind("keyframe_request")]
    assert [(k["frame"], k["after"]) for k in report.keyframes if "after" in k] == taken
    installed = [(e["frame"], e["before"]) for e in session.of_kind("keyframe_installed")]
    assert taken and installed, "the live run handed no keyframe to its encoder"
    assert [(k["frame"], k["before"]) for k in report.keyframes if k["kind"] == "installed"] == installed
    live_products = live_session["manifest"]["products"]
    assert [(p["first_frame"], p["last_frame"], p.get("frame_index")) for p in report.summary.products] == \
        [(p["first_frame"], p["last_frame"], p.get("frame_index")) for p in live_products]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["replay"]["mode"] == AS_LIVE and manifest["products"] == report.summary.products


def test_operator_commands_in_a_live_run_are_recorded_and_replayed_exactly(live_session, tmp_path):
    config = load_config("default", {"backend": "graphcut", "keyframes.max_interval": 3})
    masks: dict[int, np.ndarray] = {}
    sent: list[int] = []

    async def live_run() -> None:
        with RealtimeSource(ImageFolderSource(live_session["frames"], fps=10.0), MonotonicClock(2.0)) as source:
            pipeline = build_pipeline(config, frame_rate=source.fps, defer_keyframes=True)
            sink = ProductSink(tmp_path / "live_out", config, source, pipeline)
            recorder = SessionRecorder(tmp_path / "session", config, source.fps, source.size, source=source.name,
                                       backend=pipeline.segmenter.name)

            def on_result(result) -> None:  # the operator, on the event loop as the serve page would be
                if not len(result.detections):
                    return
                mask = result.detections.mask[0]
                masks[result.frame.index] = pack_mask(mask)
                if not sent:  # click on the product the first time it is seen
                    ys, xs = np.nonzero(mask)
                    pipeline.command(OperatorCommand("point", points=[[xs[len(xs) // 2], ys[len(ys) // 2]]],
                                                     labels=[1]))
                    sent.append(result.frame.index)
                elif len(sent) == 1 and result.frame.index >= sent[0] + 6:
                    pipeline.command(OperatorCommand("rekey"))
                    sent.append(result.frame.index)

            live = LivePipeline(source, pipeline, sink, on_result=on_result, recorder=recorder,
                                working_size=config.live.working_size)
            try:
                await live.run()
            finally:
                recorder.close()

    asyncio.run(live_run())
    session = open_session(tmp_path / "session")
    commands = session.of_kind("command")
    assert [c["command"]["kind"] for c in commands] == ["point", "rekey"]
    assert all(c["frame"] > s for c, s in zip(commands, sent))  # applied on a later frame than sent
    report = replay_session(tmp_path / "session", tmp_path / "replay")
    assert report.divergences == []
    assert set(report.masks) == set(masks)
    for index, packed in masks.items():
        assert np.array_equal(report.masks[index], packed), f"frame {index}"


def test_every_frame_replay_processes_every_recorded_frame(live_session, tmp_path):
    report = replay_session(live_session["folder"], tmp_path / "out", every_frame=True)
    assert report.mode == EVERY_FRAME
    assert report.processed == list(range(47))
    assert all(k["kind"] == "encoded" for k in report.keyframes)  # keyframes in place, none deferred
    assert [p["status"] for p in report.summary.products] == ["ok"]


@pytest.mark.slow
def test_replay_is_deterministic_across_runs_and_processes(live_session, tmp_path):
    session = tmp_path / "session"
    shutil.copytree(live_session["folder"], session)
    first = replay_session(session, tmp_path / "a", every_frame=True)
    second = replay_session(session, tmp_path / "b", every_frame=True)
    assert first.masks.keys() == second.masks.keys()
    assert all(np.array_equal(first.masks[k], second.masks[k]) for k in first.masks)
    assert first.keyframes == second.keyframes
    write_golden(session, first, {})
    # Another process must make bit-identical masks, products and stills: no tolerance at all.
    done = subprocess.run([sys.executable, "-m", "turncrop.stream.cli", "replay", str(session), "--check",
                           "--iou", "1.0", "--span-frames", "0", "--still-frames", "0"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "mean IoU 1.0000" in done.stdout and "keyframes: " in done.stdout and "PASS" in done.stdout


def test_replay_never_modifies_the_recording(live_session, tmp_path, capsys):
    session = tmp_path / "session"
    shutil.copytree(live_session["folder"], session)
    assert main(["replay", str(session), "--update-golden"]) == 0
    before = _tree_hash(session)
    assert main(["replay", str(session), "--check"]) == 0
    assert main(["replay", str(session), "--out", str(tmp_path / "out")]) == 0
    assert _tree_hash(session) == before
    with pytest.raises(RecordingError, match="outside the session folder"):
        replay_session(session, session / "out")
    assert _tree_hash(session) == before


def test_a_perturbed_setting_fails_the_check_with_a_readable_report(live_session, tmp_path, capsys):
    session = tmp_path / "session"
    shutil.copytree(live_session["folder"], session)
    assert main(["replay", str(session), "--update-golden"]) == 0
    capsys.readouterr()
    # A stage model that needs much more contrast to call a pixel product: thin and dark parts are lost.
    assert main(["replay", str(session), "--check", "--set", "stage.threshold=14"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  masks:" in out and "frames below tolerance" in out
    assert "IoU" in out and "area" in out and "px vs" in out  # what moved, and by how much
    assert out.rstrip().endswith("failed)")


def _square(size: int, x: int, y: int, side: int) -> np.ndarray:
    mask = np.zeros((size, size), bool)
    mask[y:y + side, x:x + side] = True
    return mask


def test_a_nearly_hidden_product_is_judged_on_its_usual_size_not_its_iou():
    # Ten frames of a 40x40 px product, then one where the hand leaves 3x4 px of it: a one-pixel shift there
    # halves the IoU (a new OpenCV release did that to studio_realistic's frames 54-55) but moves 6 px,
    # far below the 10 % of 1600 px a frame showing the whole product may move.
    golden_masks = {i: _square(64, 10, 10, 40) for i in range(10)}
    golden_masks[10] = np.zeros((64, 64), bool)
    golden_masks[10][10:14, 10:13] = True
    replayed = dict(golden_masks)
    replayed[10] = np.roll(golden_masks[10], 1, axis=1)
    replayed[4] = _square(64, 14, 10, 40)  # a whole-product frame 4 px off: 320 px moved, IoU 0.82
    replayed[11] = _square(64, 0, 0, 5)  # a mask where the golden has none

    def outcome(masks: dict[int, np.ndarray]) -> CheckResult:
        golden = Golden({"frames_processed": list(range(12))}, {i: pack_mask(m) for i, m in golden_masks.items()},
                        (64, 64))
        report = ReplayReport(summary=None, session=Path("s"), mode=EVERY_FRAME, size=(64, 64), frames_recorded=12,
                              processed=list(range(12)), masks={i: pack_mask(m) for i, m in masks.items()})
        result = CheckResult("s")
        _check_masks(golden, report, Tolerances(), result)
        return result

    hidden_only = {**golden_masks, 10: replayed[10]}
    result = outcome(hidden_only)
    assert result.passed and "1 nearly hidden" in result.text(), result.text()
    result = outcome(replayed)
    assert not result.passed
    assert "frame 4: IoU 0.818" in result.text() and "frame 11: a mask where the golden has none" in result.text()
    assert "frame 10" not in result.text().split("below tolerance")[1], result.text()


def test_check_without_golden_outputs_is_bad_input(live_session, tmp_path, capsys):
    session = tmp_path / "session"
    shutil.copytree(live_session["folder"], session)
    assert main(["replay", str(session), "--check"]) == 2
    assert "no golden outputs" in capsys.readouterr().err


# -- the bundled sessions ------------------------------------------------------------------------------


def _gt(folder: Path, size: tuple[int, int]) -> dict[int, np.ndarray]:
    with np.load(folder / "gt.npz") as npz:
        return {int(k[1:]): np.unpackbits(npz[k], count=size[0] * size[1]).reshape(size).astype(bool)
                for k in npz.files}


def _j(a: np.ndarray | None, b: np.ndarray) -> float:
    a = np.zeros_like(b) if a is None else a
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 1.0


def test_bundled_sessions_are_small_and_attributed():
    total = 0
    for name in BUNDLED:
        folder = RECORDINGS / name
        session = open_session(folder)
        assert session.closed and not session.warnings
        assert "CC BY 3.0" in (folder / "README.md").read_text()
        assert "CC BY 3.0" in session.info["attribution"]["renders"]
        assert (folder / "golden" / "golden.json").is_file() and (folder / "gt.npz").is_file()
        assert len(session.frames) <= 90 and session.size == (360, 480)
        total += sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert total < 10e6, total
    assert open_session(RECORDINGS / "orbit_live").live
    assert [e["command"]["kind"] for e in open_session(RECORDINGS / "operator_clicks").of_kind("command")] \
        == ["box", "point"]


@pytest.mark.slow
@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_session_passes_its_golden_check(name, tmp_path, capsys):
    folder = RECORDINGS / name
    before = _tree_hash(folder)
    code = main(["replay", str(folder), "--check", "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert _tree_hash(folder) == before
    golden = load_golden(folder)
    expected = {"orbit_live": 1, "two_products": 2, "operator_clicks": 1, "studio_realistic": 1}[name]
    assert len(golden.info["products"]) == expected
    assert all(p["status"] == "ok" for p in golden.info["products"])


@pytest.mark.slow
def test_two_products_are_found_in_their_own_spans():
    folder = RECORDINGS / "two_products"
    golden = load_golden(folder)
    gt = _gt(folder, golden.size)
    on_stage = [i for i, m in sorted(gt.items()) if m.any()]
    first = [i for i in on_stage if i < 37]
    second = [i for i in on_stage if i >= 37]
    spans = [(p["first_frame"], p["last_frame"]) for p in golden.info["products"]]
    assert spans[0][0] == first[0] and abs(spans[0][1] - first[-1]) <= 3
    assert spans[1][0] == second[0] and abs(spans[1][1] - second[-1]) <= 3
    js = [_j(golden.mask(i), gt[i]) for i in on_stage]
    assert np.mean(js) >= 0.9, np.mean(js)


def test_studio_realistic_keeps_the_operator_out():
    """The realistic session's golden outputs (which `--check` holds every replay to): the arm starts no product,
    is in no mask on the frames without the mic, and the still comes from a frame the mic has to itself."""
    folder = RECORDINGS / "studio_realistic"
    golden = load_golden(folder)
    gt = _gt(folder, golden.size)
    shots = json.loads((folder / "frames.json").read_text())
    on_stage = [i for i, m in sorted(gt.items()) if m.any()]
    assert len(golden.info["products"]) == 1
    still = golden.info["products"][0]["frame_index"]
    assert shots[still]["alone"], still
    assert _j(golden.mask(still), gt[still]) >= 0.95
    assert np.mean([_j(golden.mask(i), gt[i]) for i in on_stage]) >= 0.9
    empty = [i for i in sorted(gt) if not gt[i].any()]
    assert all(golden.mask(i) is None or golden.mask(i).mean() <= 0.005 for i in empty)


@pytest.mark.slow
def test_operator_clicks_correct_the_mask(tmp_path):
    """The golden outputs with the clicks beat a replay of the same session without them, from the click on:
    the clicks' keyframe already holds the stand and the base (J 0.82 at the click, was 0.46)."""
    folder = RECORDINGS / "operator_clicks"
    session = open_session(folder)
    click = session.of_kind("command")[1]["frame"]
    golden = load_golden(folder)
    gt = _gt(folder, golden.size)
    assert _j(golden.mask(click), gt[click]) >= 0.75
    after = [i for i in sorted(gt) if i >= click]
    with_clicks = np.mean([_j(golden.mask(i), gt[i]) for i in after])

    unclicked = tmp_path / "unclicked"
    shutil.copytree(folder, unclicked, ignore=shutil.ignore_patterns("golden"))
    events = (unclicked / "events.jsonl").read_text().splitlines()
    (unclicked / "events.jsonl").write_text("\n".join(e for e in events if '"kind":"point"' not in e) + "\n")
    report = replay_session(unclicked, tmp_path / "out")
    without = np.mean([_j(report.mask(i), gt[i]) for i in after])
    # Without the clicks the recovery now holds the head when its mask collapses at frame 15 (0.54 after
    # the click's frame, was under 0.5): the clicks' gain is measured against that better baseline.
    assert with_clicks >= 0.8 and with_clicks - without >= 0.2, (with_clicks, without)


def test_a_killed_live_recording_still_replays(live_session, tmp_path):
    """A recorder that never closed (the end line missing, the video cut short) replays what it holds."""
    session = tmp_path / "session"
    shutil.copytree(live_session["folder"], session, ignore=shutil.ignore_patterns("golden"))
    events = session / "events.jsonl"
    events.write_text("".join(line for line in events.read_text().splitlines(keepends=True)
                              if '"event":"end"' not in line))
    video = session / "video.mkv"
    video.write_bytes(video.read_bytes()[: int(video.stat().st_size * 0.7)])
    report = replay_session(session, tmp_path / "out")
    assert report.warnings and "did not close" in report.warnings[0]
    assert 0 < len(report.processed) < live_session["stats"].frames_processed
    live_masks = live_session["masks"]
    for index, packed in report.masks.items():  # what it replays, it replays exactly
        assert np.array_equal(packed, live_masks[index]), f"frame {index}"
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["replay"]["warnings"] == report.warnings


def test_live_command_records_a_session(tmp_path, capsys):
    frames = write_short_session(tmp_path / "frames", size=(240, 180), step=10)
    assert main(["live", str(frames), "--realtime", "--speed", "4", "--out", str(tmp_path / "out"), "--quiet",
                 "--backend", "graphcut", "--record", str(tmp_path / "session"), "--record-codec", "h264"]) == 0
    session = open_session(tmp_path / "session")
    assert session.closed and session.live and len(session.frames) == 14
    assert session.info["backend"] == "graphcut" and session.info["video"]["codec"] == "h264"
    assert session.of_kind("live")
    assert main(["replay", str(tmp_path / "session")]) == 0
    assert "replayed as live" in capsys.readouterr().out


def test_replay_checks_every_session_in_a_folder(live_session, tmp_path, capsys):
    studio = tmp_path / "week"
    for name in ("monday", "tuesday"):
        shutil.copytree(live_session["folder"], studio / name, ignore=shutil.ignore_patterns("golden"))
    assert main(["replay", str(studio / "monday"), "--update-golden"]) == 0
    capsys.readouterr()
    assert main(["replay", str(studio), "--check", "--out", str(tmp_path / "out")]) == 2  # tuesday: no golden
    captured = capsys.readouterr()
    assert "monday:" in captured.out and "PASS" in captured.out
    assert "tuesday/golden/golden.json: no golden outputs" in captured.err
    assert "2 sessions: 1 passed, 0 failed a check, 1 bad input" in captured.out
    assert (tmp_path / "out" / "monday" / "manifest.json").is_file()
