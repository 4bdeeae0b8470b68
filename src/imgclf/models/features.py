"""A frozen pretrained network's features of every image: computed once, cached like the decoded pixels.

Fine-tuning at photo sizes takes minutes a epoch on a CPU; one forward pass of the frozen backbone takes
seconds, and a linear head on its pooled features is a strong baseline (engine/probe.py). The features
are kept on disk keyed by what they depend on (the decoded images and labels, the backbone's weights,
the normalisation), so a second run on the same data and weights reads them back, and a change to any
of those computes them again. Later users: near-duplicate and label checks (ROADMAP).
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from imgclf.data.imageset import ImageSet

FEATURES_VERSION = 1
BATCH = 64  # images a forward pass: a 224 px batch of 64 is about 40 MB of input


def pooled(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The features the classifier takes (timm's forward_head with pre_logits): pooled, before the head."""
    timm_model = cast(Any, model)  # a timm network (can_embed): torch types its methods as tensors or modules
    return timm_model.forward_head(timm_model.forward_features(x), pre_logits=True)


def can_embed(model: nn.Module) -> bool:
    return hasattr(model, "forward_features") and hasattr(model, "forward_head")


@torch.no_grad()
def embed(
    model: nn.Module, images: ImageSet, mean, std, device: torch.device, batch: int = BATCH, channels_last: bool = False
) -> np.ndarray:
    """float32 N x F features of a split, the network in evaluation mode (its own BatchNorm statistics);
    the batches normalised by the training loader's own code, in order."""
    from imgclf.data.loader import DeviceLoader

    was_training = model.training
    model.eval()
    loader = DeviceLoader(images, batch, mean=mean, std=std, device=device, channels_last=channels_last)
    try:
        out = [pooled(model, x).float().cpu() for x, _ in loader]
    finally:
        model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def _digest_tensors(model: nn.Module, skip: set[str]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for key, value in model.state_dict().items():
        if key in skip:
            continue
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _digest_images(images: ImageSet) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(str(images.images.shape).encode())
    for start in range(0, len(images), 1024):  # chunks, so that a memory-mapped split stays on disk
        h.update(np.ascontiguousarray(images.take(np.arange(start, min(start + 1024, len(images))))).tobytes())
    h.update(np.ascontiguousarray(images.labels).tobytes())
    return h.hexdigest()


def cache_key(model: nn.Module, parts: dict[str, ImageSet], mean, std) -> str:
    """What the features depend on: the backbone's tensors (the head's left out: a probe changes it), the
    normalisation, and each split's decoded images and labels."""
    from imgclf.models.timm_models import head_names

    heads = head_names(model)
    head = {key for key in model.state_dict() if any(key.startswith(h + ".") for h in heads)}
    h = hashlib.blake2b(digest_size=16)
    h.update(f"v{FEATURES_VERSION} {type(model).__name__} {tuple(mean)} {tuple(std)}".encode())
    h.update(_digest_tensors(model, head).encode())
    for name in sorted(parts):
        h.update(f"{name}:{_digest_images(parts[name])}".encode())
    return h.hexdigest()


@dataclass
class Features:
    """Each split's features, and how they came: read back from the cache or computed (with the time)."""

    parts: dict[str, np.ndarray]
    cached: bool
    seconds: float
    path: Path


def read_arrays(path: Path, names: list[str]) -> dict[str, np.ndarray] | None:
    """The named arrays of a cache file, or None when it is missing, damaged or lacks one of them."""
    if not path.is_file():
        return None
    try:
        with np.load(path) as stored:
            return {name: stored[name] for name in names}
    except (OSError, KeyError, ValueError):  # damaged or partial: the caller computes them again
        return None


def write_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Whole or not at all: written under a temporary name and renamed, so that a run killed mid-write
    leaves no partial file under the key (and two runs writing one key each write a whole file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **cast(dict[str, Any], arrays))  # numpy's stubs match **arrays against savez's allow_pickle: bool
    os.replace(tmp, path)


def features(
    model: nn.Module, parts: dict[str, ImageSet], mean, std, device: torch.device, cache_dir: Path, channels_last: bool = False
) -> Features:
    """The features of every split in `parts`, from the cache in cache_dir/features when they are there."""
    start = time.perf_counter()
    path = Path(cache_dir) / "features" / f"{cache_key(model, parts, mean, std)}.npz"
    out = read_arrays(path, list(parts))
    if out is not None:
        return Features(out, True, time.perf_counter() - start, path)
    out = {name: embed(model, part, mean, std, device, channels_last=channels_last) for name, part in parts.items()}
    write_arrays(path, out)
    return Features(out, False, time.perf_counter() - start, path)
