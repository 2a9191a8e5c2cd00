"""Official SAM / MobileSAM checkpoints: where they come from, where they are cached, how they are checked.

Checkpoints are only ever read with `torch.load(path, map_location="cpu", weights_only=True)`: a file that
needs arbitrary unpickling (a whole pickled model, a training checkpoint with Python objects) is refused.

SHA-256 sources (checked 2026-11, see each entry): the four hashes are the ones pinned by micro-sam
(computational-cell-analytics/micro-sam, micro_sam/util.py, its pooch registry for vit_h/vit_l/vit_b/vit_t)
and agree with many independent download scripts that verify the same URLs; the byte sizes come from
several such scripts (e.g. Fooocus-derived model manifests, MobileSAM deployment manifests).
"""
from __future__ import annotations

import hashlib
import os
import pickle
import pickletools
import re
import tempfile
import urllib.error
import urllib.request
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

ARCHS: tuple[str, ...] = ("vit_t", "vit_b", "vit_l", "vit_h")

# Width of image_encoder.patch_embed.proj (the ViT embedding dim) for SAM's own encoders.
_VIT_WIDTH_TO_ARCH = {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}
_VIT_KEY = "image_encoder.patch_embed.proj.weight"
_TINYVIT_KEY = "image_encoder.patch_embed.seq.0.c.weight"  # MobileSAM's TinyViT conv stem


class WeightsError(Exception):
    """A checkpoint is missing, corrupt, not a plain state_dict, of the wrong architecture or checksum."""


@dataclass(frozen=True)
class WeightSpec:
    """One official checkpoint.

    Attributes:
      name: turncrop's name, equal to the backend name in `turncrop.models.registry`.
      arch: model registry key: vit_t (MobileSAM) or vit_b / vit_l / vit_h (SAM).
      url: official download address.
      sha256: hex digest of the official file.
      size: size of the official file in bytes.
      filename: the official file name, also its name in the cache.
    """

    name: str
    arch: str
    url: str
    sha256: str
    size: int
    filename: str


WEIGHTS: dict[str, WeightSpec] = {
    spec.name: spec
    for spec in (
        WeightSpec(
            "mobile_sam",
            "vit_t",
            "https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt",
            "6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f",
            40_728_226,
            "mobile_sam.pt",
        ),
        WeightSpec(
            "sam_vit_b",
            "vit_b",
            "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
            "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
            375_042_383,
            "sam_vit_b_01ec64.pth",
        ),
        WeightSpec(
            "sam_vit_l",
            "vit_l",
            "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
            "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
            1_249_524_607,
            "sam_vit_l_0b3195.pth",
        ),
        WeightSpec(
            "sam_vit_h",
            "vit_h",
            "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
            "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
            2_564_550_879,
            "sam_vit_h_4b8939.pth",
        ),
    )
}


@dataclass(frozen=True)
class CheckpointInfo:
    """What `verify` found out about a checkpoint file."""

    path: Path
    arch: str
    sha256: str
    size: int
    name: str | None = None  # the official entry it was checked against, if any


def cache_dir() -> Path:
    """Where fetched checkpoints live: `$TURNCROP_CACHE`, else `~/.cache/turncrop`."""
    env = os.environ.get("TURNCROP_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "turncrop"


def list_weights() -> list[WeightSpec]:
    return list(WEIGHTS.values())


def weight_spec(name: str) -> WeightSpec:
    try:
        return WEIGHTS[name]
    except KeyError:
        raise WeightsError(f"unknown checkpoint name {name!r}; known: {', '.join(WEIGHTS)}") from None


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def fetch(name: str, dest: str | Path | None = None, progress: bool = True) -> Path:
    """Download the official checkpoint `name`, verify its SHA-256, and move it into place atomically.

    Args:
      name: a key of `WEIGHTS` (mobile_sam, sam_vit_b, sam_vit_l, sam_vit_h).
      dest: target file, or a directory to put the official file name in; default `cache_dir()`.
      progress: show a progress bar on stderr.

    Returns the path of the verified file. A file already there with the right checksum is kept as is.
    Raises WeightsError on network failure or checksum mismatch; nothing is left at `dest` then.
    """
    spec = weight_spec(name)
    target = Path(dest).expanduser() if dest is not None else cache_dir()
    if target.is_dir() or dest is None:
        target = target / spec.filename
    if target.is_file() and sha256_file(target) == spec.sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)

    fd, tmp_name = tempfile.mkstemp(prefix=f".{spec.filename}.", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(spec.url, timeout=60) as response:
                total = int(response.headers.get("Content-Length") or spec.size)
                with tqdm(total=total, unit="B", unit_scale=True, desc=name, disable=not progress) as bar:
                    while block := response.read(1 << 20):
                        out.write(block)
                        digest.update(block)
                        bar.update(len(block))
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", None) or e
            raise WeightsError(
                f"could not download {name} from {spec.url}: {reason}. Check the network, or download the "
                f"file by other means and put it at {target}"
            ) from e
        got = digest.hexdigest()
        if got != spec.sha256:
            raise WeightsError(
                f"downloaded {name} from {spec.url} ({tmp.stat().st_size} bytes) but its sha256 is {got}, "
                f"expected {spec.sha256} ({spec.size} bytes): incomplete or altered download, not installed"
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a checkpoint file as a plain {name: tensor} state_dict, refusing anything else.

    Only `torch.load(path, map_location="cpu", weights_only=True)` is used, so no code in the file runs.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"checkpoint file not found: {path}")
    try:
        with warnings.catch_warnings():  # torch's note on a newer pickle protocol: the error below says more
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for bad files; all mean "unreadable"
        refused = re.search(r"GLOBAL (\S+) was not an allowed global|whose module (\S+) is blocked", str(e))
        what = (refused.group(1) or refused.group(2)) if isinstance(e, pickle.UnpicklingError) and refused else None
        what = what or _foreign_global(path)
        if what is not None:
            raise WeightsError(
                f"{path} is not a plain state_dict, refused as unsafe: it holds pickled Python objects ({what}) "
                "that loading would run, and only torch.load(weights_only=True) is used here; e.g. a whole model "
                "saved with torch.save(model). Save model.state_dict() instead, or use the official checkpoint"
            ) from e
        raise WeightsError(f"{path} is truncated or corrupt, cannot be read as a torch checkpoint ({_reason(e)})") from e
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        kind = type(obj).__name__
        keys = ", ".join(map(str, list(obj)[:5])) if isinstance(obj, dict) else ""
        raise WeightsError(
            f"{path} is not a state_dict of tensors (found a {kind}{': keys ' + keys if keys else ''}); "
            "a SAM checkpoint is a flat {name: tensor} dict as saved by torch.save(model.state_dict())"
        )
    return obj


def _foreign_global(path: Path) -> str | None:
    """The first global a plain pickle file (not torch's zip format) names outside torch's own, or None.

    torch's safe loader stops at opcodes of newer pickle protocols before it sees what the file would
    call; reading the opcodes (pickletools runs nothing) tells a pickle that calls code from a damaged file.
    """
    if zipfile.is_zipfile(path):
        return None
    strings: list[str] = []
    try:
        with open(path, "rb") as f:
            for opcode, arg, _ in pickletools.genops(f):
                if opcode.name == "GLOBAL":
                    name = str(arg).replace(" ", ".")
                elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                    name = ".".join(strings[-2:])
                else:
                    if isinstance(arg, str):
                        strings.append(arg)
                    continue
                if not name.startswith(("torch.", "collections.OrderedDict")):
                    return name
    except Exception:  # noqa: BLE001 - not a pickle, or a damaged one: nothing it could call was found
        return None
    return None


def _reason(error: Exception) -> str:
    """torch's own reason for an unreadable file, without its advice to load it unsafely."""
    text = str(error).strip()
    detail = re.search(r"WeightsUnpickler error:\s*(.*?)\s*(?:Check the documentation|$)", text, re.S)
    reason = " ".join((detail.group(1) if detail else (text.splitlines() or [""])[0]).split())
    sentences = re.split(r"(?<=\.)\s+", reason)  # whole sentences only: a cut one can say the opposite
    kept = sentences[:1]
    for sentence in sentences[1:]:
        if len(" ".join(kept + [sentence])) > 300:
            break
        kept.append(sentence)
    return " ".join(kept) or type(error).__name__


def detect_arch(state_dict: dict[str, torch.Tensor], source: str | Path = "checkpoint") -> str:
    """The SAM architecture a state_dict belongs to, from its image-encoder stem shapes.

    vit_t has MobileSAM's TinyViT conv stem; vit_b/l/h are told apart by the ViT patch-embedding width
    (768 / 1024 / 1280 output channels of `image_encoder.patch_embed.proj.weight`).
    """
    if _TINYVIT_KEY in state_dict:
        return "vit_t"
    if _VIT_KEY in state_dict:
        width = int(state_dict[_VIT_KEY].shape[0])
        if width in _VIT_WIDTH_TO_ARCH:
            return _VIT_WIDTH_TO_ARCH[width]
        raise WeightsError(f"{source}: unknown SAM encoder width {width} (vit_b 768, vit_l 1024, vit_h 1280)")
    prefixed = [k for k in state_dict if k.endswith((_VIT_KEY, _TINYVIT_KEY))]
    hint = f"; its keys carry a prefix ({prefixed[0]!r}): strip it before saving" if prefixed else ""
    first = ", ".join(list(state_dict)[:3])
    raise WeightsError(f"{source} is not a SAM / MobileSAM checkpoint (no {_VIT_KEY!r}; keys start {first}){hint}")


def new_model(arch: str) -> torch.nn.Module:
    """A randomly initialised SAM model of `arch`, in eval mode (MobileSAM for vit_t, SAM otherwise)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown SAM architecture {arch!r}; expected one of {', '.join(ARCHS)}")
    if arch == "vit_t":
        with warnings.catch_warnings():
            # mobile_sam re-registers TinyViT names in timm and imports deprecated timm paths: noise.
            warnings.simplefilter("ignore")
            from mobile_sam import sam_model_registry
    else:
        from segment_anything import sam_model_registry
    return sam_model_registry[arch](checkpoint=None).eval()


def load_state_dict(path: str | Path, arch: str) -> torch.nn.Module:
    """Build an `arch` model (checkpoint=None) and load the checkpoint at `path` into it strictly.

    Returns the loaded model in eval mode. Raises WeightsError if the file is missing, corrupt, not a plain
    state_dict, of another architecture, or does not match the model's keys and shapes exactly.
    """
    state_dict = read_state_dict(path)
    found = detect_arch(state_dict, path)
    if found != arch:
        raise WeightsError(f"{path}: this checkpoint looks like {found}, expected {arch}")
    model = new_model(arch)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        detail = str(e).strip().splitlines()
        raise WeightsError(f"{path} does not fit the {arch} model: {' '.join(detail[:3])[:500]}") from e
    return model.eval()


def verify(path: str | Path, name: str | None = None) -> CheckpointInfo:
    """Check a checkpoint file: SHA-256 against the official entry `name` (if given), then that it is a plain
    state_dict of a SAM architecture (and, with `name`, of that entry's architecture)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"checkpoint file not found: {path}")
    spec = weight_spec(name) if name is not None else None
    digest, size = sha256_file(path), path.stat().st_size
    if spec is not None and digest != spec.sha256:
        raise WeightsError(
            f"{path}: sha256 checksum mismatch for {spec.name}: got {digest} ({size} bytes), expected "
            f"{spec.sha256} ({spec.size} bytes). Re-download it with `turncrop weights fetch {spec.name}`"
        )
    arch = detect_arch(read_state_dict(path), path)
    if spec is not None and arch != spec.arch:
        raise WeightsError(f"{path}: this checkpoint looks like {arch}, expected {spec.arch}")
    return CheckpointInfo(path=path, arch=arch, sha256=digest, size=size, name=name)


def resolve_checkpoint(backend: str, checkpoint: str | Path | None = None) -> Path:
    """The checkpoint file for a SAM backend: `checkpoint` if given, else the official file in `cache_dir()`.

    Raises WeightsError when the file does not exist, saying how to fetch it.
    """
    spec = weight_spec(backend)
    path = Path(checkpoint).expanduser() if checkpoint is not None else cache_dir() / spec.filename
    if path.is_file():
        return path
    where = "given checkpoint" if checkpoint is not None else f"{spec.name} checkpoint in the cache"
    raise WeightsError(
        f"{where} not found: {path}. Download it with `turncrop weights fetch {spec.name}` "
        f"({spec.size / 1e6:.0f} MB from {spec.url}), or pass an existing file as the checkpoint. "
        "The default weight-free backend 'graphcut' needs no weights."
    )
