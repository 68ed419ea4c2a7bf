"""ResNet-20 and ResNet-32 for CIFAR (He et al. 2016): 3 stages x 3 or 5 basic blocks with 16/32/64 channels.

Downsampling shortcuts are 1x1 conv + BN projections (option B) rather than zero-padding (option A): they add 2,752
parameters (ResNet-32: 0.467 M in all; ResNet-20: 0.272 M) and keep every channel a real, prunable tensor, which
structural surgery and ONNX need.
"""

from __future__ import annotations

import torch.nn as nn

from ..errors import ModelError
from ._registry import register_model


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.relu2 = nn.ReLU()

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth: int = 32, num_classes: int = 10, in_channels: int = 3, widths=(16, 32, 64)):
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        blocks: list[nn.Module] = []
        cin = widths[0]
        for stage, w in enumerate(widths):
            for i in range(n):
                blocks.append(BasicBlock(cin, w, 2 if (i == 0 and stage > 0) else 1))
                cin = w
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layers(x)
        return self.fc(self.flatten(self.pool(x)))


@register_model("resnet32-cifar", input_shape=(3, 32, 32), num_classes=10, description="ResNet-32 for CIFAR (16/32/64)")
def resnet32_cifar(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return CifarResNet(32, num_classes, in_channels)


@register_model("resnet20-cifar", input_shape=(3, 32, 32), num_classes=10,
                description="ResNet-20 for CIFAR (16/32/64; width scales all three stages)")
def resnet20_cifar(num_classes: int = 10, in_channels: int = 3, width: int = 16) -> nn.Module:
    """``width``: channels of the first stage; the others are 2x and 4x it (16 gives the paper's 16/32/64)."""
    if width < 1:
        raise ModelError(f"resnet20-cifar: width must be at least 1, got {width}")
    return CifarResNet(20, num_classes, in_channels, widths=(width, 2 * width, 4 * width))
