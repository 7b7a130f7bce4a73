"""Hook-based extraction equals running the layers by hand, in any batch size, and stops early."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from survey.activations import extract, preprocess


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 5, 3, padding=1)
        self.act = nn.ReLU()
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(5, 2)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.conv(x))
        h = self.pool(h)
        self.calls += 1
        return self.head(h)


def _images(n: int = 10, size: int = 8) -> np.ndarray:
    return np.random.default_rng(0).random((n, 3, size, size), dtype=np.float32)


def test_hooks_equal_manual_forward_and_pooling():
    model, images = Tiny(), _images()
    out = extract(model, images, ["act", "pool"], batch_size=3, spatial_pool=4)
    with torch.no_grad():
        act = model.act(model.conv(torch.from_numpy(images)))
    np.testing.assert_allclose(out["act"].spatial, act.numpy(), rtol=1e-6, atol=1e-6)
    pooled = act.reshape(10, 5, 4, 2, 4, 2).mean(axis=(3, 5)).reshape(10, -1)
    np.testing.assert_allclose(out["act"].flat, pooled.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["pool"].flat, act.mean(axis=(2, 3)).numpy(), rtol=1e-5, atol=1e-6)
    assert out["pool"].spatial is None


def test_batch_size_does_not_change_results():
    model, images = Tiny(), _images(17)
    small = extract(model, images, ["act"], batch_size=4)
    large = extract(model, images, ["act"], batch_size=64)
    np.testing.assert_allclose(small["act"].flat, large["act"].flat, rtol=1e-6, atol=1e-7)


def test_forward_stops_after_the_last_requested_layer():
    model = Tiny()
    extract(model, _images(), ["conv"], batch_size=5)
    assert model.calls == 0  # the head and the rest of forward never ran
    extract(model, _images(), ["head"], batch_size=5)
    assert model.calls == 2


def test_preprocess_resizes_and_normalises():
    batch = torch.full((2, 3, 8, 8), 0.5)
    out = preprocess(batch, input_size=16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert out.shape == (2, 3, 16, 16)
    torch.testing.assert_close(out, torch.zeros_like(out))
