"""An output folder belongs to one run: claiming it, and replacing a folder whole.

    with claim_output(Path("out/mic"), "session.mp4") as folder:   # where to write this run's files
        ...

`claim_output` refuses a folder that is not this tool's to use (a non-empty folder that holds no turncrop
output, a folder inside the source folder, a source inside the folder, an unwritable one, one another run
is writing), before anything is processed. A new or empty folder is written in place, so the products a
killed run exported stay there. A previous turncrop output is replaced whole: the new run is written
beside it in a hidden `.NAME.tmp-XXXXXXXX` folder that is swapped in when the run ends, so the folder
never mixes two runs; a killed run leaves the previous output as it was. The hidden folders a killed
run leaves are removed by the next run into the same folder (and by `turncrop batch`).

A running run holds an exclusive `flock` on the folders it writes (the kernel drops it when the process
dies, even by SIGKILL), which is how a live run's folders are told from a dead one's leftovers.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import tempfile
import uuid
from pathlib import Path
from typing import Iterator

MANIFEST = "manifest.json"
PARTIAL = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-[0-9a-f]{8}$")


class OutputError(ValueError):
    """The output folder cannot be used for this run; the message names it and says why."""


def is_run_output(folder: Path) -> bool:
    """Whether `folder` holds the outputs of a turncrop run (its manifest says so)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("tool") == "turncrop"


def partial_path(out: Path, kind: str = "tmp") -> Path:
    """A fresh hidden sibling of `out` for writing a new run (`tmp`) or parking the old one (`old`)."""
    return out.with_name(f".{out.name}.{kind}-{uuid.uuid4().hex[:8]}")


@contextlib.contextmanager
def claim_output(out: Path, source: str | Path | None = None) -> Iterator[Path]:
    """Check `out` for this run and yield the folder to write into (see the module doc).

    On leaving the block normally the new run is in `out`; on an exception a replacement is dropped and
    the previous output kept (a new folder keeps what was written, as after a kill).

    Raises:
      OutputError: `out` is a file, inside the source folder, holds the source, is not empty and not a
        turncrop output, is not writable, or another run is writing it.
    """
    replace = _check(out, Path(source) if source is not None else None)
    with contextlib.ExitStack() as held:
        if not replace:
            created = not out.exists()
            out.mkdir(parents=True, exist_ok=True)
            held.enter_context(_locked(out, created))
            yield out
            return
        held.enter_context(_locked(out, False))  # no other run may swap it meanwhile
        clean_partial(out.parent, out.name)
        tmp = partial_path(out)
        tmp.mkdir()
        held.enter_context(_locked(tmp, True))
        try:
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        replace_folder(tmp, out)


def _check(out: Path, source: Path | None) -> bool:
    """Refuse what `claim_output` refuses; True when `out` is a previous output to replace."""
    where = f"output folder {out} (--out)"
    if out.exists() and not out.is_dir():
        raise OutputError(f"{where} is a file, not a folder")
    resolved = out.resolve()
    if source is not None and source.exists():
        src = source.resolve()
        if source.is_dir() and (resolved == src or src in resolved.parents):
            raise OutputError(f"{where} is inside the source folder {source}: the outputs would be read as frames "
                              "by the next run; choose a folder outside it")
        if src == resolved or resolved in src.parents:
            raise OutputError(f"{where} holds the source {source}; choose a folder that does not")
    if not out.exists() or not any(out.iterdir()):
        _check_writable(out, where)
        return False
    if not is_run_output(out):
        raise OutputError(f"{where} is not empty and holds no turncrop output ({MANIFEST}); an output folder "
                          "belongs to one run: choose a new or empty folder")
    _check_writable(out.parent, where)
    return True


def _check_writable(folder: Path, where: str) -> None:
    """Write and remove a file where the run will write, so that a read-only folder fails now, not at the end."""
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise OutputError(f"{where} is not writable: {exc.strerror or exc} ({existing})") from None


@contextlib.contextmanager
def _locked(folder: Path, created: bool) -> Iterator[None]:
    """Hold an exclusive flock on `folder` while the block runs; refuse if another process holds it.

    `created`: the folder was made for this run, so it is removed again when it could not be locked.
    """
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if created:
                with contextlib.suppress(OSError):
                    folder.rmdir()
            raise OutputError(f"output folder {folder} (--out): another turncrop run is writing to it") from None
        yield
    finally:
        os.close(fd)


def _in_use(folder: Path) -> bool:
    """True while a live process holds the folder's flock (a running run's, or a batch worker's)."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def replace_folder(new: Path, out: Path) -> None:
    """Put the folder `new` in place of `out` (which may not exist); the old one is removed afterwards.

    SIGINT and SIGTERM wait while the two renames run, so an interrupt never leaves `out` missing; a kill
    between them leaves the old folder parked, which `clean_partial` puts back.
    """
    old = partial_path(out, "old")
    blocked = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    try:
        if out.exists():
            out.rename(old)
        new.rename(out)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    shutil.rmtree(old, ignore_errors=True)


def clean_partial(folder: Path, name: str | None = None) -> list[str]:
    """Remove the hidden folders killed runs left in `folder` (only those of output `name`, if given).

    A parked `.old` folder whose replacement never arrived is put back; a folder a live process still
    holds is left alone. Returns the names removed.
    """
    removed = []
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        m = PARTIAL.match(path.name)
        if m is None or not path.is_dir() or (name is not None and m["name"] != name) or _in_use(path):
            continue
        final = folder / m["name"]
        if m["kind"] == "old" and not final.exists():
            path.rename(final)
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path.name)
    return removed
