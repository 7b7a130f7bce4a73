"""Synthetic recording sessions: a fixed V1 → V4 → IT model of the ventral stream, written as NWB files.

The model is deterministic and untrained (PyTorch, CPU, float32). Tuning grows more complex and more
shift-invariant along the hierarchy:

* V1: a Gabor bank (8 orientations × 2 spatial frequencies, quadrature pairs) on the grayscale image gives
  simple (half-wave rectified) and complex (energy) maps; a V1 neuron reads one channel at one position
  near the centre of the image.
* V4: fixed random combinations of V1 complex channels over a 3 × 3 neighbourhood, rectified, divisively
  normalised and locally pooled; a V4 neuron reads one channel with a mid-size Gaussian pooling.
* IT: fixed random sparse combinations of V4 channels, pooled over most of the image, then squared; an IT
  neuron reads one combination.

`write_session` simulates Poisson spiking to a randomly ordered sequence of stimulus presentations and stores
it in the NWB format (https://nwb-schema.readthedocs.io): units with `spike_times` and `location`, one
electrode group per area, and a `stimulus_presentations` intervals table with `stimulus_set` and
`stimulus_index` columns — the structure `survey.sources.nwb.read_session` reads.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from survey.errors import SurveyError

AREAS = ("V1", "V4", "IT")
LATENCY = 0.05  # s from stimulus onset to the start of the response window
RESPONSE_END = 0.25  # s from stimulus onset to the end of the response window
LEAD_TIME = 1.0  # s of spontaneous activity before the first and after the last presentation

_N_ORIENTATIONS = 8
_WAVELENGTH = 4.0  # pixels at pyramid level 0; level 1 (half resolution) doubles it
_KERNEL = 9
_N_V4 = 48
_N_IT = 64
_REFERENCE_SIZE = 32
_N_REFERENCE = 64
# Per area: (largest distance of the read-out centre from the image centre, read-out Gaussian width),
# both as fractions of the image width.
# Percentiles of a neuron's drive on the reference images that set its threshold and its saturation scale.
_CALIBRATION_PERCENTILES = [30, 90]
_READOUT = {"V1": (0.06, 0.02), "V4": (0.08, 0.08), "IT": (0.08, 0.3)}


@dataclass(frozen=True)
class NeuronParams:
    """A sampled population of one area: what each neuron reads from the model and how drive becomes rate.

    `center` (n × 2, y and x) and `width` are fractions of the image width measured from the image centre;
    the rate is ``baseline + gain · x² / (x² + c50²)`` with ``x = max(drive − threshold, 0) / scale`` (a
    thresholded Naka–Rushton output).
    """

    area: str
    channel: np.ndarray
    center: np.ndarray
    width: np.ndarray
    threshold: np.ndarray
    scale: np.ndarray
    baseline: np.ndarray
    gain: np.ndarray
    c50: np.ndarray

    def __len__(self) -> int:
        return len(self.channel)


def _gabor_bank() -> torch.Tensor:
    """Zero-mean, unit-norm Gabor filters: orientations × (even, odd), shape (2·n_orientations) × 1 × k × k."""
    half = _KERNEL // 2
    yy, xx = torch.meshgrid(torch.arange(-half, half + 1.0), torch.arange(-half, half + 1.0), indexing="ij")
    sigma = 0.4 * _WAVELENGTH
    filters = []
    for k in range(_N_ORIENTATIONS):
        theta = np.pi * k / _N_ORIENTATIONS
        u = xx * np.cos(theta) + yy * np.sin(theta)
        envelope = torch.exp(-(xx**2 + yy**2) / (2 * sigma**2))
        for phase in (torch.cos, torch.sin):
            g = envelope * phase(2 * np.pi * u / _WAVELENGTH)
            g = g - envelope * (g.sum() / envelope.sum())
            filters.append(g / g.norm())
    return torch.stack(filters)[:, None].float()


def _sparse_combinations(
    rng: np.random.Generator, n_out: int, n_in: int, n_excitatory: int, n_inhibitory: int
) -> torch.Tensor:
    """Random sparse 3 × 3 convolution weights: a few excitatory and fewer inhibitory inputs per output."""
    weights = np.zeros((n_out, n_in, 3, 3), np.float32)
    for out in range(n_out):
        taps = rng.choice(n_in * 9, n_excitatory + n_inhibitory, replace=False)
        values = np.concatenate([rng.uniform(0.5, 1.0, n_excitatory), -rng.uniform(0.2, 0.5, n_inhibitory)])
        weights[out].reshape(-1)[taps] = values / values[:n_excitatory].sum()
    return torch.from_numpy(weights)


def _pink_noise(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Grayscale 1/f noise images (n × 3 × size × size in [0, 1]) with natural-image-like contrast."""
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.fftfreq(size)[None, :]
    amplitude = 1.0 / np.maximum(np.hypot(fy, fx), 1.0 / size)
    phase = np.exp(2j * np.pi * rng.random((n, size, size)))
    images = np.fft.ifft2(amplitude * phase).real
    images = (images - images.mean(axis=(1, 2), keepdims=True)) / images.std(axis=(1, 2), keepdims=True)
    images = np.clip(0.5 + 0.2 * images, 0.0, 1.0).astype(np.float32)
    return np.repeat(images[:, None], 3, axis=1)


def _reference_images(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Calibration images: full-field 1/f noise, and 1/f-noise discs of random size and place on mid-gray."""
    images = _pink_noise(rng, n, size)
    yy, xx = np.mgrid[:size, :size]
    for image in images[n // 2 :]:
        radius = rng.uniform(0.2, 0.45) * size
        cy, cx = rng.uniform(0.3, 0.7, 2) * size
        disc = np.clip(radius - np.hypot(yy - cy, xx - cx), 0.0, 1.0)
        image[:] = 0.5 + (image - 0.5) * disc
    return images


class HierarchicalModel:
    """The fixed V1 → V4 → IT model; its random weights depend only on `seed`, never on a session."""

    def __init__(self, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self._gabors = _gabor_bank()
        n_complex = 2 * _N_ORIENTATIONS
        self._v4_weights = _sparse_combinations(rng, _N_V4, n_complex, n_excitatory=4, n_inhibitory=2)
        self._it_weights = _sparse_combinations(rng, _N_IT, _N_V4, n_excitatory=3, n_inhibitory=2)
        self.n_channels = {"V1": 5 * n_complex, "V4": _N_V4, "IT": _N_IT}
        self._reference = torch.from_numpy(_reference_images(rng, _N_REFERENCE, _REFERENCE_SIZE))
        with torch.no_grad():
            v4_drive = F.relu(F.conv2d(self._complex(self._v1_level_maps(self._reference)), self._v4_weights))
        self._v4_sigma = 0.1 * float(v4_drive.mean())

    def _v1_level_maps(self, images: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Even and odd Gabor responses at two pyramid levels (full and half resolution)."""
        gray = images[:, 0] * 0.299 + images[:, 1] * 0.587 + images[:, 2] * 0.114
        gray = (gray - gray.mean(dim=(1, 2), keepdim=True))[:, None]
        levels = []
        for level in range(2):
            if level:
                gray = F.avg_pool2d(gray, 2)
            out = F.conv2d(F.pad(gray, (_KERNEL // 2,) * 4, mode="reflect"), self._gabors)
            levels.append((out[:, 0::2], out[:, 1::2]))
        return levels

    @staticmethod
    def _complex(levels: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """V1 complex (energy) maps of both spatial frequencies at half resolution."""
        (even0, odd0), (even1, odd1) = levels
        energy0 = F.max_pool2d(torch.sqrt(even0**2 + odd0**2 + 1e-8), 3, stride=2, padding=1)
        return torch.cat([energy0, torch.sqrt(even1**2 + odd1**2 + 1e-8)], dim=1)

    @staticmethod
    def _v1_channels(levels: list[tuple[torch.Tensor, torch.Tensor]], channel: np.ndarray) -> list[torch.Tensor]:
        """Per pyramid level, the maps of the given V1 channels (B × K × h × w; zero for other levels' channels).

        Channel c is frequency level c // 40, then kind (c % 40) // 8 — simple +even, −even, +odd, −odd, or
        complex energy — at orientation c % 8.
        """
        level_of, kind, orientation = channel // 40, (channel % 40) // _N_ORIENTATIONS, channel % _N_ORIENTATIONS
        ori = torch.from_numpy(orientation)
        sign = torch.from_numpy(np.where(kind % 2 == 0, 1.0, -1.0).astype(np.float32))[None, :, None, None]
        uses_odd = torch.from_numpy((kind == 2) | (kind == 3))[None, :, None, None]
        energy = torch.from_numpy(kind == 4)[None, :, None, None]
        mine = [torch.from_numpy(level_of == level)[None, :, None, None] for level in range(len(levels))]
        maps = []
        for (even, odd), here in zip(levels, mine):
            e, o = even[:, ori], odd[:, ori]
            simple = F.relu(sign * torch.where(uses_odd, o, e))
            maps.append(torch.where(here, torch.where(energy, torch.sqrt(e**2 + o**2 + 1e-8), simple), 0.0))
        return maps

    def _v4_maps(self, complex_maps: torch.Tensor) -> torch.Tensor:
        """V4: rectified random combinations of complex channels, divisively normalised, locally pooled."""
        drive = F.relu(F.conv2d(F.pad(complex_maps, (1, 1, 1, 1), mode="replicate"), self._v4_weights))
        pool = F.avg_pool2d(drive.mean(dim=1, keepdim=True), 5, stride=1, padding=2, count_include_pad=False)
        normalised = drive / (self._v4_sigma + pool)
        return F.avg_pool2d(normalised, 3, stride=1, padding=1, count_include_pad=False)

    def _it_maps(self, v4_maps: torch.Tensor) -> torch.Tensor:
        """IT: rectified sparse combinations of V4 channels at a quarter of the image resolution."""
        pooled = F.max_pool2d(v4_maps, 3, stride=1, padding=1)
        return F.relu(F.conv2d(F.pad(pooled, (2, 2, 2, 2), mode="replicate"), self._it_weights, dilation=2))

    def _area_drive(self, images: torch.Tensor, area: str, channel: np.ndarray, center: np.ndarray,
                    width: np.ndarray) -> torch.Tensor:
        """Read-out of each neuron's channel of `area` for a batch of images (B × K)."""
        levels = self._v1_level_maps(images)
        if area == "V1":
            maps = self._v1_channels(levels, channel)
            return sum(self._readout(m, center, width) for m in maps)
        maps = self._v4_maps(self._complex(levels))
        if area == "IT":
            maps = self._it_maps(maps)
        return self._readout(maps[:, torch.from_numpy(channel)], center, width)

    @staticmethod
    def _readout(maps: torch.Tensor, center: np.ndarray, width: np.ndarray) -> torch.Tensor:
        """Gaussian-weighted spatial average of map k (B × K × h × w) around neuron k's centre (B × K)."""
        size = maps.shape[-1]
        grid = (torch.arange(size, dtype=torch.float64) + 0.5) / size - 0.5
        cy = torch.from_numpy(center[:, 0])[:, None]
        cx = torch.from_numpy(center[:, 1])[:, None]
        w = torch.from_numpy(width)[:, None]
        wy = torch.exp(-((grid[None] - cy) ** 2) / (2 * w**2))
        wx = torch.exp(-((grid[None] - cx) ** 2) / (2 * w**2))
        weights = (wy[:, :, None] * wx[:, None, :]).float()
        weights = weights / weights.sum(dim=(1, 2), keepdim=True)
        return torch.einsum("bkhw,khw->bk", maps, weights)

    def _drive(self, images: np.ndarray, area: str, channel: np.ndarray, center: np.ndarray,
               width: np.ndarray) -> np.ndarray:
        if area not in AREAS:
            raise SurveyError(f"unknown area {area!r}; choose from {', '.join(AREAS)}")
        images = np.asarray(images, dtype=np.float32)
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[2] != images.shape[3] or images.shape[2] < 16:
            raise SurveyError(f"images of shape {images.shape} are not N × 3 × H × H with H ≥ 16; resize them")
        batch = max(1, (256 * 32 * 32) // (images.shape[2] * images.shape[3]))
        out = []
        with torch.no_grad():
            for start in range(0, len(images), batch):
                batch_images = torch.from_numpy(images[start : start + batch])
                out.append(self._area_drive(batch_images, area, channel, center, width))
        drive = torch.cat(out).double().numpy() if out else np.zeros((0, len(channel)))
        return drive**2 if area == "IT" else drive

    def sample_neurons(self, area: str, n: int, rng: np.random.Generator) -> NeuronParams:
        """Draw `n` neurons of `area`: a channel, a read-out position near the centre and a rate curve.

        Each neuron's threshold and scale come from its drive on the model's reference 1/f-noise images, so
        every neuron has a similar dynamic range whatever its channel.
        """
        offset, width = _READOUT.get(area, (0.0, 0.0))
        channel = rng.integers(0, self.n_channels.get(area, 1), n)
        center = rng.uniform(-offset, offset, (n, 2))
        widths = np.full(n, width)
        reference = self._reference.numpy()
        low, high = np.percentile(self._drive(reference, area, channel, center, widths), _CALIBRATION_PERCENTILES, axis=0)
        # A channel that the reference images barely drive would give a silent neuron; redraw it.
        for _ in range(20):
            dead = high - low <= 1e-3 * np.median(high - low)
            if not dead.any():
                break
            channel[dead] = rng.integers(0, self.n_channels[area], int(dead.sum()))
            redrawn = self._drive(reference, area, channel[dead], center[dead], widths[dead])
            low[dead], high[dead] = np.percentile(redrawn, _CALIBRATION_PERCENTILES, axis=0)
        return NeuronParams(
            area=area, channel=channel, center=center, width=widths, threshold=low,
            scale=np.maximum(high - low, 1e-12), baseline=rng.uniform(2.0, 6.0, n),
            gain=rng.uniform(25.0, 55.0, n), c50=rng.uniform(0.5, 1.0, n),
        )

    def rates(self, images: np.ndarray, area: str, neurons: NeuronParams) -> np.ndarray:
        """Firing rates in Hz (N × n_neurons, float32) of `neurons` of `area` to `images` (N × 3 × H × H in [0, 1])."""
        if neurons.area != area:
            raise SurveyError(f"neurons were sampled for {neurons.area}, not {area}; sample them for {area}")
        drive = self._drive(images, area, neurons.channel, neurons.center, neurons.width)
        x = np.maximum(drive - neurons.threshold, 0.0) / neurons.scale
        rate = neurons.baseline + neurons.gain * x**2 / (x**2 + neurons.c50**2)
        return rate.astype(np.float32)


@lru_cache(maxsize=1)
def default_model() -> HierarchicalModel:
    """The shared model (seed 0) that `write_session` simulates."""
    return HierarchicalModel(seed=0)
