"""What an operator can tell the pipeline while it runs: clicks, a box, "re-key now", "next product".

Commands are plain data so that a live page, a recorded session and a replay all speak the same language:
`as_dict` / `from_dict` round-trip through JSON exactly.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

KINDS = ("point", "box", "rekey", "next_product")


@dataclass(frozen=True)
class OperatorCommand:
    """One operator action, applied to the next frame the pipeline processes.

    Attributes:
      kind: "point" (clicks), "box" (a drawn box), "rekey" (encode now) or "next_product" (end the product
        on stage).
      points: (N, 2) float32 full-resolution pixel x, y (kind "point").
      labels: (N,) int32, 1 = product (click), 0 = not product (shift-click).
      box: (4,) float32 x0, y0, x1, y1 full-resolution pixels (kind "box").
    """

    kind: str
    points: np.ndarray | None = None
    labels: np.ndarray | None = None
    box: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"operator command: unknown kind {self.kind!r} (one of {', '.join(KINDS)})")
        if self.kind == "point":
            points = _array("points", self.points, np.float32)
            labels = _array("labels", self.labels, np.int32)
            if points.ndim != 2 or points.shape[1] != 2 or len(points) == 0:
                raise ValueError(f"operator command: points must be (N, 2) with N >= 1, got shape {points.shape}")
            if labels.shape != (len(points),) or not np.isin(labels, (0, 1)).all():
                raise ValueError("operator command: labels must be one 0 or 1 per point")
            object.__setattr__(self, "points", points)
            object.__setattr__(self, "labels", labels)
        elif self.points is not None or self.labels is not None:
            raise ValueError(f"operator command: {self.kind!r} takes no points")
        if self.kind == "box":
            box = _array("box", self.box, np.float32)
            if box.shape != (4,) or not (box[2] > box[0] and box[3] > box[1]):
                raise ValueError(f"operator command: box must be x0, y0, x1, y1 with x1 > x0, y1 > y0, got {box}")
            object.__setattr__(self, "box", box)
        elif self.box is not None:
            raise ValueError(f"operator command: {self.kind!r} takes no box")
        for name in ("points", "box"):
            value = getattr(self, name)
            if value is not None and not np.isfinite(value).all():
                raise ValueError(f"operator command: {name} must be finite numbers")

    @property
    def prompts(self) -> bool:
        """Whether the command carries a prompt (points or a box)."""
        return self.kind in ("point", "box")

    def scaled(self, factor: float) -> OperatorCommand:
        """The same command for a frame resized by `factor` (pixel coordinates multiplied by it)."""
        if factor == 1.0 or not self.prompts:
            return self
        return OperatorCommand(self.kind, points=None if self.points is None else self.points * factor,
                               labels=self.labels, box=None if self.box is None else self.box * factor)

    def as_dict(self) -> dict:
        data: dict = {"kind": self.kind}
        if self.points is not None:
            data["points"] = [[round(float(x), 3), round(float(y), 3)] for x, y in self.points]
            data["labels"] = [int(v) for v in self.labels]
        if self.box is not None:
            data["box"] = [round(float(v), 3) for v in self.box]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> OperatorCommand:
        """Parse `as_dict` output (or a page's message); ValueError names what is wrong."""
        if not isinstance(data, dict):
            raise ValueError(f"operator command: expected an object, got {type(data).__name__}")
        unknown = set(data) - {"kind", "points", "labels", "box"}
        if unknown:
            raise ValueError(f"operator command: unknown field(s) {', '.join(sorted(unknown))}")
        if "kind" not in data:
            raise ValueError("operator command: missing 'kind'")
        return cls(data["kind"], points=data.get("points"), labels=data.get("labels"), box=data.get("box"))


@dataclass(frozen=True)
class CommandApplied:
    """An operator command took effect on the frame `frame_index` (an event in `FrameResult.events`)."""

    frame_index: int
    command: OperatorCommand


def _array(name: str, value, dtype) -> np.ndarray:
    if value is None:
        raise ValueError(f"operator command: missing {name!r}")
    try:
        return np.asarray(value, dtype)
    except (TypeError, ValueError):
        raise ValueError(f"operator command: {name} must be numbers, got {value!r}") from None
