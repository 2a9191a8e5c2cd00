"""Per-frame promptable segmentation: image encoders, mask decoders and their weights.

Nothing here knows about time, tracks or files beyond checkpoints: every call is a pure function of one
image, its embedding and a prompt.
"""
from turncrop.models.base import Embedding, MaskSet, Prompt, Segmenter

__all__ = ["Embedding", "MaskSet", "Prompt", "Segmenter"]
