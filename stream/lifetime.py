"""Worker processes that do not outlive their driver, and a lock that the driver shares with them.

A batch driver killed with SIGKILL cannot stop its pool: without help, a worker would finish its input,
rename it into the output folder after the driver is gone, then idle forever. `die_with_parent` (in a
worker's initializer) makes the kernel kill the worker when the driver dies (Linux' parent-death
signal), and a watchdog thread does the same wherever that signal does not exist.

`exclusive_then_shared` is the driver's side of a lock file: taken exclusively (refused while anyone
holds it), then downgraded to shared so that the workers can hold it too (`hold_shared`). While any of
them lives, another driver's exclusive request fails, so a second batch never starts beside the
leftovers of a first one.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import os
import signal
import threading
import time
from pathlib import Path
from typing import IO, Callable, Iterator

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
WATCHDOG_PERIOD_S = 0.5

_held: list[IO] = []  # the worker's shared lock, open for the life of the process


def die_with_parent(parent: int) -> None:
    """Kill this process with SIGKILL as soon as process `parent` (its driver) is gone."""
    with contextlib.suppress(OSError, AttributeError):  # not Linux: the watchdog alone does it
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # it died before the signal was asked for
        os.kill(os.getpid(), signal.SIGKILL)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(WATCHDOG_PERIOD_S)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


def hold_shared(path: Path) -> None:
    """Hold `path`'s lock shared until this process ends (a worker of the driver that shares it)."""
    lock = open(path, "a")  # noqa: SIM115 - kept open on purpose: closing it would release the lock
    fcntl.flock(lock, fcntl.LOCK_SH)
    _held.append(lock)


@contextlib.contextmanager
def exclusive_then_shared(path: Path, busy: str) -> Iterator[Callable[[], None]]:
    """Take `path`'s lock exclusively; yields `share()`, which downgrades it before workers start.

    Raises RuntimeError(`busy`) when anyone else holds it, now or at the downgrade.
    """
    with open(path, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(busy) from None

        def share() -> None:
            try:  # not atomic in Linux: another driver may win the lock in between, and then this one stops
                fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RuntimeError(busy) from None

        yield share
