"""Checkpoint table, download, verification and strict loading (no network: file:// URLs stand in)."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch

from turncrop.models import weights
from turncrop.models.weights import WeightsError


def test_table_lists_the_four_official_checkpoints():
    specs = {s.name: s for s in weights.list_weights()}
    assert {n: s.arch for n, s in specs.items()} == {
        "mobile_sam": "vit_t", "sam_vit_b": "vit_b", "sam_vit_l": "vit_l", "sam_vit_h": "vit_h",
    }
    for spec in specs.values():
        assert re.fullmatch(r"[0-9a-f]{64}", spec.sha256), spec.name
        assert spec.url.startswith("https://") and spec.size > 10_000_000
    assert specs["sam_vit_h"].filename == "sam_vit_h_4b8939.pth"
    assert specs["mobile_sam"].url.startswith("https://github.com/ChaoningZhang/MobileSAM/")
    assert len({s.sha256 for s in specs.values()}) == 4


def test_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("TURNCROP_CACHE", str(tmp_path / "c"))
    assert weights.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("TURNCROP_CACHE")
    assert weights.cache_dir() == Path.home() / ".cache" / "turncrop"


def test_vit_t_checkpoint_loads_strictly(vit_t_checkpoint, vit_t_state_dict):
    model = weights.load_state_dict(vit_t_checkpoint, "vit_t")
    loaded = model.state_dict()
    assert loaded.keys() == vit_t_state_dict.keys()
    assert all(torch.equal(loaded[k], vit_t_state_dict[k]) for k in loaded)
    assert not model.training


def test_vit_b_checkpoint_loads_and_arch_is_detected(vit_b_checkpoint):
    model = weights.load_state_dict(vit_b_checkpoint, "vit_b")
    assert type(model.image_encoder).__module__.startswith("segment_anything")
    assert model.image_encoder.patch_embed.proj.weight.shape[0] == 768


def test_wrong_architecture_is_named(vit_t_checkpoint, vit_b_checkpoint):
    with pytest.raises(WeightsError, match="looks like vit_t, expected vit_b"):
        weights.load_state_dict(vit_t_checkpoint, "vit_b")
    with pytest.raises(WeightsError, match="looks like vit_b, expected vit_h"):
        weights.load_state_dict(vit_b_checkpoint, "vit_h")


def test_pickled_whole_model_is_refused(tmp_path):
    model = weights.new_model("vit_t")
    path = tmp_path / "whole.pt"
    torch.save(model, path)
    with pytest.raises(WeightsError, match=r"not a plain state_dict.*weights_only=True.*torch.save\(model\)") as e:
        weights.load_state_dict(path, "vit_t")
    assert str(path) in str(e.value)


def test_truncated_and_garbage_files_are_reported(vit_t_checkpoint, tmp_path):
    truncated = tmp_path / "truncated.pt"
    data = vit_t_checkpoint.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="truncated or corrupt") as e:
        weights.read_state_dict(truncated)
    assert str(truncated) in str(e.value)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint" * 100)
    with pytest.raises(WeightsError, match="corrupt"):
        weights.read_state_dict(garbage)


def test_non_state_dicts_and_foreign_state_dicts_are_refused(tmp_path, vit_t_state_dict):
    a_list = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], a_list)
    with pytest.raises(WeightsError, match="not a state_dict of tensors"):
        weights.read_state_dict(a_list)
    nested = tmp_path / "nested.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "epoch": 3}, nested)
    with pytest.raises(WeightsError, match="keys model, epoch"):
        weights.read_state_dict(nested)
    foreign = tmp_path / "foreign.pt"
    torch.save({"backbone.conv1.weight": torch.zeros(8, 3, 3, 3)}, foreign)
    with pytest.raises(WeightsError, match="not a SAM / MobileSAM checkpoint"):
        weights.load_state_dict(foreign, "vit_t")
    prefixed = tmp_path / "prefixed.pt"
    torch.save({"module." + k: v for k, v in vit_t_state_dict.items()}, prefixed)
    with pytest.raises(WeightsError, match="prefix"):
        weights.load_state_dict(prefixed, "vit_t")
    incomplete = tmp_path / "incomplete.pt"
    torch.save({k: v for k, v in vit_t_state_dict.items() if not k.startswith("mask_decoder.iou")}, incomplete)
    with pytest.raises(WeightsError, match="does not fit the vit_t model.*Missing key"):
        weights.load_state_dict(incomplete, "vit_t")


def test_verify_reports_checksum_mismatch_against_official_name(vit_t_checkpoint):
    with pytest.raises(WeightsError, match="sha256 checksum mismatch for mobile_sam") as e:
        weights.verify(vit_t_checkpoint, "mobile_sam")
    assert weights.WEIGHTS["mobile_sam"].sha256 in str(e.value)
    assert "turncrop weights fetch mobile_sam" in str(e.value)


def test_verify_without_name_checks_the_state_dict_only(vit_t_checkpoint):
    info = weights.verify(vit_t_checkpoint)
    assert info.arch == "vit_t" and info.name is None
    assert info.sha256 == weights.sha256_file(vit_t_checkpoint)
    assert info.size == vit_t_checkpoint.stat().st_size


def test_verify_with_matching_checksum_still_checks_arch(vit_t_checkpoint, monkeypatch):
    digest, size = weights.sha256_file(vit_t_checkpoint), vit_t_checkpoint.stat().st_size
    spec = weights.WEIGHTS["mobile_sam"]
    monkeypatch.setitem(weights.WEIGHTS, "mobile_sam", dataclasses.replace(spec, sha256=digest, size=size))
    assert weights.verify(vit_t_checkpoint, "mobile_sam").name == "mobile_sam"
    spec_b = weights.WEIGHTS["sam_vit_b"]
    monkeypatch.setitem(weights.WEIGHTS, "sam_vit_b", dataclasses.replace(spec_b, sha256=digest, size=size))
    with pytest.raises(WeightsError, match="looks like vit_t, expected vit_b"):
        weights.verify(vit_t_checkpoint, "sam_vit_b")


def test_missing_files_give_clear_errors(turncrop_cache, tmp_path):
    missing = tmp_path / "nope.pt"
    for call in (lambda: weights.read_state_dict(missing), lambda: weights.verify(missing)):
        with pytest.raises(WeightsError, match="checkpoint file not found: .*nope.pt"):
            call()
    with pytest.raises(WeightsError) as e:
        weights.resolve_checkpoint("sam_vit_b")
    text = str(e.value)
    assert str(turncrop_cache / "sam_vit_b_01ec64.pth") in text
    assert "`turncrop weights fetch sam_vit_b`" in text and "weight-free backend 'graphcut'" in text
    with pytest.raises(WeightsError, match="given checkpoint not found: .*nope.pt.*turncrop weights fetch mobile_sam"):
        weights.resolve_checkpoint("mobile_sam", missing)
    with pytest.raises(WeightsError, match="unknown checkpoint name 'sam_vit_x'"):
        weights.resolve_checkpoint("sam_vit_x")


def test_resolve_checkpoint_finds_cached_and_explicit_files(turncrop_cache, vit_t_checkpoint):
    cached = turncrop_cache / "mobile_sam.pt"
    cached.write_bytes(b"x")
    assert weights.resolve_checkpoint("mobile_sam") == cached
    assert weights.resolve_checkpoint("mobile_sam", vit_t_checkpoint) == vit_t_checkpoint


def _serve_locally(monkeypatch, source, sha256=None):
    """Point the mobile_sam entry at a local file:// URL (no network in tests)."""
    spec = weights.WEIGHTS["mobile_sam"]
    fake = dataclasses.replace(
        spec, url=source.as_uri(), sha256=sha256 or weights.sha256_file(source), size=source.stat().st_size
    )
    monkeypatch.setitem(weights.WEIGHTS, "mobile_sam", fake)
    return fake


def test_fetch_downloads_verifies_and_renames(monkeypatch, tmp_path, vit_t_checkpoint, turncrop_cache):
    fake = _serve_locally(monkeypatch, vit_t_checkpoint)
    got = weights.fetch("mobile_sam", progress=False)
    assert got == turncrop_cache / fake.filename
    assert weights.sha256_file(got) == fake.sha256
    assert [p.name for p in turncrop_cache.iterdir()] == [fake.filename]  # no .part left behind
    # Already present and valid: kept without downloading (the URL is now unreachable).
    monkeypatch.setitem(weights.WEIGHTS, "mobile_sam", dataclasses.replace(fake, url=(tmp_path / "gone").as_uri()))
    assert weights.fetch("mobile_sam", progress=False) == got


def test_fetch_checksum_mismatch_leaves_nothing(monkeypatch, tmp_path, vit_t_checkpoint):
    _serve_locally(monkeypatch, vit_t_checkpoint, sha256="0" * 64)
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(WeightsError, match="sha256 is [0-9a-f]{64}, expected 0{64}.*not installed"):
        weights.fetch("mobile_sam", dest=dest, progress=False)
    assert list(dest.iterdir()) == []


def test_fetch_network_error_is_clear(monkeypatch, tmp_path):
    spec = weights.WEIGHTS["mobile_sam"]
    monkeypatch.setitem(weights.WEIGHTS, "mobile_sam", dataclasses.replace(spec, url="http://127.0.0.1:9/x.pt"))
    with pytest.raises(WeightsError, match=r"could not download mobile_sam from http://127.0.0.1:9/x.pt") as e:
        weights.fetch("mobile_sam", dest=tmp_path / "m.pt", progress=False)
    assert str(tmp_path / "m.pt") in str(e.value)
    assert list(tmp_path.iterdir()) == []
