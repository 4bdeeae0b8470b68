"""imgclf's default network: few, wide residual stages with BatchNorm.

Each stage is a conv, a 2x2 max-pool and a residual pair of convs, in the spirit of the fast CIFAR-10
ResNets (Page's DAWNBench entry, airbench): most of the compute runs at reduced resolution, and global
pooling makes it work for any input size. Widths were chosen by benchmarks/default_model.py.

New models put each stage's 2x2 max-pool right after its conv and normalise the pooled map (airbench's
order), and their first conv has no BatchNorm: the normalisation layers at full resolution were half of
a training step on a CPU (torch.profiler: their passes over 256 x 16 x 28 x 28 activations, forward and
backward). Fashion-MNIST, 12 epochs: 93.2% in 130 s of training against 93.1% in about 210 s
(benchmarks/time_to_accuracy.py). Bundles made before record no `pool_first` and load in the old order.

Images larger than 64 px first go through a patch stem (space-to-depth by 2, 4, ..., then the first conv):
lossless, cheap, and it lets the stages run at the 32-64 px where they were tuned, so a folder of
224 px photos trains at roughly the speed of 56 px images instead of at the full resolution's cost
(benchmarks/time_to_accuracy.py, section sizes).
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from imgclf.models.base import Classifier
from imgclf.models.registry import register_model

PATCH_ABOVE = 64  # px: larger images get a patch stem that brings them to at most this side
# A stage pools before its norm only where the pooled map keeps at least this side: on smaller maps the
# norm's batch statistics come from too few pixels, and the saving is nil there anyway. digits (8 px,
# default settings, 18 seeds): 98.5% mean with this rule, 98.1% with every stage pooled first (one
# seed at 95.8%), 98.4% in the old order; Fashion-MNIST (28 px) pools its first two stages first.
MIN_POOLED_SIDE = 7


def fitted_patch(image_size: tuple[int, int]) -> int:
    """The smallest power of two that brings the longer side to PATCH_ABOVE px or less."""
    patch = 1
    while max(image_size) / patch > PATCH_ABOVE:
        patch *= 2
    return patch


def fitted_kwargs(image_size: tuple[int, int]) -> dict:
    """The arguments of a new network for this size, recorded in the bundle. A bundle without one of them
    was made before it existed and loads with the constructor's default, as it was trained."""
    return {"patch": fitted_patch(image_size), "pool_first": True, "min_pooled_side": MIN_POOLED_SIDE}


def conv_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def conv_relu(cin: int, cout: int) -> nn.Sequential:
    """The first conv of a pool-first network: its input is already normalised by the data's mean and std."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True))


def conv_pool_bn(cin: int, cout: int) -> nn.Sequential:
    """conv_bn then pooling, with the pooling moved before the norm: the same function wherever a norm's
    scale is positive (max-pooling commutes with an increasing map), at a quarter of the norm's cost."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.MaxPool2d(2), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SpaceToDepth(nn.Module):
    """nn.PixelUnshuffle for any size: the right and bottom edges are zero-padded (the normalised mean) up
    to a multiple of the patch."""

    def __init__(self, patch: int):
        super().__init__()
        self.patch = patch
        self.unshuffle = nn.PixelUnshuffle(patch)

    def forward(self, x):
        h, w = x.shape[-2:]
        pad_h, pad_w = -h % self.patch, -w % self.patch
        if pad_h or pad_w:
            x = nn.functional.pad(x, (0, pad_w, 0, pad_h))
        return self.unshuffle(x)


class Residual(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.body = nn.Sequential(conv_bn(width, width), conv_bn(width, width))

    def forward(self, x):
        return x + self.body(x)


class SmallResNet(Classifier):
    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        image_size: tuple[int, int],
        widths: tuple[int, ...] = (16, 32, 64),
        dropout: float = 0.0,
        patch: int = 1,
        pool_first: bool = False,
        min_pooled_side: int = 0,
    ):
        super().__init__()
        stem = conv_relu if pool_first else conv_bn
        if patch > 1:  # each output pixel sees a patch x patch block whole; the first conv mixes neighbouring blocks
            layers: list[nn.Module] = [SpaceToDepth(patch), stem(in_channels * patch * patch, widths[0])]
            cin = widths[0]
        else:
            layers = [stem(in_channels, widths[0] // 2)]
            cin = widths[0] // 2
        side = -(-min(image_size) // patch)
        for i, width in enumerate(widths):
            if pool_first and side // 2 >= min_pooled_side:
                layers.append(conv_pool_bn(cin, width))
            else:
                layers += [conv_bn(cin, width), nn.MaxPool2d(2)]
            side //= 2
            if i != 1:  # the middle stage stays plain: a residual there costs time for little accuracy
                layers.append(Residual(width))
            cin = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(cin, num_classes)

    # timm's split of a forward pass, so that the features this network learned serve as timm's do (the
    # label check's nearest neighbours, models/features.py).
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.pool(x).flatten(1)
        return x if pre_logits else self.head(self.dropout(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


register_model(
    "small_resnet",
    SmallResNet,
    "3 stages conv + max-pool + norm + residual pair, widths 16/32/64, global max-pool; "
    f"a patch stem (space-to-depth) above {PATCH_ABOVE} px",
    "imgclf's default",
    is_default=True,
    fitted=fitted_kwargs,
)
register_model(
    "small_resnet_wide",
    partial(SmallResNet, widths=(16, 32, 96)),
    "small_resnet with 96 channels in its last stage (1.2x the time per epoch): the network of --preset best",
    "imgclf",
    fitted=fitted_kwargs,
)
