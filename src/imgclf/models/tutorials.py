"""The tutorials' networks, layer for layer, with the first Linear sized from the input instead of by hand."""

from __future__ import annotations

from torch import nn

from imgclf.models.base import Classifier, flat_size
from imgclf.models.registry import register_model


class ApparelCNN(Classifier):
    def __init__(self, in_channels: int, num_classes: int, image_size: tuple[int, int]):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 4, kernel_size=3, stride=1, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=2, stride=2),
            nn.Conv2d(4, 4, kernel_size=3, stride=1, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=2, stride=2),
            nn.Flatten(),
        )
        self.head = nn.Linear(flat_size(self.features, in_channels, image_size), num_classes)

    def forward(self, x):
        return self.head(self.features(x))


class Cifar10CNN(Classifier):
    def __init__(self, in_channels: int, num_classes: int, image_size: tuple[int, int]):
        super().__init__()
        layers = []
        for cin, cout in ((in_channels, 16), (16, 32), (32, 64)):
            layers += [nn.Conv2d(cin, cout, kernel_size=3, stride=1, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2)]
        self.features = nn.Sequential(*layers, nn.Flatten(), nn.Dropout(0.25))
        self.pre_logits = nn.Sequential(nn.Linear(flat_size(self.features, in_channels, image_size), 500), nn.ReLU(), nn.Dropout(0.25))
        self.head = nn.Linear(500, num_classes)

    def forward(self, x):
        return self.head(self.pre_logits(self.features(x)))


class SequentialConvNet(Classifier):
    def __init__(self, in_channels: int, num_classes: int, image_size: tuple[int, int]):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, kernel_size=3, padding="same"),
            nn.ReLU(),
            nn.Conv2d(32, 16, kernel_size=3, padding="same"),
            nn.ReLU(),
            nn.Conv2d(16, 8, kernel_size=3, padding="same"),
            nn.ReLU(),
            nn.Flatten(),
        )
        self.head = nn.Linear(flat_size(self.features, in_channels, image_size), num_classes)

    def forward(self, x):
        return self.head(self.features(x))


class MnistCNN(Classifier):
    def __init__(self, in_channels: int, num_classes: int, image_size: tuple[int, int]):
        super().__init__()

        def block(cin: int, cout: int, pool_padding: int = 0) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, kernel_size=3, stride=1, padding=1),
                nn.ReLU(),
                nn.MaxPool2d(kernel_size=2, stride=2, padding=pool_padding),
                nn.Dropout(0.3),
            )

        # The tutorial pads its third pooling (7x7 -> 4x4 at 28 px); kept, as it sets fc1's size.
        self.features = nn.Sequential(block(in_channels, 32), block(32, 64), block(64, 128, pool_padding=1), nn.Flatten())
        self.pre_logits = nn.Sequential(nn.Linear(flat_size(self.features, in_channels, image_size), 625), nn.ReLU(), nn.Dropout(0.3))
        self.head = nn.Linear(625, num_classes)

    def forward(self, x):
        return self.head(self.pre_logits(self.features(x)))


register_model(
    "apparel_cnn",
    ApparelCNN,
    "2 conv blocks of 4 filters + BatchNorm + max-pool, 1 Linear",
    "Identify the Apparels CNN (seed 000, Fashion-MNIST as files + CSV)",
)
register_model(
    "cifar10_cnn", Cifar10CNN, "conv 16/32/64 + max-pool, dropout 0.25, Linear 500, Linear", "CNNModel of the CIFAR-10 pipeline (seed 002)"
)
register_model(
    "sequential_convnet",
    SequentialConvNet,
    "3 same-padded convs 32/16/8, flatten, 1 Linear",
    "nn.Sequential ConvNet (seed 003, Fashion-MNIST arrays)",
)
register_model("mnist_cnn", MnistCNN, "conv 32/64/128 + max-pool + dropout 0.3, Linear 625, Linear", "MNIST CNN (seed 004)")
