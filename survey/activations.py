"""Layer activations by forward hooks: batched, on the GPU when there is one, conv maps kept spatially."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from survey.validation import resolve_device


@dataclass(frozen=True)
class LayerActivations:
    """One layer's response to a stimulus set.

    `flat` (n_stimuli × n_units) is what metrics compare: conv maps are average-pooled to at most
    `spatial_pool` positions a side and flattened, other outputs flattened. `spatial`
    (n_stimuli × C × H × W) is the full conv map, kept for the convolutional metric; None otherwise.
    """

    flat: np.ndarray
    spatial: np.ndarray | None


class _EnoughLayers(Exception):  # noqa: N818 - control flow, not an error
    """Raised by the last hook of a batch: the layers after it need not run."""


def preprocess(
    batch: torch.Tensor,
    input_size: int | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> torch.Tensor:
    """Resize (bilinear, antialiased) to `input_size` and normalise channels by `mean`/`std` when given."""
    if input_size is not None and batch.shape[-2:] != (input_size, input_size):
        batch = F.interpolate(batch, size=(input_size, input_size), mode="bilinear", antialias=True,
                              align_corners=False)
    if mean is not None and std is not None:
        shape = (1, -1, 1, 1)
        batch = (batch - batch.new_tensor(mean).view(shape)) / batch.new_tensor(std).view(shape)
    return batch


def extract(
    model: nn.Module,
    images: np.ndarray,
    layers: list[str] | tuple[str, ...],
    *,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    input_size: int | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    spatial_pool: int = 4,
    keep_spatial: bool = True,
) -> dict[str, LayerActivations]:
    """Responses of the named `layers` of `model` to `images` (N × C × H × W float32 in [0, 1]).

    Each layer's output is copied to host memory batch by batch into preallocated arrays; the forward
    pass stops as soon as every requested layer has fired.
    """
    device = resolve_device(device)
    model = model.eval().to(device)
    flat: dict[str, np.ndarray] = {}
    spatial: dict[str, np.ndarray | None] = {}
    n = len(images)
    with torch.inference_mode(), capturing(model, layers) as forward:
        for start in range(0, n, batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size]))
            captured = forward(preprocess(batch.to(device, non_blocking=True), input_size, mean, std))
            stop = start + len(batch)
            for name in layers:
                output = captured[name].float()
                pooled = pool_positions(output, spatial_pool).flatten(1).cpu().numpy()
                if name not in flat:
                    flat[name] = np.empty((n, pooled.shape[1]), np.float32)
                    keep = keep_spatial and output.ndim == 4
                    spatial[name] = np.empty((n, *output.shape[1:]), np.float32) if keep else None
                flat[name][start:stop] = pooled
                if spatial[name] is not None:
                    spatial[name][start:stop] = output.cpu().numpy()
    return {name: LayerActivations(flat[name], spatial[name]) for name in layers}


@contextlib.contextmanager
def capturing(model: nn.Module, layers: list[str] | tuple[str, ...]
              ) -> Iterator[Callable[[torch.Tensor], dict[str, torch.Tensor]]]:
    """Within the block, `forward(batch)` runs `model` only until every named layer has fired and returns their
    outputs (with their autograd graph when gradients are on), by forward hooks removed on exit."""
    modules = dict(model.named_modules())
    missing = [name for name in layers if name not in modules]
    if missing:
        raise KeyError(f"model has no layers {missing}")
    captured: dict[str, torch.Tensor] = {}

    def hook_for(name: str) -> Callable[[nn.Module, tuple, torch.Tensor], None]:
        def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            captured[name] = output[0] if isinstance(output, (tuple, list)) else output
            if len(captured) == len(layers):
                raise _EnoughLayers

        return hook

    def forward(batch: torch.Tensor) -> dict[str, torch.Tensor]:
        captured.clear()
        with contextlib.suppress(_EnoughLayers):
            model(batch)
        return dict(captured)

    handles = [modules[name].register_forward_hook(hook_for(name)) for name in layers]
    try:
        yield forward
    finally:
        for handle in handles:
            handle.remove()


def pool_positions(output: torch.Tensor, size: int) -> torch.Tensor:
    """Conv maps (m × C × H × W) average-pooled to at most `size` positions a side; other outputs unchanged. The
    layer's flat representation and the conv metric's maps both come from here."""
    if output.ndim != 4:
        return output
    height, width = output.shape[-2:]
    return F.adaptive_avg_pool2d(output, (min(height, size), min(width, size)))
