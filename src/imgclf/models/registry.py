"""One registry: built-in networks by name, and every timm architecture, built from
(name, in_channels, num_classes, image_size) with no hand-computed shapes.
"""

from __future__ import annotations

import difflib
import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

from torch import nn

from imgclf.errors import ImgclfError

log = logging.getLogger("imgclf")
PRETRAINED_DEFAULT = "resnet18"  # the default when pretrained weights are asked for: the built-in default has none
_BUILTIN_MODULES = ("imgclf.models.tutorials", "imgclf.models.small_resnet")


@dataclass(frozen=True)
class ModelEntry:
    name: str
    factory: Callable[..., nn.Module]
    description: str
    origin: str
    is_default: bool = False
    fitted: Callable[[tuple[int, int]], dict] | None = None  # arguments fitted to the image size, recorded in the bundle


_REGISTRY: dict[str, ModelEntry] = {}


@dataclass(frozen=True)
class Architecture:
    """A network as the bundle names it: enough to build it again with no data at hand."""

    name: str
    in_channels: int
    num_classes: int
    image_size: tuple[int, int]
    kwargs: dict = field(default_factory=dict)  # the arguments fitted to the image size when it was trained

    def build(self) -> nn.Module:
        """The network, untrained, exactly as recorded (no argument fitted again to the size)."""
        return create_model(self.name, self.in_channels, self.num_classes, self.image_size, fit=False, **self.kwargs)

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "in_channels": self.in_channels,
            "num_classes": self.num_classes,
            "image_size": list(self.image_size),
            "kwargs": dict(self.kwargs),
        }

    @classmethod
    def from_json(cls, d: dict) -> Architecture:
        return cls(str(d["name"]), int(d["in_channels"]), int(d["num_classes"]), _size(d["image_size"]), dict(d.get("kwargs", {})))


def register_model(
    name: str,
    factory: Callable[..., nn.Module],
    description: str,
    origin: str,
    is_default: bool = False,
    fitted: Callable[[tuple[int, int]], dict] | None = None,
) -> None:
    """Add a built-in network; factory(in_channels, num_classes, image_size, **kwargs) builds it."""
    _REGISTRY[name] = ModelEntry(name, factory, description, origin, is_default, fitted)


def fitted_kwargs(name: str, image_size) -> dict:
    """The arguments a built-in network takes from the image size (timm models: none)."""
    entry = builtin_models().get(name)
    return entry.fitted(_size(image_size)) if entry is not None and entry.fitted is not None else {}


def builtin_models() -> dict[str, ModelEntry]:
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)
    return dict(_REGISTRY)


def default_model_name(image_size: tuple[int, int], pretrained: bool = False) -> str:
    """The network `imgclf train` uses when none is named: the built-in default at every size (it fits
    itself to the size), or resnet18 when pretrained weights are asked for."""
    if pretrained:
        return PRETRAINED_DEFAULT
    return next(e.name for e in builtin_models().values() if e.is_default)


def _size(image_size) -> tuple[int, int]:
    h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if min(h, w) < 8:
        raise ImgclfError(f"image size {h}x{w} is too small for a CNN; use at least 8 pixels (--image-size).")
    return int(h), int(w)


def create_model(
    name: str,
    in_channels: int,
    num_classes: int,
    image_size,
    *,
    pretrained: bool = False,
    weights: str | None = None,
    partial_weights: bool = False,
    fit: bool = True,
    **kwargs,
) -> nn.Module:
    """A network by name, for these channels, classes and image size.

    pretrained loads published weights (timm models, through the Hugging Face hub); weights loads a local
    state dict file (safetensors, or a .pth read with weights_only=True) in timm's or torchvision's naming,
    and the log says how much of the network it filled: under 90% of the backbone is an error unless
    partial_weights. The head is replaced whenever the class count differs from the weights'.
    fit=False leaves out the arguments a built-in network would take from the image size (a bundle passes
    the ones it recorded; one made before an argument existed gets the network's default, as it was trained).
    """
    from imgclf.models import timm_models
    from imgclf.models import weights as weight_files

    size = _size(image_size)
    check_model_name(name, pretrained)
    builtins = builtin_models()
    if name in builtins:
        model = builtins[name].factory(in_channels, num_classes, size, **{**(fitted_kwargs(name, size) if fit else {}), **kwargs})
        if weights:
            log.info(weight_files.load_into(model, weight_files.read_state_dict(weights), weights))
        return model
    state_dict = weight_files.read_state_dict(weights) if weights else None
    if state_dict is not None:
        state_dict, loaded = timm_models.fit_weights(name, cast(str, weights), state_dict, partial_weights, num_classes)  # read above
        log.info(loaded)
    return timm_models.create(name, in_channels, num_classes, pretrained=pretrained, state_dict=state_dict, weights_name=weights, **kwargs)


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
