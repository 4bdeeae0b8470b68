"""What every built-in network shares: a backbone and a `head`, and timm's names for reaching the head."""

from __future__ import annotations

import torch
from torch import nn


class Classifier(nn.Module):
    """A network whose last layer is `self.head` (an nn.Linear), so heads can be replaced and frozen around."""

    head: nn.Linear

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        self.head = nn.Linear(self.head.in_features, num_classes)


@torch.no_grad()
def flat_size(features: nn.Module, in_channels: int, image_size: tuple[int, int]) -> int:
    """Number of features `features` gives for one image: the in_features nobody should compute by hand."""
    was_training = features.training
    features.eval()
    out = features(torch.zeros(1, in_channels, *image_size))
    features.train(was_training)
    return int(out[0].numel())
