"""Reading weight files safely (safetensors, or torch's format with weights_only=True) and fitting them."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from imgclf.errors import ImgclfError

if TYPE_CHECKING:
    from imgclf.models.base import Classifier

_WRAPPERS = ("state_dict", "model_state_dict", "model", "module", "net")
_PREFIXES = ("module.", "_orig_mod.")  # DDP and torch.compile wrappers


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a weights file; refuses anything that would need unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise ImgclfError(f"{path}: no such weights file; check the path given to --weights.")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0][:200]
        raise ImgclfError(
            f"{path}: refused, it holds pickled objects other than tensors ({first}); only plain "
            "state dicts are loaded: save one with torch.save(model.state_dict(), path) or as safetensors."
        ) from None
    except Exception as err:  # a damaged or foreign file: say which and why, never a traceback
        raise ImgclfError(
            f"{path}: not a readable weights file ({type(err).__name__}: {str(err)[:160]}); "
            "pass a .safetensors file or a state dict saved with torch.save."
        ) from None
    return clean_state_dict(state, path)


def clean_state_dict(state, path: Path) -> dict[str, torch.Tensor]:
    """Unwrap {'state_dict': ...}-style checkpoints and strip DDP/compile prefixes."""
    for key in _WRAPPERS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ImgclfError(f"{path}: not a state dict of tensors; save one with torch.save(model.state_dict(), path).")
    out = {}
    for key, value in state.items():
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
        out[key] = value
    return out


def load_into(model: nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> str:
    """Load a state dict into a built-in network: the head is left new when its shape differs, a first
    conv with other input channels is adapted as timm does (summed or repeated), anything else must fit.
    Returns a sentence saying what was loaded.
    """
    from timm.models import adapt_input_conv

    own = model.state_dict()
    head_keys = {f"head.{k}" for k in cast("Classifier", model).get_classifier().state_dict()}  # a built-in network
    fitted, skipped_head = {}, False
    for key, value in state.items():
        if key not in own:
            continue
        target = own[key]
        if value.shape != target.shape and key in head_keys:
            skipped_head = True
            continue
        if value.ndim == 4 and value.shape != target.shape and value.shape[0] == target.shape[0] and value.shape[2:] == target.shape[2:]:
            value = adapt_input_conv(target.shape[1], value)
        fitted[key] = value
    bad = [k for k in own if k not in fitted and not (skipped_head and k in head_keys)]
    bad += [k for k in fitted if fitted[k].shape != own[k].shape]
    unexpected = [k for k in state if k not in own]
    if bad or unexpected:
        example = (bad or unexpected)[0]
        raise ImgclfError(
            f"{source}: does not fit {type(model).__name__} ({len(bad)} missing or mismatched, {len(unexpected)} "
            f"unexpected tensors, e.g. '{example}'); pass weights saved from the same architecture, or name the "
            "architecture they belong to with --model (e.g. --model efficientnet_lite0)."
        )
    model.load_state_dict(fitted, strict=False)
    backbone = [k for k in own if k not in head_keys]
    head = f"; a new head for {cast('Classifier', model).get_classifier().out_features} classes" if skipped_head else ""
    return f"weights {source}: all {len(backbone)} backbone tensors of {type(model).__name__} loaded{head}"
