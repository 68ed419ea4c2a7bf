"""An architecture defined in your own code, for `edgeprune train --arch examples/mynets.py:small_cnn`.

Any callable returning an ``nn.Module`` works. Arguments named ``num_classes`` and ``in_channels`` (or timm's
``in_chans``) are filled in from the data; the others come from ``--arch-kwargs '{"width": 32}'``.
"""

import torch.nn as nn


def small_cnn(num_classes: int = 10, in_channels: int = 1, width: int = 32) -> nn.Module:
    """Three conv + BatchNorm blocks and a linear classifier."""

    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)]

    return nn.Sequential(
        *block(in_channels, width), *block(width, 2 * width), *block(2 * width, 4 * width),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, num_classes),
    )
