"""AlexNet for CIFAR-100: conv 64-192-384-256-256 (3x3), FC 4096-4096-100."""

from __future__ import annotations

import torch.nn as nn

from ._registry import register_model


class AlexNetCifar(nn.Module):
    def __init__(self, num_classes: int = 100, in_channels: int = 3):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 64, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 192, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(192, 384, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(256 * 2 * 2, 4096),
            nn.ReLU(),
            nn.Linear(4096, 4096),
            nn.ReLU(),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


@register_model("alexnet-cifar", input_shape=(3, 32, 32), num_classes=100, description="AlexNet for CIFAR-100")
def alexnet_cifar(num_classes: int = 100, in_channels: int = 3) -> nn.Module:
    return AlexNetCifar(num_classes, in_channels)
