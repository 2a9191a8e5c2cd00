"""load_config: presets, YAML files, `preset:` inheritance, dotted overrides, and the errors."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

import turncrop.stream.config as config_module
from turncrop.stream.config import (
    PRESETS,
    Config,
    ConfigError,
    EncoderOptions,
    PromptOptions,
    StageSection,
    load_config,
)
from turncrop.tracking.keyframes import KeyframeOptions
from turncrop.tracking.products import PipelineOptions
from turncrop.tracking.stage import StageOptions

REPO_CONFIGS = Path(__file__).resolve().parents[1] / "configs"


class _RepoResources:
    """Stands in for importlib.resources: presets read straight from the repository's configs/."""

    @staticmethod
    def files(package: str) -> Path:
        assert package == "turncrop.configs"
        return REPO_CONFIGS


@pytest.fixture
def presets(monkeypatch):
    """Preset lookup that does not depend on how the package is installed.

    Only the tests named `test_preset_loads_*` exercise the real packaged-resource lookup; the others
    test inheritance and merging, and use this so that a packaging fault shows up once, not everywhere.
    """
    monkeypatch.setattr(config_module, "resources", _RepoResources)


def _write(tmp_path: Path, text: str, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# -- presets --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PRESETS)
def test_preset_loads_through_the_installed_package(name):
    config = load_config(name)
    assert isinstance(config, Config)


def test_preset_files_are_in_the_repository():
    assert sorted(p.stem for p in REPO_CONFIGS.glob("*.yaml")) == sorted(PRESETS)


def test_default_preset_matches_the_dataclass_defaults(presets):
    assert load_config("default") == Config()
    assert load_config() == Config()
    assert load_config(None, {}) == Config()


def test_studio_preset(presets):
    c = load_config("studio")
    assert c.stage.warmup_frames == 12 and c.stage.enabled is True
    assert c.keyframes.max_interval == 10
    assert c.export.jpeg_quality == 97
    # Everything else comes from default.
    assert c.keyframes.min_agreement == Config().keyframes.min_agreement
    assert c.propagation == Config().propagation


def test_fast_preset(presets):
    c = load_config("fast")
    assert c.encoder == EncoderOptions(precision="bf16", channels_last=True, compile=False)
    assert c.keyframes.max_interval == 15
    assert c.keyframes.min_agreement == pytest.approx(0.8)
    assert c.keyframes.min_quality == Config().keyframes.min_quality  # inherited
    assert (c.propagation.preset, c.propagation.work_max_side) == ("ultrafast", 480)
    assert c.stage == Config().stage


# -- files, inheritance, overrides ----------------------------------------------------------------------


def test_yaml_file_without_preset_starts_from_the_dataclass_defaults(tmp_path):
    path = _write(tmp_path, "keyframes:\n  max_interval: 3\n")
    c = load_config(path)
    assert c.keyframes == dataclasses.replace(KeyframeOptions(), max_interval=3)
    assert c.stage == Config().stage
    assert load_config(str(path)) == c  # str and Path alike


def test_empty_yaml_file_is_the_defaults(tmp_path):
    assert load_config(_write(tmp_path, "# nothing here\n")) == Config()


def test_file_inherits_a_preset_and_merges_sections_key_by_key(tmp_path, presets):
    path = _write(tmp_path, "preset: studio\nkeyframes:\n  motion: 0.2\nstage:\n  warmup_frames: 20\n")
    c = load_config(path)
    assert c.keyframes.motion == pytest.approx(0.2)
    assert c.keyframes.max_interval == 10  # from studio, a sibling of the key the file set
    assert c.stage.warmup_frames == 20  # the file wins over studio's 12
    assert c.stage.enabled is True
    assert c.export.jpeg_quality == 97  # untouched studio section


def test_preset_of_a_preset(tmp_path, presets):
    # fast itself inherits default; a file on top of fast sees both.
    c = load_config(_write(tmp_path, "preset: fast\nexport:\n  fill: 0.5\n"))
    assert c.encoder.precision == "bf16"
    assert c.products == Config().products
    assert c.export.fill == pytest.approx(0.5)


def test_dotted_overrides_win_over_file_and_preset(tmp_path, presets):
    path = _write(tmp_path, "preset: fast\nkeyframes:\n  max_interval: 4\n")
    c = load_config(path, {"keyframes.max_interval": 6, "encoder.precision": "fp32", "backend": "graphcut",
                           "prompt.box": [1, 2, 30, 40], "prompt.frame": 7})
    assert c.keyframes.max_interval == 6
    assert c.keyframes.min_agreement == pytest.approx(0.8)  # sibling from fast kept
    assert c.encoder.precision == "fp32" and c.encoder.channels_last is True
    assert c.backend == "graphcut"
    assert c.prompt.box == (1.0, 2.0, 30.0, 40.0)
    assert c.prompt.frame == 7


def test_overrides_on_defaults_and_on_a_preset(presets):
    assert load_config(overrides={"stage.enabled": False}).stage.enabled is False
    assert load_config("studio", {"stage.warmup_frames": 3}).stage.warmup_frames == 3


def test_values_are_coerced_to_the_declared_types(tmp_path):
    path = _write(tmp_path, "keyframes:\n  motion: 1\nprompt:\n  box: [0, 0, 10, 20]\n"
                            "  points: [[1, 2], [3.5, 4]]\n  labels: [1, 0]\n  detector_classes: [0, 2]\n")
    c = load_config(path)
    assert type(c.keyframes.motion) is float and c.keyframes.motion == 1.0
    assert c.prompt.box == (0.0, 0.0, 10.0, 20.0) and all(type(v) is float for v in c.prompt.box)
    assert c.prompt.points == ((1.0, 2.0), (3.5, 4.0))
    assert c.prompt.labels == (1, 0)
    assert c.prompt.detector_classes == (0, 2)


def test_to_dict_round_trips_through_a_yaml_file(tmp_path):
    config = Config(
        backend="graphcut",
        prompt=PromptOptions(box=(1.0, 2.0, 3.0, 4.0), points=((5.0, 6.0),), labels=(1,), frame=2),
        stage=StageSection(enabled=False, warmup_frames=3),
        keyframes=KeyframeOptions(max_interval=2),
    )
    plain = json.loads(json.dumps(config.to_dict()))  # tuples -> lists, as a user would write them
    path = _write(tmp_path, yaml.safe_dump(plain))
    assert load_config(path) == config


def test_pipeline_options_round_trips_the_stage_section():
    stage = StageSection(enabled=False, warmup_frames=3, threshold=4.5, shadow_min=0.4, adapt_rate=0.1,
                         min_area=0.01, noise_floor=1.5)
    config = Config(stage=stage, keyframes=KeyframeOptions(max_interval=3))
    p = config.pipeline_options()
    assert isinstance(p, PipelineOptions)
    assert type(p.stage) is StageOptions  # not the config-only subclass
    for f in dataclasses.fields(StageOptions):
        assert getattr(p.stage, f.name) == getattr(stage, f.name), f.name
    assert p.use_stage is False
    assert p.keyframes is config.keyframes
    assert p.propagation is config.propagation
    assert p.products is config.products
    assert p.stills is config.stills
    assert Config().pipeline_options().use_stage is True
    assert Config().pipeline_options().stage == StageOptions()


# -- errors ---------------------------------------------------------------------------------------------


def test_unknown_top_level_key(tmp_path):
    path = _write(tmp_path, "bakend: graphcut\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert str(path) in msg and "unknown key bakend" in msg
    for valid in ("backend", "encoder", "stage", "keyframes", "export"):
        assert valid in msg


def test_unknown_nested_key_names_the_dotted_key_and_lists_the_section(tmp_path):
    path = _write(tmp_path, "stage:\n  warmup: 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert str(path) in msg and "stage.warmup " in msg
    for valid in ("warmup_frames", "noise_floor", "enabled"):
        assert valid in msg


def test_unknown_key_in_an_override_names_the_override():
    with pytest.raises(ConfigError, match=r"^override keyframes\.max_intervall: unknown key keyframes\.max_intervall "
                                          r".*max_interval"):
        load_config(overrides={"keyframes.max_intervall": 3})
    with pytest.raises(ConfigError, match=r"^--set keyframes\.max_intervall: unknown key"):
        load_config(overrides={"keyframes.max_intervall": 3},
                    names={"keyframes.max_intervall": "--set keyframes.max_intervall"})


@pytest.mark.parametrize(
    "text, key, expect",
    [
        ("keyframes:\n  motion: '0.2'\n", "keyframes.motion", "must be a number"),
        ("keyframes:\n  motion: true\n", "keyframes.motion", "must be a number"),
        ("keyframes:\n  max_interval: true\n", "keyframes.max_interval", "must be an integer"),
        ("keyframes:\n  max_interval: 8.0\n", "keyframes.max_interval", "must be an integer"),
        ("keyframes:\n  max_interval: '8'\n", "keyframes.max_interval", "must be an integer"),
        ("encoder:\n  compile: 1\n", "encoder.compile", "must be true or false"),
        ("encoder:\n  compile: 'yes'\n", "encoder.compile", "must be true or false"),
        ("encoder:\n  precision: 16\n", "encoder.precision", "must be a string"),
        ("prompt:\n  box: [0, 0, 10]\n", "prompt.box", "must have 4 items"),
        ("prompt:\n  box: [0, 0, 'a', 10]\n", "prompt.box[2]", "must be a number"),
        ("prompt:\n  labels: [1, 0.5]\n", "prompt.labels[1]", "must be an integer"),
        ("keyframes: 5\n", "keyframes", "must be a mapping"),
    ],
)
def test_wrong_types_name_the_file_and_the_key(tmp_path, text, key, expect):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: ")
    assert key in msg and expect in msg


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"prompt.box": "0,0,10,10"}, "prompt.box"),  # an optional field given the wrong type
        ({"export.size": "big"}, "export.size"),
        ({"checkpoint": 5}, "checkpoint"),
        ({"prompt.detector": ["a.pt"]}, "prompt.detector"),
    ],
)
def test_wrong_type_for_an_optional_field_is_a_config_error(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.").replace("[", r"\[")):
        load_config(overrides=overrides)


def test_none_is_accepted_only_where_declared_optional():
    assert load_config(overrides={"prompt.box": None, "export.size": None}).prompt.box is None
    with pytest.raises(ConfigError, match=r"keyframes\.motion must be a number"):
        load_config(overrides={"keyframes.motion": None})


@pytest.mark.parametrize(
    "overrides, words",
    [
        ({"keyframes.max_interval": 0}, ["keyframes", "max_interval", ">= 1"]),
        ({"keyframes.min_quality": 1.5}, ["keyframes", "min_quality", "[0, 1]"]),
        ({"stage.shadow_min": 1.0}, ["stage", "shadow_min"]),
        ({"stage.warmup_frames": 0}, ["stage", "warmup_frames"]),
        ({"propagation.preset": "slow"}, ["propagation", "preset"]),
        ({"graphcut.fit_iterations": 0}, ["graphcut", "fit_iterations"]),
        ({"products.min_frames": 0}, ["products", "min_frames"]),
        ({"export.fill": 2.0}, ["export", "fill"]),
        ({"prompt.frame": -1}, ["prompt", "frame"]),
        ({"prompt.detector_conf": 1.0}, ["prompt", "detector_conf"]),
        ({"encoder.precision": "fp16"}, ["encoder", "precision", "fp16"]),
        ({"encoder.device": "tpu"}, ["encoder", "device", "tpu"]),
        ({"live.working_size": 10}, ["live", "working_size"]),
        ({"backend": "sam_vit_x"}, ["backend", "sam_vit_x", "graphcut"]),
    ],
)
def test_out_of_range_values_are_config_errors_naming_the_key(overrides, words):
    with pytest.raises(ConfigError) as info:
        load_config(overrides=overrides)
    msg = str(info.value)
    assert msg.startswith(f"override {next(iter(overrides))}: ")  # the value came from there, not the defaults
    for word in words:
        assert word in msg, (word, msg)
    assert isinstance(info.value, ValueError)  # callers catching ValueError still catch it


def test_out_of_range_value_in_a_file_names_the_file(tmp_path):
    path = _write(tmp_path, "keyframes:\n  min_agreement: 2\n")
    with pytest.raises(ConfigError, match=rf"^{path}: keyframes: keyframes\.min_agreement must be in \[0, 1\]"):
        load_config(path)


@pytest.mark.parametrize("box", [[10, 0, 10, 20], [10, 0, 5, 20], [0, 20, 10, 20], [0, 20, 10, 5]])
def test_degenerate_box_is_rejected(tmp_path, box):
    path = _write(tmp_path, f"prompt:\n  box: {box}\n")
    with pytest.raises(ConfigError, match=rf"{path}: prompt: box must be x0,y0,x1,y1 with x1 > x0 and y1 > y0"):
        load_config(path)


def test_points_and_labels_must_agree():
    with pytest.raises(ConfigError, match="2 points but 1 labels"):
        load_config(overrides={"prompt.points": [[1, 2], [3, 4]], "prompt.labels": [1]})


def test_bad_yaml(tmp_path):
    path = _write(tmp_path, "keyframes:\n  max_interval: [1, 2\n")
    with pytest.raises(ConfigError, match=rf"^{path}: not valid YAML"):
        load_config(path)


def test_top_level_must_be_a_mapping(tmp_path):
    path = _write(tmp_path, "- 1\n- 2\n")
    with pytest.raises(ConfigError, match=rf"^{path}: the top level must be a mapping, got list"):
        load_config(path)


def test_missing_file_names_it_and_the_presets(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert str(path) in msg and "does not exist" in msg
    for name in PRESETS:
        assert name in msg


def test_a_directory_is_not_a_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path)


def test_unknown_preset_in_a_file(tmp_path):
    path = _write(tmp_path, "preset: turbo\n")
    with pytest.raises(ConfigError, match=rf"^{path}: preset must be one of default, studio, fast, got 'turbo'"):
        load_config(path)


def test_section_left_empty_in_yaml_is_reported_not_crashed(tmp_path):
    # `prompt:` with everything under it commented out is None in YAML.
    path = _write(tmp_path, "prompt:\n  # box: [0, 0, 10, 10]\n")
    with pytest.raises(ConfigError, match=rf"^{path}: prompt must be a mapping, got None"):
        load_config(path)


def test_renamed_keys_of_old_files_and_recordings_still_load(tmp_path, caplog):
    path = tmp_path / "old.yaml"
    path.write_text("products:\n  same_product_iou: 0.4\n")
    with caplog.at_level("WARNING"):
        config = load_config(path)
    assert config.products.same_product_overlap == 0.4
    assert "products.same_product_iou is now products.same_product_overlap" in caplog.text
    assert load_config(None, {"products": {"same_product_iou": 0.2}}).products.same_product_overlap == 0.2
