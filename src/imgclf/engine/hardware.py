"""Choosing the device, precision and memory format from what the machine really supports."""

from __future__ import annotations

import contextlib

import torch

from imgclf.engine import cpu
from imgclf.errors import ImgclfError


def pick_device(name: str) -> torch.device:
    mps = getattr(torch.backends, "mps", None)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ImgclfError("--device cuda: no CUDA GPU is visible to PyTorch here; use --device cpu (or auto).")
    if name == "mps" and not (mps is not None and mps.is_available()):
        raise ImgclfError("--device mps: Apple's Metal backend is not available here; use --device cpu (or auto).")
    return torch.device(name)


EVAL_VALUES = 1 << 23  # input values in one evaluation batch (32 MB of float32)


def eval_batch_size(shape, asked: int | None = None) -> int:
    """Images per batch when only predicting (validation, scoring, evaluate, predict): the one rule every
    caller uses. A power of two holding about EVAL_VALUES input values, 16 to 1,024: 1,024 gray 28 px
    images, 32 RGB photos at 224 px, where a larger batch buys no speed and costs memory. asked wins."""
    if asked:
        return int(asked)
    values = 1
    for n in shape:
        values *= int(n)
    fits = max(1, EVAL_VALUES // max(values, 1))
    return max(16, min(1024, 1 << (fits.bit_length() - 1)))


def pick_precision(name: str, device: torch.device, bf16_units: bool | None = None, pretrained: bool = False) -> torch.dtype | None:
    """The autocast dtype, or None for plain float32. bf16 never on a CPU that lacks it natively.

    bf16_units: whether the device computes bfloat16 natively (a CUDA GPU's support, a CPU's AVX512-BF16 or
    AMX); None asks the device. The rule itself is device-independent, so it is tested on any machine.
    pretrained: the run starts from trained weights; on a CPU, auto keeps those in float32 (below)."""
    if name == "32":
        return None
    if device.type == "cuda":
        bf16 = torch.cuda.is_bf16_supported() if bf16_units is None else bf16_units
        if name == "auto":
            return torch.bfloat16 if bf16 else torch.float16
        if name == "bf16" and not bf16:
            raise ImgclfError("--precision bf16: this GPU has no bfloat16 support; use --precision 16.")
        return torch.bfloat16 if name == "bf16" else torch.float16
    if device.type == "cpu" and name == "auto":
        # bf16 autocast where the CPU computes it natively (AVX512-BF16, AMX): training steps 1.2-2.0x faster
        # (small_resnet 1.67x, resnet18 1.97x, efficientnet_lite0 1.19x) and Fashion-MNIST's test accuracy as in
        # float32 over 3 seeds (benchmarks/bf16.py). Elsewhere it is emulated and slower: float32. Fine-tuning
        # from trained weights stays in float32 until bf16 is measured on photos (--precision bf16 asks).
        units = cpu.has_bf16_units() if bf16_units is None else bf16_units
        return torch.bfloat16 if units and not pretrained else None
    if name == "auto":
        return None
    if name == "bf16" and device.type == "cpu" and (cpu.has_bf16_units() if bf16_units is None else bf16_units):
        return torch.bfloat16
    raise ImgclfError(
        f"--precision {name} is not supported on this {device.type} (it would be slower or emulated); use --precision 32 or auto."
    )


def grad_scaler(device: torch.device, dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """Loss scaling only for float16, whose narrow exponent lets small gradients underflow; bfloat16 has
    float32's range and float32 needs none."""
    return torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)


def out_of_memory_advice(device: torch.device, batch_size: int, arch: str, shape: tuple[int, int, int], dtype: torch.dtype | None) -> str:
    """The one line a run ends with when the device runs out of memory: what ran out, at what, and what to
    change (half the batch; float16 on a GPU still in float32; a smaller image)."""
    c, h, w = shape
    half = ", --precision 16" if dtype is None and device.type == "cuda" else ""
    return (
        f"the {device.type} ran out of memory at batch size {batch_size} ({arch}, {c}x{h}x{w} images); "
        f"try --batch-size {max(1, batch_size // 2)}{half} or a smaller --image-size."
    )


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def use_channels_last(setting: bool | None, device: torch.device) -> bool:
    """Channels-last by default where it measurably helps convolutions: CUDA (tensor cores) and CPU (oneDNN)."""
    return setting if setting is not None else device.type in ("cuda", "cpu")
