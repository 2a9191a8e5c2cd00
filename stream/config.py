"""Run configuration: YAML presets in `configs/`, validated in one place.

Each section maps onto the options dataclass of the layer that uses it; this module only checks that
keys exist and values have the right type, then lets the dataclass check ranges. Every error names the
file and the dotted key.
"""
from __future__ import annotations

import dataclasses
import logging
import re
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Mapping

import cv2
import numpy as np
import yaml

from turncrop.models.graphcut import GraphCutOptions
from turncrop.stream.export import ExportOptions
from turncrop.tracking.intruders import IntruderOptions
from turncrop.tracking.keyframes import KeyframeOptions
from turncrop.tracking.products import PipelineOptions, ProductOptions
from turncrop.tracking.propagation import PropagationOptions
from turncrop.tracking.stage import StageOptions
from turncrop.tracking.stills import StillWeights

PRESETS = ("default", "studio", "fast")
BACKEND_NAMES = ("auto", "graphcut", "mobile_sam", "sam_vit_b", "sam_vit_l", "sam_vit_h")

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A configuration file or value is invalid; the message names the file and key."""


@dataclass(frozen=True)
class EncoderOptions:
    """SAM models only. device: auto (CUDA when torch sees a GPU), cpu, cuda or cuda:N."""

    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"encoder.precision must be 'fp32' or 'bf16', got {self.precision!r}")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", str(self.device)):
            raise ValueError(f"encoder.device must be auto, cpu, cuda or cuda:N, got {self.device!r}")


def read_prompt_mask(path: str | Path) -> np.ndarray:
    """A mask image (8-bit or 1-bit PNG, BMP, TIFF...: anything OpenCV reads) -> (H, W) bool, True where > 127.

    Raises ValueError naming the file when it does not exist, cannot be read or holds no object pixel.
    """
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"mask {p} does not exist")
    image = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise ValueError(f"mask {p} cannot be read as an image (PNG, BMP, TIFF, JPEG)")
    mask = image > 127
    if not mask.any():
        raise ValueError(f"mask {p} is empty: no object pixel (value above 127) in its {image.shape[1]}x"
                         f"{image.shape[0]} px")
    return mask


@dataclass(frozen=True)
class PromptOptions:
    """The initial prompt and the automatic ones.

    box: [x0, y0, x1, y1] pixels on frame `frame`; points: [[x, y], ...] with `labels` (1 product, 0 not);
    mask: path of a mask image of the product on frame `frame`, the size of the source's frames
    (`read_prompt_mask`). Any of the three combine.
    detector: path to an Ultralytics YOLO checkpoint used to find products when no stage model is learnt.
    """

    box: tuple[float, float, float, float] | None = None
    points: tuple[tuple[float, float], ...] | None = None
    labels: tuple[int, ...] | None = None
    mask: str | None = None
    frame: int = 0
    detector: str | None = None
    detector_classes: tuple[int, ...] | None = None
    detector_conf: float = 0.25

    def __post_init__(self) -> None:
        if self.box is not None and not (self.box[2] > self.box[0] and self.box[3] > self.box[1]):
            raise ValueError(f"box must be x0,y0,x1,y1 with x1 > x0 and y1 > y0, got {list(self.box)}")
        if self.points is not None and self.labels is not None and len(self.points) != len(self.labels):
            raise ValueError(f"{len(self.points)} points but {len(self.labels)} labels")
        if self.labels is not None and not set(self.labels) <= {0, 1}:
            raise ValueError(f"point labels must be 1 (product) or 0 (not product), got {list(self.labels)}")
        if self.points is not None and self.box is None and self.mask is None and 1 not in (self.labels or (1,)):
            raise ValueError("points alone need at least one product point (label 1); give a box or mask too")
        if self.mask is not None:
            read_prompt_mask(self.mask)
        if self.frame < 0:
            raise ValueError(f"frame must be >= 0, got {self.frame}")
        if not 0.0 < self.detector_conf < 1.0:
            raise ValueError(f"detector_conf must be in (0, 1), got {self.detector_conf}")


@dataclass(frozen=True)
class StageSection(StageOptions):
    enabled: bool = True  # learn the empty stage from the frames before the first product


@dataclass(frozen=True)
class SpinOptions:
    """360° spin sets (see `turncrop.stream.spin_export`).

    views: views per turn, 0 = off (typical: 24, 36, 72).  max_crops: most frames of one product whose
    crops are kept for it (memory: about max_crops x crop px x 5 bytes: RGB, mask, alpha; beyond it only every 2nd, 4th, ...
    frame keeps its crop).  size: JPEG side in px, or None for the crop's own resolution.
    """

    views: int = 0
    max_crops: int = 180
    size: int | None = None

    def __post_init__(self) -> None:
        if self.views != 0 and not 4 <= self.views <= 360:
            raise ValueError(f"views must be 0 (off) or in [4, 360], got {self.views}")
        if self.max_crops < max(2 * self.views, 16):
            raise ValueError(f"max_crops must be >= max(2 x views, 16) = {max(2 * self.views, 16)}, "
                             f"got {self.max_crops}")
        if self.size is not None and not 64 <= self.size <= 8192:
            raise ValueError(f"size must be None or in [64, 8192] px, got {self.size}")


@dataclass(frozen=True)
class LiveOptions:
    """Live streams (`turncrop live`, `turncrop serve`, and replays of their recordings).

    working_size: frames are segmented with their longest side at most this many pixels, so the per-frame
      path fits a camera's frame period; None keeps the camera's size. Stills are cut from the camera's
      frames at full size.
    """

    working_size: int | None = 640

    def __post_init__(self) -> None:
        if self.working_size is not None and not 64 <= self.working_size <= 8192:
            raise ValueError(f"working_size must be None or in [64, 8192] px, got {self.working_size}")


@dataclass(frozen=True)
class ServeOptions:
    """`turncrop serve` (see `turncrop.stream.serve`).

    preview_max_side: longest side in px of the annotated preview sent back (never above the camera's).
    max_body_bytes: largest request body accepted (an SDP offer is a few kB); larger ones get a 400.
    stats_every: seconds between statistics messages on a session's data channel.
    idle_timeout: seconds without a camera frame after which a peer counts as gone (its session ends and
      the product on stage is exported).
    max_sessions: browser sessions running at once (each has its own pipeline and encoder process); an
      offer beyond them is refused with 503 until one ends.
    """

    preview_max_side: int = 640
    max_body_bytes: int = 65536
    stats_every: float = 1.0
    idle_timeout: float = 10.0
    max_sessions: int = 4

    def __post_init__(self) -> None:
        if not 64 <= self.preview_max_side <= 4096:
            raise ValueError(f"preview_max_side must be in [64, 4096] px, got {self.preview_max_side}")
        if not 1024 <= self.max_body_bytes <= 16 * 1024 * 1024:
            raise ValueError(f"max_body_bytes must be in [1024, 16777216], got {self.max_body_bytes}")
        if not 0.05 <= self.stats_every <= 60.0:
            raise ValueError(f"stats_every must be in [0.05, 60] s, got {self.stats_every}")
        if not 0.5 <= self.idle_timeout <= 3600.0:
            raise ValueError(f"idle_timeout must be in [0.5, 3600] s, got {self.idle_timeout}")
        if self.max_sessions < 1:
            raise ValueError(f"max_sessions must be >= 1, got {self.max_sessions}")


@dataclass(frozen=True)
class Config:
    backend: str = "auto"
    checkpoint: str | None = None
    encoder: EncoderOptions = field(default_factory=EncoderOptions)
    graphcut: GraphCutOptions = field(default_factory=GraphCutOptions)
    prompt: PromptOptions = field(default_factory=PromptOptions)
    stage: StageSection = field(default_factory=StageSection)
    keyframes: KeyframeOptions = field(default_factory=KeyframeOptions)
    propagation: PropagationOptions = field(default_factory=PropagationOptions)
    products: ProductOptions = field(default_factory=ProductOptions)
    intruders: IntruderOptions = field(default_factory=IntruderOptions)
    stills: StillWeights = field(default_factory=StillWeights)
    export: ExportOptions = field(default_factory=ExportOptions)
    spin: SpinOptions = field(default_factory=SpinOptions)
    live: LiveOptions = field(default_factory=LiveOptions)
    serve: ServeOptions = field(default_factory=ServeOptions)

    def __post_init__(self) -> None:
        if self.backend not in BACKEND_NAMES:
            raise ValueError(f"backend must be one of {', '.join(BACKEND_NAMES)}, got {self.backend!r}")

    def pipeline_options(self) -> PipelineOptions:
        stage = {f.name: getattr(self.stage, f.name) for f in dataclasses.fields(StageOptions)}
        return PipelineOptions(
            stage=StageOptions(**stage), use_stage=self.stage.enabled, keyframes=self.keyframes,
            propagation=self.propagation, products=self.products, stills=self.stills, intruders=self.intruders,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None,
                names: Mapping[str, str] | None = None) -> Config:
    """Read a preset name ('default', 'studio', 'fast') or a YAML file, apply dotted `overrides`.

    A file may start from a preset with `preset: NAME`; its own keys then replace the preset's.
    `names`: how the user gave each override (`{"prompt.box": "--box"}`): an error about a key an
    override set names that, not the file (others read "override KEY").
    """
    data: dict[str, Any] = {}
    where = "defaults"
    if path is not None:
        data, where = _read(path)
    for key, value in (overrides or {}).items():
        _set_dotted(data, key, value)
    origin = _origin(where, list(overrides or {}), names or {})
    _rename_old_keys(data, origin)
    return _build(Config, data, origin, "")


def _origin(where: str, overridden: list[str], names: Mapping[str, str]) -> Callable[[str], str]:
    """What to blame for the dotted `key`: the overrides that set it or a part of it, else `where`."""

    def origin(key: str) -> str:  # key "": the top level, which only undotted overrides set
        related = [k for k in overridden if k == key or k.startswith(f"{key}.") or key.startswith(f"{k}.")
                   or not key and "." not in k]
        return ", ".join(dict.fromkeys(names.get(k, f"override {k}") for k in related)) or where

    return origin


# Keys renamed since they were written (config files, and recorded sessions replayed later): old -> new.
RENAMED_KEYS = {"products.same_product_iou": "products.same_product_overlap"}


def _rename_old_keys(data: dict[str, Any], where: Callable[[str], str]) -> None:
    for old, new in RENAMED_KEYS.items():
        section, _, key = old.partition(".")
        values = data.get(section)
        if isinstance(values, dict) and key in values:
            log.warning("%s: config key %s is now %s", where(old), old, new)
            values.setdefault(new.partition(".")[2], values.pop(key))


def _read(path: str | Path) -> tuple[dict[str, Any], str]:
    if str(path) in PRESETS:
        text = resources.files("turncrop.configs").joinpath(f"{path}.yaml").read_text()
        where = f"preset {path!r}"
    else:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist (presets: {', '.join(PRESETS)})")
        where = str(p)
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{where}: not a YAML text file (not UTF-8: {exc.reason} at byte {exc.start})") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: the top level must be a mapping, got {type(data).__name__}")
    base = data.pop("preset", None)
    if base is not None:
        if base not in PRESETS:
            raise ConfigError(f"{where}: preset must be one of {', '.join(PRESETS)}, got {base!r}")
        parent, _ = _read(base)
        data = _merge(parent, data)
    return data, where


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _set_dotted(data: dict, key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    for part in parents:
        if not isinstance(data.get(part), dict):  # an empty section (`prompt:`) reads as None
            data[part] = {}
        data = data[part]
    data[leaf] = value


def _build(cls: type, data: Any, where: Callable[[str], str], prefix: str) -> Any:
    if not isinstance(data, dict):
        section = prefix.rstrip(".")
        raise ConfigError(f"{where(section)}: {section or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        key = prefix + unknown[0]
        raise ConfigError(f"{where(key)}: unknown key {key} (valid keys: {', '.join(names)})")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, where, f"{prefix}{name}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where(prefix.rstrip('.'))}: {prefix.rstrip('.') or 'config'}: {exc}") from None


def _coerce(hint: Any, value: Any, where: Callable[[str], str], key: str) -> Any:
    """Check `value` against a type hint; convert lists to tuples and ints to floats where declared."""
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where, f"{key}.")
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, where, key)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0] if len(errors) == 1 else ConfigError(f"{where(key)}: {key}: unexpected value {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where(key)}: {key} must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, where, f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where(key)}: {key} must have {len(args)} items, got {len(value)}")
        return tuple(_coerce(a, v, where, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where(key)}: {key} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where(key)}: {key} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where(key)}: {key} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where(key)}: {key} must be a string, got {value!r}")
        return value
    raise ConfigError(f"{where(key)}: {key}: unsupported setting type {hint}")  # a programming error, not the user's
