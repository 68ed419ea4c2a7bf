"""VGG-16 for CIFAR: VGG-1 (one FC, the output layer) and VGG-2 (an extra hidden FC of 512)."""

from __future__ import annotations

import torch.nn as nn

from ._registry import register_model

VGG16_CFG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def _features(in_channels: int, widths: tuple[int | str, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    c = in_channels
    for w in widths:
        if w == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(c, int(w), 3, padding=1), nn.BatchNorm2d(int(w)), nn.ReLU()]
            c = int(w)
    return nn.Sequential(*layers)


class VGG(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, hidden_fc: int = 0):
        super().__init__()
        self.features = _features(in_channels, VGG16_CFG)
        last = [w for w in VGG16_CFG if w != "M"][-1]
        head: list[nn.Module] = [nn.Flatten()]
        if hidden_fc:
            head += [nn.Linear(int(last), hidden_fc), nn.ReLU(), nn.Linear(hidden_fc, num_classes)]
        else:
            head += [nn.Linear(int(last), num_classes)]
        self.classifier = nn.Sequential(*head)

    def forward(self, x):
        return self.classifier(self.features(x))


@register_model("vgg16-cifar", input_shape=(3, 32, 32), num_classes=10, description="VGG-1: VGG-16 (BN) + 1 FC, CIFAR")
def vgg16_cifar(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return VGG(num_classes, in_channels, hidden_fc=0)


@register_model("vgg16-cifar-fc2", input_shape=(3, 32, 32), num_classes=10, description="VGG-2: VGG-16 (BN) + FC512 + FC, CIFAR")
def vgg16_cifar_fc2(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return VGG(num_classes, in_channels, hidden_fc=512)
