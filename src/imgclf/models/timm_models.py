"""Any timm architecture by name, with its head sized for our classes and its stem for our channels."""

from __future__ import annotations

import functools

import torch
from torch import nn

from imgclf.errors import ImgclfError


@functools.lru_cache(maxsize=1)
def names() -> list[str]:
    import timm

    return timm.list_models()


def is_timm_model(name: str) -> bool:
    import timm

    return timm.is_model(name)


def list_matching(pattern: str = "*") -> tuple[list[str], set[str]]:
    """Architectures matching a wildcard pattern, and those of them with published weights."""
    import timm

    archs = timm.list_models(pattern)
    with_weights = {n.split(".")[0] for n in timm.list_models(pattern, pretrained=True)}
    return archs, with_weights


def create(name: str, in_channels: int, num_classes: int, *, pretrained: bool = False,
           state_dict: dict[str, torch.Tensor] | None = None, weights_name=None, **kwargs) -> nn.Module:
    """timm.create_model with in_chans and num_classes; weights from the hub or from a state dict we read.

    A local state dict goes through timm's own loading path, so timm's key filters (torchvision names to
    timm's), its input-conv adaptation (e.g. RGB stem summed for grayscale) and its head reset apply.
    """
    import timm

    args = dict(num_classes=num_classes, in_chans=in_channels, **kwargs)
    if state_dict is not None:
        try:
            return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"state_dict": state_dict}, **args)
        except RuntimeError as err:
            text = " ".join(str(err).split())[:240]
            raise ImgclfError(f"{weights_name}: does not fit {name} ({text}); pass weights saved from the same architecture.") from None
    if not pretrained:
        return timm.create_model(name, pretrained=False, **args)
    try:
        return timm.create_model(name, pretrained=True, **args)
    except Exception as err:  # offline, hub refused, no published weights: all one message with the way out
        reason = " ".join(str(err).split()) or type(err).__name__
        reason = reason if len(reason) <= 200 else reason[:200].rsplit(" ", 1)[0] + " ..."
        raise ImgclfError(f"could not get pretrained weights for {name} ({reason}); download them where there is a "
                          "network, or pass a local state dict with --weights FILE.") from None
