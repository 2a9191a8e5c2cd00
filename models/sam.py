"""SAM (vit_b / vit_l / vit_h, `segment_anything`) and MobileSAM (vit_t, `mobile_sam`) behind `Segmenter`.

`encode` runs the heavy image encoder once per keyframe and returns everything decoding needs inside the
`Embedding`; `decode` runs the prompt encoder and mask decoder from that embedding alone, so one keyframe's
embedding serves many frames, in any order with other encodes. SamPredictor's mutable "current image" is not
used; its steps (ResizeLongestSide, `Sam.preprocess`, `Sam.postprocess_masks`) are.
"""
from __future__ import annotations

import contextlib
import os
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from segment_anything.utils.transforms import ResizeLongestSide
from torchvision.transforms.functional import InterpolationMode, resize

from turncrop.models.base import Embedding, MaskSet, Prompt
from turncrop.models.weights import WEIGHTS, detect_arch, load_state_dict

PRECISIONS: tuple[str, ...] = ("fp32", "bf16")

# SAM's own low-res logits stay roughly within +-20; a caller's prior (e.g. log(p/(1-p)) of a warped mask
# with p in {0, 1}) can be +-inf, which would saturate the prompt encoder's mask convs.
MASK_LOGIT_CLIP = 20.0

_NAME_OF_ARCH = {spec.arch: spec.name for spec in WEIGHTS.values()}


@dataclass(frozen=True)
class SamFeatures:
    """`Embedding.data` of the SAM backends.

    Attributes:
      features: (1, 256, 64, 64) float32 image embedding, contiguous, detached.
      input_size: (h, w) of the frame resized so its long side is the encoder's 1024 (before padding).
      original_size: (H, W) of the encoded frame.
      arch: vit_t / vit_b / vit_l / vit_h, so an embedding is never decoded by another model.
    """

    features: torch.Tensor
    input_size: tuple[int, int]
    original_size: tuple[int, int]
    arch: str


@dataclass(frozen=True)
class DecoderInputs:
    """What the last `decode` handed to the prompt encoder, in SAM's 1024-pixel input frame (for tests/debug).

    Attributes:
      points: (1, N, 2) float32 coordinates, or None; point_labels: (1, N) int, or None.
      box: (1, 4) float32 XYXY, or None.
      mask_input: (1, 1, 256, 256) float32 logits, or None.
      output_size: (H, W) the masks were upsampled to.
    """

    points: torch.Tensor | None
    point_labels: torch.Tensor | None
    box: torch.Tensor | None
    mask_input: torch.Tensor | None
    output_size: tuple[int, int]

    @property
    def had_points(self) -> bool:
        return self.points is not None

    @property
    def had_box(self) -> bool:
        return self.box is not None

    @property
    def had_mask_input(self) -> bool:
        return self.mask_input is not None


def mask_logits_to_mask_input(
    mask_logits: np.ndarray, mask_input_size: int = 256, clip: float = MASK_LOGIT_CLIP
) -> torch.Tensor:
    """Turn a full-frame dense prior into SAM's `mask_input`, in the frame SAM's own low-res logits live in.

    SAM's low-res masks cover the padded square encoder input at 1/4 scale: the frame, resized so its long
    side is 1024, sits in the top-left corner. So the (H, W) map is resized with SAM's image transform
    (ResizeLongestSide geometry, bilinear with antialiasing) to long side `mask_input_size` and padded on the
    bottom/right up to a square; the padding is background (-clip), like SAM's own outputs outside the frame.

    Args:
      mask_logits: (H, W) float log-odds, positive = foreground. +-inf is allowed; NaN is not.
      mask_input_size: side of SAM's mask input (the prompt encoder's `mask_input_size`, 256).
      clip: logits are clipped to [-clip, clip] first.

    Returns:
      (1, 1, mask_input_size, mask_input_size) float32 tensor.
    """
    logits = np.asarray(mask_logits, dtype=np.float32)
    if logits.ndim != 2:
        raise ValueError(f"mask_logits must be (H, W), got shape {logits.shape}")
    if np.isnan(logits).any():
        raise ValueError("mask_logits contains NaN")
    h, w = ResizeLongestSide.get_preprocess_shape(logits.shape[0], logits.shape[1], mask_input_size)
    x = torch.from_numpy(np.clip(logits, -clip, clip))[None]
    x = resize(x, [h, w], interpolation=InterpolationMode.BILINEAR, antialias=True)
    x = torch.nn.functional.pad(x, (0, mask_input_size - w, 0, mask_input_size - h), value=-clip)
    return x[None].contiguous()


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Run with `n` intra-op threads and put the previous count back (other libraries, e.g. Ultralytics,
    lower it process-wide; we neither suffer from that nor impose our choice beyond the call)."""
    previous = torch.get_num_threads()
    if previous != n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if previous != n:
            torch.set_num_threads(previous)


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        got = f"{image.shape} {image.dtype}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"image must be an (H, W, 3) uint8 RGB array, got {got}")


def resolve_device(name: str) -> torch.device:
    """"auto" -> CUDA when torch sees a GPU, else the CPU; "cpu" / "cuda" / "cuda:N" as given, checked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r}: torch sees no CUDA GPU on this machine (use cpu or auto)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return device


class SamSegmenter:
    """The Segmenter for SAM and MobileSAM models.

    Args:
      model: a `Sam` model from `segment_anything` or `mobile_sam` (weights already loaded; see
        `from_checkpoint`). With `channels_last` its image encoder is converted in place.
      precision: "fp32", or "bf16" = bfloat16 autocast on the image encoder only; features are cast back to
        float32 and the prompt encoder / mask decoder always run in float32.
      channels_last: run the image encoder in channels_last memory format (helps MobileSAM's conv stages).
      compile: torch.compile the image encoder. Compilation happens on the first `encode` (slow: a minute or
        more on 2 cores); if it fails, a RuntimeWarning is issued and the eager encoder is used from then on.
      num_threads: torch intra-op threads during encode/decode (default: the CPUs this process may use);
        the process-wide setting is restored after each call.
      device: "cpu", "cuda" / "cuda:N", or "auto" (CUDA when torch sees one). Embeddings always hold their
        features on the CPU, so they can be pickled to other processes and machines; decode moves them.
      name: the backend name; default from the architecture (mobile_sam, sam_vit_b, ...).

    Attributes:
      arch: vit_t / vit_b / vit_l / vit_h, detected from the model's weights.
      encode_calls, decode_calls: how many times each step ran.
      last_decoder_inputs: `DecoderInputs` of the last decode, or None.
      compile_status: "off", "pending" (not yet run), "on", or "failed: <reason>".
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        precision: str = "fp32",
        channels_last: bool = False,
        compile: bool = False,
        num_threads: int | None = None,
        name: str | None = None,
        device: str = "cpu",
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        for opt, value in (("channels_last", channels_last), ("compile", compile)):
            if not isinstance(value, bool):
                raise TypeError(f"{opt} must be a bool, got {value!r}")
        if num_threads is not None and (not isinstance(num_threads, int) or num_threads < 1):
            raise ValueError(f"num_threads must be a positive int or None, got {num_threads!r}")
        for part in ("image_encoder", "prompt_encoder", "mask_decoder"):
            if not hasattr(model, part):
                raise TypeError(f"model must be a SAM / MobileSAM `Sam` module, it has no {part}")

        self.device = resolve_device(device)
        self.model = model.eval().to(self.device)
        self.arch = detect_arch(model.state_dict(), f"model {type(model).__name__}")
        self.name = name or _NAME_OF_ARCH[self.arch]
        self.precision = precision
        self.channels_last = channels_last
        self.num_threads = num_threads or len(os.sched_getaffinity(0))
        self.encode_calls = 0
        self.decode_calls = 0
        self.last_decoder_inputs: DecoderInputs | None = None

        self._transform = ResizeLongestSide(model.image_encoder.img_size)
        if channels_last:
            model.image_encoder.to(memory_format=torch.channels_last)
        self._encoder: torch.nn.Module = model.image_encoder
        self.compile_status = "off"
        self._compile_lock = threading.Lock()
        if compile:
            try:
                self._encoder = torch.compile(model.image_encoder)
                self.compile_status = "pending"
            except Exception as e:  # noqa: BLE001 - any compile failure must degrade, not crash
                self._compile_failed(e)

    def __getstate__(self) -> dict:
        # Pickled to the live encoder process: a lock and a compiled module do not pickle; both are remade.
        state = self.__dict__.copy()
        del state["_compile_lock"], state["_encoder"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._compile_lock = threading.Lock()
        self._encoder = self.model.image_encoder
        if self.compile_status in ("pending", "on"):
            self._encoder = torch.compile(self.model.image_encoder)
            self.compile_status = "pending"

    @classmethod
    def from_checkpoint(cls, arch: str, checkpoint: str | Path, **options: Any) -> SamSegmenter:
        """Load an official-format checkpoint (plain state_dict) of `arch` and wrap it; see `__init__` options."""
        return cls(load_state_dict(checkpoint, arch), **options)

    def _compile_failed(self, error: BaseException) -> None:
        reason = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
        self.compile_status = f"failed: {reason}"
        self._encoder = self.model.image_encoder
        warnings.warn(
            f"torch.compile of the {self.arch} image encoder failed on this machine ({reason}); "
            "falling back to the eager encoder",
            RuntimeWarning,
            stacklevel=3,
        )

    def _run_encoder(self, x: torch.Tensor) -> torch.Tensor:
        if self.compile_status != "pending":
            return self._encoder(x)
        with self._compile_lock:  # one compilation, even if encodes race
            if self.compile_status == "pending":
                try:
                    out = self._encoder(x)
                    self.compile_status = "on"
                    return out
                except Exception as e:  # noqa: BLE001 - inductor/C compiler errors surface here, first call
                    self._compile_failed(e)
        return self._encoder(x)

    def encode(self, image: np.ndarray, frame_index: int = -1) -> Embedding:
        """Image (H, W, 3) uint8 RGB -> Embedding with `SamFeatures` (1, 256, 64, 64) in `data`."""
        _check_image(image)
        start = time.perf_counter()
        resized = self._transform.apply_image(image)  # (h, w, 3) uint8, long side 1024, as SamPredictor
        input_size = (int(resized.shape[0]), int(resized.shape[1]))
        x = torch.as_tensor(resized).permute(2, 0, 1)[None].to(self.device)
        with _torch_threads(self.num_threads), torch.inference_mode():
            x = self.model.preprocess(x)  # normalise + pad to (1, 3, 1024, 1024) float32
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            if self.precision == "bf16":
                with torch.autocast(self.device.type, dtype=torch.bfloat16):
                    features = self._run_encoder(x)
            else:
                features = self._run_encoder(x)
            features = features.float().contiguous().cpu()
        self.encode_calls += 1
        data = SamFeatures(features, input_size, (image.shape[0], image.shape[1]), self.arch)
        ms = (time.perf_counter() - start) * 1000.0
        return Embedding(image_size=data.original_size, frame_index=frame_index, data=data, stats={"encode_ms": ms})

    def _features_of(self, embedding: Embedding) -> SamFeatures:
        data = embedding.data
        if not isinstance(data, SamFeatures):
            raise ValueError(f"{self.name}: embedding was not made by a SAM backend (data is {type(data).__name__})")
        if data.arch != self.arch:
            raise ValueError(f"{self.name}: embedding comes from a {data.arch} model, this one is {self.arch}")
        return data

    def _decoder_inputs(self, feats: SamFeatures, prompt: Prompt, size: tuple[int, int]) -> DecoderInputs:
        """Map the prompt from the decoded frame's pixels into SAM's input frame of the keyframe."""
        # Usually the decoded frame has the keyframe's size; if not, scale prompts to the keyframe first.
        scale = np.array([feats.original_size[1] / size[1], feats.original_size[0] / size[0]], dtype=np.float64)
        points = labels = box = mask_input = None
        if prompt.points is not None:
            xy = self._transform.apply_coords(np.asarray(prompt.points, np.float64) * scale, feats.original_size)
            points = torch.as_tensor(xy, dtype=torch.float32)[None]
            labels = torch.as_tensor(np.asarray(prompt.point_labels), dtype=torch.int)[None]
        if prompt.box is not None:
            corners = np.asarray(prompt.box, np.float64).reshape(2, 2) * scale
            box = torch.as_tensor(self._transform.apply_boxes(corners.reshape(1, 4), feats.original_size),
                                  dtype=torch.float32)
        if prompt.mask_logits is not None:
            if tuple(prompt.mask_logits.shape) != size:
                raise ValueError(f"mask_logits is {prompt.mask_logits.shape}, the decoded image is {size}")
            mask_input = mask_logits_to_mask_input(prompt.mask_logits, self.model.prompt_encoder.mask_input_size[0])
        return DecoderInputs(points, labels, box, mask_input, size)

    def decode(self, embedding: Embedding, prompt: Prompt, image: np.ndarray) -> MaskSet:
        """Prompt -> 3 candidate masks at `image`'s resolution.

        Returns MaskSet with masks (3, H, W) bool, logits (3, H, W) float32 (masks == logits > 0) and
        scores (3,) float32: SAM's predicted IoU clipped to [0, 1].
        """
        if prompt.is_empty:
            raise ValueError(f"{self.name}: decode needs at least one of points, box or mask_logits")
        if not isinstance(image, np.ndarray) or image.ndim < 2:
            raise ValueError("image must be the (H, W, 3) frame being segmented")
        feats = self._features_of(embedding)
        size = (int(image.shape[0]), int(image.shape[1]))
        inputs = self._decoder_inputs(feats, prompt, size)
        pe = self.model.prompt_encoder

        def here(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(self.device)

        with _torch_threads(self.num_threads), torch.inference_mode():
            sparse, dense = pe(
                points=(here(inputs.points), here(inputs.point_labels)) if inputs.had_points else None,
                boxes=here(inputs.box),
                masks=here(inputs.mask_input),
            )
            low_res, iou = self.model.mask_decoder(
                image_embeddings=here(feats.features),
                image_pe=pe.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=True,
            )
            logits = self.model.postprocess_masks(low_res, feats.input_size, size)[0]
        self.decode_calls += 1
        self.last_decoder_inputs = inputs
        logits_np = logits.float().cpu().numpy()
        return MaskSet(
            masks=logits_np > 0.0,
            logits=logits_np,
            scores=np.clip(iou[0].float().cpu().numpy(), 0.0, 1.0),
        )
