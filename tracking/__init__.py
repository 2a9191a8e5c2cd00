"""Time: frames, tracked boxes, mask propagation between keyframes, the keyframe policy and products."""
from turncrop.tracking.frame import Frame

__all__ = ["Frame"]
