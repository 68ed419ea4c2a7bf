"""LeNet-300-100 and LeNet-5 (Caffe variant), the papers' MNIST / Fashion-MNIST networks."""

from __future__ import annotations

import torch.nn as nn

from ._registry import register_model


@register_model("lenet300", input_shape=(1, 28, 28), num_classes=10, description="LeNet-300-100: 784-300-100-10 MLP")
def lenet300(num_classes: int = 10, in_features: int = 784, hidden: tuple[int, int] = (300, 100)) -> nn.Module:
    h1, h2 = hidden
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_features, h1),
        nn.ReLU(),
        nn.Linear(h1, h2),
        nn.ReLU(),
        nn.Linear(h2, num_classes),
    )


@register_model("lenet5", input_shape=(1, 28, 28), num_classes=10, description="LeNet-5 (Caffe): conv20-conv50-fc500-fc10")
def lenet5(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(in_channels, 20, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(20, 50, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(50 * 4 * 4, 500),
        nn.ReLU(),
        nn.Linear(500, num_classes),
    )
