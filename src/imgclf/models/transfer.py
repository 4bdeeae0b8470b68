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


def param_groups(model: nn.Module, lr: float, backbone_lr_scale: float = 1.0, weight_decay: float = 0.0,
                 decay_norms: bool = True) -> list[dict]:
    """Optimizer groups: the head at lr, the backbone at lr * backbone_lr_scale (discriminative rates).

    Without decay_norms, normalisation weights and biases (every 1-D tensor) get no weight decay: pulling
    a BatchNorm scale towards 0 only fights the next layer's scale (timm's and nanoGPT's habit).
    """
    head = head_parameter_ids(model)
    groups = []
    for name, scale, params in (("backbone", backbone_lr_scale, [p for p in model.parameters() if id(p) not in head]),
                                ("head", 1.0, [p for p in model.parameters() if id(p) in head])):
        flat = [] if decay_norms else [p for p in params if p.ndim <= 1]
        flat_ids = {id(p) for p in flat}
        groups.append({"params": [p for p in params if id(p) not in flat_ids], "lr": lr * scale, "name": name,
                       "weight_decay": weight_decay})
        groups.append({"params": flat, "lr": lr * scale, "name": f"{name} norms and biases", "weight_decay": 0.0})
    return [g for g in groups if g["params"]]
