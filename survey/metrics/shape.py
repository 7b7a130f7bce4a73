"""Generalized shape metrics between representations whose rows are the same m stimuli (DESIGN §5.1).

Williams, Kunz, Kornblith & Linderman, "Generalized Shape Metrics on Neural Representations", NeurIPS 2021:
the linear family with partial whitening (§3.1, eq. 6), the permutation metric (§3.1), angular CKA (§3.3) and
the convolutional metric (§3.4). Duong, Zhou, Nassar & Williams, "Representational Dissimilarity Metric Spaces
for Stochastic Neural Networks", ICLR 2023: the Gaussian stochastic shape metric (eq. 7, Bures/Wasserstein
interpolated by alpha in [0, 2]).

Every metric here is the distance between orbits of a group acting by isometries, written the same way from
one "cross" term ⟨a, b⟩ = max over the group of the alignment, and the norms of the prepared representations:

    angular   θ = arccos( ⟨a, b⟩ / (‖a‖ ‖b‖) )            in [0, π]
    euclidean d = sqrt( ‖a‖² + ‖b‖² − 2 ⟨a, b⟩ )           (not divided by m)

Both forms cancel catastrophically for nearly equivalent pairs (a distance that is truly 0 comes out near
sqrt(ε)·‖a‖ ≈ 1e-8‖a‖, whatever the BLAS kernel). Pairs whose gap is under `REFINE_GAP` of the norms are recomputed
from the aligned residual instead: d = ‖a − g*b‖ and θ = 2 arcsin(‖â − g*b̂‖ / 2), with g* the optimal group element.

The engine (`ShapeMetric`) prepares each representation once (centred, partially whitened, reduced to a thin
m × r factor) and gets a whole block of pairs from one large matrix product plus batched singular values, in
float64, with PyTorch on the GPU when there is one. Each metric's own math is one small `ShapeFamily` class in
`survey.metrics.shapes`, found through the registry of `survey.metrics.configuration`.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch

from survey.errors import SurveyError
from survey.metrics.configuration import (
    DEFAULT_ALPHA,
    DEFAULT_CENTER,
    DEFAULT_METRIC,
    DEFAULT_SCORE,
    MetricKind,
    Score,
    check_configuration,
    metric_kind,
)
from survey.validation import real_array, resolve_device

MAX_MAGNITUDE = 1e100  # larger |values| overflow float64 SVDs, smaller non-zero scales underflow them
EIGENVALUE_FLOOR = 1e-7  # eigenvalues of XᵀX are clipped here before whitening (DESIGN §5.1)
BLOCK_BYTES = 1 << 28  # memory for one block of cross products
# Pairs whose relative gap (‖a‖² + ‖b‖² − 2⟨a, b⟩) / (‖a‖² + ‖b‖²), or 1 − cos θ for the angular score, is at most
# this are recomputed from the aligned residual. The cross term carries an absolute error of about γ·ε·‖a‖‖b‖ (γ ≲ the
# factor width, ≤ 1e3 here), so elsewhere the plain formulas keep a relative error below γ·ε / (2·REFINE_GAP) ≈ 1e-10.
REFINE_GAP = 1e-3
Gaussians = tuple[torch.Tensor, torch.Tensor]  # per-stimulus means (m × n) and covariance factors (m × n × k)


@dataclass(frozen=True)
class Prepared:
    """A representation reduced to what every pair needs: `data` (metric-specific) and its norm ‖a‖."""

    data: torch.Tensor | Gaussians
    norm: float

    @property
    def width(self) -> int:
        """Columns of the factor: r for linear / CKA, units for permutation and stochastic, channels for conv."""
        data = self.data[0] if isinstance(self.data, tuple) else self.data
        return int(data.shape[-1] if data.ndim == 2 else data.shape[1])

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The factors and norm as NumPy arrays (for storage); `from_arrays` gives back the same values bit for bit."""
        tensors = self.data if isinstance(self.data, tuple) else (self.data,)
        return {**{f"data{i}": tensor.cpu().numpy() for i, tensor in enumerate(tensors)}, "norm": np.array(self.norm)}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], device: torch.device | str = "cpu") -> Prepared:
        tensors = tuple(torch.from_numpy(arrays[f"data{i}"]).to(device) for i in range(len(arrays) - 1))
        return cls(tensors if len(tensors) > 1 else tensors[0], float(arrays["norm"]))


def check_representation(array: object, name: str, ndim: int = 2, layout: str = "stimuli × units") -> np.ndarray:
    """`array` as contiguous float64 (torch.from_numpy rejects negative strides) if it is a finite, non-empty
    `ndim`-D array of real numbers within float64's accurate range; otherwise one clear SurveyError."""
    values = real_array(array, f"representation {name}", (ndim,), layout)
    scale = float(np.abs(values).max())
    if scale > MAX_MAGNITUDE or 0 < scale < 1 / MAX_MAGNITUDE:
        raise SurveyError(f"representation {name} reaches |{scale:g}|, outside [{1 / MAX_MAGNITUDE:g}, "
                          f"{MAX_MAGNITUDE:g}] where float64 singular values stay accurate; rescale the responses")
    return values


def partial_whitening_scales(singular_values: torch.Tensor, alpha: float) -> torch.Tensor:
    """Singular values of X_w = Xc Z given those of Xc (Williams et al. 2021 eq. 6, variance preserving).

    At α = 0 every non-clipped direction gets the same weight, so two representations of full rank m (units ≥
    stimuli) span the same centred space and are 0 apart: CCA needs fewer units than stimuli.

    With λ = s² (eigenvalues of XcᵀXc, clipped at 1e-7), d = α + (1 − α) λ^(−1/2) and Z = V diag(c·d) Vᵀ,
    X_w = U diag(c·s·d) Vᵀ; c makes ‖X_w‖_F = ‖Xc‖_F.

    Each representation is whitened on its own: c counts only its min(m, n) singular values. netrep zero-pads the
    narrower representation first and counts every eigenvalue of the padded XcᵀXc (each clipped zero adds about
    (1 − α)²), so its c, and hence its euclidean score at α < 1, depends on the other representation's width (and
    on units beyond m); the angular score, blind to a common scale, is the same.
    """
    lam = singular_values.square().clamp_min(EIGENVALUE_FLOOR)
    scaled = singular_values * (alpha + (1.0 - alpha) * lam.rsqrt())
    total = scaled.square().sum()
    if total == 0:
        return scaled
    return scaled * torch.sqrt(singular_values.square().sum() / total)


def _score(cross: np.ndarray, norm_a: np.ndarray, norm_b: np.ndarray, score: str) -> np.ndarray:
    if score == "angular":
        return np.arccos(np.clip(cross / (norm_a * norm_b), -1.0, 1.0))
    return np.sqrt(np.maximum(norm_a**2 + norm_b**2 - 2.0 * cross, 0.0))


def _relative_gap(cross: np.ndarray, norm_a: np.ndarray, norm_b: np.ndarray, score: str) -> np.ndarray:
    """How much of the norms survives the cancellation in `_score`: 1 − cos θ (angular), d² / (‖a‖² + ‖b‖²)."""
    if score == "angular":
        return 1.0 - cross / (norm_a * norm_b)
    total = norm_a**2 + norm_b**2
    return (total - 2.0 * cross) / total


def _residual_score(aligned_a: torch.Tensor, aligned_b: torch.Tensor, norm_a: float, norm_b: float,
                    score: str) -> float:
    """The score from the aligned pair (a, g*b) itself: ‖a − g*b‖, or 2 arcsin(‖â − g*b̂‖ / 2) for the angle between
    them (the chord of two unit vectors is 2 sin(θ/2)); accurate to rounding of the norms even when θ ≈ 0."""
    if score == "euclidean":
        return float(torch.linalg.norm(aligned_a - aligned_b))
    chord = float(torch.linalg.norm(aligned_a / norm_a - aligned_b / norm_b))
    return 2.0 * float(np.arcsin(min(chord / 2.0, 1.0)))


class ShapeFamily(ABC):
    """One shape metric's own math (netrep's style: one metric, one small class), for one `alpha` and centring:
    how a representation is prepared, and the cross term ⟨a, b⟩ = max over the metric's group of the alignment of
    two prepared ones. `ShapeMetric` checks the inputs and turns cross terms and norms into scores."""

    def __init__(self, alpha: float, center: bool) -> None:
        self.alpha, self.center = alpha, center

    def metric_input(self, array: np.ndarray, conv_size: int | None) -> np.ndarray:
        """A stored array as the metric takes it (unchanged, unless the metric pools maps)."""
        return array

    @abstractmethod
    def prepare(self, x: torch.Tensor, name: str) -> Prepared:
        """One representation (float64, its kind's input layout) reduced to what every pair needs."""

    @abstractmethod
    def cross_pair(self, a: Prepared, b: Prepared) -> float:
        """⟨a, b⟩ for one pair."""

    def cross(self, rows: Sequence[Prepared], cols: Sequence[Prepared],
              pairs: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        """⟨a, b⟩ for each of `pairs`; one pair at a time unless the metric batches them."""
        return np.array([self.cross_pair(rows[i], cols[j]) for i, j in zip(*pairs, strict=True)], np.float64)

    @abstractmethod
    def aligned(self, a: Prepared, b: Prepared) -> tuple[torch.Tensor, torch.Tensor]:
        """(a, g*b): `a` and `b` moved by the group element g* that maximises ⟨a, g b⟩, as two tensors of one shape
        with norms ‖a‖ and ‖b‖, so that ‖a − g*b‖ is the euclidean distance without cancellation."""


@cache
def family_class(kind: MetricKind) -> type[ShapeFamily]:
    """The ShapeFamily subclass `kind.engine` names (``module:Class``), imported once."""
    module, name = kind.engine.split(":")
    return getattr(importlib.import_module(module), name)


class ShapeMetric:
    """One metric configuration: `prepare` each representation once, then `cross` blocks of pairs.

    `alpha` is the whitening parameter of the linear and convolutional metrics (0 = CCA, 1 = Procrustes) and
    the Bures/mean interpolation of the stochastic metric (0 = means only, 2 = covariances only); the
    permutation metric and CKA have none (alpha must stay 1).
    """

    def __init__(
        self, metric: str = DEFAULT_METRIC, alpha: float = DEFAULT_ALPHA, score: Score = DEFAULT_SCORE,
        center: bool = DEFAULT_CENTER,
        device: str | torch.device | None = None,
    ) -> None:
        check_configuration(metric, alpha, score)
        self.metric, self.alpha, self.score, self.center = metric, float(alpha), score, center
        self.kind = metric_kind(metric)
        self.family = family_class(self.kind)(self.alpha, center)
        self.device = resolve_device(device)

    def __repr__(self) -> str:
        return f"ShapeMetric({self.metric!r}, alpha={self.alpha:g}, score={self.score!r}, center={self.center})"

    def metric_input(self, array: np.ndarray, conv_size: int | None) -> np.ndarray:
        """A stored array as the metric takes it (conv maps: average-pooled to at most `conv_size` a side)."""
        return self.family.metric_input(array, conv_size)

    def prepare(self, array: object, name: str = "X") -> Prepared:
        """Centre, whiten and factor one representation (its layout: the metric kind's `input_layout`)."""
        values = check_representation(array, name, self.kind.input_ndim, self.kind.input_layout)
        prepared = self.family.prepare(torch.from_numpy(values).to(self.device), name)
        if not prepared.norm > 0:
            raise SurveyError(f"representation {name} is constant across stimuli (zero norm after centering); "
                              "drop it or pass center=False")
        return prepared

    def cross(
        self, rows: Sequence[Prepared], cols: Sequence[Prepared], pairs: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> np.ndarray:
        """The cross terms ⟨a, b⟩ for `pairs` (index arrays into rows and cols; default all), as a flat array."""
        pairs = all_pairs(len(rows), len(cols)) if pairs is None else pairs
        return self.family.cross(rows, cols, pairs) if len(pairs[0]) else np.empty(0, np.float64)

    def distances(
        self, rows: Sequence[Prepared], cols: Sequence[Prepared], pairs: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> np.ndarray:
        """Distances for `pairs` (default: the full len(rows) × len(cols) grid, returned flat)."""
        pairs = all_pairs(len(rows), len(cols)) if pairs is None else pairs
        norm_a = np.array([rows[i].norm for i in pairs[0]])
        norm_b = np.array([cols[j].norm for j in pairs[1]])
        cross = self.cross(rows, cols, pairs)
        values = _score(cross, norm_a, norm_b, self.score)
        for k in np.flatnonzero(_relative_gap(cross, norm_a, norm_b, self.score) <= REFINE_GAP):
            a, b = rows[pairs[0][k]], cols[pairs[1][k]]
            values[k] = _residual_score(*self.aligned(a, b), a.norm, b.norm, self.score)
        return values

    def aligned(self, a: Prepared, b: Prepared) -> tuple[torch.Tensor, torch.Tensor]:
        """(a, g*b) for the metric's best group element g* (see ShapeFamily.aligned)."""
        return self.family.aligned(a, b)


def factor_cross(
    rows: Sequence[Prepared], cols: Sequence[Prepared], pairs: tuple[np.ndarray, np.ndarray],
    reduce: Callable[[torch.Tensor], torch.Tensor],
) -> np.ndarray:
    """`reduce`(F_aᵀ F_b) for each pair of thin factors (a batch of r_a × r_b matrices → one value each). Pairs are
    grouped by factor widths (r_a, r_b); each group's cross products come from one matrix product of the stacked
    factors."""
    out = np.empty(len(pairs[0]), np.float64)
    width_a = np.array([rows[i].width for i in pairs[0]])
    width_b = np.array([cols[j].width for j in pairs[1]])
    groups: dict[tuple[int, int], np.ndarray] = {}
    for key in set(zip(width_a.tolist(), width_b.tolist(), strict=True)):
        groups[key] = np.flatnonzero((width_a == key[0]) & (width_b == key[1]))
    for (r_a, r_b), members in groups.items():
        for chunk in _chunks(members, pairs, r_a, r_b):
            ia, ja = np.unique(pairs[0][chunk], return_inverse=True)
            ib, jb = np.unique(pairs[1][chunk], return_inverse=True)
            stacked_a = torch.cat([rows[i].data for i in ia], dim=1)
            stacked_b = torch.cat([cols[j].data for j in ib], dim=1)
            blocks = (stacked_a.mT @ stacked_b).reshape(len(ia), r_a, len(ib), r_b).permute(0, 2, 1, 3)
            out[chunk] = reduce(blocks[torch.from_numpy(ja), torch.from_numpy(jb)]).cpu().numpy()
    return out


def nuclear_norms(matrices: torch.Tensor) -> torch.Tensor:
    """Σ singular values of each matrix of a batch. On the CPU, LAPACK takes a batch one small matrix at a time
    on one core, so the batch is split over torch's threads (≈1.4× on 2 cores)."""
    threads = torch.get_num_threads()
    if matrices.device.type != "cpu" or threads < 2 or len(matrices) < 64:
        return torch.linalg.svdvals(matrices).sum(dim=-1)
    with ThreadPoolExecutor(threads) as pool:
        return torch.cat(list(pool.map(torch.linalg.svdvals, matrices.chunk(threads)))).sum(dim=-1)


def all_pairs(n_rows: int, n_cols: int) -> tuple[np.ndarray, np.ndarray]:
    """Index arrays of every (row, col) pair of an n_rows × n_cols block, row-major."""
    grid = np.meshgrid(np.arange(n_rows), np.arange(n_cols), indexing="ij")
    return grid[0].ravel(), grid[1].ravel()


def _chunks(members: np.ndarray, pairs: tuple[np.ndarray, np.ndarray], r_a: int, r_b: int) -> list[np.ndarray]:
    """Split a width group's pairs so that each chunk's stacked cross product stays under BLOCK_BYTES."""
    budget_reps = max(1, int(np.sqrt(BLOCK_BYTES / 8) / max(r_a, r_b)))
    order = members[np.lexsort((pairs[1][members], pairs[0][members]))]
    row_ids = np.unique(pairs[0][order])
    chunks = []
    for start in range(0, len(row_ids), budget_reps):
        in_rows = order[np.isin(pairs[0][order], row_ids[start:start + budget_reps])]
        col_ids = np.unique(pairs[1][in_rows])
        for col_start in range(0, len(col_ids), budget_reps):
            chunk = in_rows[np.isin(pairs[1][in_rows], col_ids[col_start:col_start + budget_reps])]
            if len(chunk):
                chunks.append(chunk)
    return chunks


def pad_columns(a: torch.Tensor, b: torch.Tensor, dim: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad the narrower of `a` and `b` along `dim` to the wider one's size."""
    width = max(a.shape[dim], b.shape[dim])

    def pad(x: torch.Tensor) -> torch.Tensor:
        extra = [0, 0] * (x.ndim - 1 - dim % x.ndim) + [0, width - x.shape[dim]]
        return torch.nn.functional.pad(x, extra)

    return pad(a), pad(b)


def polar(matrix: torch.Tensor) -> torch.Tensor:
    """The orthogonal polar factor U Vᵀ of `matrix` (batched): the Procrustes maximiser of tr(Qᵀ M)."""
    u, _, vh = torch.linalg.svd(matrix)
    return u @ vh


# ---- the stable user API ----------------------------------------------------------------------------------


def distance(
    X: object, Y: object, metric: str = DEFAULT_METRIC, alpha: float = DEFAULT_ALPHA, score: Score = DEFAULT_SCORE,
    center: bool = DEFAULT_CENTER,
) -> float:
    """The shape distance between two representations of the same stimuli (any widths)."""
    engine = ShapeMetric(metric, alpha, score, center)
    a, b = engine.prepare(X, "X"), engine.prepare(Y, "Y")
    _check_stimuli([X, Y], ["X", "Y"], engine.kind)
    return float(engine.distances([a], [b])[0])


def pairwise(
    reps: Sequence[object], metric: str = DEFAULT_METRIC, alpha: float = DEFAULT_ALPHA,
    score: Score = DEFAULT_SCORE, center: bool = DEFAULT_CENTER, device: str | torch.device | None = None,
    names: Sequence[str] | None = None,
) -> np.ndarray:
    """All pairwise distances of `reps` (m × n_i arrays, equal m, any widths) as a symmetric N × N array."""
    names = list(names) if names is not None else [f"reps[{i}]" for i in range(len(reps))]
    engine = ShapeMetric(metric, alpha, score, center, device)
    _check_stimuli(reps, names, engine.kind)
    prepared = [engine.prepare(rep, name) for rep, name in zip(reps, names, strict=True)]
    upper = np.triu_indices(len(prepared), k=1)
    out = np.zeros((len(prepared), len(prepared)))
    out[upper] = engine.distances(prepared, prepared, upper)
    return out + out.T


def _check_stimuli(reps: Sequence[object], names: Sequence[str], kind: MetricKind) -> None:
    """Every representation must have the same stimuli (and, for conv maps, the same height × width); the one
    that differs from the most common value is named (not merely the first that differs from reps[0])."""
    counts = [np.shape(rep)[0] if np.ndim(rep) else 0 for rep in reps]
    layout = kind.input_layout
    _name_odd_one(counts, names, "stimuli", f"compare representations of the same stimulus set ({layout})")
    if kind.maps:  # maps of the wrong ndim are reported by `prepare`
        maps = [i for i, rep in enumerate(reps) if np.ndim(rep) == kind.input_ndim]
        sizes = [tuple(np.shape(reps[i])[2:]) for i in maps]
        _name_odd_one(sizes, [names[i] for i in maps], "height × width", "pool all maps to one height × width first")


def _name_odd_one(values: Sequence[object], names: Sequence[str], what: str, advice: str) -> None:
    if len(set(values)) > 1:
        common = Counter(values).most_common(1)[0][0]
        odd = next(i for i, value in enumerate(values) if value != common)
        ref = next(i for i, value in enumerate(values) if value == common)
        raise SurveyError(f"representation {names[odd]} has {values[odd]} {what} but {names[ref]} has {common}; "
                          f"{advice}")
