"""One registry: built-in networks by name, and every timm architecture, built from
(name, in_channels, num_classes, image_size) with no hand-computed shapes.
"""

from __future__ import annotations

import difflib
import importlib
import logging
from dataclasses import dataclass
from typing import Callable

from torch import nn

from imgclf.errors import ImgclfError

log = logging.getLogger("imgclf")
SMALL_IMAGE_LIMIT = 64  # px: up to this side the built-in default is used, above it a small timm model
LARGE_IMAGE_DEFAULT = "resnet18"
_BUILTIN_MODULES = ("imgclf.models.tutorials", "imgclf.models.small_resnet")


@dataclass(frozen=True)
class ModelEntry:
    name: str
    factory: Callable[..., nn.Module]
    description: str
    origin: str
    default_for_small: bool = False


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, factory: Callable[..., nn.Module], description: str, origin: str,
                   default_for_small: bool = False) -> None:
    """Add a built-in network; factory(in_channels, num_classes, image_size, **kwargs) builds it."""
    _REGISTRY[name] = ModelEntry(name, factory, description, origin, default_for_small)


def builtin_models() -> dict[str, ModelEntry]:
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)
    return dict(_REGISTRY)


def default_model_name(image_size: tuple[int, int]) -> str:
    """The network `imgclf train` uses when none is named."""
    if max(image_size) <= SMALL_IMAGE_LIMIT:
        return next(e.name for e in builtin_models().values() if e.default_for_small)
    return LARGE_IMAGE_DEFAULT


def _size(image_size) -> tuple[int, int]:
    h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if min(h, w) < 8:
        raise ImgclfError(f"image size {h}x{w} is too small for a CNN; use at least 8 pixels (--image-size).")
    return int(h), int(w)


def create_model(name: str, in_channels: int, num_classes: int, image_size, *, pretrained: bool = False,
                 weights: str | None = None, partial_weights: bool = False, **kwargs) -> nn.Module:
    """A network by name, for these channels, classes and image size.

    pretrained loads published weights (timm models, through the Hugging Face hub); weights loads a local
    state dict file (safetensors, or a .pth read with weights_only=True) in timm's or torchvision's naming,
    and the log says how much of the network it filled: under 90% of the backbone is an error unless
    partial_weights. The head is replaced whenever the class count differs from the weights'.
    """
    from imgclf.models import timm_models, weights as weight_files

    size = _size(image_size)
    check_model_name(name, pretrained)
    builtins = builtin_models()
    if name in builtins:
        model = builtins[name].factory(in_channels, num_classes, size, **kwargs)
        if weights:
            log.info(weight_files.load_into(model, weight_files.read_state_dict(weights), weights))
        return model
    state_dict = weight_files.read_state_dict(weights) if weights else None
    if state_dict is not None:
        log.info(timm_models.check_coverage(name, weights, state_dict, partial_weights, num_classes))
    return timm_models.create(name, in_channels, num_classes, pretrained=pretrained, state_dict=state_dict,
                              weights_name=weights, **kwargs)


def check_model_name(name: str, pretrained: bool = False) -> None:
    """A network that exists (built-in or timm), with published weights when they are asked for."""
    from imgclf.models import timm_models

    builtins = builtin_models()
    if name in builtins:
        if pretrained:
            raise ImgclfError(f"{name} is a built-in network without published weights; drop --pretrained, or pass --weights FILE.")
        return
    if timm_models.is_timm_model(name):
        return
    close = difflib.get_close_matches(name, list(builtins) + timm_models.names(), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ImgclfError(f"no model named '{name}'.{hint} See 'imgclf models' for the list.")
