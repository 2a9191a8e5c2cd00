"""YoloDetector with a random-weight YOLOv8n checkpoint built offline; the network is blocked throughout."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import supervision as sv
import torch

from turncrop.models.detector import YoloDetector, configure_ultralytics_offline, turncrop_cache_dir

OFFLINE_VARS = ("YOLO_OFFLINE", "YOLO_AUTOINSTALL", "YOLO_CONFIG_DIR", "ULTRALYTICS_SAFE_LOAD")


class NetworkTouched(AssertionError):
    pass


def _refuse(*args, **kwargs):
    raise NetworkTouched(f"network access attempted: {args[1:] if len(args) > 1 else args}")


def block_network(mp: pytest.MonkeyPatch) -> None:
    mp.setattr(socket.socket, "connect", _refuse)
    mp.setattr(socket.socket, "connect_ex", _refuse)
    mp.setattr(socket, "getaddrinfo", _refuse)
    mp.setattr(socket, "create_connection", _refuse)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight YOLOv8n (80 COCO classes) saved as an Ultralytics .pt, built without the network."""
    root = tmp_path_factory.mktemp("yolo")
    with pytest.MonkeyPatch.context() as mp:
        block_network(mp)
        mp.setenv("TURNCROP_CACHE", str(root / "cache"))
        for name in OFFLINE_VARS + ("OMP_NUM_THREADS",):  # restored on exit; ultralytics' import sets OMP
            mp.delenv(name, raising=False)
        configure_ultralytics_offline()
        threads = torch.get_num_threads()
        from ultralytics import YOLO

        path = root / "yolov8n-random.pt"
        torch.manual_seed(0)  # deterministic random weights, so the tests below see the same boxes each run
        YOLO("yolov8n.yaml").save(path)  # the architecture YAML ships with ultralytics
        torch.set_num_threads(threads)
    return path


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    block_network(monkeypatch)


@pytest.fixture
def threads_sentinel():
    """Run the test with an unusual torch thread count, restore the real one afterwards."""
    from ultralytics.utils import NUM_THREADS

    before = torch.get_num_threads()
    sentinel = 3 if NUM_THREADS != 3 else 2
    torch.set_num_threads(sentinel)
    yield sentinel
    torch.set_num_threads(before)


def test_detect_returns_boxes_in_frame_pixels_and_restores_threads(checkpoint, threads_sentinel):
    detector = YoloDetector(checkpoint, conf=0.0001, imgsz=320)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (240, 360, 3), dtype=np.uint8)
    det = detector.detect(image)
    assert torch.get_num_threads() == threads_sentinel
    assert isinstance(det, sv.Detections)
    n = len(det)
    assert det.xyxy.shape == (n, 4) and det.xyxy.dtype == np.float32
    assert det.confidence.shape == (n,) and det.class_id.shape == (n,)
    assert len(det.data["class_name"]) == n
    # random weights: boxes are noise (a very low `conf` lets some through), but they must be in this
    # frame's pixels, above `conf` and named from the checkpoint
    assert n > 0
    assert (det.confidence >= 0.0001).all()
    assert (det.xyxy[:, [0, 2]] >= 0).all() and (det.xyxy[:, [0, 2]] <= 360).all()
    assert (det.xyxy[:, [1, 3]] >= 0).all() and (det.xyxy[:, [1, 3]] <= 240).all()
    assert set(det.data["class_name"]) <= set(detector.names.values())


def test_class_filter_and_unknown_class(checkpoint):
    detector = YoloDetector(checkpoint, classes=[2, 39], conf=0.0001, imgsz=320)
    calls = []
    real_predict = detector._model.predict

    def spy(source, **kwargs):
        calls.append(kwargs)
        return real_predict(source, **kwargs)

    detector._model.predict = spy
    image = np.random.default_rng(1).integers(0, 256, (320, 320, 3), dtype=np.uint8)
    det = detector.detect(image)
    assert calls[0]["classes"] == [2, 39]
    assert set(det.class_id.tolist()) <= {2, 39}
    with pytest.raises(ValueError, match=r"\[80\]"):
        YoloDetector(checkpoint, classes=[0, 80])


def test_model_receives_bgr(checkpoint):
    detector = YoloDetector(checkpoint, imgsz=160)
    seen = []
    real_predict = detector._model.predict

    def spy(source, **kwargs):
        seen.append(source.copy())
        return real_predict(source, **kwargs)

    detector._model.predict = spy
    image = np.zeros((64, 96, 3), dtype=np.uint8)
    image[..., 0] = 200  # pure red in RGB
    detector.detect(image)
    assert seen[0][..., 2].min() == 200 and seen[0][..., :2].max() == 0


def test_missing_checkpoint_is_a_clear_error_and_never_downloads(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="never downloads"):
        YoloDetector(Path("yolov8n.pt"))  # a bare name Ultralytics would otherwise fetch
    with pytest.raises(FileNotFoundError, match="not found"):
        YoloDetector(tmp_path / "models" / "detector.pt")
    with pytest.raises(FileNotFoundError):
        YoloDetector(tmp_path)  # a folder is not a checkpoint


def test_bad_image_is_rejected(checkpoint):
    detector = YoloDetector(checkpoint, imgsz=160)
    with pytest.raises(ValueError, match="uint8 RGB"):
        detector.detect(np.zeros((64, 64), dtype=np.uint8))
    with pytest.raises(ValueError, match="uint8 RGB"):
        detector.detect(np.zeros((64, 64, 3), dtype=np.float32))


def test_offline_configuration_respects_user_settings(tmp_path, monkeypatch):
    for name in OFFLINE_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TURNCROP_CACHE", str(tmp_path / "tc"))
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path / "mine"))
    monkeypatch.setenv("ULTRALYTICS_SAFE_LOAD", "0")
    values = configure_ultralytics_offline()
    assert values == {
        "YOLO_OFFLINE": "1",
        "YOLO_AUTOINSTALL": "0",
        "YOLO_CONFIG_DIR": str(tmp_path / "mine"),
        "ULTRALYTICS_SAFE_LOAD": "0",
    }
    monkeypatch.delenv("YOLO_CONFIG_DIR")
    assert configure_ultralytics_offline()["YOLO_CONFIG_DIR"] == str(tmp_path / "tc" / "ultralytics")
    monkeypatch.delenv("TURNCROP_CACHE")
    assert turncrop_cache_dir() == Path.home() / ".cache" / "turncrop"


def test_fresh_process_configures_before_import(checkpoint, tmp_path):
    """In a new interpreter, the first YoloDetector imports Ultralytics with its settings under the turncrop
    cache, leaves OMP_NUM_THREADS and torch's thread count as they were, and touches no network."""
    script = textwrap.dedent(
        f"""
        import json, os, socket
        def refuse(*a, **k):
            raise RuntimeError("network access attempted")
        socket.socket.connect = refuse
        socket.getaddrinfo = refuse
        import torch
        torch.set_num_threads(2)
        from turncrop.models.detector import YoloDetector
        YoloDetector({str(checkpoint)!r})
        print(json.dumps({{"threads": torch.get_num_threads(), "omp": os.environ.get("OMP_NUM_THREADS")}}))
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in OFFLINE_VARS + ("TURNCROP_CACHE", "OMP_NUM_THREADS")}
    env.pop("XDG_CONFIG_HOME", None)
    env["HOME"] = str(tmp_path)
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["threads"] == 2 and report["omp"] is None
    assert (tmp_path / ".cache" / "turncrop" / "ultralytics" / "Ultralytics" / "settings.json").is_file()
    assert not (tmp_path / ".config" / "Ultralytics").exists()
