"""Synthetic recording sessions: a fixed V1 → V4 → IT model of the ventral stream, written as NWB files.

The model is deterministic and untrained (PyTorch, CPU, float32). Tuning grows more complex and more
shift-invariant along the hierarchy:

* V1: a Gabor bank (8 orientations × 2 spatial frequencies, quadrature pairs) on the grayscale image gives
  simple (half-wave rectified) and complex (energy) maps; a V1 neuron reads one channel at one position
  near the centre of the image.
* V4: fixed random combinations of V1 complex channels over a 3 × 3 neighbourhood, rectified, divisively
  normalised and locally pooled; a V4 neuron reads one channel with a mid-size Gaussian pooling.
* IT: fixed random sparse combinations of V4 channels, pooled over most of the image, normalised by the pooled
  activity of all IT channels, then squared; an IT neuron reads one combination.

`write_session` simulates Poisson spiking to a randomly ordered sequence of stimulus presentations and stores
it in the NWB format (https://nwb-schema.readthedocs.io): units with `spike_times` and `location`, one
electrode group per area, and a `stimulus_presentations` intervals table with `stimulus_set` and
`stimulus_index` columns — the structure `survey.sources.nwb.read_session` reads.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache

import numpy as np
import torch
from hdmf.backends.hdf5 import H5DataIO
from hdmf.common import VectorData, VectorIndex
from pynwb import NWBHDF5IO, NWBFile
from pynwb.epoch import TimeIntervals
from pynwb.file import Subject
from pynwb.misc import Units
from torch.nn import functional as nnf

from survey.atomic import staged_path
from survey.errors import SurveyError
from survey.validation import real_array

AREAS = ("V1", "V4", "IT")
LATENCY = 0.05  # s from stimulus onset to the start of the response window, which ends at stimulus offset
LEAD_TIME = 1.0  # s of spontaneous activity before the first and after the last presentation
TRIAL_GAIN_SD = 0.2  # s.d. of the log of a per-presentation gain shared by all units (Fano factor ≈ 1 + μσ²)

_N_ORIENTATIONS = 8
_WAVELENGTH = 4.0  # pixels at pyramid level 0; level 1 (half resolution) doubles it
_KERNEL = 9
_V1_PER_LEVEL = 5 * _N_ORIENTATIONS  # simple ±even, ±odd and complex energy, per orientation
_N_V4 = 48
_N_IT = 64
_REFERENCE_SIZE = 32
_N_REFERENCE = 64
# Percentiles of a neuron's drive on the reference images that set its threshold and its saturation scale.
_CALIBRATION_PERCENTILES = (10, 90)
# Per area: (largest distance of the read-out centre from the image centre, read-out Gaussian width),
# both as fractions of the image width.
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
    """Zero-mean, unit-norm Gabor filters, orientation-major with (even, odd) pairs: (2·n_ori) × 1 × k × k."""
    half = _KERNEL // 2
    yy, xx = torch.meshgrid(torch.arange(-half, half + 1.0), torch.arange(-half, half + 1.0), indexing="ij")
    envelope = torch.exp(-(xx**2 + yy**2) / (2 * (0.4 * _WAVELENGTH) ** 2))
    filters = []
    for k in range(_N_ORIENTATIONS):
        theta = np.pi * k / _N_ORIENTATIONS
        u = xx * np.cos(theta) + yy * np.sin(theta)
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
    images = np.fft.ifft2(amplitude * np.exp(2j * np.pi * rng.random((n, size, size)))).real
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


def _readout_weights(size: int, center: np.ndarray, width: np.ndarray) -> tuple[torch.Tensor, slice]:
    """Normalised Gaussian read-out weights (K × s × s) on a size × size map, cropped where all are ~zero.

    Returns the weights and the slice of map rows (and columns) they cover.
    """
    grid = (np.arange(size) + 0.5) / size - 0.5
    wy = np.exp(-((grid[None] - center[:, :1]) ** 2) / (2 * width[:, None] ** 2))
    wx = np.exp(-((grid[None] - center[:, 1:]) ** 2) / (2 * width[:, None] ** 2))
    used = np.flatnonzero((wy.max(axis=0) > 1e-4) | (wx.max(axis=0) > 1e-4))
    cover = slice(int(used.min()), int(used.max()) + 1)
    weights = wy[:, cover, None] * wx[:, None, cover]
    weights /= weights.sum(axis=(1, 2), keepdims=True)
    return torch.from_numpy(weights.astype(np.float32)), cover


def _readout(maps: torch.Tensor, weights: torch.Tensor, cover: slice) -> torch.Tensor:
    """Map k (B × K × h × w) averaged with neuron k's read-out weights: B × K."""
    return torch.einsum("bkhw,khw->bk", maps[:, :, cover, cover], weights)


class HierarchicalModel:
    """The fixed V1 → V4 → IT model; its random weights depend only on `seed`, never on a session."""

    def __init__(self, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self._gabors = _gabor_bank()
        n_complex = 2 * _N_ORIENTATIONS
        self._v4_weights = _sparse_combinations(rng, _N_V4, n_complex, n_excitatory=4, n_inhibitory=2)
        self._it_weights = _sparse_combinations(rng, _N_IT, _N_V4, n_excitatory=3, n_inhibitory=2)
        self.n_channels = {"V1": 2 * _V1_PER_LEVEL, "V4": _N_V4, "IT": _N_IT}
        self._reference = _reference_images(rng, _N_REFERENCE, _REFERENCE_SIZE)
        # Semi-saturation constants of the divisive normalisations, a tenth of the mean activity they divide.
        with torch.no_grad():
            complex_maps = self._complex(self._v1_level_maps(torch.from_numpy(self._reference)))
            self._v4_sigma = 0.1 * float(self._v4_combinations(complex_maps).mean())
            self._it_sigma = 0.1 * float(self._it_maps(self._v4_maps(complex_maps)).mean())

    def _v1_level_maps(self, images: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Even and odd Gabor responses of the mean-subtracted luminance at full and half resolution."""
        gray = images[:, 0] * 0.299 + images[:, 1] * 0.587 + images[:, 2] * 0.114
        gray = (gray - gray.mean(dim=(1, 2), keepdim=True))[:, None]
        levels = []
        for level in range(2):
            if level:
                gray = nnf.avg_pool2d(gray, 2, ceil_mode=True)
            out = nnf.conv2d(nnf.pad(gray, (_KERNEL // 2,) * 4, mode="reflect"), self._gabors)
            levels.append((out[:, 0::2], out[:, 1::2]))
        return levels

    @staticmethod
    def _complex(levels: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """V1 complex (energy) maps of both spatial frequencies at half resolution."""
        (even0, odd0), (even1, odd1) = levels
        energy0 = nnf.max_pool2d(torch.sqrt(even0**2 + odd0**2 + 1e-8), 3, stride=2, padding=1)
        return torch.cat([energy0, torch.sqrt(even1**2 + odd1**2 + 1e-8)], dim=1)

    def _v1_drive(self, levels: list[tuple[torch.Tensor, torch.Tensor]], channel: np.ndarray,
                  center: np.ndarray, width: np.ndarray) -> torch.Tensor:
        """Read-out of V1 channels: channel c is level c // 40, kind (c % 40) // 8, orientation c % 8.

        Kinds 0–3 are simple cells (+even, −even, +odd, −odd, half-wave rectified), kind 4 complex energy.
        """
        level_of, kind = channel // _V1_PER_LEVEL, (channel % _V1_PER_LEVEL) // _N_ORIENTATIONS
        ori = torch.from_numpy(channel % _N_ORIENTATIONS)
        sign = torch.from_numpy(np.where(kind % 2 == 0, 1.0, -1.0).astype(np.float32))[None, :, None, None]
        uses_odd = torch.from_numpy((kind == 2) | (kind == 3))[None, :, None, None]
        energy = torch.from_numpy(kind == 4)[None, :, None, None]
        drive = 0.0
        for level, (even, odd) in enumerate(levels):
            weights, cover = _readout_weights(even.shape[-1], center, width)
            e, o = even[:, ori, cover, cover], odd[:, ori, cover, cover]
            simple = nnf.relu(sign * torch.where(uses_odd, o, e))
            maps = torch.where(energy, torch.sqrt(e**2 + o**2 + 1e-8), simple)
            drive = drive + _readout(maps, weights, slice(None)) * torch.from_numpy(level_of == level)
        return drive

    def _v4_combinations(self, complex_maps: torch.Tensor) -> torch.Tensor:
        """Rectified fixed random combinations of complex channels over 3 × 3 neighbourhoods."""
        return nnf.relu(nnf.conv2d(nnf.pad(complex_maps, (1, 1, 1, 1), mode="replicate"), self._v4_weights))

    def _v4_maps(self, complex_maps: torch.Tensor) -> torch.Tensor:
        """V4: the combinations divided by the local mean over all channels, then locally pooled."""
        drive = self._v4_combinations(complex_maps)
        pool = nnf.avg_pool2d(drive.mean(dim=1, keepdim=True), 5, 1, padding=2, count_include_pad=False)
        return nnf.avg_pool2d(drive / (self._v4_sigma + pool), 3, 1, padding=1, count_include_pad=False)

    def _it_maps(self, v4_maps: torch.Tensor) -> torch.Tensor:
        """IT maps: rectified sparse combinations of locally max-pooled V4 channels (dilated 3 × 3)."""
        pooled = nnf.max_pool2d(v4_maps, 3, stride=1, padding=1)
        padded = nnf.pad(pooled, (2, 2, 2, 2), mode="replicate")
        return nnf.relu(nnf.conv2d(padded, self._it_weights, dilation=2))

    def _batch_drive(self, images: torch.Tensor, area: str, channel: np.ndarray, center: np.ndarray,
                     width: np.ndarray) -> torch.Tensor:
        """Each neuron's drive (B × K) for a batch of images."""
        levels = self._v1_level_maps(images)
        if area == "V1":
            return self._v1_drive(levels, channel, center, width)
        maps = self._v4_maps(self._complex(levels))
        weights, cover = _readout_weights(maps.shape[-1], center, width)
        if area == "V4":
            return _readout(maps[:, torch.from_numpy(channel)], weights, cover)
        maps = self._it_maps(maps)
        pooled = _readout(maps[:, torch.from_numpy(channel)], weights, cover)
        everything = _readout(maps.mean(dim=1, keepdim=True).expand(-1, len(channel), -1, -1), weights, cover)
        return (pooled / (self._it_sigma + everything)) ** 2

    def _drive(self, images: np.ndarray, area: str, channel: np.ndarray, center: np.ndarray,
               width: np.ndarray) -> np.ndarray:
        if area not in AREAS:
            raise SurveyError(f"unknown area {area!r}; choose from {', '.join(AREAS)}")
        images = np.asarray(images, dtype=np.float32)
        shape = images.shape
        if len(shape) != 4 or shape[1] != 3 or shape[2] != shape[3] or shape[2] < 16:
            raise SurveyError(f"images of shape {shape} are not N × 3 × H × H with H ≥ 16; resize them")
        batch = max(1, (256 * 32 * 32) // (images.shape[2] * images.shape[3]))
        out = [np.zeros((0, len(channel)))]
        with torch.no_grad():
            for start in range(0, len(images), batch):
                chunk = torch.from_numpy(images[start : start + batch])
                out.append(self._batch_drive(chunk, area, channel, center, width).double().numpy())
        return np.concatenate(out)

    def sample_neurons(self, area: str, n: int, rng: np.random.Generator) -> NeuronParams:
        """Draw `n` neurons of `area`: a channel, a read-out position near the centre and a rate curve.

        Each neuron's threshold and scale come from its drive on the model's reference images (1/f noise,
        full-field and in discs), so every neuron has a similar dynamic range whatever its channel.
        """
        if area not in AREAS:
            raise SurveyError(f"unknown area {area!r}; choose from {', '.join(AREAS)}")
        offset, width = _READOUT[area]
        channel = rng.integers(0, self.n_channels[area], n)
        center = rng.uniform(-offset, offset, (n, 2))
        widths = np.full(n, width)
        drive = self._drive(self._reference, area, channel, center, widths)
        low, high = np.percentile(drive, _CALIBRATION_PERCENTILES, axis=0)
        return NeuronParams(
            area=area, channel=channel, center=center, width=widths, threshold=low,
            scale=high - low, baseline=rng.uniform(2.0, 6.0, n),
            gain=rng.uniform(25.0, 50.0, n), c50=rng.uniform(0.5, 1.0, n),
        )

    def rates(self, images: np.ndarray, area: str, neurons: NeuronParams) -> np.ndarray:
        """Rates in Hz (N × n_neurons, float32) of `neurons` of `area` to `images` (N × 3 × H × H, [0, 1])."""
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


def _check_stimulus_sets(stimulus_sets: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if not stimulus_sets:
        raise SurveyError("no stimulus sets given; pass at least one name → N × 3 × H × H image array")
    checked = {}
    for name, images in stimulus_sets.items():
        if not name:
            raise SurveyError("a stimulus set has no name; name every set (name → N × 3 × H × H images)")
        images = real_array(images, f"stimulus set {name!r}", (4,), "N × 3 × H × H", dtype=np.float32)
        if images.shape[1] != 3:
            raise SurveyError(f"stimulus set {name!r} has shape {images.shape}; pass N × 3 × H × H images")
        if images.min() < 0.0 or images.max() > 1.0:
            raise SurveyError(f"stimulus set {name!r} has values outside [0, 1]; rescale the images")
        checked[name] = images
    return checked


def _simulate_spikes(
    rng: np.random.Generator, rates: np.ndarray, window_start: np.ndarray, window_stop: np.ndarray,
    baseline: np.ndarray, session_end: float,
) -> list[np.ndarray]:
    """Sorted spike times per unit: Poisson counts at `rates` (presentations × units, Hz) inside each response
    window, scaled by a shared log-normal gain per presentation, and spontaneous Poisson spikes at `baseline`
    everywhere else in [0, session_end]."""
    n_presentations, n_units = rates.shape
    gain = rng.lognormal(-TRIAL_GAIN_SD**2 / 2, TRIAL_GAIN_SD, n_presentations)
    duration = window_stop - window_start
    counts = rng.poisson(rates * (gain * duration)[:, None]).ravel()
    evoked_unit = np.repeat(np.tile(np.arange(n_units), n_presentations), counts)
    evoked = np.repeat(np.repeat(window_start, n_units), counts)
    evoked += rng.random(len(evoked)) * np.repeat(np.repeat(duration, n_units), counts)
    spontaneous_unit = np.repeat(np.arange(n_units), rng.poisson(baseline * session_end))
    spontaneous = rng.random(len(spontaneous_unit)) * session_end
    window = np.searchsorted(window_start, spontaneous, side="right") - 1
    outside = (window < 0) | (spontaneous >= window_stop[np.maximum(window, 0)])
    unit = np.concatenate([evoked_unit, spontaneous_unit[outside]])
    times = np.concatenate([evoked, spontaneous[outside]])
    order = np.lexsort((times, unit))
    return np.split(times[order], np.cumsum(np.bincount(unit, minlength=n_units))[:-1])


def session_neurons(
    seed: int, *, units_per_area: int = 30, areas: tuple[str, ...] = AREAS
) -> list[NeuronParams]:
    """The units, area by area, that `write_session` simulates for `seed` (drawn from the first child of the
    seed's SeedSequence; the spikes come from the second)."""
    if not areas or len(set(areas)) != len(areas) or not set(areas) <= set(AREAS):
        raise SurveyError(f"areas {areas!r} must be distinct names from {', '.join(AREAS)}")
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(2)[0])
    return [default_model().sample_neurons(area, units_per_area, rng) for area in areas]


def write_session(
    path: str | os.PathLike,
    stimulus_sets: dict[str, np.ndarray],
    *,
    session_id: str,
    subject: str,
    seed: int,
    units_per_area: int = 30,
    repeats: int = 6,
    areas: tuple[str, ...] = AREAS,
    stimulus_duration: float = 0.25,
    inter_stimulus: float = 0.05,
) -> None:
    """Simulate a recording of `areas` to every image of every set, `repeats` times, and write it as NWB.

    Presentations follow one another in a random order; each unit fires Poisson spikes at its model rate from
    `LATENCY` after onset to offset, and at its baseline rate elsewhere. Everything is drawn from `seed`; the
    file is written to a temporary name in the same directory and renamed into place.
    """
    sets = _check_stimulus_sets(stimulus_sets)
    if stimulus_duration <= LATENCY or inter_stimulus < 0 or repeats < 1 or units_per_area < 1:
        raise SurveyError(
            f"need stimulus_duration > {LATENCY} s, inter_stimulus ≥ 0, repeats ≥ 1 and units_per_area ≥ 1; "
            f"got {stimulus_duration}, {inter_stimulus}, {repeats}, {units_per_area}"
        )

    model = default_model()
    populations = session_neurons(seed, units_per_area=units_per_area, areas=areas)
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(2)[1])
    rates = np.concatenate([
        np.concatenate([model.rates(images, p.area, p) for p in populations], axis=1)
        for images in sets.values()
    ])
    sizes = np.array([len(images) for images in sets.values()])
    set_of = np.repeat(np.arange(len(sets)), sizes * repeats)
    index_of = np.concatenate([np.tile(np.arange(size), repeats) for size in sizes])
    order = rng.permutation(len(set_of))
    set_of, index_of = set_of[order], index_of[order]
    start = LEAD_TIME + np.arange(len(set_of)) * (stimulus_duration + inter_stimulus)
    stop = start + stimulus_duration
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    baseline = np.concatenate([p.baseline for p in populations])
    spikes = _simulate_spikes(rng, rates[offsets[set_of] + index_of], start + LATENCY, stop, baseline,
                              float(stop[-1] + LEAD_TIME))

    start_time = datetime(2024, 1, 1, tzinfo=UTC) + timedelta(minutes=seed % (60 * 24 * 365))
    nwbfile = NWBFile(
        session_description="V1/V4/IT recording simulated by neurosurvey (survey.sources.synthetic)",
        identifier=f"neurosurvey-synthetic-{session_id}-seed{seed}",
        session_start_time=start_time,
        file_create_date=start_time,
        session_id=session_id,
        subject=Subject(subject_id=subject, species="Macaca mulatta",
                        description="synthetic subject: spikes simulated from a fixed V1-V4-IT model"),
    )
    device = nwbfile.create_device(name="synthetic_array", description="simulated multi-electrode array")
    groups = {area: nwbfile.create_electrode_group(name=area, description=f"simulated {area} array",
                                                  location=area, device=device) for area in areas}
    unit_areas = [p.area for p in populations for _ in range(len(p))]
    spike_times = VectorData(name="spike_times", description="spike times (s)",
                             data=H5DataIO(np.concatenate(spikes), compression="gzip", shuffle=True))
    nwbfile.units = Units(name="units", description="simulated units", id=np.arange(len(spikes)), columns=[
        spike_times,
        VectorIndex(name="spike_times_index", data=np.cumsum([len(t) for t in spikes]), target=spike_times),
        VectorData(name="electrode_group", description="electrode group of the unit",
                   data=[groups[area] for area in unit_areas]),
        VectorData(name="location", description="brain area of the unit", data=np.array(unit_areas)),
    ])
    names = np.array(list(sets))
    presentations = TimeIntervals(name="stimulus_presentations", description="image presentations", columns=[
        VectorData(name="start_time", description="stimulus onset (s)", data=start),
        VectorData(name="stop_time", description="stimulus offset (s)", data=stop),
        VectorData(name="stimulus_set", description="stimulus set of the image", data=names[set_of]),
        VectorData(name="stimulus_index", description="index of the image in its set", data=index_of),
    ])
    nwbfile.add_time_intervals(presentations)

    with staged_path(path) as temporary, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The file path provided", category=UserWarning)
        with NWBHDF5IO(temporary, "w") as io:
            io.write(nwbfile)
