"""The default network for small images (up to about 64 px): few, wide residual stages with BatchNorm.

Each stage is a conv, a 2x2 max-pool and a residual pair of convs, in the spirit of the fast CIFAR-10
ResNets (Page's DAWNBench entry, airbench): most of the compute runs at reduced resolution, and global
pooling makes it work for any input size. Widths were chosen by benchmarks/default_model.py.
"""

from __future__ import annotations

import torch
from torch import nn

from imgclf.models.base import Classifier
from imgclf.models.registry import register_model


def conv_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class Residual(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.body = nn.Sequential(conv_bn(width, width), conv_bn(width, width))

    def forward(self, x):
        return x + self.body(x)


class SmallResNet(Classifier):
    def __init__(self, in_channels: int, num_classes: int, image_size: tuple[int, int],
                 widths: tuple[int, ...] = (16, 32, 64), dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = [conv_bn(in_channels, widths[0] // 2)]
        cin = widths[0] // 2
        for i, width in enumerate(widths):
            layers += [conv_bn(cin, width), nn.MaxPool2d(2)]
            if i != 1:  # the middle stage stays plain: a residual there costs time for little accuracy
                layers.append(Residual(width))
            cin = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.pool(self.features(x)).flatten(1)))


register_model("small_resnet", SmallResNet, "3 stages conv + max-pool + residual pair, widths 16/32/64, global max-pool",
               "imgclf's default for images up to 64 px", default_for_small=True)
