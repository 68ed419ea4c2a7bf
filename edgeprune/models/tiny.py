"""Tiny models for the test-suite (registered like the zoo, hidden from user listings)."""

from __future__ import annotations

import torch.nn as nn

from ._registry import register_model
from .resnet_cifar import BasicBlock


@register_model("tiny-mlp", input_shape=(1, 4, 4), num_classes=3, test_only=True)
def tiny_mlp(num_classes: int = 3, in_features: int = 16, hidden: int = 8) -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )


@register_model("tiny-cnn", input_shape=(1, 8, 8), num_classes=3, test_only=True)
def tiny_cnn(num_classes: int = 3, in_channels: int = 1) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(in_channels, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 2 * 2, 5), nn.ReLU(), nn.Linear(5, num_classes),
    )


class TinyResNet(nn.Module):
    def __init__(self, num_classes: int = 3, in_channels: int = 1):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU())
        self.block1 = BasicBlock(4, 4)
        self.block2 = BasicBlock(4, 6, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(6, num_classes)

    def forward(self, x):
        return self.fc(self.flatten(self.pool(self.block2(self.block1(self.stem(x))))))


@register_model("tiny-resnet", input_shape=(1, 8, 8), num_classes=3, test_only=True)
def tiny_resnet(num_classes: int = 3, in_channels: int = 1) -> nn.Module:
    return TinyResNet(num_classes, in_channels)
