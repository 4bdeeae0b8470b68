"""Transfer learning: freeze the backbone, train the head, unfreeze (fastai's fine_tune pattern)."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from torch import nn

if TYPE_CHECKING:
    from imgclf.models.base import Classifier

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.LayerNorm)


def head_parameter_ids(model: nn.Module) -> set[int]:
    return {id(p) for p in cast("Classifier", model).get_classifier().parameters()}  # a built-in network or a timm one: both have it


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


def param_groups(
    model: nn.Module, lr: float, backbone_lr_scale: float = 1.0, weight_decay: float = 0.0, decay_norms: bool = True
) -> list[dict]:
    """Optimizer groups: the head at lr, the backbone at lr * backbone_lr_scale (discriminative rates).

    Without decay_norms, normalisation weights and biases (every 1-D tensor) get no weight decay: pulling
    a BatchNorm scale towards 0 only fights the next layer's scale (timm's and nanoGPT's habit).
    """
    head = head_parameter_ids(model)
    groups = []
    for name, scale, params in (
        ("backbone", backbone_lr_scale, [p for p in model.parameters() if id(p) not in head]),
        ("head", 1.0, [p for p in model.parameters() if id(p) in head]),
    ):
        flat = [] if decay_norms else [p for p in params if p.ndim <= 1]
        flat_ids = {id(p) for p in flat}
        groups.append(
            {"params": [p for p in params if id(p) not in flat_ids], "lr": lr * scale, "name": name, "weight_decay": weight_decay}
        )
        groups.append({"params": flat, "lr": lr * scale, "name": f"{name} norms and biases", "weight_decay": 0.0})
    return [g for g in groups if g["params"]]


def early_layers(model: nn.Module, stride: int) -> list[nn.Parameter]:
    """The parameters of the layers whose output is 1/stride of the image's side or finer: the stem and the
    first stages, by timm's feature_info. Empty for a network without it, or stride 0."""
    info = getattr(model, "feature_info", None)
    inside = [f["module"] for f in (info or []) if f["reduction"] <= stride] if stride else []
    if not inside:
        return []
    boundary, seen, params = inside[-1], False, []
    for name, module in model.named_modules():  # depth first, in the order the layers run
        within = name == boundary or name.startswith(boundary + ".")
        if seen and not within:
            break
        seen = seen or within
        params.extend(module.parameters(recurse=False))
    return params


def freeze_early_layers(model: nn.Module, stride: int) -> list[nn.Parameter]:
    """Keep the stem and first stages at their pretrained weights: the low-level features they compute
    suit any photos, and on a CPU their backward pass at the largest feature maps is most of a step's
    time (efficientnet_lite0 at 224 px: 11 training images/s with them, 26 without). Returns the
    parameters kept fixed."""
    params = early_layers(model, stride)
    for p in params:
        p.requires_grad_(False)
    return params
