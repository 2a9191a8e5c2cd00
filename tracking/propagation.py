"""Carrying a mask from one frame to the next with dense optical flow, as a dense prompt.

The flow is DIS (Kroeger et al., 2016) from OpenCV, computed backwards (current -> previous) at a reduced
working size so that every pixel of the current frame knows where to sample the previous mask.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import cv2
import numpy as np

_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}


@dataclass(frozen=True)
class PropagationOptions:
    preset: str = "fast"
    work_max_side: int = 640  # flow is computed on a frame resized to at most this side
    prior_strength: float = 1.0  # log-odds deep inside / outside the carried mask
    prior_width: float = 0.01  # distance to the mask edge (fraction of the diagonal) reaching full strength
    jump_residual: float = 20.0  # grey levels of `Motion.residual` above which the frames jumped (photos 22-57,
    # a render turning 7 degrees a frame up to 20, video 3-10)

    def __post_init__(self) -> None:
        if self.preset not in _PRESETS:
            raise ValueError(f"propagation.preset must be one of {sorted(_PRESETS)}, got {self.preset!r}")
        if self.work_max_side < 32:
            raise ValueError(f"propagation.work_max_side must be >= 32, got {self.work_max_side}")
        if self.prior_strength <= 0 or self.prior_width <= 0:
            raise ValueError("propagation.prior_strength and prior_width must be > 0")
        if self.jump_residual <= 0:
            raise ValueError(f"propagation.jump_residual must be > 0, got {self.jump_residual}")


@dataclass(frozen=True)
class Motion:
    """Backward flow at working size and its summary.

    Attributes:
      flow: (h, w, 2) float32, for each pixel of the current frame the offset to the previous frame,
        in working-size pixels.
      scale: full-resolution pixels per working pixel.
      shift: (2,) median (dx, dy) of the forward motion in full-resolution pixels over the region:
        the object's translation. A product turning in place has a shift near zero.
      greys: the (h, w) uint8 previous and current working-size grey images.
      region: (h, w) bool, the region the summary is over.
    """

    flow: np.ndarray
    scale: float
    shift: np.ndarray
    greys: tuple[np.ndarray, np.ndarray]
    region: np.ndarray

    @cached_property
    def residual(self) -> float:
        """Mean absolute grey-level difference over the region between the current frame and the previous
        one carried along the flow: how much of the change the flow fails to explain (a few levels on video;
        tens where the frames jump, as photos taken walking round an object do). Computed when first asked."""
        prev_grey, grey = self.greys
        carried = _remap(prev_grey, self.flow, cv2.BORDER_REPLICATE, 0)
        return float(cv2.absdiff(carried, grey)[self.region].mean())


class FlowPropagator:
    """Estimates frame-to-frame motion and warps masks or logits forward along it."""

    def __init__(self, options: PropagationOptions | None = None) -> None:
        self.options = options or PropagationOptions()
        self._dis = cv2.DISOpticalFlow_create(_PRESETS[self.options.preset])

    def grey(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 RGB -> working-size grey image used for flow."""
        h, w = image.shape[:2]
        scale = min(1.0, self.options.work_max_side / max(h, w))
        g = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        if scale < 1.0:
            g = cv2.resize(g, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
        return g

    def motion(self, prev_grey: np.ndarray, grey: np.ndarray, full_size: tuple[int, int],
               region: np.ndarray | None = None) -> Motion:
        """Backward flow from `grey` (current) to `prev_grey`; `region` (H, W) bool limits the summary."""
        flow = self._dis.calc(grey, prev_grey, None)
        scale = full_size[1] / grey.shape[1]
        small = np.ones(grey.shape, bool)
        if region is not None and region.any():
            inside = cv2.resize(region.astype(np.uint8), (grey.shape[1], grey.shape[0]),
                                interpolation=cv2.INTER_NEAREST) > 0
            small = inside if inside.any() else small
        # Backward flow points to where a pixel came from: the object moved by its negation.
        shift = -np.median(flow[small], axis=0) * scale
        return Motion(flow=flow, scale=scale, shift=shift.astype(np.float32), greys=(prev_grey, grey), region=small)

    def warp(self, values: np.ndarray, motion: Motion, fill: float = 0.0) -> np.ndarray:
        """Carry a full-resolution (H, W) float map from the previous frame into the current one."""
        h, w = values.shape
        flow = cv2.resize(motion.flow, (w, h), interpolation=cv2.INTER_LINEAR) * motion.scale
        return _remap(values.astype(np.float32), flow, cv2.BORDER_CONSTANT, fill)

    def jumped(self, motion: Motion) -> bool:
        """Whether the flow leaves more of the change unexplained than video does: the frames jumped."""
        return motion.residual > self.options.jump_residual

    def prior_logits(self, mask: np.ndarray) -> np.ndarray:
        """A binary (H, W) mask -> (H, W) float32 log-odds shaped by the distance to its edge.

        Near the edge the carried mask is least certain (flow error, deformation), so the prior fades
        to zero there and leaves the decision to the image.
        """
        o = self.options
        h, w = mask.shape
        width = max(1.0, o.prior_width * float(np.hypot(h, w)))
        m = mask.astype(np.uint8)
        inside = cv2.distanceTransform(m, cv2.DIST_L2, 3)
        outside = cv2.distanceTransform(1 - m, cv2.DIST_L2, 3)
        signed = np.where(mask, inside, -outside)
        return (o.prior_strength * np.clip(signed / width, -1.0, 1.0)).astype(np.float32)


def _remap(values: np.ndarray, flow: np.ndarray, border: int, fill: float) -> np.ndarray:
    """`values` sampled where the (H, W, 2) backward `flow` (same size) says each pixel came from."""
    h, w = values.shape
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(values, gx + flow[..., 0], gy + flow[..., 1], interpolation=cv2.INTER_LINEAR,
                     borderMode=border, borderValue=fill)
