"""The `turncrop` command: run, live, batch, eval, weights."""
from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from turncrop.models.weights import WeightsError
from turncrop.stream.config import BACKEND_NAMES, ConfigError, load_config
from turncrop.stream.sources import SourceError

log = logging.getLogger("turncrop")


def _split_frame(text: str, option: str, form: str) -> tuple[str, int | None]:
    """'VALUE' or 'VALUE@FRAME' -> (VALUE, FRAME or None); an '@' not followed by a frame number is VALUE's."""
    match = re.fullmatch(r"(.*)@(-?\d+)", text, re.DOTALL)
    if match is None:
        return text, None
    if int(match[2]) < 0:
        raise argparse.ArgumentTypeError(f"{option} must be {form}: FRAME is a frame number >= 0, got {text!r}")
    return match[1], int(match[2])


def parse_box(text: str) -> tuple[tuple[float, float, float, float], int | None]:
    """'X0,Y0,X1,Y1' or 'X0,Y0,X1,Y1@FRAME' -> (box, frame or None)."""
    box_text, frame = _split_frame(text, "--box", "X0,Y0,X1,Y1[@FRAME]")
    try:
        values = tuple(float(v) for v in box_text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--box must be X0,Y0,X1,Y1[@FRAME] in pixels, got {text!r}") from None
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"--box needs 4 numbers X0,Y0,X1,Y1, got {len(values)} in {text!r}")
    return values, frame


@dataclass(frozen=True)
class PointsArg:
    """`--points`: (x, y) pixels and a label each (1 product, 0 not product), on `frame` (None: unsaid)."""

    points: tuple[tuple[float, float], ...]
    labels: tuple[int, ...]
    frame: int | None


def parse_points(text: str) -> PointsArg:
    """'X,Y[,LABEL];X,Y[,LABEL]...[@FRAME]' -> the points, their labels (default 1) and the frame."""
    form = "X,Y[,LABEL];X,Y[,LABEL]...[@FRAME] in pixels, LABEL 1 (product, the default) or 0 (not product)"
    points_text, frame = _split_frame(text, "--points", form)
    points, labels = [], []
    for item in points_text.split(";"):
        values = item.split(",")
        try:
            numbers = [float(v) for v in values]
        except ValueError:
            numbers = []
        if len(numbers) not in (2, 3) or (len(numbers) == 3 and numbers[2] not in (0.0, 1.0)):
            raise argparse.ArgumentTypeError(f"--points must be {form}, got {item!r} in {text!r}")
        points.append((numbers[0], numbers[1]))
        labels.append(int(numbers[2]) if len(numbers) == 3 else 1)
    return PointsArg(tuple(points), tuple(labels), frame)


def parse_mask(text: str) -> tuple[str, int | None]:
    """'FILE' or 'FILE@FRAME' -> (file, frame or None); the file is read and checked with the config."""
    path, frame = _split_frame(text, "--mask", "FILE[@FRAME]")
    if not path:
        raise argparse.ArgumentTypeError(f"--mask must be FILE[@FRAME], a mask image, got {text!r}")
    return path, frame


# How the user gave each override, for errors about it (`load_config(names=...)`).
_OPTION_NAMES = {"backend": "--backend", "checkpoint": "--checkpoint", "spin.views": "--spin",
                 "prompt.box": "--box", "prompt.points": "--points", "prompt.labels": "--points",
                 "prompt.mask": "--mask", "prompt.frame": "@FRAME"}


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if getattr(args, "backend", None):
        out["backend"] = args.backend
    if getattr(args, "checkpoint", None):
        out["checkpoint"] = str(args.checkpoint)
    if getattr(args, "spin", None) is not None:
        out["spin.views"] = args.spin
    return {**out, **_prompt_overrides(args)}


def _prompt_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """`--box`, `--points`, `--mask` as prompt.* keys; ValueError when they name different frames."""
    out: dict[str, Any] = {}
    frames: dict[str, int | None] = {}
    if getattr(args, "box", None):
        out["prompt.box"], frames["--box"] = list(args.box[0]), args.box[1]
    if getattr(args, "points", None):
        out["prompt.points"] = [list(p) for p in args.points.points]
        out["prompt.labels"], frames["--points"] = list(args.points.labels), args.points.frame
    if getattr(args, "mask", None):
        out["prompt.mask"], frames["--mask"] = args.mask[0], args.mask[1]
    said = {option: frame for option, frame in frames.items() if frame is not None}
    if len(set(said.values())) > 1:
        raise ValueError(f"{' and '.join(f'{o} ...@{f}' for o, f in said.items())} name different frames: the "
                         "prompt is for one frame (give @FRAME once, or the same on each)")
    if said:
        out["prompt.frame"] = next(iter(said.values()))
    return out


def _add_prompt(p: argparse.ArgumentParser, what: str) -> None:
    """`--box`, `--points` and `--mask`: the product's initial prompt on one frame (they combine)."""
    p.add_argument("--box", type=parse_box, metavar="X0,Y0,X1,Y1[@FRAME]",
                   help=f"the product's box on FRAME (default 0){what}")
    p.add_argument("--points", type=parse_points, metavar="X,Y[,LABEL];...[@FRAME]",
                   help="points on the product (LABEL 1, the default) or not on it (0), on FRAME")
    p.add_argument("--mask", type=parse_mask, metavar="FILE[@FRAME]",
                   help="a mask image of the product on FRAME (> 127 = product), the size of the frames")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="video file (mp4, mkv, webm, mov) or folder of images")
    p.add_argument("--config", help="YAML file or preset name (default, studio, fast)")
    p.add_argument("--backend", choices=BACKEND_NAMES, help="segmenter (default: auto = MobileSAM if its "
                   "weights are cached, else the weight-free graphcut)")
    p.add_argument("--checkpoint", type=Path, help="SAM / MobileSAM checkpoint file to use")
    _add_prompt(p, "; without a prompt products are found automatically")
    p.add_argument("-v", "--verbose", action="store_true", help="log every keyframe decision")


def _add_camera_or_file(p: argparse.ArgumentParser, source_help: str) -> None:
    p.add_argument("source", nargs="?", help=source_help)
    p.add_argument("--camera", metavar="DEV|INDEX", help="V4L2 device path (e.g. /dev/video0) or OpenCV index")
    p.add_argument("--realtime", action="store_true", help="play SOURCE at its own frame rate")
    p.add_argument("--speed", type=float, default=1.0, help="playback speed of SOURCE with --realtime (default 1)")
    p.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="turncrop", description="Turntable video -> catalogue cutouts")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="segment a recording and export the best still per product")
    _add_common(run)
    run.add_argument("--out", required=True, type=Path, help="output folder")
    run.add_argument("--no-progress", action="store_true")
    run.add_argument("--spin", type=int, nargs="?", const=36, metavar="N",
                     help="also export a 360° spin set of N views per product (default N: 36)")

    live = sub.add_parser("live", help="segment a camera (or a recording paced as one) live and export "
                          "each product as it leaves")
    _add_camera_or_file(live, "video file or image folder played as a camera (with --realtime)")
    live.add_argument("--out", required=True, type=Path, help="output folder")
    live.add_argument("--config", help="YAML file or preset name (default, studio, fast)")
    live.add_argument("--backend", choices=BACKEND_NAMES, help="segmenter (default: auto)")
    live.add_argument("--checkpoint", type=Path, help="SAM / MobileSAM checkpoint file to use")
    _add_prompt(live, "; without a prompt products are found automatically")
    live.add_argument("--quiet", action="store_true", help="no per-second stats")
    live.add_argument("-v", "--verbose", action="store_true", help="log every keyframe decision")
    live.add_argument("--record", type=Path, metavar="DIR", help="also record the session into the new folder "
                      "DIR (frames, drops, keyframes, operator events), for `turncrop replay`")
    live.add_argument("--record-codec", choices=("ffv1", "h264"), default="ffv1",
                      help="video codec of --record: ffv1 (lossless, default) or h264 (small)")

    rec = sub.add_parser("record", help="record a camera (or a video / image folder) into a session folder for "
                         "`turncrop replay`, without processing")
    _add_camera_or_file(rec, "video file or image folder to record")
    rec.add_argument("--out", required=True, type=Path, help="the session folder to create")
    rec.add_argument("--codec", choices=("ffv1", "h264"), default="ffv1",
                     help="ffv1 (lossless, default) or h264 (crf 14, small)")
    rec.add_argument("--config", help="config stored with the session for its replays (YAML file or preset)")
    rec.add_argument("--backend", choices=BACKEND_NAMES, help="segmenter stored with the session")
    _add_prompt(rec, ", the initial prompt stored with the session (--mask: a copy of the file)")

    rp = sub.add_parser("replay", help="replay a recorded session deterministically; --check compares it with "
                        "its golden outputs")
    rp.add_argument("sessions", nargs="+", type=Path, metavar="SESSION",
                    help="session folder (turncrop record / live --record), or a folder of them")
    rp.add_argument("--out", type=Path, help="output folder (default: a temporary one, removed afterwards); "
                    "with several sessions, one subfolder each")
    rp.add_argument("--every-frame", action="store_true",
                    help="process every recorded frame, keyframes in place (default: as the live run did)")
    rp.add_argument("--check", action="store_true", help="compare with the session's golden outputs; exit 1 if "
                    "anything moved beyond the tolerances")
    rp.add_argument("--update-golden", action="store_true", help="store this replay as the golden outputs")
    rp.add_argument("--config", help="use this config (YAML file or preset) instead of the recorded one")
    rp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override one setting of the config, e.g. --set graphcut.colour_weight=2 (repeatable)")
    rp.add_argument("--backend", choices=BACKEND_NAMES, help="segmenter (default: the recorded one)")
    rp.add_argument("--checkpoint", type=Path, help="SAM / MobileSAM checkpoint file to use")
    rp.add_argument("--iou", type=float, default=0.9, help="--check: least per-frame mask IoU (default 0.9)")
    rp.add_argument("--span-frames", type=int, default=3,
                    help="--check: most frames a product's start or end may move (default 3)")
    rp.add_argument("--still-frames", type=int, default=5,
                    help="--check: most frames the chosen still may move (default 5)")
    rp.add_argument("-v", "--verbose", action="store_true", help="log every keyframe decision")

    b = sub.add_parser("batch", help="process many recordings (files, image folders, sessions, folders of them) "
                       "on local processes or a Ray cluster; re-runs skip what is done")
    b.add_argument("inputs", nargs="+", help="recordings, video files, image folders, or folders holding them")
    b.add_argument("--out", required=True, type=Path, help="output folder: one folder per input + batch.json")
    b.add_argument("--ray", metavar="auto|ADDRESS",
                   help="run on a Ray cluster (auto: the one this machine belongs to, else a local one)")
    b.add_argument("--workers", type=int, metavar="N", help="inputs at a time (default: cores, or the cluster's CPUs)")
    b.add_argument("--encoders", type=int, metavar="N",
                   help="encoder actors on Ray (default: one per GPU, or one per node without GPUs)")
    b.add_argument("--config", help="YAML file or preset name (default, studio, fast)")
    b.add_argument("--backend", choices=BACKEND_NAMES, help="segmenter (default: auto)")
    b.add_argument("--checkpoint", type=Path, help="SAM / MobileSAM checkpoint file to use")
    b.add_argument("--spin", type=int, nargs="?", const=36, metavar="N", help="also export spin sets of N views")
    b.add_argument("--no-progress", action="store_true")
    b.add_argument("-v", "--verbose", action="store_true", help="log every keyframe decision")

    srv = sub.add_parser("serve", help="a web page that sends the browser's camera; live preview, prompts, "
                         "stills per browser session")
    srv.add_argument("--out", required=True, type=Path, help="output folder (one subfolder per session)")
    srv.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; any other "
                     "needs --token)")
    srv.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    srv.add_argument("--token", help="secret every request must carry (?token= or the X-Turncrop-Token header)")
    srv.add_argument("--config", help="YAML file or preset name (default, studio, fast)")
    srv.add_argument("--backend", choices=BACKEND_NAMES, help="segmenter (default: auto)")
    srv.add_argument("--checkpoint", type=Path, help="SAM / MobileSAM checkpoint file to use")
    srv.add_argument("--record", type=Path, metavar="DIR", help="also record every session into DIR/<session id>/ "
                     "(frames, drops, keyframes, operator events), for `turncrop replay`")
    srv.add_argument("--record-codec", choices=("ffv1", "h264"), default="ffv1",
                     help="video codec of --record: ffv1 (lossless, default) or h264 (small)")
    srv.add_argument("-v", "--verbose", action="store_true", help="log sessions and every keyframe decision")

    ev = sub.add_parser("eval", help="measure masks against ground truth (J, F, J&F)")
    _add_common(ev)
    ev.add_argument("--gt", required=True, type=Path, help="folder of ground-truth masks, one per frame")
    ev.add_argument("--json", type=Path, help="write the report here")
    ev.add_argument("--compare-per-frame", action="store_true",
                    help="also run the encoder on every frame and report both")

    w = sub.add_parser("weights", help="list, fetch or verify SAM / MobileSAM checkpoints")
    wsub = w.add_subparsers(dest="weights_command", required=True)
    wsub.add_parser("list", help="known checkpoints and whether they are cached")
    f = wsub.add_parser("fetch", help="download an official checkpoint into the cache")
    f.add_argument("name")
    f.add_argument("--dest", type=Path)
    v = wsub.add_parser("verify", help="check a checkpoint's SHA-256 and contents")
    v.add_argument("path", type=Path)
    v.add_argument("--name", help="official name to check the checksum against")
    return parser


# Options whose value may start with "-" (a negative coordinate): argparse would take it for an option.
_SIGNED_VALUES = ("--box", "--points")


def _attach_signed_values(argv: Sequence[str]) -> list[str]:
    """`--box -50,10,100,200` -> `--box=-50,10,100,200`, which argparse reads as the option's value."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1] in _SIGNED_VALUES and re.match(r"-[\d.]", arg):
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(_attach_signed_values(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "weights":
            return _weights(args)
        if args.command == "replay":
            return _replay(args)
        config = load_config(args.config, _overrides(args), _OPTION_NAMES)
        if args.command == "run":
            return _run(args, config)
        if args.command == "live":
            return _live(args, config)
        if args.command == "record":
            return _record(args, config)
        if args.command == "serve":
            return _serve(args, config)
        if args.command == "batch":
            return _batch(args, config)
        return _eval(args, config)
    except (ConfigError, SourceError, WeightsError, ValueError, OSError) as exc:
        print(f"turncrop: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before a command handles it (loading), or one that does not
        print("turncrop: interrupted", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace, config) -> int:
    from tqdm import tqdm

    from turncrop.stream.runner import run
    from turncrop.tracking.products import ProductEnded

    total = {"products": 0, "keyframes": 0}
    bar: tqdm | None = None

    def on_open(source) -> None:  # not before: a bad source prints only its error
        nonlocal bar
        # A known frame count gives the bar its total and an ETA; a camera or a stream has none.
        bar = tqdm(total=source.frame_count, unit="frame", disable=args.no_progress, desc="turncrop")

    def on_frame(result) -> None:
        total["keyframes"] += int(result.keyframe)
        total["products"] += sum(isinstance(e, ProductEnded) and not e.transient for e in result.events)
        bar.set_postfix(total, refresh=False)
        bar.update(1)

    try:
        summary = run(args.source, args.out, config, on_frame=on_frame, handle_signals=True, on_open=on_open)
    finally:
        if bar is not None:
            bar.close()
    print(f"{summary.frames} frames in {summary.seconds:.1f} s ({summary.fps:.1f} fps), backend {summary.backend}, "
          f"{summary.encoder_calls} encoder calls ({summary.encoder_calls / max(summary.frames, 1):.3f} per frame)")
    for p in summary.products:
        where = f"frame {p['frame_index']}, score {p['score']}" if p["status"] == "ok" else p["reason"]
        print(f"  {p['product_id']}: {p['status']} ({where}) -> {', '.join(p['files'])}")
    if not summary.products and not summary.error and not summary.interrupted:
        print("  no product found: does the recording open on the empty stage? Otherwise give --box.")
    print(f"outputs in {summary.out_dir} (manifest.json)")
    if summary.error:
        print(f"turncrop: error: {summary.error} (products finished before it were exported)", file=sys.stderr)
        return 1
    if summary.interrupted:
        print(f"turncrop: interrupted at frame {summary.last_frame}; the product on stage was finished and "
              "exported", file=sys.stderr)
        return 130
    return 0


def _camera_or_file(args: argparse.Namespace, command: str, *, realtime_only: bool):
    """The source of `live` / `record`: `--camera DEV|INDEX`, or a SOURCE file paced with `--realtime`."""
    from turncrop.stream.live_sources import CameraSource, MonotonicClock, RealtimeSource
    from turncrop.stream.sources import open_source

    if (args.camera is None) == (args.source is None):
        raise ValueError(f"{command} needs either --camera DEV|INDEX or a SOURCE file"
                         f"{' with --realtime' if realtime_only else ' or folder'}")
    if args.camera is not None:
        return CameraSource(int(args.camera) if args.camera.isdigit() else args.camera)
    if realtime_only and not args.realtime:
        raise ValueError("a recording runs live only as a simulated camera: add --realtime")
    source = open_source(args.source)
    return RealtimeSource(source, MonotonicClock(args.speed)) if args.realtime else source


def _live(args: argparse.Namespace, config) -> int:
    from turncrop.stream.live import run_live

    source = _camera_or_file(args, "live", realtime_only=True)

    def on_stats(stats) -> None:
        if not args.quiet:
            print(stats.line(), file=sys.stderr, flush=True)

    with source:
        report = run_live(source, args.out, config, duration=args.duration, on_stats=on_stats,
                          record=args.record, record_codec=args.record_codec)
    s = report.stats.as_dict()
    print(f"{s['frames_processed']} of {s['frames_in']} frames processed in {s['seconds']:.1f} s "
          f"(in {s['fps_in']} fps, out {s['fps_out']} fps), {s['frames_dropped']} dropped, "
          f"latency p50 {s['latency_ms_p50']} ms p95 {s['latency_ms_p95']} ms, backend {report.summary.backend}")
    print(f"keyframes: {s['keyframes_first']} first + {s['keyframes_encoded']} in the background, "
          f"{s['refreshes']} background refreshes, {s['encoder_errors']} failed")
    for p in report.summary.products:
        where = f"frame {p['frame_index']}, score {p['score']}" if p["status"] == "ok" else p["reason"]
        print(f"  {p['product_id']}: {p['status']} ({where}) -> {', '.join(p['files'])}")
    print(f"outputs in {report.summary.out_dir} (manifest.json)")
    if report.summary.error:
        print(f"turncrop: error: {report.summary.error} (products finished before it were exported)", file=sys.stderr)
        return 1
    return 0


def _batch(args: argparse.Namespace, config) -> int:
    from turncrop.stream.batch import run_batch

    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    if args.encoders is not None and (args.encoders < 1 or args.ray is None):
        raise ValueError("--encoders needs --ray and must be >= 1")

    tty, shown = sys.stderr.isatty(), [-1]

    def on_progress(progress) -> None:  # one line, rewritten on a terminal; a line per finished input in a log
        if args.no_progress or (not tty and progress.finished == shown[0]):
            return
        shown[0] = progress.finished
        end = "\n" if progress.finished == progress.total or not tty else ""
        print(f"\r{progress.line()}" if tty else progress.line(), end=end, file=sys.stderr, flush=True)

    try:
        report = run_batch(args.inputs, args.out, config, workers=args.workers, ray_address=args.ray,
                           encoders=args.encoders, on_progress=on_progress)
    except RuntimeError as exc:  # another batch holds the output folder
        raise ValueError(str(exc)) from None
    totals = report.as_dict()["totals"]
    print(f"{totals['inputs']} inputs: {totals['done']} done, {totals['skipped']} skipped (already done), "
          f"{totals['failed']} failed, {totals['not_run']} not run; {totals['frames']} frames in "
          f"{totals['seconds']:.1f} s ({totals['fps']:.1f} fps); summary in {report.out / 'batch.json'}")
    for r in report.failed:
        print(f"turncrop: error: {r.input}: {r.error}", file=sys.stderr)
    if report.interrupted:
        print("turncrop: interrupted; finished inputs are kept, re-run to do the rest", file=sys.stderr)
        return 130
    return 1 if report.failed else 0


def _serve(args: argparse.Namespace, config) -> int:
    from turncrop.stream.serve import serve

    serve(args.out, config, host=args.host, port=args.port, token=args.token, record=args.record,
          record_codec=args.record_codec)
    return 0


def _record(args: argparse.Namespace, config) -> int:
    import signal
    import time

    from turncrop.stream.recording import SessionRecorder
    from turncrop.stream.runner import check_prompt

    source = _camera_or_file(args, "record", realtime_only=False)
    check_prompt(config.prompt, source.size, source.frame_count)  # before the session folder is made

    def stop(signum, frame) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    started = time.monotonic()
    reason = "source ended"
    try:
        with source, SessionRecorder(args.out, config, source.fps or 30.0, source.size, source=source.name,
                                     codec=args.codec) as recorder:
            try:
                for frame in source:
                    recorder.frame(frame)
                    if args.duration is not None and time.monotonic() - started >= args.duration:
                        reason = "duration"
                        break
            except KeyboardInterrupt:
                reason = "stopped"
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(f"recorded {recorder.frames} frames ({reason}) into {args.out}")
    return 0


def _replay(args: argparse.Namespace) -> int:
    import yaml

    from turncrop.stream.recording import is_recording

    if args.check and args.update_golden:
        raise ValueError("--check and --update-golden exclude each other: check first, then update on purpose")
    overrides, names = _overrides(args), dict(_OPTION_NAMES)
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set needs KEY=VALUE, got {item!r}")
        overrides[key], names[key] = yaml.safe_load(value), f"--set {key}"
    sessions: list[Path] = []
    for path in args.sessions:
        folder_of_sessions = path.is_dir() and not is_recording(path)
        inside = sorted(p for p in path.iterdir() if is_recording(p)) if folder_of_sessions else []
        sessions.extend(inside or [path])  # a path that is no session fails with the reason when opened
    if len(sessions) == 1:
        return _replay_one(args, sessions[0], overrides, names, args.out)
    codes = []
    for session in sessions:
        try:
            codes.append(_replay_one(args, session, overrides, names, args.out / session.name if args.out else None))
        except (ConfigError, SourceError, ValueError, OSError) as exc:
            print(f"turncrop: error: {exc}", file=sys.stderr)
            codes.append(2)
    print(f"{len(sessions)} sessions: {codes.count(0)} passed, {codes.count(1)} failed a check, "
          f"{codes.count(2)} bad input")
    return max(codes)


def _replay_one(args: argparse.Namespace, folder: Path, overrides: dict[str, Any], names: dict[str, str],
                out_dir: Path | None) -> int:
    import tempfile

    from turncrop.stream.golden import Tolerances, check_replay, load_golden, write_golden
    from turncrop.stream.recording import open_session
    from turncrop.stream.replay import EVERY_FRAME, replay_session

    session = open_session(folder)
    config = load_config(args.config, overrides, names) if args.config else session.config(overrides, names)
    golden = load_golden(folder) if args.check else None
    every_frame = args.every_frame or (golden is not None and golden.info.get("mode") == EVERY_FRAME)
    tolerances = Tolerances(args.iou, args.span_frames, args.still_frames)
    with tempfile.TemporaryDirectory(prefix="turncrop-replay-") as tmp:
        out = out_dir or Path(tmp)
        report = replay_session(folder, out, config=config, every_frame=every_frame)
        if golden is not None:
            result = check_replay(golden, report, out, tolerances)
            print(result.text())
            return 0 if result.passed else 1
        print(f"{folder}: replayed {report.mode.replace('_', ' ')}, {len(report.processed)} of "
              f"{report.frames_recorded} frames in {report.seconds:.1f} s ({report.fps:.1f} fps), "
              f"backend {report.summary.backend}, {len(report.keyframes)} keyframe decisions")
        for p in report.summary.products:
            where = f"frame {p['frame_index']}, score {p['score']}" if p["status"] == "ok" else p["reason"]
            print(f"  {p['product_id']}: {p['status']} frames {p['first_frame']}-{p['last_frame']} ({where})")
        for line in report.divergences:
            print(f"  diverged: {line}")
        for line in report.warnings:
            print(f"  warning: {line}")
        if args.update_golden:
            print(f"golden outputs written to {write_golden(folder, report, config.to_dict())}")
        if out_dir:
            print(f"outputs in {out_dir} (manifest.json)")
    return 0


def _eval(args: argparse.Namespace, config) -> int:
    from turncrop.stream.evaluate import evaluate, evaluate_with_baseline

    report = (evaluate_with_baseline if args.compare_per_frame else evaluate)(args.source, args.gt, config)
    rows = [("keyframes", report)]
    if "per_frame" in report:
        rows.append(("every frame", report["per_frame"]))
    print(f"{'mode':<12} {'J':>7} {'F':>7} {'J&F':>7} {'frames':>7} {'enc/frame':>10} {'fps':>6}")
    for name, r in rows:
        print(f"{name:<12} {r['J_mean']:7.4f} {r['F_mean']:7.4f} {r['JF_mean']:7.4f} {r['frames']:7d} "
              f"{r['encoder_calls_per_frame']:10.3f} {r['fps']:6.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return 0


def _weights(args: argparse.Namespace) -> int:
    from turncrop.models import weights

    if args.weights_command == "list":
        for spec in weights.list_weights():
            cached = weights.cache_dir() / spec.filename
            state = "cached" if cached.is_file() else "not cached"
            print(f"{spec.name:<12} {spec.arch:<6} {state:<11} {spec.url}")
        print(f"cache: {weights.cache_dir()}  (the default graphcut backend needs no weights)")
        return 0
    if args.weights_command == "fetch":
        path = weights.fetch(args.name, dest=args.dest)
        print(f"{args.name}: {path}")
        return 0
    report = weights.verify(args.path, name=args.name)
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
