"""The live pipeline's encoder worker: a process holding its own copy of the segmenter.

A process, not a thread: the graph cut's max-flow holds the GIL for a whole solve, which would stall the
frame path behind it. Spawned, not forked: forking a process that runs threads is unsafe. Starting it
costs an interpreter and the main program's imports (a few seconds), so it is started, and the segmenter
sent to it once, when the stream starts; until it is ready masks are carried by propagation.
"""
from __future__ import annotations

import asyncio
import dataclasses
import multiprocessing
import os
from concurrent.futures import Future, ProcessPoolExecutor

import cv2
import torch

from turncrop.models.base import Embedding, Segmenter
from turncrop.tracking.masktrack import Keyframe, KeyframeRequest, MaskResult, run_request

_segmenter: Segmenter | None = None  # the worker process's own copy


def start_encoder_process(segmenter: Segmenter) -> ProcessPoolExecutor:
    """A one-process pool for `run_in_encoder_process`; the process starts now (see `encoder_started`)."""
    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_keep_segmenter, initargs=(segmenter,))
    encoder_started(pool)
    return pool


def encoder_started(pool: ProcessPoolExecutor) -> Future:
    """A future that completes once the worker process holds its segmenter (or fails to start)."""
    return pool.submit(_started)


async def run_in_encoder_process(pool: ProcessPoolExecutor, request: KeyframeRequest) -> Keyframe:
    """`run_request` in the worker process of `pool`. Only what the work needs crosses over (not the
    frame's source-resolution original) and only the outcome comes back: the Keyframe holds `request`."""
    sent = dataclasses.replace(request, frame=dataclasses.replace(request.frame, original=None))
    embedding, result, encoded = await asyncio.get_running_loop().run_in_executor(pool, _run, sent)
    return Keyframe(request, embedding, result, encoded)


def _run(request: KeyframeRequest) -> tuple[Embedding, MaskResult, bool]:
    keyframe = run_request(_segmenter, request)
    return keyframe.embedding, keyframe.result, keyframe.encoded


def _keep_segmenter(segmenter: Segmenter) -> None:
    global _segmenter
    _segmenter = segmenter
    # One CPU stays with the frame path: an encoder using them all delays every frame behind it.
    threads = max(1, len(os.sched_getaffinity(0)) - 1)
    cv2.setNumThreads(threads)
    torch.set_num_threads(threads)
    if hasattr(segmenter, "num_threads"):
        segmenter.num_threads = threads


def _started() -> bool:
    return True
