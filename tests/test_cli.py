"""The `turncrop` command as a user meets it: exit codes, error messages, outputs."""
from __future__ import annotations

import json

import cv2
import pytest
from data_paths import RECORDINGS

from turncrop.stream.cli import main, parse_box
from turncrop.stream.sources import open_source


@pytest.fixture(scope="module")
def tiny_session(tmp_path_factory):
    """Every third frame of the sample session at half size: empty stage, the product, empty stage."""
    folder = tmp_path_factory.mktemp("tiny")
    with open_source(RECORDINGS / "mic_turntable" / "video.mp4") as source:
        for frame in source:
            if frame.index % 3 == 0:
                small = cv2.resize(frame.image, (frame.size[1] // 2, frame.size[0] // 2), interpolation=cv2.INTER_AREA)
                cv2.imwrite(str(folder / f"{frame.index:05d}.png"), small[..., ::-1])
    return folder


def test_run_exports_one_product_and_a_manifest(tiny_session, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", str(tiny_session), "--out", str(out), "--backend", "graphcut", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "product-001: ok" in printed and "encoder calls" in printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert [p["product_id"] for p in manifest["products"]] == ["product-001"]
    assert {"product-001.png", "product-001.jpg", "product-001.json"} <= {p.name for p in out.iterdir()}
    assert manifest["backend"] == "graphcut" and manifest["encoder_calls"] >= 1


def test_run_shows_progress_against_the_sources_frame_count(tiny_session, tmp_path, capsys):
    frames = len(list(tiny_session.glob("*.png")))
    assert main(["run", str(tiny_session), "--out", str(tmp_path / "out"), "--backend", "graphcut"]) == 0
    bar = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert f"{frames}/{frames}" in bar and "100%" in bar, bar  # a total, so tqdm shows the share done and an ETA


@pytest.mark.parametrize("argv, message", [
    (["run", "/no/such/video.mp4"], "no such file"),
    (["run", __file__], "not a readable video"),
    (["run", "{session}", "--backend", "mobile_sam"], "turncrop weights fetch mobile_sam"),
    (["run", "{session}", "--config", "{bad_config}"], "unknown key stage.bogus"),
])
def test_bad_input_gets_a_named_error_and_exit_2(argv, message, tiny_session, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TURNCROP_CACHE", str(tmp_path / "empty-cache"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("stage: {bogus: 1}\n")
    argv = [a.format(session=tiny_session, bad_config=bad) for a in argv] + ["--out", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("turncrop: error:") and message in err


def test_box_parsing():
    assert parse_box("1,2,30,40") == ((1.0, 2.0, 30.0, 40.0), None)
    assert parse_box("1,2,30,40@17") == ((1.0, 2.0, 30.0, 40.0), 17)
    for bad in ("1,2,3", "a,b,c,d", "1,2,3,4@x"):
        with pytest.raises(Exception, match="--box"):
            parse_box(bad)


def test_eval_writes_the_json_report(tiny_session, tmp_path):
    gt = tmp_path / "gt"
    gt.mkdir()
    for name in sorted(p.name for p in tiny_session.iterdir()):
        mask = cv2.imread(str(RECORDINGS / "mic_turntable" / "gt" / name), cv2.IMREAD_GRAYSCALE)
        small = cv2.resize(mask, (mask.shape[1] // 2, mask.shape[0] // 2), interpolation=cv2.INTER_NEAREST)
        cv2.imwrite(str(gt / name), small)
    report_path = tmp_path / "report.json"
    assert main(["eval", str(tiny_session), "--gt", str(gt), "--backend", "graphcut", "--json", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert report["frames"] == len(list(tiny_session.iterdir()))
    assert report["products"] == 1 and report["J_mean"] > 0.85


def test_a_corrupt_frame_mid_product_keeps_what_was_produced(tiny_session, tmp_path, capsys):
    frames = tmp_path / "frames"
    frames.mkdir()
    names = sorted(p.name for p in tiny_session.iterdir())
    for name in names:
        (frames / name).write_bytes((tiny_session / name).read_bytes())
    broken = names[25]  # the product has been on the stage for a while here
    (frames / broken).write_bytes(b"not a png")
    out = tmp_path / "out"
    assert main(["run", str(frames), "--out", str(out), "--backend", "graphcut", "--no-progress"]) == 1
    assert broken in capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    assert broken in manifest["error"]
    assert [p["product_id"] for p in manifest["products"]] == ["product-001"]
    assert (out / "product-001.json").is_file() and (out / "product-001.jpg").is_file()
