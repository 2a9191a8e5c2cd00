"""Backend names -> Segmenter instances."""
from __future__ import annotations

from pathlib import Path

from turncrop.models.base import Segmenter
from turncrop.models.graphcut import GraphCutOptions, GraphCutSegmenter
from turncrop.models.weights import cache_dir, resolve_checkpoint, weight_spec

BACKENDS: tuple[str, ...] = ("graphcut", "mobile_sam", "sam_vit_b", "sam_vit_l", "sam_vit_h")
DEFAULT_BACKEND = "graphcut"  # weight-free, always available


def resolve_backend(name: str, checkpoint: str | Path | None = None) -> str:
    """The concrete backend for `name`: "auto" is mobile_sam when a checkpoint is given or the MobileSAM file
    is in the cache, else the weight-free graphcut."""
    if name == "auto":
        cached = cache_dir() / weight_spec("mobile_sam").filename
        return "mobile_sam" if checkpoint is not None or cached.is_file() else DEFAULT_BACKEND
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; valid names: auto, {', '.join(BACKENDS)}")
    return name


def build_segmenter(
    name: str,
    checkpoint: str | Path | None = None,
    precision: str = "fp32",
    channels_last: bool = False,
    compile: bool = False,
    graphcut: GraphCutOptions | None = None,
    device: str = "cpu",
) -> Segmenter:
    """Build the backend `name` (one of BACKENDS or "auto").

    SAM backends load `checkpoint`, or the official file from the cache, and raise `WeightsError` (with the
    `turncrop weights fetch NAME` command to run) when it is missing. precision / channels_last / compile
    apply to SAM image encoders only, `device` to SAM models; `graphcut` tunes the weight-free backend.
    """
    backend = resolve_backend(name, checkpoint)
    if backend == "graphcut":
        if checkpoint is not None:
            raise ValueError("the graphcut backend is weight-free and takes no checkpoint")
        return GraphCutSegmenter(graphcut)

    from turncrop.models.sam import SamSegmenter

    path = resolve_checkpoint(backend, checkpoint)
    return SamSegmenter.from_checkpoint(
        weight_spec(backend).arch, path, precision=precision, channels_last=channels_last, compile=compile,
        name=backend, device=device,
    )
