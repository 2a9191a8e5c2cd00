"""Nothing lost, nothing mixed: what `run` and `batch` leave behind under faults and bad arguments.

One section per defect of issue 11. The sources are the bundled session cut down to 240 x 180 px: `short`
(every 4th frame, 35 frames, the product from frame 5 until it leaves) and `long` (every 2nd frame, 70).
"""
from __future__ import annotations

import asyncio
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from data_paths import SAMPLE

from turncrop.models.weights import WeightsError, read_state_dict
from turncrop.stream.cli import main
from turncrop.stream.config import ConfigError, load_config
from turncrop.stream.outputs import OutputError, clean_partial
from turncrop.stream.runner import run, segment
from turncrop.stream.sources import FrameSource, SourceError, open_source
from turncrop.tracking.frame import Frame
from turncrop.tracking.products import ProductEnded

SIZE = (240, 180)  # W, H


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("faults")
    folders = {"short": (root / "short", 4), "long": (root / "long", 2)}
    for folder, _ in folders.values():
        folder.mkdir()
    with open_source(SAMPLE) as source:
        for frame in source:
            small = cv2.cvtColor(cv2.resize(frame.image, SIZE, interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2BGR)
            for folder, step in folders.values():
                if frame.index % step == 0:
                    cv2.imwrite(str(folder / f"{frame.index // step:03d}.png"), small)
    return {name: folder for name, (folder, _) in folders.items()}


@pytest.fixture(scope="module")
def config():
    return load_config(None, {"backend": "graphcut"})


@pytest.fixture(scope="module")
def short_run(sources, config, tmp_path_factory) -> dict:
    """A clean run of `short`: its manifest, files and the frame whose result ends the product."""
    out = tmp_path_factory.mktemp("short_run") / "out"
    ended = []

    def on_frame(result) -> None:
        ended.extend(result.frame.index for e in result.events if isinstance(e, ProductEnded) and not e.transient)

    summary = run(sources["short"], out, config, on_frame=on_frame)
    assert summary.error is None and len(ended) == 1 and ended[0] < summary.frames - 1
    return {"out": out, "ended_at": ended[0], "files": sorted(p.name for p in out.iterdir())}


def _copy(folder: Path, dest: Path) -> Path:
    shutil.copytree(folder, dest)
    return dest


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "turncrop.stream.cli", *args]


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def _products(out: Path) -> list[str]:
    return [p["product_id"] for p in _manifest(out)["products"]]


# -- 1. a source error right after a product ended -----------------------------------------------------------


class _Failing(FrameSource):
    """Three tiny frames, then a read error."""

    def __init__(self) -> None:
        super().__init__("failing", 30.0, 5, (2, 2))

    def _frames(self) -> Iterator[Frame]:
        for i in range(3):
            yield Frame(np.zeros((2, 2, 3), np.uint8), i, i / 30)
        raise SourceError("failing: frame 3 is unreadable")


def test_segment_delivers_the_held_result_and_its_end_events_before_a_source_error():
    pipeline = SimpleNamespace(prompt=None, process=lambda f: SimpleNamespace(frame=f, events=[]),
                               finish=lambda index: [f"finished at {index}"])
    delivered = []
    with pytest.raises(SourceError, match="frame 3"):
        for result in segment(_Failing(), pipeline):
            delivered.append((result.frame.index, list(result.events)))
    assert delivered == [(0, []), (1, []), (2, ["finished at 2"])]


def test_a_product_that_ended_just_before_a_broken_frame_is_exported(sources, short_run, tmp_path):
    frames = _copy(sources["short"], tmp_path / "frames")
    broken = frames / f"{short_run['ended_at'] + 1:03d}.png"
    broken.write_bytes(broken.read_bytes()[:300])
    out = tmp_path / "out"
    done = subprocess.run(_cli("run", str(frames), "--out", str(out), "--backend", "graphcut", "--no-progress"),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert _products(out) == ["product-001"] and (out / "product-001.jpg").is_file()
    manifest = _manifest(out)
    assert manifest["frames"] == short_run["ended_at"] + 1 and broken.name in manifest["error"]
    assert done.stderr.count(f"cannot read image {broken.name}") == 1, done.stderr  # once, not logged and printed
    assert "no product found" not in done.stdout


def test_live_says_a_broken_frame_once_and_keeps_the_product_before_it(sources, short_run, tmp_path):
    frames = _copy(sources["short"], tmp_path / "frames")
    broken = frames / f"{short_run['ended_at'] + 1:03d}.png"
    broken.write_bytes(broken.read_bytes()[:300])
    out = tmp_path / "out"
    done = subprocess.run(_cli("live", str(frames), "--realtime", "--speed", "0.5", "--out", str(out),
                               "--backend", "graphcut", "--quiet"), capture_output=True, text=True, timeout=180)
    assert done.returncode == 1, done.stderr
    assert _products(out) == ["product-001"] and broken.name in _manifest(out)["error"]
    assert done.stderr.count(f"cannot read image {broken.name}") == 1, done.stderr  # was logged and printed


# -- 2. Ctrl-C / SIGTERM and SIGKILL ---------------------------------------------------------------------------


def _wait_for_line(process: subprocess.Popen, pattern: str, timeout: float = 120) -> re.Match:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break
        if found := re.search(pattern, line):
            return found
    process.kill()
    raise AssertionError(f"{pattern!r} never appeared on stderr")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_stopped_run_finishes_the_product_on_stage_and_says_it_was_interrupted(sources, tmp_path, sig):
    out = tmp_path / "out"
    process = subprocess.Popen(_cli("run", str(sources["long"]), "--out", str(out), "--backend", "graphcut",
                                    "--no-progress", "-v"), stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    start = int(_wait_for_line(process, r"product-001 started at frame (\d+)")[1])
    while int(_wait_for_line(process, r"keyframe at frame (\d+)")[1]) < start + 8:
        pass  # until the product has been on stage for a while (keyframes come at least every 8 frames)
    process.send_signal(sig)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted at frame" in stderr
    manifest = _manifest(out)
    assert manifest["interrupted"] is True and manifest["finished"] is True and manifest["error"] is None
    assert manifest["last_frame"] < 59  # stopped while the product was on stage (it leaves after frame 59)
    assert [(p["product_id"], p["status"]) for p in manifest["products"]] == [("product-001", "ok")]
    assert (out / "product-001.png").is_file() and "product-001: ok" in stdout


def test_a_killed_run_leaves_a_valid_manifest_that_says_it_did_not_finish(sources, tmp_path):
    frames = _copy(sources["short"], tmp_path / "frames")
    last = sorted(frames.iterdir())[-1]
    for i in range(35, 95):  # an empty stage for a while after the product left
        shutil.copy(last, frames / f"{i:03d}.png")
    out = tmp_path / "out"
    process = subprocess.Popen(_cli("run", str(frames), "--out", str(out), "--backend", "graphcut", "--no-progress"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not ((out / "manifest.json").is_file() and _products(out)):
            assert process.poll() is None and time.monotonic() < deadline, "the product was never exported"
            time.sleep(0.05)
    finally:
        process.kill()
        process.wait()
    manifest = _manifest(out)
    assert manifest["finished"] is False and manifest["interrupted"] is False
    assert _products(out) == ["product-001"] and (out / "product-001.json").is_file()


# -- 3. one output folder, one run -------------------------------------------------------------------------------


def test_a_second_run_replaces_the_previous_output_whole(sources, config, short_run, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(short_run["out"], out)
    for name in ("product-002.png", "product-002.jpg", "product-002.json"):  # a previous run found two products
        (out / name).write_bytes(b"previous run")
    summary = run(sources["short"], out, config)
    assert summary.out_dir == out and [p["product_id"] for p in summary.products] == ["product-001"]
    assert sorted(p.name for p in out.iterdir()) == short_run["files"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing hidden left beside it


def test_output_folders_that_are_not_a_runs_to_take_are_refused(sources, config, tmp_path):
    frames = _copy(sources["short"], tmp_path / "frames")
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    cases = {foreign: "not empty and holds no turncrop output", frames: "inside the source folder",
             frames / "out": "inside the source folder"}
    for out, message in cases.items():
        with pytest.raises(OutputError, match=message):
            run(frames, out, config)
    assert (foreign / "notes.txt").read_text() == "keep me" and not (frames / "out").exists()
    assert not (frames / "manifest.json").exists()


def test_a_previous_output_holding_the_source_is_not_replaced(sources, config, short_run, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(short_run["out"], out)
    frames = _copy(sources["short"], out / "frames")
    with pytest.raises(OutputError, match="holds the source"):
        run(frames, out, config)
    assert len(list(frames.iterdir())) == 35


def test_a_killed_replacement_leaves_the_previous_output_and_its_leftovers_go_next_time(sources, config,
                                                                                        short_run, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(short_run["out"], out)
    leftover = tmp_path / ".out.tmp-0123abcd"  # what a run killed while replacing `out` leaves beside it
    leftover.mkdir()
    (leftover / "manifest.json").write_text('{"tool": "turncrop", "finished": false}')
    assert clean_partial(tmp_path, "other") == [] and leftover.is_dir()  # only `out`'s own leftovers go
    run(sources["short"], out, config)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# -- 4. batch workers and the batch lock ------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == pid and b"spawn_main" in cmdline:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the worker process through /proc")
def test_batch_workers_die_with_a_killed_driver_and_commit_nothing(sources, tmp_path):
    out = tmp_path / "out"
    driver = subprocess.Popen([sys.executable, "-c", (
        "from turncrop.stream.batch import run_batch\nfrom turncrop.stream.config import load_config\n"
        f"run_batch([{str(sources['long'])!r}], {str(out)!r}, load_config(None, {{'backend': 'graphcut'}}), "
        "workers=1)")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (out.is_dir() and any(".tmp-" in p.name for p in out.iterdir())):  # its job is running
            assert driver.poll() is None and time.monotonic() < deadline, "the batch job never started"
            time.sleep(0.05)
        workers = _children(driver.pid)
        assert len(workers) == 1
    finally:
        driver.kill()
        driver.wait()
    deadline = time.monotonic() + 10
    while _alive(workers[0]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(workers[0]), "the worker outlived its driver"
    assert not [p.name for p in out.iterdir() if not p.name.startswith(".")]  # no output renamed into place
    # What the next batch does first: the dead job's hidden folder is no live one's. The worker's open files
    # (and their locks) are released as the kernel tears it down, a moment after it stops running.
    deadline = time.monotonic() + 10
    while clean_partial(out) == [] and [p for p in out.iterdir() if ".tmp-" in p.name] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p.name for p in out.iterdir() if ".tmp-" in p.name]


def test_the_batch_lock_excludes_a_second_driver_while_a_worker_of_the_first_lives(sources, config, tmp_path):
    from turncrop.stream.batch import run_batch

    out = tmp_path / "out"
    out.mkdir()
    orphan = subprocess.Popen([sys.executable, "-c", (  # holds the lock as a worker of a killed driver would
        "import sys, time\nfrom pathlib import Path\nfrom turncrop.stream.lifetime import hold_shared\n"
        f"hold_shared(Path({str(out / '.batch.lock')!r}))\nprint('holding', flush=True)\ntime.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert orphan.stdout.readline().strip() == "holding"
        with pytest.raises(RuntimeError, match="workers of one that was killed"):
            run_batch([sources["short"]], out, config)
    finally:
        orphan.kill()
        orphan.wait()


# -- 5. prompts against the source ------------------------------------------------------------------------------


@pytest.mark.parametrize("box, message", [
    ("10,10,100,100@35", r"--box \.\.\.@35 / prompt.frame: the source has 35 frames"),
    ("300,200,400,300", r"--box / prompt.box 300,200,400,300 lies wholly outside the 240x180 frame"),
])
def test_a_prompt_the_source_cannot_have_is_an_error_naming_the_option(sources, tmp_path, capsys, box, message):
    out = tmp_path / "out"
    assert main(["run", str(sources["short"]), "--out", str(out), "--backend", "graphcut", "--box", box]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not out.exists()


def test_a_prompt_frame_past_a_source_of_unknown_length_is_reported():
    class Unknown(_Failing):
        def _frames(self) -> Iterator[Frame]:
            yield from (Frame(np.zeros((2, 2, 3), np.uint8), i, i / 30) for i in range(3))

    source = Unknown()
    source.frame_count = None
    pipeline = SimpleNamespace(prompt=SimpleNamespace(frame_index=7), finish=lambda index: [],
                               process=lambda f: SimpleNamespace(frame=f, events=[]))
    with pytest.raises(SourceError, match="ended after frame 2, before frame 7 of --box"):
        list(segment(source, pipeline))


def test_a_box_with_a_negative_coordinate_is_read_as_the_boxs_value(sources, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", str(sources["short"]), "--out", str(out), "--backend", "graphcut", "--no-progress",
                 "--box", "-10,20,180,190@8"]) == 0
    assert _manifest(out)["config"]["prompt"]["box"] == [-10.0, 20.0, 180.0, 190.0]
    assert "product-001: ok" in capsys.readouterr().out


# -- 6. frames too small for optical flow -----------------------------------------------------------------------


@pytest.mark.parametrize("w, h", [(1, 1), (200, 16)])
def test_frames_too_small_for_optical_flow_are_refused_by_the_source(tmp_path, capsys, w, h):
    frames = tmp_path / "frames"
    frames.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        cv2.imwrite(str(frames / f"{i}.png"), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    assert main(["run", str(frames), "--out", str(tmp_path / "out"), "--backend", "graphcut"]) == 2
    err = capsys.readouterr().err
    assert f"frames are {w}x{h} px" in err and "at least 32 px" in err and "0.png" in err


# -- 7. serve ---------------------------------------------------------------------------------------------------


def test_serve_answers_a_nul_byte_in_a_file_path_with_404(tmp_path):
    from aiohttp import ClientSession
    from webrtc_helpers import serving
    from yarl import URL

    from turncrop.stream.serve import STATE, create_app

    sid = "a" * 32
    (tmp_path / sid).mkdir()

    async def scenario() -> int:
        app = create_app(tmp_path, load_config(None, {"backend": "graphcut"}))
        app[STATE].sessions[sid] = SimpleNamespace(out=tmp_path / sid, close=lambda reason: asyncio.sleep(0))
        async with serving(app) as base, ClientSession() as http:
            async with http.get(URL(f"{base}sessions/{sid}/files/%00", encoded=True)) as response:
                return response.status

    assert asyncio.run(scenario()) == 404


def test_serve_refuses_a_port_out_of_range_naming_the_option(tmp_path, capsys):
    assert main(["serve", "--out", str(tmp_path), "--port", "70000"]) == 2
    err = capsys.readouterr().err
    assert "--port" in err and "70000" in err and "Traceback" not in err


# -- 8. messages ------------------------------------------------------------------------------------------------


def test_a_binary_config_file_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "random.yaml"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 512, dtype=np.uint8).tobytes())
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: not a YAML text file"):
        load_config(path)


def test_a_command_line_value_error_names_the_option_not_the_defaults(sources, tmp_path, capsys):
    assert main(["run", str(sources["short"]), "--out", str(tmp_path / "out"), "--spin", "3"]) == 2
    assert capsys.readouterr().err.startswith("turncrop: error: --spin: spin: views must be 0 (off) or in [4, 360]")
    assert main(["run", str(sources["short"]), "--out", str(tmp_path / "out"), "--box", "50,50,10,10"]) == 2
    assert capsys.readouterr().err.startswith("turncrop: error: --box: prompt: box must be")


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_raw_pickle_that_would_run_code_is_refused_as_unsafe(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps(_Payload(marker), protocol=4))
    with pytest.raises(WeightsError, match=r"refused as unsafe.*\(posix\.system\)"):
        read_state_dict(path)
    assert not marker.exists()


def test_torchs_advice_to_load_unsafely_is_never_quoted(tmp_path):
    path = tmp_path / "list.pt"
    path.write_bytes(pickle.dumps({"weights": [1.0, 2.0]}, protocol=4))  # a format torch's safe loader refuses
    with pytest.raises(WeightsError, match="truncated or corrupt") as info:
        read_state_dict(path)
    assert "weights_only` set to `False`" not in str(info.value) and "Re-running" not in str(info.value)
    good = tmp_path / "good.pt"
    torch.save({"w": torch.zeros(2)}, good)
    assert set(read_state_dict(good)) == {"w"}


def test_a_torn_last_line_is_warned_about_once(tmp_path, capsys, caplog):
    from data_paths import RECORDINGS

    session = tmp_path / "session"
    shutil.copytree(RECORDINGS / "orbit_live", session, ignore=shutil.ignore_patterns("golden"))
    with open(session / "events.jsonl", "a") as f:
        f.write('{"event": "frame", "ind')
    assert main(["replay", str(session), "--out", str(tmp_path / "out")]) == 0
    said = capsys.readouterr()
    assert (said.out + said.err + caplog.text).count("is incomplete (the recorder was killed)") == 1


@pytest.fixture
def read_only_folder(tmp_path) -> Iterator[Path]:
    """An empty folder this process cannot write to (root ignores modes: a read-only tmpfs then)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "none", str(folder)],
                      capture_output=True).returncode != 0:
        pytest.skip("running as root and cannot mount a read-only tmpfs: no folder is read-only to root")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


def test_a_read_only_output_folder_is_refused_before_any_frame_is_processed(sources, config, read_only_folder):
    processed = []
    with pytest.raises(OutputError, match=rf"{re.escape(str(read_only_folder))} \(--out\) is not writable"):
        run(sources["short"], read_only_folder, config, on_frame=processed.append)
    assert processed == []
