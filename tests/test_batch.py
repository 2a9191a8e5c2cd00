"""`turncrop batch`: many recordings on local processes and on a local Ray instance.

The inputs are short turntable clips made here from the NeRF mic renders (exact alpha) composited on a
plain backdrop: 8 frames of empty stage, 20 of the product turning, 4 empty again, at 320 x 240.
"""
from __future__ import annotations

import json
import math
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from data_paths import REPO, require_data
from turncrop.stream import batch
from turncrop.stream.batch import (
    BatchInput,
    JobResult,
    clean_partial,
    content_digest,
    discover_inputs,
    encoder_plan,
    job_key,
    read_done,
    resolve_config,
    run_batch,
)
from turncrop.stream.config import load_config
from turncrop.stream.runner import run
from turncrop.stream.sources import SourceError

SIZE = (320, 240)  # W, H
BACKDROP = (205, 200, 195)


def _turntable_frames(first_view: int, lead: int = 8, views: int = 20, tail: int = 4) -> list[np.ndarray]:
    """RGB frames: empty stage, the mic turning (views first_view...), empty stage."""
    rgba_dir = require_data("nerf_mic_orbit") / "rgba"
    w, h = SIZE
    stage = np.empty((h, w, 3), np.uint8)
    stage[:] = BACKDROP
    frames = [stage.copy() for _ in range(lead)]
    side = int(h * 0.9)
    x0, y0 = (w - side) // 2, (h - side) // 2
    for i in range(first_view, first_view + views):
        bgra = cv2.imread(str(rgba_dir / f"{i:05d}.png"), cv2.IMREAD_UNCHANGED)
        rgba = cv2.resize(cv2.cvtColor(bgra, cv2.COLOR_BGRA2RGBA), (side, side), interpolation=cv2.INTER_AREA)
        alpha = rgba[..., 3:].astype(np.float32) / 255.0
        frame = stage.astype(np.float32)
        frame[y0:y0 + side, x0:x0 + side] = frame[y0:y0 + side, x0:x0 + side] * (1 - alpha) + rgba[..., :3] * alpha
        frames.append(np.round(frame).astype(np.uint8))
    return frames + [stage.copy() for _ in range(tail)]


def _write_video(path: Path, frames: list[np.ndarray]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = SIZE[0], SIZE[1], "yuv420p"
        stream.options = {"crf": "18"}
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return path


def _write_folder(folder: Path, frames: list[np.ndarray]) -> Path:
    folder.mkdir(parents=True)
    for i, image in enumerate(frames):
        cv2.imwrite(str(folder / f"frame{i}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return folder


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """captures/{day1/{a.mp4, b.mp4}, seq/ (an image folder)} and bad/broken.mp4 (a truncated clip)."""
    root = tmp_path_factory.mktemp("inputs")
    captures = root / "captures"
    _write_video(captures / "day1" / "a.mp4", _turntable_frames(0))
    _write_video(captures / "day1" / "b.mp4", _turntable_frames(40))
    _write_folder(captures / "seq", _turntable_frames(70))
    whole = (captures / "day1" / "a.mp4").read_bytes()
    broken = root / "bad" / "broken.mp4"
    broken.parent.mkdir()
    broken.write_bytes(whole[: len(whole) // 2])
    return {"captures": captures, "broken": broken, "a": captures / "day1" / "a.mp4",
            "b": captures / "day1" / "b.mp4", "seq": captures / "seq"}


@pytest.fixture(scope="module")
def config():
    return load_config(None, {"backend": "graphcut"})


@pytest.fixture(scope="module")
def one_by_one(inputs, config, tmp_path_factory) -> dict[str, Path]:
    """Each good input run on its own with `runner.run`, as `turncrop run` does."""
    out = tmp_path_factory.mktemp("one_by_one")
    refs = {}
    for name in ("a", "b", "seq"):
        summary = run(inputs[name], out / name, config)
        assert summary.error is None and summary.products, f"{name}: the reference run found no product"
        refs[str(inputs[name].resolve())] = out / name
    return refs


def _assert_same_outputs(batch_dir: Path, ref_dir: Path) -> None:
    """Same products, same stills (sidecar scores, frame, box) and identical cutout / JPEG pixels."""
    ref_manifest = json.loads((ref_dir / "manifest.json").read_text())
    manifest = json.loads((batch_dir / "manifest.json").read_text())
    for key in ("frames", "encoder_calls", "products", "keyframe_reasons"):
        assert manifest[key] == ref_manifest[key], f"{batch_dir.name}: manifest {key} differs"
    names = sorted(p.name for p in ref_dir.iterdir() if p.name != "manifest.json")
    produced = sorted(p.name for p in batch_dir.iterdir() if p.name not in ("manifest.json", "done.json"))
    assert names and produced == names
    for name in names:
        if name.endswith(".json"):
            ref, got = json.loads((ref_dir / name).read_text()), json.loads((batch_dir / name).read_text())
            ref.pop("source"), got.pop("source")  # the path as given: relative there, resolved here
            # Scores are float32 sums whose last bits can differ in another process (seen: 2e-7 in a
            # confidence on Ray); the masks, and so every pixel, do not.
            assert _close(got, ref), f"{batch_dir.name}/{name} differs: {got} != {ref}"
        else:
            ref_px = cv2.imread(str(ref_dir / name), cv2.IMREAD_UNCHANGED)
            assert np.array_equal(cv2.imread(str(batch_dir / name), cv2.IMREAD_UNCHANGED), ref_px), \
                f"{batch_dir.name}/{name}: pixels differ"


def _close(a: object, b: object) -> bool:
    """Equal JSON, floats to 1e-6 relative."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-6)
    return a == b


def _by_input(report) -> dict[str, object]:
    return {r.input: r for r in report.results}


def _mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*"))}


# -- inputs and keys (no pipeline) ------------------------------------------------------------------------


def test_discovery_is_recursive_sorted_and_skips_output_and_hidden(tmp_path):
    (tmp_path / "in" / "day10").mkdir(parents=True)
    (tmp_path / "in" / "day2" / "shots").mkdir(parents=True)
    for rel in ("day10/z.mp4", "day2/b.MOV", "day2/a.webm", "day2/notes.txt", "clip.mkv"):
        (tmp_path / "in" / rel).write_bytes(b"x")
    (tmp_path / "in" / "day2" / "shots" / "0001.png").write_bytes(b"x")
    (tmp_path / "in" / ".trash").mkdir()
    (tmp_path / "in" / ".trash" / "old.mp4").write_bytes(b"x")
    (tmp_path / "in" / "out" / "product-001").mkdir(parents=True)  # a batch's own outputs under its input
    (tmp_path / "in" / "out" / "product-001" / "0.png").write_bytes(b"x")
    (tmp_path / "extra.bin").write_bytes(b"x")  # a file named by itself is taken as a video

    found = discover_inputs([tmp_path / "in", tmp_path / "extra.bin", tmp_path / "in" / "clip.mkv"],
                            exclude=tmp_path / "in" / "out")
    assert [(str(i.path.relative_to(tmp_path)), i.kind) for i in found] == [
        ("in/clip.mkv", "video"), ("in/day2/a.webm", "video"), ("in/day2/b.MOV", "video"),
        ("in/day2/shots", "images"), ("in/day10/z.mp4", "video"), ("extra.bin", "video"),
    ]
    with pytest.raises(SourceError, match="no such file"):
        discover_inputs([tmp_path / "missing"])
    with pytest.raises(SourceError, match="single image"):
        discover_inputs([tmp_path / "in" / "day2" / "shots" / "0001.png"])
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("x")
    with pytest.raises(SourceError, match="no recordings, videos"):
        discover_inputs([tmp_path / "notes"])


def test_job_key_follows_content_config_and_model(tmp_path):
    video = tmp_path / "a.mp4"
    video.write_bytes(b"0123456789")
    item = BatchInput(video, "video")
    _, keyed = resolve_config(load_config(None, {"backend": "graphcut"}))
    key = job_key(content_digest(item), keyed)
    assert job_key(content_digest(item), keyed) == key

    copy = tmp_path / "copy.mp4"
    copy.write_bytes(video.read_bytes())
    assert job_key(content_digest(BatchInput(copy, "video")), keyed) == key, "the key is the content, not the name"
    video.write_bytes(b"0123456780")
    assert job_key(content_digest(item), keyed) != key

    _, other = resolve_config(load_config(None, {"backend": "graphcut", "keyframes.max_interval": 7}))
    assert job_key(content_digest(BatchInput(copy, "video")), other) != key


def test_file_hashes_are_reused_while_size_and_mtime_hold(tmp_path):
    folder = tmp_path / "seq"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.png").write_bytes(bytes([i]) * 10)
    item = BatchInput(folder, "images")
    known: dict = {}
    digest = content_digest(item, known)
    assert digest == content_digest(item) and len(known) == 3
    known[str(folder / "1.png")][2] = "0" * 64  # a stale hash is believed while size and mtime hold ...
    assert content_digest(item, known) != digest
    os.utime(folder / "1.png", ns=(1, 1))  # ... and recomputed when they change
    assert content_digest(item, known) == digest


def test_sam_key_holds_the_checkpoint_hash_not_its_path(tmp_path, vit_t_checkpoint, turncrop_cache):
    moved = tmp_path / "elsewhere.pt"
    moved.write_bytes(vit_t_checkpoint.read_bytes())
    config, keyed = resolve_config(load_config(None, {"backend": "auto", "checkpoint": str(vit_t_checkpoint)}))
    assert config.backend == "mobile_sam"  # "auto" resolved once for every worker
    _, keyed_moved = resolve_config(load_config(None, {"backend": "mobile_sam", "checkpoint": str(moved)}))
    assert keyed == keyed_moved
    data = vit_t_checkpoint.read_bytes()
    moved.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    _, keyed_changed = resolve_config(load_config(None, {"backend": "mobile_sam", "checkpoint": str(moved)}))
    assert keyed_changed != keyed


def test_encoder_actors_take_one_gpu_each_or_no_cpu_slot():
    assert encoder_plan({"CPU": 64.0, "GPU": 4.0}, nodes=2) == (4, {"num_gpus": 1.0, "num_cpus": 1})
    assert encoder_plan({"CPU": 64.0, "GPU": 1.0}, nodes=1, encoders=2) == (2, {"num_gpus": 0.5, "num_cpus": 1})
    assert encoder_plan({"CPU": 32.0}, nodes=3) == (3, {"num_cpus": 0})
    assert encoder_plan({"CPU": 2.0}, nodes=1, encoders=2) == (2, {"num_cpus": 0})


# -- local processes ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_batch(inputs, config, tmp_path_factory):
    out = tmp_path_factory.mktemp("local_batch")
    seen = []
    report = run_batch([inputs["captures"], inputs["broken"]], out, config, workers=2,
                       on_progress=lambda p: seen.append((p.finished, p.failed, p.frames)))
    return out, report, seen


def test_a_job_count_arriving_after_its_result_is_not_counted_again(inputs, config, tmp_path, monkeypatch):
    """Worker processes report frame counts on a queue and results on the pool: a job's last count can
    arrive after its result. Seen in a run as 128 frames for 3 x 32."""

    def late_counting_runner(jobs, todo, workers, on_frames):
        for index in todo:
            on_frames(index, 10)
            yield index, JobResult(str(jobs[index].input.path), jobs[index].input.kind, jobs[index].key,
                                   jobs[index].out.name, "done", frames=32)
            on_frames(index, 32)  # drained after the result was taken

    monkeypatch.setattr(batch, "_run_local", late_counting_runner)
    seen = []
    run_batch([inputs["a"], inputs["b"]], tmp_path, config, on_progress=lambda p: seen.append((p.finished, p.frames)))
    assert seen[-1] == (2, 64)


def test_local_batch_equals_one_by_one_and_reports_the_broken_input(local_batch, one_by_one, inputs):
    out, report, seen = local_batch
    results = _by_input(report)
    assert len(results) == 4
    broken = results[str(inputs["broken"].resolve())]
    assert broken.status == "failed" and "broken.mp4" in broken.error
    assert not (out / broken.out).exists(), "a failed input that produced nothing leaves no folder"
    for path, ref in one_by_one.items():
        result = results[path]
        assert result.status == "done" and result.frames == 32
        assert read_done(out / result.out)["key"] == result.key
        _assert_same_outputs(out / result.out, ref)

    summary = json.loads((out / "batch.json").read_text())
    assert summary["totals"] | {"seconds": 0, "fps": 0, "inputs_per_min": 0} == {
        "inputs": 4, "done": 3, "skipped": 0, "failed": 1, "not_run": 0, "frames": 96, "seconds": 0, "fps": 0,
        "inputs_per_min": 0}
    assert [i["status"] for i in summary["inputs"]].count("failed") == 1
    assert seen[-1] == (4, 1, 96), "progress reached every input, the failure and every frame"
    assert any(b[0] == a[0] and b[2] > a[2] for a, b in zip(seen, seen[1:])), "frames were counted while jobs ran"


def test_rerun_does_no_work_and_a_changed_setting_reprocesses(local_batch, inputs, config):
    out, first, _ = local_batch
    before = _mtimes(out)
    report = run_batch([inputs["captures"]], out, config, workers=2)
    assert [r.status for r in report.results] == ["skipped"] * 3
    after = _mtimes(out)
    assert {k: v for k, v in after.items() if k != "batch.json"} == \
        {k: v for k, v in before.items() if k != "batch.json"}
    assert json.loads((out / "batch.json").read_text())["totals"]["skipped"] == 3

    changed = load_config(None, {"backend": "graphcut", "export.jpeg_quality": 80})
    report = run_batch([inputs["a"]], out, changed, workers=1)
    (result,) = report.results
    old = next(r for r in first.results if r.input == result.input)
    assert result.status == "done" and result.key != old.key
    assert read_done(out / result.out)["key"] == result.key
    sidecar = json.loads((out / result.out / "product-001.json").read_text())
    assert sidecar["options"]["jpeg_quality"] == 80


def test_interrupted_batch_leaves_no_partial_output_and_rerun_completes(inputs, config, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".killed-1a2b3c4d.tmp-0badc0de").mkdir()  # what a killed worker leaves
    (out / ".killed-1a2b3c4d.tmp-0badc0de" / "product-001.png").write_bytes(b"half")
    cmd = [sys.executable, "-m", "turncrop.stream.cli", "batch", str(inputs["captures"]), "--out", str(out),
           "--backend", "graphcut", "--workers", "1", "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as in a terminal
    deadline = time.monotonic() + 60
    while not any(".tmp-" in p.name for p in out.iterdir() if p.name != ".killed-1a2b3c4d.tmp-0badc0de"):
        assert proc.poll() is None and time.monotonic() < deadline, "the batch never started a job"
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr
    left = [p.name for p in out.iterdir() if p.is_dir()]
    assert not [n for n in left if n.startswith(".")], f"partial folders left: {left}"
    for name in left:
        assert read_done(out / name) is not None, f"{name} is an output folder without done.json"
    summary = json.loads((out / "batch.json").read_text())
    assert summary["interrupted"] is True
    statuses = sorted(i["status"] for i in summary["inputs"])
    assert statuses == sorted(["done"] * len(left) + ["not_run"] * (3 - len(left)))

    report = run_batch([inputs["captures"]], out, config, workers=2)
    assert sorted(r.status for r in report.results) == sorted(["skipped"] * len(left) + ["done"] * (3 - len(left)))
    assert all(read_done(out / r.out)["key"] == r.key for r in report.results)


def test_a_worker_killed_mid_job_is_retried_once_then_failed_and_the_others_complete(inputs, config, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    killed: list[int] = []
    stop = threading.Event()

    def kill_the_worker_of_each_new_job(times: int) -> None:  # as the OS does to a process out of memory
        seen: set[str] = set()
        while not stop.is_set():
            started = {p.name for p in out.iterdir() if ".tmp-" in p.name} - seen
            seen |= started
            if started and len(killed) < times:
                for child in multiprocessing.active_children():
                    os.kill(child.pid, signal.SIGKILL)
                    killed.append(child.pid)
            time.sleep(0.005)

    killer = threading.Thread(target=kill_the_worker_of_each_new_job, args=(2,))
    killer.start()
    try:
        report = run_batch([inputs["a"], inputs["b"]], out, config, workers=1)
    finally:
        stop.set()
        killer.join()
    assert len(killed) == 2
    a, b = report.results
    assert a.status == "failed" and "died twice" in a.error, (a, b)
    assert b.status == "done" and read_done(out / b.out)["key"] == b.key
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [b.out], "no partial folder is left"


def test_second_batch_on_the_same_output_is_refused(inputs, config, tmp_path):
    import fcntl

    out = tmp_path / "out"
    out.mkdir()
    with open(out / ".batch.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(RuntimeError, match="another turncrop batch"):
            run_batch([inputs["a"]], out, config)


def test_clean_partial_restores_an_output_whose_replacement_never_arrived(tmp_path):
    (tmp_path / ".a-12345678.old-deadbeef").mkdir()
    (tmp_path / ".a-12345678.old-deadbeef" / "done.json").write_text("{}")
    (tmp_path / ".b-12345678.tmp-deadbeef").mkdir()
    assert clean_partial(tmp_path) == [".b-12345678.tmp-deadbeef"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-12345678"]


# -- Ray ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_batch_equals_one_by_one_and_a_rerun_does_no_work(local_ray, inputs, config, one_by_one, tmp_path):
    out = tmp_path / "out"
    seen = []
    report = run_batch([inputs["captures"], inputs["broken"]], out, config, workers=2, ray_address="auto",
                       on_progress=lambda p: seen.append((p.finished, p.failed, p.frames)))
    assert seen[-1] == (4, 1, 96)
    assert any(b[0] == a[0] and b[2] > a[2] for a, b in zip(seen, seen[1:])), "frames were counted while tasks ran"
    results = _by_input(report)
    assert results[str(inputs["broken"].resolve())].status == "failed"
    for path, ref in one_by_one.items():
        assert results[path].status == "done", results[path].error
        _assert_same_outputs(out / results[path].out, ref)
    assert local_ray.is_initialized(), "a batch leaves a Ray instance it did not start running"

    before = _mtimes(out)
    report = run_batch([inputs["captures"]], out, config, workers=2, ray_address="auto")
    assert [r.status for r in report.results] == ["skipped"] * 3
    assert {k: v for k, v in _mtimes(out).items() if k != "batch.json"} == \
        {k: v for k, v in before.items() if k != "batch.json"}


def test_remote_encoder_encodes_on_the_actor_and_decodes_here(local_ray, config):
    from turncrop.models.base import Prompt
    from turncrop.stream.remote_encoder import EncoderActor, RemoteEncoder, local_decoder, segmenter_for

    image = _turntable_frames(10, lead=0, views=1, tail=0)[0]
    prompt = Prompt(box=np.array([100, 10, 220, 225], np.float32))
    actor = local_ray.remote(EncoderActor).remote(config)
    remote = RemoteEncoder(actor, local_decoder(config))
    got = remote.decode(remote.encode(image, 0), prompt, image)
    here = segmenter_for(config)
    want = here.decode(here.encode(image, 0), prompt, image)
    assert np.array_equal(got.masks, want.masks) and got.masks[0].sum() > 1000
    assert remote.encode_calls == 1 and local_ray.get(actor.encode_calls.remote()) == 1
    assert remote.decoder.encode_calls == 0, "the local copy never encodes"


# -- recorded sessions ----------------------------------------------------------------------------------------


def test_recorded_session_is_an_input_and_matches_its_replay(inputs, config, tmp_path):
    recording = pytest.importorskip("turncrop.stream.recording")
    replay = pytest.importorskip("turncrop.stream.replay")
    from turncrop.tracking.frame import Frame

    session = tmp_path / "sessions" / "monday"
    with recording.SessionRecorder(session, config, fps=30, size=(SIZE[1], SIZE[0]), source="test") as rec:
        for i, image in enumerate(_turntable_frames(20)):
            rec.frame(Frame(image, i, i / 30))
    ref = replay.replay_session(session, tmp_path / "ref", config=config, every_frame=True)
    assert ref.summary.products

    out = tmp_path / "out"
    report = run_batch([tmp_path / "sessions", inputs["a"]], out, config, workers=2)
    kinds = {r.kind: r for r in report.results}
    assert set(kinds) == {"recording", "video"} and kinds["recording"].status == "done", kinds["recording"].error
    assert kinds["recording"].frames == 32
    _assert_same_outputs(out / kinds["recording"].out, tmp_path / "ref")


def test_cli_batch_fails_with_status_1_naming_the_broken_input(inputs, tmp_path, capsys):
    from turncrop.stream.cli import main

    assert main(["batch", str(inputs["broken"]), "--out", str(tmp_path / "out"), "--backend", "graphcut"]) == 1
    err = capsys.readouterr().err
    assert "broken.mp4" in err and "1/1 inputs (0 done, 0 skipped, 1 failed)" in err
    assert main(["batch", str(tmp_path / "nothing"), "--out", str(tmp_path / "out")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
