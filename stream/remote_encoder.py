"""The heavy encoder in a Ray actor, the cheap decode in the task that asks for it.

A batch on a Ray cluster starts a few `EncoderActor`s (one per GPU, or one per node without GPUs); each
builds the segmenter once and serves keyframe encodes for every recording. A per-recording task wraps
an actor in `RemoteEncoder`, a `Segmenter` whose `encode` is a remote call and whose `decode` runs on
the task's own copy of the backend: decoding happens on every frame and needs the frame, so it stays
where the frame is.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from turncrop.models.base import Embedding, MaskSet, Prompt, Segmenter
from turncrop.stream.config import Config
from turncrop.stream.runner import segmenter_for


class EncoderActor:
    """Holds one loaded backend and runs its `encode` (made a Ray actor by `turncrop.stream.batch`)."""

    def __init__(self, config: Config) -> None:
        self.segmenter = segmenter_for(config)

    def name(self) -> str:
        return self.segmenter.name

    def encode_calls(self) -> int:
        return self.segmenter.encode_calls

    def encode(self, image: np.ndarray, frame_index: int = -1) -> Embedding:
        return self.segmenter.encode(image, frame_index)


_decoders: dict[str, Segmenter] = {}


def local_decoder(config: Config) -> Segmenter:
    """This process's copy of the backend for decoding, built once per worker process and config."""
    key = repr((config.backend, config.checkpoint, config.encoder, config.graphcut))
    if key not in _decoders:
        _decoders[key] = segmenter_for(config)
    return _decoders[key]


class RemoteEncoder:
    """A `Segmenter` that encodes on a Ray actor and decodes locally.

    Args:
      actor: a handle to an `EncoderActor` built from the same config as `decoder`.
      decoder: the local backend that decodes (its own encoder is never used).

    Attributes:
      encode_calls: encodes this instance asked for (the manifest reports it per recording).
    """

    def __init__(self, actor: Any, decoder: Segmenter) -> None:
        self.actor, self.decoder = actor, decoder
        self.name = decoder.name
        self.encode_calls = 0

    def encode(self, image: np.ndarray, frame_index: int = -1) -> Embedding:
        import ray

        embedding = ray.get(self.actor.encode.remote(image, frame_index))
        self.encode_calls += 1
        return embedding

    def decode(self, embedding: Embedding, prompt: Prompt, image: np.ndarray) -> MaskSet:
        return self.decoder.decode(embedding, prompt, image)
