"""Golden outputs of a recorded session, and the check of a replay against them.

A session's `golden/` folder holds what a trusted replay produced:

    golden/golden.json   mode, config and versions used, frames processed, keyframe decisions, products
                         (span, status, chosen still frame, its box and scores)
    golden/masks.npz     every frame's product mask, bit-packed (`np.packbits`, row-major), key "f<index>"

`check_replay` compares a new replay with them: per-frame mask IoU at or above a tolerance (or, on a frame
where the product is nearly hidden, the masks differing by no more pixels than that tolerance allows on the
product's usual size), the same products with spans within a few frames, the chosen still within a few
frames (or its mask as good as the golden still's), and every exported JPEG passing the marketplace checks. `CheckResult.text()` is the
readable report of what moved and by how much. `write_golden` rewrites the folder on purpose
(`turncrop replay --update-golden`).
"""
from __future__ import annotations

import datetime as dt
import io
import json
import os
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from turncrop.stream.marketplace import check_marketplace_jpeg
from turncrop.stream.recording import GOLDEN_DIR, RecordingError, versions
from turncrop.stream.replay import ReplayReport, unpack_mask

GOLDEN_VERSION = 1
GOLDEN_JSON = "golden.json"
MASKS_NPZ = "masks.npz"


@dataclass(frozen=True)
class Tolerances:
    """How far a replay may move from the golden outputs and still pass.

    mask_iou: least per-frame IoU of the product mask; a frame below it still passes if its masks differ by
      at most (1 - mask_iou) of the golden's median mask area (`_check_masks`).
    span_frames: most frames a product's first or last frame may move.  still_frames: most frames the chosen
    still may move (beyond it the still passes only if its mask matches the golden still's mask with IoU >=
    mask_iou).
    """

    mask_iou: float = 0.9
    span_frames: int = 3
    still_frames: int = 5

    def __post_init__(self) -> None:
        if not 0.0 <= self.mask_iou <= 1.0:
            raise ValueError(f"mask IoU tolerance must be in [0, 1], got {self.mask_iou}")
        if self.span_frames < 0 or self.still_frames < 0:
            raise ValueError("frame tolerances must be >= 0")


@dataclass
class Golden:
    info: dict
    masks: dict[int, np.ndarray]  # frame -> packed bits
    size: tuple[int, int]

    def mask(self, index: int) -> np.ndarray | None:
        packed = self.masks.get(index)
        return None if packed is None else unpack_mask(packed, self.size)


def golden_dir(session_dir: str | Path) -> Path:
    return Path(session_dir) / GOLDEN_DIR


def has_golden(session_dir: str | Path) -> bool:
    return (golden_dir(session_dir) / GOLDEN_JSON).is_file()


def write_golden(session_dir: str | Path, report: ReplayReport, config: dict) -> Path:
    """Store `report` as the session's golden outputs (replacing any); returns the golden folder.

    `config`: the config the replay ran with, as a dict (stored for people; the check does not use it).
    """
    folder = golden_dir(session_dir)
    tmp = folder.with_name(GOLDEN_DIR + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    products = []
    for p in report.summary.products:
        entry = {k: p.get(k) for k in ("product_id", "status", "first_frame", "last_frame", "frame_index", "score")}
        if p.get("frame_index") is not None and report.mask(p["frame_index"]) is not None:
            entry["still_box"] = _box(report.mask(p["frame_index"]))
        sidecar = Path(report.summary.out_dir) / f"{p['product_id']}.json"
        if p.get("status") == "ok" and sidecar.is_file():
            entry["still_scores"] = json.loads(sidecar.read_text()).get("scores")
        products.append(entry)
    info = {
        "golden_version": GOLDEN_VERSION,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
        "mode": report.mode,
        "backend": report.summary.backend,
        "size": list(report.size),
        "frames_processed": report.processed,
        "keyframes": report.keyframes,
        "products": products,
        "mask_area": {str(k): int(np.unpackbits(v).sum()) for k, v in sorted(report.masks.items())},
        "config": config,
    }
    (tmp / GOLDEN_JSON).write_text(json.dumps(info, indent=1) + "\n")
    # Fixed zip entry times so that an unchanged golden is byte-identical when rewritten.
    with zipfile.ZipFile(tmp / MASKS_NPZ, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        for index, packed in sorted(report.masks.items()):
            buffer = io.BytesIO()
            np.save(buffer, packed, allow_pickle=False)
            z.writestr(zipfile.ZipInfo(f"f{index}.npy", date_time=(1980, 1, 1, 0, 0, 0)), buffer.getvalue(),
                       compress_type=zipfile.ZIP_DEFLATED)
    if folder.exists():
        old = folder.with_name(GOLDEN_DIR + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old)
    else:
        os.replace(tmp, folder)
    return folder


def load_golden(session_dir: str | Path) -> Golden:
    """Read a session's golden outputs; RecordingError when they are missing or unreadable."""
    folder = golden_dir(session_dir)
    path = folder / GOLDEN_JSON
    if not path.is_file():
        raise RecordingError(f"{path}: no golden outputs for this session (make them with "
                             f"`turncrop replay {session_dir} --update-golden`)")
    try:
        info = json.loads(path.read_text())
        version = info["golden_version"]
        size = tuple(int(v) for v in info["size"])
    except (ValueError, KeyError, TypeError) as e:
        raise RecordingError(f"{path}: not a valid golden file ({type(e).__name__}: {e})") from None
    if version > GOLDEN_VERSION:
        raise RecordingError(f"{path}: golden_version {version} is newer than this turncrop reads ({GOLDEN_VERSION})")
    try:
        with np.load(folder / MASKS_NPZ, allow_pickle=False) as npz:
            masks = {int(name[1:]): npz[name] for name in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise RecordingError(f"{folder / MASKS_NPZ}: cannot read the golden masks ({e})") from None
    return Golden(info, masks, (size[0], size[1]))


@dataclass
class CheckResult:
    """The outcome of `check_replay`: `lines` is the report; `failures` the checks that failed."""

    session: str
    lines: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def ok(self, line: str) -> None:
        self.lines.append(f"  ok    {line}")

    def fail(self, line: str) -> None:
        self.lines.append(f"  FAIL  {line}")
        self.failures.append(line)

    def note(self, line: str) -> None:
        self.lines.append(f"        {line}")

    def text(self) -> str:
        verdict = "PASS" if self.passed else f"FAIL ({len(self.failures)} check{'s' * (len(self.failures) > 1)} failed)"
        return "\n".join([f"{self.session}:", *self.lines, f"  {verdict}"])


def check_replay(golden: Golden, report: ReplayReport, out_dir: str | Path,
                 tolerances: Tolerances | None = None) -> CheckResult:
    """Compare a replay (its report and the files it exported into `out_dir`) with the golden outputs."""
    tol = tolerances or Tolerances()
    result = CheckResult(str(report.session))
    info = golden.info
    result.note(f"replayed {report.mode.replace('_', ' ')}: {len(report.processed)} of {report.frames_recorded} "
                f"frames in {report.seconds:.1f} s ({report.fps:.1f} fps), backend {report.summary.backend}")
    if info.get("mode") != report.mode:
        result.note(f"the golden outputs were made {info.get('mode', '?').replace('_', ' ')}")
    for warning in report.warnings:
        result.note(f"warning: {warning}")
    if report.divergences:
        # Not a failure by itself: a changed setting may ask for keyframes the live run never took.
        result.note(f"the replay departed from the recorded live run at {len(report.divergences)} point(s), first: "
                    f"{report.divergences[0]}")
    if tuple(golden.size) != tuple(report.size):
        result.fail(f"frame size {report.size} differs from the golden {golden.size}")
        return result
    _check_masks(golden, report, tol, result)
    _check_products(golden, report, tol, result)
    _check_keyframes(info, report, result)
    _check_exports(report, Path(out_dir), result)
    return result


def _check_masks(golden: Golden, report: ReplayReport, tol: Tolerances, result: CheckResult) -> None:
    both = set(golden.info.get("frames_processed", [])) & set(report.processed)  # modes may differ
    frames = sorted((set(golden.masks) | set(report.masks)) & both)
    if not frames:
        result.ok("masks: no product in any frame, as in the golden outputs")
        return
    # IoU is a poor judge of a frame where the product is nearly hidden (behind the operator's hand: a mask of
    # a dozen pixels, whose IoU a one-pixel change halves, as a new OpenCV release did): there the pixels the
    # masks differ by count against the product's usual size, as they would on a frame showing all of it.
    usual = float(np.median([np.unpackbits(p).sum() for p in golden.masks.values()])) if golden.masks else 0.0
    ious, low = {}, {}
    for index in frames:
        a, b = golden.mask(index), report.mask(index)
        ious[index] = _iou(a, b)
        if ious[index] < tol.mask_iou and not (
                a is not None and b is not None and np.count_nonzero(a ^ b) <= (1 - tol.mask_iou) * usual):
            low[index] = ious[index]
    worst = min(ious, key=ious.get)
    hidden = sum(v < tol.mask_iou for v in ious.values()) - len(low)
    summary = (f"masks: {len(frames)} frames compared, mean IoU {np.mean(list(ious.values())):.4f}, "
               f"worst {ious[worst]:.4f} at frame {worst} (tolerance {tol.mask_iou})"
               + (f"; {hidden} nearly hidden, within {1 - tol.mask_iou:.0%} of the usual {usual:.0f} px" if hidden else ""))
    if not low:
        result.ok(summary)
        return
    result.fail(summary)
    shown = sorted(low, key=low.get)[:8]
    details = []
    for i in sorted(shown):
        g, r = golden.masks.get(i), report.masks.get(i)
        if g is None:
            details.append(f"frame {i}: a mask where the golden has none")
        elif r is None:
            details.append(f"frame {i}: no mask (golden {int(np.unpackbits(g).sum())} px)")
        else:
            ga, ra = int(np.unpackbits(g).sum()), int(np.unpackbits(r).sum())
            details.append(f"frame {i}: IoU {low[i]:.3f}, area {ra} px vs {ga} px ({100 * (ra - ga) / max(ga, 1):+.1f} %)")
    result.note(f"{len(low)} frames below tolerance" + (f", worst {len(shown)}:" if len(low) > len(shown) else ":"))
    for d in details:
        result.note(f"  {d}")


def _check_products(golden: Golden, report: ReplayReport, tol: Tolerances, result: CheckResult) -> None:
    expected = golden.info.get("products", [])
    got = report.summary.products
    if len(got) != len(expected):
        result.fail(f"products: {len(got)}, the golden outputs have {len(expected)}: "
                    f"{_spans(got)} vs golden {_spans(expected)}")
    else:
        result.ok(f"products: {len(got)}" + (f" ({_spans(got)})" if got else ""))
    for g, r in zip(expected, got):
        pid = g["product_id"]
        if r.get("status") != g.get("status"):
            result.fail(f"{pid}: status {r.get('status')}, golden {g.get('status')}")
        moved = max(abs(r["first_frame"] - g["first_frame"]), abs(r["last_frame"] - g["last_frame"]))
        span = f"{pid}: frames {r['first_frame']}-{r['last_frame']} (golden {g['first_frame']}-{g['last_frame']})"
        (result.ok if moved <= tol.span_frames else result.fail)(
            span + ("" if moved == 0 else f", moved {moved} frames (tolerance {tol.span_frames})"))
        if g.get("frame_index") is None or r.get("frame_index") is None:
            continue
        gf, rf = g["frame_index"], r["frame_index"]
        line = f"{pid}: still at frame {rf} (golden {gf}), score {r.get('score')} (golden {g.get('score')})"
        if abs(rf - gf) <= tol.still_frames:
            result.ok(line + ("" if rf == gf else f", moved {abs(rf - gf)} frames"))
            continue
        still_iou = _iou(golden.mask(gf), report.mask(rf))
        (result.ok if still_iou >= tol.mask_iou else result.fail)(
            f"{line}, moved {abs(rf - gf)} frames (tolerance {tol.still_frames}); still mask IoU {still_iou:.3f}")


def _check_keyframes(info: dict, report: ReplayReport, result: CheckResult) -> None:
    """Keyframe decisions are reported when they move; they fail nothing by themselves (masks decide)."""
    def key(k: dict) -> tuple:
        return (k["frame"], k["kind"], k.get("taken") or "", -1 if k.get("before") is None else k["before"])

    expected = {key(k) for k in info.get("keyframes", [])}
    got = {key(k) for k in report.keyframes}
    if expected == got:
        result.ok(f"keyframes: {len(got)} decisions, as in the golden outputs")
        return
    gone, new = sorted(expected - got), sorted(got - expected)
    result.note(f"keyframes moved: {len(got)} decisions (golden {len(expected)}); "
                f"only in golden: {_keys(gone)}; only in replay: {_keys(new)}")


def _check_exports(report: ReplayReport, out: Path, result: CheckResult) -> None:
    jpgs = [out / name for p in report.summary.products if p.get("status") == "ok"
            for name in p.get("files", []) if name.endswith(".jpg")]
    problems = {path.name: check_marketplace_jpeg(path) for path in jpgs}
    bad = {name: p for name, p in problems.items() if p}
    if not jpgs:
        result.note("exports: no catalogue JPEG exported")
    elif bad:
        result.fail("exports: " + "; ".join(f"{name}: {', '.join(p)}" for name, p in bad.items()))
    else:
        result.ok(f"exports: {len(jpgs)} JPEG{'s' * (len(jpgs) > 1)} pass the marketplace checks")


def _iou(a: np.ndarray | None, b: np.ndarray | None) -> float:
    if a is None and b is None:
        return 1.0
    if a is None or b is None:
        return 0.0
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 1.0


def _box(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


def _spans(products: list[dict]) -> str:
    return ", ".join(f"{p['first_frame']}-{p['last_frame']}" for p in products) or "none"


def _keys(keys: list[tuple]) -> str:
    if not keys:
        return "none"
    text = ", ".join(f"{kind} {frame}" + (f" ({taken})" if taken else "") + (f" before {before}" if before >= 0 else "")
                     for frame, kind, taken, before in keys[:6])
    return text + (f" and {len(keys) - 6} more" if len(keys) > 6 else "")
