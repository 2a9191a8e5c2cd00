"""Boxes from an Ultralytics YOLO detector, loaded from a local checkpoint and never from the network.

Ultralytics reads its offline switches when it is first imported, so `configure_ultralytics_offline()`
must run before anything imports it; `YoloDetector` does this itself. Any other turncrop code that
imports ultralytics should call it first too.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import supervision as sv
import torch

__all__ = ["YoloDetector", "configure_ultralytics_offline", "turncrop_cache_dir"]


def turncrop_cache_dir() -> Path:
    """turncrop's cache folder: `$TURNCROP_CACHE`, else `~/.cache/turncrop` (not created here)."""
    env = os.environ.get("TURNCROP_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "turncrop"


def configure_ultralytics_offline() -> dict[str, str]:
    """Set Ultralytics' environment for offline use, leaving every variable the user has set alone.

    - `YOLO_OFFLINE=1`: no DNS probe at import, no telemetry, no settings sync.
    - `YOLO_AUTOINSTALL=0`: never pip-install a missing requirement.
    - `YOLO_CONFIG_DIR=<turncrop cache>/ultralytics`: its settings file goes there, not to ~/.config.
    - `ULTRALYTICS_SAFE_LOAD=1`: checkpoints load with `torch.load(weights_only=True)` against
      Ultralytics' allow-list of model classes, so a checkpoint file cannot run code. Set it to 0 for
      checkpoints that use custom modules.

    Has no effect on a process that has already imported ultralytics (it reads these at import).

    Returns:
      The values in force for those four variables.
    """
    defaults = {
        "YOLO_OFFLINE": "1",
        "YOLO_AUTOINSTALL": "0",
        "YOLO_CONFIG_DIR": str(turncrop_cache_dir() / "ultralytics"),
        "ULTRALYTICS_SAFE_LOAD": "1",
    }
    for name, value in defaults.items():
        os.environ.setdefault(name, value)
    return {name: os.environ[name] for name in defaults}


@contextlib.contextmanager
def _keep_torch_threads() -> Iterator[None]:
    """Undo Ultralytics' process-wide thread changes: on CPU its device selection sets torch to
    min(8, cores - 1) threads (1 on a 2-core machine, slowing SAM 1.5-2x), and its import sets
    OMP_NUM_THREADS=1 for every child process."""
    threads = torch.get_num_threads()
    omp = os.environ.get("OMP_NUM_THREADS")
    try:
        yield
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        if omp is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = omp


def _load_yolo(checkpoint: Path) -> Any:
    configure_ultralytics_offline()
    with _keep_torch_threads():
        from ultralytics import YOLO

        return YOLO(str(checkpoint))


class YoloDetector:
    """Ultralytics YOLO boxes for one RGB frame at a time.

    Args:
      checkpoint: path of a local Ultralytics checkpoint (.pt, or an exported model file it can run).
        Must exist: it is never resolved by name or downloaded.
      classes: class ids to keep (ids of the checkpoint's `names`), or None for all.
      conf: minimum confidence of a returned box.
      imgsz: inference size (pixels of the longer side).
      device: torch device string ("cpu", "cuda:0"), or None for Ultralytics' choice (a GPU if any).

    Raises:
      FileNotFoundError: the checkpoint does not exist.
      ValueError: a requested class id is not in the checkpoint.
    """

    def __init__(
        self,
        checkpoint: Path,
        classes: list[int] | None = None,
        conf: float = 0.25,
        imgsz: int = 640,
        device: str | None = None,
    ) -> None:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"YOLO checkpoint not found: {path} (resolved to {path.resolve()}). turncrop never downloads "
                "weights: put the checkpoint file there or point the detector setting at an existing file."
            )
        self.checkpoint = path.resolve()
        self._model = _load_yolo(self.checkpoint)
        self.names: dict[int, str] = dict(self._model.names)
        if classes is not None:
            unknown = sorted(set(classes) - set(self.names))
            if unknown:
                raise ValueError(
                    f"class ids {unknown} are not in {self.checkpoint.name}, which has ids 0..{len(self.names) - 1}"
                )
        self.classes = None if classes is None else list(classes)
        self.conf = conf
        self.imgsz = imgsz
        self.device = device

    def detect(self, image_rgb: np.ndarray) -> sv.Detections:
        """Detect objects in one frame.

        Args:
          image_rgb: (H, W, 3) uint8 RGB frame (`Frame.image`).

        Returns:
          `sv.Detections` in frame pixels: xyxy (N, 4) float32, confidence (N,) float32, class_id (N,)
          int, `data["class_name"]` (N,); N may be 0.
        """
        image = np.asarray(image_rgb)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image_rgb must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
        bgr = np.ascontiguousarray(image[:, :, ::-1])  # Ultralytics takes numpy images as BGR
        with _keep_torch_threads():
            results = self._model.predict(
                bgr,
                conf=self.conf,
                imgsz=self.imgsz,
                classes=self.classes,
                device=self.device,
                verbose=False,
            )
        return sv.Detections.from_ultralytics(results[0])
