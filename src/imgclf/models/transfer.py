"""Transfer learning: freeze the backbone, train the head, unfreeze (fastai's fine_tune pattern)."""

from __future__ import annotations

from torch import nn

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.LayerNorm)


def head_parameter_ids(model: nn.Module) -> set[int]:
    return {id(p) for p in model.get_classifier().parameters()}


def freeze_backbone(model: nn.Module, train_norms: bool = True) -> None:
    """Only the head (and, by default, normalisation layers, as fastai does) keep learning.

    Norm layers stay trainable because their statistics must adapt to the new data; the convolutions
    keep what pretraining learnt.
    """
    head = head_parameter_ids(model)
    norm_params = {id(p) for m in model.modules() if isinstance(m, _NORMS) for p in m.parameters(recurse=False)}
    for p in model.parameters():
        p.requires_grad_(id(p) in head or (train_norms and id(p) in norm_params))


def unfreeze(model: nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(True)


def param_groups(model: nn.Module, lr: float, backbone_lr_scale: float = 1.0) -> list[dict]:
    """Optimizer groups: the head at lr, the backbone at lr * backbone_lr_scale (discriminative rates)."""
    head = head_parameter_ids(model)
    head_params = [p for p in model.parameters() if id(p) in head]
    backbone = [p for p in model.parameters() if id(p) not in head]
    groups = [{"params": backbone, "lr": lr * backbone_lr_scale, "name": "backbone"}, {"params": head_params, "lr": lr, "name": "head"}]
    return [g for g in groups if g["params"]]
