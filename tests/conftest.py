"""Shared fixtures: random-weight SAM checkpoints in the official on-disk format, and an isolated cache."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def vit_t_state_dict() -> dict[str, torch.Tensor]:
    """A random-initialised MobileSAM (vit_t) state_dict, the same on every run."""
    from turncrop.models.weights import new_model

    torch.manual_seed(0)
    return new_model("vit_t").state_dict()


@pytest.fixture(scope="session")
def vit_t_checkpoint(vit_t_state_dict, tmp_path_factory) -> Path:
    """vit_t state_dict saved like the official file: torch.save(model.state_dict(), path) (~40 MB)."""
    path = tmp_path_factory.mktemp("ckpt") / "mobile_sam.pt"
    torch.save(vit_t_state_dict, path)
    return path


@pytest.fixture(scope="session")
def vit_b_checkpoint(tmp_path_factory) -> Path:
    """Random-initialised SAM vit_b state_dict in the official format (~375 MB, built once)."""
    from turncrop.models.weights import new_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "sam_vit_b_01ec64.pth"
    torch.save(new_model("vit_b").state_dict(), path)
    return path


@pytest.fixture
def turncrop_cache(tmp_path, monkeypatch) -> Path:
    """An empty weights cache (TURNCROP_CACHE) private to the test."""
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("TURNCROP_CACHE", str(cache))
    return cache
