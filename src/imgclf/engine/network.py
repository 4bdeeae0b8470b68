"""The network a run trains, and the loss weights of its classes."""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from imgclf.config import Config
from imgclf.data.imageset import ImageData
from imgclf.errors import ImgclfError
from imgclf.models.registry import Architecture

if TYPE_CHECKING:
    from imgclf.models.base import Classifier

log = logging.getLogger("imgclf")


def build_network(config: Config, data: ImageData) -> tuple[nn.Module, Architecture]:
    """The network a run trains, as its bundle will name it: from an earlier run or bundle (init-from, a new
    head when the classes differ), else by name from the registry with published or local weights."""
    from imgclf.models.registry import create_model, default_model_name, fitted_kwargs

    t = config.train
    if t.init_from:
        from imgclf.engine.bundle import load_bundle

        model, spec = load_bundle(t.init_from)
        arch = spec.architecture
        if arch.in_channels != data.channels:
            raise ImgclfError(
                f"--init-from {t.init_from}: that model takes {arch.in_channels}-channel images, this data has "
                f"{data.channels}; pass --channels {arch.in_channels}."
            )
        if list(spec.classes) != data.classes:
            cast("Classifier", model).reset_classifier(data.num_classes)  # a built-in network or a timm one: both have it
            log.info("init-from %s: new head for %d classes (the bundle had %d)", t.init_from, data.num_classes, len(spec.classes))
        size = cast("tuple[int, int]", tuple(data.image_size))
        return model.train(), dataclasses.replace(arch, num_classes=data.num_classes, image_size=size)
    name = t.model or default_model_name(data.image_size, t.pretrained)
    kwargs = fitted_kwargs(name, data.image_size)
    model = create_model(
        name,
        data.channels,
        data.num_classes,
        data.image_size,
        pretrained=t.pretrained,
        weights=t.weights,
        partial_weights=t.partial_weights,
        **kwargs,
    )
    return model, Architecture(name, data.channels, data.num_classes, cast("tuple[int, int]", tuple(data.image_size)), kwargs)


def class_weights(labels, num_classes: int, device: torch.device) -> torch.Tensor:
    """scikit-learn's 'balanced' weights, n / (classes x count): a rare class weighs as much in the loss as a common one."""
    import numpy as np

    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    weights = len(labels) / (num_classes * np.maximum(counts, 1))
    return torch.tensor(weights, dtype=torch.float32, device=device)
