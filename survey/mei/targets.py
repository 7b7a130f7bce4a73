"""Differentiable MEI targets (DESIGN §5.5): a network unit, or a recorded neuron through its encoding model, as
torch modules from images to activations. Free of the catalog: callers pass loaded networks and fitted readouts.

Images are the MEI's contrast, centred on the stimulus set's mean: a module adds `offset` (the set's mean pixel per
channel) before the network's own preprocessing, so a zero image is the set's mean grey.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from survey.activations import capturing, pool_positions, preprocess
from survey.errors import SurveyError
from survey.metrics.predictivity import Readout


class LayerResponses(nn.Module):
    """Images (B × C × H × W) → B × K responses of `layer`: its units for a flat layer, its channels at the spatial
    centre (row H // 2, column W // 2) for a conv layer."""

    def __init__(self, network: nn.Module, layer: str, preprocessing: dict, offset: torch.Tensor) -> None:
        super().__init__()
        self.network, self.layer, self.preprocessing = network.eval(), layer, preprocessing
        self.register_buffer("offset", offset.view(1, -1, 1, 1))

    def layer_output(self, images: torch.Tensor) -> torch.Tensor:
        with capturing(self.network, [self.layer]) as forward:
            return forward(preprocess(images + self.offset, **self.preprocessing))[self.layer]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        output = self.layer_output(images)
        if output.ndim == 4:
            return output[:, :, output.shape[2] // 2, output.shape[3] // 2]
        if output.ndim == 2:
            return output
        raise SurveyError(f"layer {self.layer!r} gives outputs of shape {tuple(output.shape[1:])}, neither units "
                          "(B × K) nor channel maps (B × C × H × W); pick a flat or a conv layer")


class EncodingModel(LayerResponses):
    """Images → B × U predicted neurons: `layer`'s output pooled to at most `spatial_pool` positions a side and
    flattened exactly as its representation was (survey.activations), then the fitted ridge `readout`: the neural
    predictivity model as one module."""

    def __init__(self, network: nn.Module, layer: str, preprocessing: dict, offset: torch.Tensor, spatial_pool: int,
                 readout: Readout) -> None:
        super().__init__(network, layer, preprocessing, offset)
        self.spatial_pool = spatial_pool
        for name in ("mean", "scale", "weights", "bias"):
            self.register_buffer(name, torch.as_tensor(np.asarray(getattr(readout, name)), dtype=torch.float32))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = pool_positions(self.layer_output(images), self.spatial_pool).flatten(1)
        if features.shape[1] != self.weights.shape[0]:
            raise SurveyError(f"layer {self.layer!r} gives {features.shape[1]} features but the readout was fitted "
                              f"on {self.weights.shape[0]}; refit the encoding model (survey run --stage predictivity)")
        return ((features - self.mean) / self.scale) @ self.weights + self.bias


class RowTargets(nn.Module):
    """Row b of the batch scored by column `columns[b]` of `responses`' output: many targets (and seeds) in one
    forward/backward pass."""

    def __init__(self, responses: nn.Module, columns: Sequence[int]) -> None:
        super().__init__()
        self.responses = responses
        self.register_buffer("columns", torch.as_tensor(list(columns), dtype=torch.long))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        output = self.responses(images)
        if int(self.columns.max()) >= output.shape[1]:
            raise SurveyError(f"target index {int(self.columns.max())} is out of range: the output has "
                              f"{output.shape[1]} units; pick indices below {output.shape[1]}")
        return output[torch.arange(len(images), device=images.device), self.columns]


def closest_units(reference: np.ndarray, candidates: dict[str, np.ndarray]) -> list[tuple[str, int, float]]:
    """For each column of `reference` (N stimuli × T target responses), the (layer, unit, Pearson r) of the
    candidate unit (a column of some layer's N × K responses) whose responses correlate best with it; constant
    columns never match."""
    def standardised(responses: np.ndarray) -> np.ndarray:
        responses = np.asarray(responses, dtype=np.float64)
        centred = responses - responses.mean(axis=0)
        spread = np.sqrt((centred**2).mean(axis=0))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(spread > 0, centred / spread, np.nan)

    target = standardised(reference)
    best = [("", -1, -np.inf)] * target.shape[1]
    for layer, responses in candidates.items():
        r = np.nan_to_num(target.T @ standardised(responses) / len(target), nan=-np.inf)
        for column, unit in enumerate(r.argmax(axis=1)):
            if r[column, unit] > best[column][2]:
                best[column] = (layer, int(unit), float(r[column, unit]))
    return best
