"""A user network for tests: an importable `module:callable` target."""

from torch import nn


def small_cnn(width: int = 4) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(4 * width, 3)
    )
