"""Process a backlog of recordings on local processes or a Ray cluster; resumable and idempotent.

    report = run_batch(["captures/", "extra.mp4"], "out/", config, workers=2)      # local processes
    report = run_batch(["captures/"], "out/", config, ray_address="auto")            # a Ray cluster

Each input (a video file, a folder of images, or a recorded session) is one job. Its outputs, the same
files `turncrop run` writes plus `done.json`, go to `OUT/<name>-<hash of its path>/`. A job writes into a
hidden sibling folder and renames it into place when complete, so an interrupted batch never leaves a
half-written output folder; leftovers of killed jobs are removed by the next run. A job's key hashes the
input's content, the resolved config, the model's identity (checkpoint SHA-256) and the turncrop
version: a re-run skips every input whose `done.json` holds the same key. A failed input is reported
(and retried by the next run) without stopping the others. `OUT/batch.json` summarises the batch.

On Ray the keyframe encoder runs in `EncoderActor`s that load the model once (one per GPU, asking Ray for
the GPU; one per node without GPUs); each recording is a task that decodes and exports locally.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import importlib.metadata
import json
import logging
import multiprocessing
import os
import re
import shutil
import signal
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from turncrop.models.base import Segmenter
from turncrop.models.registry import resolve_backend
from turncrop.models.weights import resolve_checkpoint, sha256_file
from turncrop.stream.config import Config
from turncrop.stream.export import atomic_write_bytes
from turncrop.stream.lifetime import die_with_parent, exclusive_then_shared, hold_shared
from turncrop.stream.outputs import clean_partial, partial_path, replace_folder
from turncrop.stream.sources import IMAGE_SUFFIXES, SourceError, natural_key

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = frozenset({".mp4", ".mkv", ".webm", ".mov"})
DONE, FAILED, SUMMARY, HASHES, LOCK = "done.json", "failed.json", "batch.json", ".hashes.json", ".batch.lock"


@dataclass(frozen=True)
class BatchInput:
    """One recording to process. path: resolved; kind: "video", "images" (a folder) or "recording"."""

    path: Path
    kind: str


@dataclass(frozen=True)
class Job:
    """An input with its key and final output folder, and the resolved config to run it with."""

    input: BatchInput
    key: str
    out: Path
    config: Config


@dataclass
class JobResult:
    """What happened to one input.

    status: "done", "skipped" (already done with this key), "failed", or "not_run" (the batch was interrupted).
    """

    input: str
    kind: str
    key: str
    out: str
    status: str
    error: str | None = None
    frames: int = 0
    seconds: float = 0.0
    products: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        fps = self.frames / self.seconds if self.seconds > 0 else 0.0
        return {**dataclasses.asdict(self), "seconds": round(self.seconds, 3), "fps": round(fps, 3)}


@dataclass
class BatchProgress:
    """The whole batch while it runs: inputs finished out of `total`, failures, aggregate frames per second."""

    total: int
    done: int = 0
    skipped: int = 0
    failed: int = 0
    started: float = field(default_factory=time.perf_counter)
    frames_finished: int = 0
    frames_running: dict[int, int] = field(default_factory=dict)

    @property
    def finished(self) -> int:
        return self.done + self.skipped + self.failed

    @property
    def frames(self) -> int:
        return self.frames_finished + sum(self.frames_running.values())

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        return (f"batch: {self.finished}/{self.total} inputs ({self.done} done, {self.skipped} skipped, "
                f"{self.failed} failed), {self.frames} frames, {self.fps:.1f} fps")

    def add(self, index: int, result: JobResult) -> None:
        self.frames_running.pop(index, None)
        self.frames_finished += result.frames if result.status != "skipped" else 0
        setattr(self, result.status, getattr(self, result.status) + 1)


@dataclass
class BatchReport:
    out: Path
    mode: str
    workers: int | None
    results: list[JobResult]
    seconds: float
    interrupted: bool = False

    @property
    def failed(self) -> list[JobResult]:
        return [r for r in self.results if r.status == "failed"]

    def as_dict(self) -> dict:
        worked = [r for r in self.results if r.status in ("done", "failed")]
        frames = sum(r.frames for r in worked)
        counts = {s: sum(r.status == s for r in self.results) for s in ("done", "skipped", "failed", "not_run")}
        return {
            "tool": "turncrop batch",
            "turncrop": _version(),
            "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "mode": self.mode,
            "workers": self.workers,
            "interrupted": self.interrupted,
            "totals": {"inputs": len(self.results), **counts, "frames": frames, "seconds": round(self.seconds, 3),
                       "fps": round(frames / self.seconds, 3) if self.seconds > 0 else 0.0,
                       "inputs_per_min": round(len(worked) * 60 / self.seconds, 3) if self.seconds > 0 else 0.0},
            "inputs": [r.as_dict() for r in self.results],
        }


# -- finding the inputs ------------------------------------------------------------------------------


def discover_inputs(paths: Sequence[str | Path], exclude: Path | None = None) -> list[BatchInput]:
    """Recordings, videos (mp4, mkv, webm, mov) and image folders in `paths`, in a deterministic order.

    A path given by itself is taken as what it is (a file as a video, whatever its suffix); folders are
    searched recursively in natural name order, skipping hidden entries and `exclude` (the output folder).
    A folder that holds images is an image sequence, one that `is_recording` accepts a recorded session.
    Raises SourceError for a missing path, a single image, or a folder with nothing to process.
    """
    found: list[BatchInput] = []
    seen: set[Path] = set()
    skip = exclude.resolve() if exclude is not None else None
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            raise SourceError(f"{raw}: no such file or folder")
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            raise SourceError(f"{raw}: a single image, not a video; pass the folder holding the frames")
        items = list(_walk(path.resolve(), skip, top=True))
        if not items:
            raise SourceError(f"{raw}: no recordings, videos ({', '.join(sorted(VIDEO_SUFFIXES))}) "
                              "or image folders in it")
        for item in items:
            if item.path not in seen:
                seen.add(item.path)
                found.append(item)
    return found


def _walk(path: Path, skip: Path | None, top: bool) -> Iterator[BatchInput]:
    if path == skip:
        return
    if path.is_file():
        if top or path.suffix.lower() in VIDEO_SUFFIXES:
            yield BatchInput(path, "video")
        return
    if not path.is_dir():
        return
    if _is_recording(path):
        yield BatchInput(path, "recording")
        return
    children = sorted((c for c in path.iterdir() if not c.name.startswith(".")), key=lambda c: natural_key(c.name))
    if any(_is_image(c) for c in children):
        yield BatchInput(path, "images")
        return
    for child in children:
        yield from _walk(child, skip, top=False)


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".") and path.is_file()


def _is_recording(path: Path) -> bool:
    try:
        from turncrop.stream.recording import is_recording
    except ImportError:  # the recorder is optional here: without it no folder is taken for a session
        return False
    return is_recording(path)


# -- keys ---------------------------------------------------------------------------------------------


def content_digest(item: BatchInput, known: dict[str, list] | None = None) -> str:
    """SHA-256 over what the job reads: each file's relative name and SHA-256 (a video: its bytes alone).

    `known`: path -> [size, mtime_ns, sha256] of files hashed before; a file whose size and mtime are
    unchanged is not read again (as make and rsync judge), and new hashes are added to it.
    """
    if item.kind == "video":
        return _file_sha256(item.path, known)
    if item.kind == "images":
        files = sorted((p for p in item.path.iterdir() if _is_image(p)), key=lambda p: natural_key(p.name))
    else:
        files = sorted((p for p in item.path.rglob("*") if p.is_file()),
                       key=lambda p: p.relative_to(item.path).as_posix())
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.relative_to(item.path).as_posix()}\0{_file_sha256(f, known)}\n".encode())
    return h.hexdigest()


def _file_sha256(path: Path, known: dict[str, list] | None) -> str:
    st = path.stat()
    entry = (known or {}).get(str(path))
    if entry is not None and entry[:2] == [st.st_size, st.st_mtime_ns]:
        return entry[2]
    digest = sha256_file(path)
    if known is not None:
        known[str(path)] = [st.st_size, st.st_mtime_ns, digest]
    return digest


def resolve_config(config: Config) -> tuple[Config, dict]:
    """The config every job runs with (backend and checkpoint pinned) and what of it goes into the key.

    "auto" is resolved here, once, so that all workers run the same backend; the key holds the model
    files' SHA-256 instead of their paths.
    """
    backend = resolve_backend(config.backend, config.checkpoint)
    checkpoint = str(resolve_checkpoint(backend, config.checkpoint)) if backend != "graphcut" else None
    config = dataclasses.replace(config, backend=backend, checkpoint=checkpoint)
    keyed = config.to_dict()
    keyed["checkpoint"] = sha256_file(checkpoint) if checkpoint else None
    if config.prompt.detector is not None:
        keyed["prompt"]["detector"] = sha256_file(config.prompt.detector)
    if config.prompt.mask is not None:
        keyed["prompt"]["mask"] = sha256_file(config.prompt.mask)
    return config, keyed


def job_key(content: str, keyed_config: dict) -> str:
    payload = json.dumps({"content": content, "config": keyed_config, "turncrop": _version()},
                         sort_keys=True, separators=(",", ":"), default=list)
    return hashlib.sha256(payload.encode()).hexdigest()


def output_name(item: BatchInput) -> str:
    """`<name>-<8 hex of the input's path>`: readable, and distinct for same-named inputs in other folders."""
    name = item.path.stem if item.kind == "video" else item.path.name
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "input"
    return f"{name}-{hashlib.sha256(str(item.path).encode()).hexdigest()[:8]}"


def _version() -> str:
    try:
        return importlib.metadata.version("turncrop")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# -- one job --------------------------------------------------------------------------------------------


def process(job: Job, segmenter: Segmenter | None = None,
            on_frames: Callable[[int], None] | None = None) -> JobResult:
    """Run one input into a hidden folder beside its output, then rename it into place.

    A failure is returned as a failed result; outputs it produced before failing are kept (with
    `failed.json` instead of `done.json`), so the next run retries it. On KeyboardInterrupt the hidden
    folder is removed and the interrupt goes on.
    """
    tmp = partial_path(job.out)
    result = JobResult(str(job.input.path), job.input.kind, job.key, job.out.name, "done")
    started = time.perf_counter()
    count = _FrameCounter(on_frames)
    try:
        summary = _run(job, tmp, segmenter, count)
        result.frames, result.products = summary.frames, summary.products
        if summary.error:
            result.status, result.error = "failed", summary.error
    except Exception as exc:  # noqa: BLE001 - any failure of one input is reported, the batch goes on
        result.status, result.error, result.frames = "failed", f"{type(exc).__name__}: {exc}", count.frames
        log.error("%s: %s", job.input.path, result.error)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    result.seconds = time.perf_counter() - started
    count.report()
    _commit(tmp, job.out, result)
    return result


def _run(job: Job, out: Path, segmenter: Segmenter | None, on_frame: Callable) -> Any:
    if job.input.kind == "recording":
        try:
            from turncrop.stream.replay import replay_session
        except ImportError as exc:
            raise RuntimeError(f"{job.input.path} is a recorded session, and replaying one needs "
                               f"turncrop.stream.replay, which is not available ({exc})") from None
        # Every frame, keyframes in place: a backlog is re-processed for the best result, not as live.
        return replay_session(job.input.path, out, config=job.config, every_frame=True, segmenter=segmenter,
                              on_result=on_frame).summary
    from turncrop.stream.runner import run

    return run(job.input.path, out, job.config, on_frame=on_frame, segmenter=segmenter)


class _FrameCounter:
    """Counts a job's frames and passes the count on at most twice a second (progress of a running job)."""

    def __init__(self, report: Callable[[int], None] | None, every: float = 0.5) -> None:
        self.frames, self._report, self._every, self._last = 0, report, every, time.monotonic()

    def __call__(self, _result: Any) -> None:
        self.frames += 1
        if self._report is not None and time.monotonic() - self._last >= self._every:
            self.report()

    def report(self) -> None:
        if self._report is not None:
            self._last = time.monotonic()
            with contextlib.suppress(Exception):  # progress is best effort; never fail a job over it
                self._report(self.frames)


def _commit(tmp: Path, out: Path, result: JobResult) -> None:
    """Put a finished job's folder in place of `out`; a failed job's only if it produced something."""
    if result.status == "failed" and not (tmp.is_dir() and any(p.name != "manifest.json" for p in tmp.iterdir())):
        shutil.rmtree(tmp, ignore_errors=True)
        return
    tmp.mkdir(parents=True, exist_ok=True)
    marker = DONE if result.status == "done" else FAILED
    atomic_write_bytes(tmp / marker, json.dumps(result.as_dict(), indent=2).encode())
    replace_folder(tmp, out)


def read_done(out: Path) -> dict | None:
    """The `done.json` of a finished output folder, or None."""
    try:
        return json.loads((out / DONE).read_text())
    except (OSError, ValueError):
        return None


# -- the batch -------------------------------------------------------------------------------------------


def plan_jobs(inputs: Sequence[str | Path], out_dir: Path, config: Config) -> list[Job]:
    """Find the inputs and key them. Files are read once; their hashes are kept in `out_dir/.hashes.json`."""
    config, keyed = resolve_config(config)
    items = discover_inputs(inputs, exclude=out_dir)
    cache = out_dir / HASHES
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    known = known if isinstance(known, dict) else {}
    before = dict(known)
    jobs = [Job(item, job_key(content_digest(item, known), keyed), out_dir / output_name(item), config)
            for item in items]
    if known != before:
        atomic_write_bytes(cache, json.dumps(known).encode())
    return jobs


def run_batch(inputs: Sequence[str | Path], out_dir: str | Path, config: Config, *, workers: int | None = None,
              ray_address: str | None = None, encoders: int | None = None,
              on_progress: Callable[[BatchProgress], None] | None = None) -> BatchReport:
    """Process every input under `inputs` into `out_dir`; skips those already done with the same key.

    Args:
      workers: jobs at a time (default: this machine's cores; on Ray, the cluster's CPUs).
      ray_address: None = local processes; "auto" = the Ray cluster this machine belongs to, or a local
        Ray instance when there is none; else a cluster address ("ray://head:10001", "head:6379").
      encoders: encoder actors on Ray (default: one per GPU, or one per node without GPUs).
      on_progress: called with the batch's progress after each finished job and while jobs run.

    Returns the report (also written to `out_dir/batch.json`). A Ctrl-C ends the batch early: running
    jobs are stopped, their partial outputs removed, and the report says `interrupted`.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    busy = (f"another turncrop batch is writing to {out}, or the workers of one that was killed have not "
            "exited yet")
    with exclusive_then_shared(out / LOCK, busy) as share:  # the workers share it: see `lifetime`
        for name in clean_partial(out):
            log.warning("removed %s, left by an interrupted job", name)
        jobs = plan_jobs(inputs, out, config)
        progress = BatchProgress(total=len(jobs))
        results: dict[int, JobResult] = {}
        todo = []
        for i, job in enumerate(jobs):
            done = read_done(job.out)
            if done is not None and done.get("key") == job.key:
                results[i] = _skipped(job, done)
                progress.add(i, results[i])
            else:
                todo.append(i)
        mode = "local" if ray_address is None else "ray"
        notify = on_progress or (lambda _p: None)
        notify(progress)

        def on_frames(index: int, frames: int) -> None:
            if index in results:
                return  # a job's count can arrive after its result (another channel): counted with it
            progress.frames_running[index] = frames
            notify(progress)

        interrupted = False
        share()
        try:
            if todo:
                runner = _run_local if ray_address is None else _run_ray
                options = {} if ray_address is None else {"address": ray_address, "encoders": encoders}
                with contextlib.closing(runner(jobs, todo, workers, on_frames, **options)) as execute:
                    for index, result in execute:
                        results[index] = result
                        progress.add(index, result)
                        notify(progress)
        except KeyboardInterrupt:
            interrupted = True
            clean_partial(out)
        for i, job in enumerate(jobs):  # what an interrupt left undone
            results.setdefault(i, JobResult(str(job.input.path), job.input.kind, job.key, job.out.name, "not_run"))
        report = BatchReport(out, mode, workers, [results[i] for i in sorted(results)], progress.seconds,
                             interrupted)
        atomic_write_bytes(out / SUMMARY, json.dumps(report.as_dict(), indent=2).encode())
        return report


def _skipped(job: Job, done: dict) -> JobResult:
    return JobResult(str(job.input.path), job.input.kind, job.key, job.out.name, "skipped",
                     frames=done.get("frames", 0), seconds=done.get("seconds", 0.0), products=done.get("products", []))


# -- local processes ---------------------------------------------------------------------------------------


_queue: Any = None


def _init_worker(threads: int, queue: Any, driver: int, lock: Path) -> None:
    """Each worker: its share of the cores; Ctrl-C is the parent's to handle (it stops the workers). It
    dies with its driver and holds the batch lock while it lives."""
    global _queue
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(driver)
    hold_shared(lock)
    import cv2
    import torch

    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    _queue = queue
    queue.put(("pid", os.getpid(), 0))


def _local_job(job: Job, index: int) -> JobResult:
    _queue.put(("start", index, 0))
    return process(job, on_frames=lambda n: _queue.put(("frames", index, n)))


def _run_local(jobs: list[Job], todo: list[int], workers: int | None,
               on_frames: Callable[[int, int], None]) -> Iterator[tuple[int, JobResult]]:
    """Run `todo` on a pool of spawned processes; yields (index, result) as jobs finish.

    A worker killed from outside (the OS out of memory) breaks the whole pool: the jobs it did not start
    go to a fresh pool, and the ones it was running too, once; a job that was running when a pool broke
    a second time is failed, so a recording that kills its worker cannot stop the batch.
    """
    cores = len(os.sched_getaffinity(0))
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    pids: set[int] = set()
    started: set[int] = set()
    breaks: dict[int, int] = {}

    def drain() -> None:
        while True:
            try:
                what, a, b = queue.get_nowait()
            except Exception:  # noqa: BLE001 - queue.Empty, or a queue torn down at the end
                return
            if what == "pid":
                pids.add(a)
            elif what == "start":
                started.add(a)
            else:
                on_frames(a, b)

    while todo:
        n = min(workers or cores, len(todo))
        pool = ProcessPoolExecutor(n, mp_context=context, initializer=_init_worker,
                                   initargs=(max(1, cores // n), queue, os.getpid(), jobs[0].out.parent / LOCK))
        retry: list[int] = []
        try:
            futures = {pool.submit(_local_job, jobs[i], i): i for i in todo}
            pending = set(futures)
            while pending:
                finished, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                drain()
                for future in sorted(finished, key=futures.get):
                    index = futures[future]
                    try:
                        result = future.result()
                    except BrokenProcessPool:
                        if index in started:
                            breaks[index] = breaks.get(index, 0) + 1
                        if breaks.get(index, 0) < 2:
                            retry.append(index)
                            continue
                        result = _failed(jobs[index], "its worker process died twice while running it (killed "
                                                      "from outside, e.g. by the OS when out of memory)")
                    except Exception as exc:  # noqa: BLE001 - a result that could not come back, say
                        result = _failed(jobs[index], f"worker failed: {type(exc).__name__}: {exc}")
                    yield index, result
        except BaseException:
            drain()
            for pid in pids:  # stop running jobs now; their hidden folders are removed by the caller
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        if retry:  # every worker of the broken pool is gone: what they left can go
            clean_partial(jobs[retry[0]].out.parent)
            log.warning("a worker process died; running %d inputs again in a new pool", len(retry))
        todo, pids, started = sorted(retry), set(), set()


def _failed(job: Job, error: str) -> JobResult:
    return JobResult(str(job.input.path), job.input.kind, job.key, job.out.name, "failed", error=error)


# -- Ray -----------------------------------------------------------------------------------------------------


def _ray_job(job: Job, index: int, encoders: list, queue: Any) -> JobResult:
    """A Ray task: one input, its keyframes encoded by one of the encoder actors."""
    from turncrop.stream.remote_encoder import RemoteEncoder, local_decoder

    segmenter = RemoteEncoder(encoders[index % len(encoders)], local_decoder(job.config))
    return process(job, segmenter, on_frames=lambda n: queue.put_nowait((index, n)))


def _run_ray(jobs: list[Job], todo: list[int], workers: int | None, on_frames: Callable[[int, int], None], *,
             address: str, encoders: int | None) -> Iterator[tuple[int, JobResult]]:
    import ray
    from ray.util.queue import Empty, Queue

    from turncrop.stream.remote_encoder import EncoderActor

    started_here = _ray_connect(address, workers)
    refs: dict[Any, int] = {}
    try:
        resources = ray.cluster_resources()
        nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
        count, options = encoder_plan(resources, nodes, encoders)
        actor_class = ray.remote(EncoderActor).options(**options)
        config = jobs[todo[0]].config
        actors = [actor_class.remote(config) for _ in range(count)]
        ray.get([a.name.remote() for a in actors])  # the model loads now: a bad checkpoint fails once, here
        queue = Queue(actor_options={"num_cpus": 0})
        task = ray.remote(num_cpus=1)(_ray_job)
        limit = workers or max(int(resources.get("CPU", 1)), 1)
        waiting = list(todo)
        while waiting or refs:
            while waiting and len(refs) < limit:
                index = waiting.pop(0)
                refs[task.remote(jobs[index], index, actors, queue)] = index
            finished, _ = ray.wait(list(refs), num_returns=1, timeout=0.5)
            while True:
                try:
                    on_frames(*queue.get_nowait())
                except Empty:
                    break
            for ref in finished:
                index = refs.pop(ref)
                try:
                    result = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - a task lost with its node or worker: that input failed
                    result = _failed(jobs[index], f"ray task failed: {type(exc).__name__}: {exc}")
                yield index, result
    except BaseException:
        for ref in refs:
            ray.cancel(ref, force=True)
        with contextlib.suppress(Exception):
            ray.wait(list(refs), num_returns=len(refs), timeout=10)
        raise
    finally:
        if started_here:
            ray.shutdown()


def encoder_plan(resources: dict[str, float], nodes: int, encoders: int | None = None) -> tuple[int, dict]:
    """How many encoder actors, and the Ray resources each asks for, on a cluster with `resources`.

    With GPUs: one actor per GPU, each holding a GPU and a CPU (more `encoders` than GPUs share them:
    Ray's fractional GPUs). Without: one per node, taking no CPU slot, because a task waits idle while its
    keyframe encodes, so the encode runs on the core that task holds.
    """
    gpus = int(resources.get("GPU", 0))
    count = encoders or gpus or max(nodes, 1)
    return count, ({"num_gpus": min(1.0, gpus / count), "num_cpus": 1} if gpus else {"num_cpus": 0})


def _ray_connect(address: str, workers: int | None) -> bool:
    """Join the cluster at `address`; "auto" starts a local Ray instance when there is none. True if started here."""
    import ray

    if ray.is_initialized():
        return False
    if address != "auto":
        ray.init(address=address)
        return True
    try:
        ray.init(address="auto")
    except ConnectionError:
        ray.init(num_cpus=workers or len(os.sched_getaffinity(0)), include_dashboard=False)
    return True
