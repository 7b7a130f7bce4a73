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
float64, with PyTorch on the GPU when there is one.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from survey.errors import SurveyError
from survey.metrics.configuration import (
    DEFAULT_ALPHA,
    DEFAULT_CENTER,
    DEFAULT_METRIC,
    DEFAULT_SCORE,
    INPUT_LAYOUT,
    INPUT_NDIM,
    Metric,
    Score,
    check_configuration,
)
from survey.validation import real_array, resolve_device

MAX_MAGNITUDE = 1e100  # larger |values| overflow float64 SVDs, smaller non-zero scales underflow them
EIGENVALUE_FLOOR = 1e-7  # eigenvalues of XᵀX are clipped here before whitening (DESIGN §5.1)
BLOCK_BYTES = 1 << 28  # memory for one block of cross products
STOCHASTIC_MAX_ITER = 2000
STOCHASTIC_HEAT_ITER = 30  # steps each start takes before the best ones go on
STOCHASTIC_RANDOM_STARTS = 16  # fixed pseudo-random rotations added to the three informed starts
STOCHASTIC_KEEP = 4  # starts followed to convergence
STOCHASTIC_TOL = 1e-12
# Pairs whose relative gap (‖a‖² + ‖b‖² − 2⟨a, b⟩) / (‖a‖² + ‖b‖²), or 1 − cos θ for the angular score, is at most
# this are recomputed from the aligned residual. The cross term carries an absolute error of about γ·ε·‖a‖‖b‖ (γ ≲ the
# factor width, ≤ 1e3 here), so elsewhere the plain formulas keep a relative error below γ·ε / (2·REFINE_GAP) ≈ 1e-10.
REFINE_GAP = 1e-3
STOCHASTIC_REFINE_ITER = 500  # at most this many more ascent steps for a refined pair (see _stochastic_pair)
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


class ShapeMetric:
    """One metric configuration: `prepare` each representation once, then `cross` blocks of pairs.

    `alpha` is the whitening parameter of the linear and convolutional metrics (0 = CCA, 1 = Procrustes) and
    the Bures/mean interpolation of the stochastic metric (0 = means only, 2 = covariances only); the
    permutation metric and CKA have none (alpha must stay 1).
    """

    def __init__(
        self, metric: Metric = DEFAULT_METRIC, alpha: float = DEFAULT_ALPHA, score: Score = DEFAULT_SCORE,
        center: bool = DEFAULT_CENTER,
        device: str | torch.device | None = None,
    ) -> None:
        check_configuration(metric, alpha, score)
        self.metric, self.alpha, self.score, self.center = metric, float(alpha), score, center
        self.device = resolve_device(device)

    def __repr__(self) -> str:
        return f"ShapeMetric({self.metric!r}, alpha={self.alpha:g}, score={self.score!r}, center={self.center})"

    # ---- per representation ---------------------------------------------------------------------------

    def prepare(self, array: object, name: str = "X") -> Prepared:
        """Centre, whiten and factor one representation (see `INPUT_LAYOUT` for the array each metric takes)."""
        values = check_representation(array, name, INPUT_NDIM[self.metric], INPUT_LAYOUT[self.metric])
        x = torch.from_numpy(values).to(self.device)
        if self.metric == "stochastic":
            prepared = self._prepare_stochastic(x, name)
        elif self.metric == "conv":
            prepared = self._prepare_conv(x)
        else:
            if self.center:
                x = x - x.mean(dim=0)
            if self.metric == "permutation":
                prepared = Prepared(x, float(torch.linalg.norm(x)))
            else:
                u, s, _ = torch.linalg.svd(x, full_matrices=False)
                if self.metric == "linear":
                    s_w = partial_whitening_scales(s, self.alpha)
                    prepared = Prepared(u * s_w, float(torch.linalg.norm(s_w)))
                else:  # CKA: Gram matrix K = X Xᵀ = (U s²) Uᵀ, normalised so that ⟨a, b⟩ is CKA itself
                    gram_norm = torch.linalg.norm(s.square())
                    prepared = Prepared(u * s / gram_norm.clamp_min(1e-300).sqrt(), 1.0 if gram_norm > 0 else 0.0)
        if not prepared.norm > 0:
            raise SurveyError(f"representation {name} is constant across stimuli (zero norm after centering); "
                              "drop it or pass center=False")
        return prepared

    def _prepare_conv(self, maps: torch.Tensor) -> Prepared:
        """Channel whitening shared over positions; data = the whitened maps' 2-D spectra (m × C × H × W)."""
        m, channels, height, width = maps.shape
        rows = maps.permute(0, 2, 3, 1).reshape(-1, channels)
        if self.center:
            rows = rows - rows.mean(dim=0)
        _, s, vh = torch.linalg.svd(rows, full_matrices=False)
        transform = vh.mT @ torch.diag(partial_whitening_scales(s, self.alpha) / s.clamp_min(1e-300)) @ vh
        whitened = (rows @ transform).reshape(m, height, width, channels).permute(0, 3, 1, 2)
        return Prepared(torch.fft.fft2(whitened), float(torch.linalg.norm(whitened)))

    def _prepare_stochastic(self, trials: torch.Tensor, name: str) -> Prepared:
        """Per-stimulus Gaussians: means (m × n, centred over stimuli) and covariance factors L_i (m × n × k),
        Σ_i = L_i L_iᵀ with k = repeats (deviations / √(R−1)) or n (Σ_i^½), whichever is smaller."""
        repeats = trials.shape[1]
        if repeats < 2:
            raise SurveyError(f"representation {name} has {repeats} repeat; "
                              "the stochastic metric needs ≥ 2 repeats per stimulus")
        means = trials.mean(dim=1)
        factors = (trials - means.unsqueeze(1)).mT / (repeats - 1) ** 0.5
        if repeats > trials.shape[2]:
            eigenvalues, eigenvectors = torch.linalg.eigh(factors @ factors.mT)
            factors = (eigenvectors * eigenvalues.clamp_min(0).sqrt().unsqueeze(-2)) @ eigenvectors.mT
        if self.center:
            means = means - means.mean(dim=0)
        norm2 = (2.0 - self.alpha) * means.square().sum() + self.alpha * factors.square().sum()
        return Prepared((means, factors), float(norm2.sqrt()))

    # ---- pairs --------------------------------------------------------------------------------------

    def cross(
        self, rows: Sequence[Prepared], cols: Sequence[Prepared], pairs: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> np.ndarray:
        """The cross terms ⟨a, b⟩ for `pairs` (index arrays into rows and cols; default all), as a flat array."""
        pairs = all_pairs(len(rows), len(cols)) if pairs is None else pairs
        out = np.empty(len(pairs[0]), np.float64)
        if len(out) == 0:
            return out
        if self.metric in ("linear", "cka"):
            self._cross_factors(rows, cols, pairs, out)
        else:
            for k, (i, j) in enumerate(zip(*pairs, strict=True)):
                out[k] = self._cross_one(rows[i], cols[j])
        return out

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

    def _cross_factors(
        self, rows: Sequence[Prepared], cols: Sequence[Prepared], pairs: tuple[np.ndarray, np.ndarray],
        out: np.ndarray,
    ) -> None:
        """Linear: ‖F_aᵀ F_b‖_* ; CKA: ‖F_aᵀ F_b‖_F². Pairs are grouped by factor widths (r_a, r_b); each group's
        cross products come from one matrix product of the stacked factors, then batched singular values."""
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
                selected = blocks[torch.from_numpy(ja), torch.from_numpy(jb)]
                # linear: nuclear norm ‖F_aᵀF_b‖_*; CKA: squared Frobenius norm ‖F_aᵀF_b‖_F²
                linear = self.metric == "linear"
                values = nuclear_norms(selected) if linear else selected.square().sum(dim=(-2, -1))
                out[chunk] = values.cpu().numpy()

    def _cross_one(self, a: Prepared, b: Prepared) -> float:
        if self.metric == "permutation":
            gains = (a.data.mT @ b.data).cpu().numpy()
            row, col = linear_sum_assignment(gains, maximize=True)
            return float(gains[row, col].sum())
        if self.metric == "conv":
            return float(_conv_per_shift(a.data, b.data).amax())
        return _stochastic_alignment(a.data, b.data, self.alpha)[0]

    def aligned(self, a: Prepared, b: Prepared) -> tuple[torch.Tensor, torch.Tensor]:
        """(a, g*b): `a` and `b` moved by the group element g* that maximises ⟨a, g b⟩, as two tensors of one shape
        with norms ‖a‖ and ‖b‖, so that ‖a − g*b‖ is the euclidean distance without cancellation."""
        if self.metric == "cka":
            return _gram_pair(a.data, b.data)
        if self.metric == "stochastic":
            return _stochastic_pair(a.data, b.data, self.alpha)
        if self.metric == "conv":
            return _conv_pair(a.data, b.data)
        fa, fb = _pad_columns(a.data, b.data)
        if self.metric == "permutation":
            row, col = linear_sum_assignment((fa.mT @ fb).cpu().numpy(), maximize=True)
            return fa[:, torch.from_numpy(row)], fb[:, torch.from_numpy(col)]
        return fa, fb @ _polar(fb.mT @ fa)  # linear: the Procrustes rotation of the thin factors


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


def _pad_columns(a: torch.Tensor, b: torch.Tensor, dim: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad the narrower of `a` and `b` along `dim` to the wider one's size."""
    width = max(a.shape[dim], b.shape[dim])

    def pad(x: torch.Tensor) -> torch.Tensor:
        extra = [0, 0] * (x.ndim - 1 - dim % x.ndim) + [0, width - x.shape[dim]]
        return torch.nn.functional.pad(x, extra)

    return pad(a), pad(b)


def _gram_pair(fa: torch.Tensor, fb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Angular CKA's points K̂ = F Fᵀ (unit Frobenius norm) in the basis of one QR of [F_a, F_b]: R_a R_aᵀ and
    R_b R_bᵀ have the Grams' norms and distance with no m × m matrix and no cancellation."""
    r = torch.linalg.qr(torch.cat([fa, fb], dim=1), mode="r")[1]
    ra, rb = r[:, :fa.shape[1]], r[:, fa.shape[1]:]
    return ra @ ra.mT, rb @ rb.mT


def _conv_per_shift(fa: torch.Tensor, fb: torch.Tensor) -> torch.Tensor:
    """‖Σ_{i,p} x_w[i,:,p] y_w[i,:,p+s]ᵀ‖_* for every circular spatial shift s (H × W), from the maps' spectra
    (Williams et al. 2021 §3.4): the channel cross-covariance at every shift is one inverse FFT."""
    if fa.shape[2:] != fb.shape[2:]:
        raise SurveyError(f"conv maps have spatial sizes {tuple(fa.shape[2:])} and {tuple(fb.shape[2:])}; "
                          "pool both to one height × width first")
    per_shift = torch.fft.ifft2(torch.einsum("mahw,mbhw->abhw", fa.conj(), fb)).real
    return torch.linalg.svdvals(per_shift.permute(2, 3, 0, 1)).sum(dim=-1)


def _conv_pair(fa: torch.Tensor, fb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The whitened maps x_w and Q y_w shifted by the best shift s (Q: Procrustes over channels at that shift)."""
    shift = np.unravel_index(int(_conv_per_shift(fa, fb).argmax()), fa.shape[2:])
    x, y = _pad_columns(torch.fft.ifft2(fa).real, torch.fft.ifft2(fb).real, dim=1)
    y = torch.roll(y, (-int(shift[0]), -int(shift[1])), dims=(2, 3))  # y_s[p] = y[p + s]
    rotation = _polar(torch.einsum("mahw,mbhw->ab", x, y))
    return x, torch.einsum("ab,mbhw->mahw", rotation, y)


def _stochastic_alignment(a: Gaussians, b: Gaussians, alpha: float) -> tuple[float, torch.Tensor]:
    """max over orthogonal Q of (2−α) Σ_i μ_iᵀ Q ν_i + α Σ_i ‖L_iᵀ Q K_i‖_* (Duong et al. 2023 eq. 7), where
    Σ_i = L_i L_iᵀ and Ψ_i = K_i K_iᵀ: ‖L_iᵀ Q K_i‖_* = ‖Σ_i^½ Q Ψ_i^½ Qᵀ‖_* is the Bures fidelity term.

    The problem is not concave and has many local maxima once the covariances matter (alpha > 0); a maximum that is
    missed makes the distance too large and can break the triangle inequality. Alternating closed-form Procrustes
    steps (per-stimulus W_i, then the shared Q) increase it monotonically. All starts run together as one batch:
    the means' Procrustes solution, the moment-matched one, the identity and `STOCHASTIC_RANDOM_STARTS` fixed
    pseudo-random rotations each take `STOCHASTIC_HEAT_ITER` steps; the best `STOCHASTIC_KEEP` go on to
    convergence; returns the largest value and its rotation Q.
    """
    (mu, factor_a), (nu, factor_b) = _pad_units(a, b)
    n = mu.shape[1]
    mean_cross = (2.0 - alpha) * mu.mT @ nu  # Σ_i μ_i ν_iᵀ, weighted
    eye = torch.eye(n, dtype=mu.dtype, device=mu.device)
    if alpha == 0.0:  # means only: Procrustes in closed form
        return float(torch.linalg.svdvals(mean_cross).sum()), _polar(mean_cross)
    moments = (factor_a @ factor_a.mT @ factor_b @ factor_b.mT).sum(dim=0)
    generator = torch.Generator().manual_seed(n)
    random = torch.randn(STOCHASTIC_RANDOM_STARTS, n, n, generator=generator, dtype=mu.dtype).to(mu.device)
    starts = torch.cat([torch.stack([mu.mT @ nu, mean_cross + alpha * moments, eye]), random])
    values, q = _stochastic_ascent(_polar(starts), mean_cross, factor_a, factor_b, alpha, STOCHASTIC_HEAT_ITER)
    best = torch.topk(values, min(STOCHASTIC_KEEP, len(values))).indices
    values, q = _stochastic_ascent(q[best], mean_cross, factor_a, factor_b, alpha, STOCHASTIC_MAX_ITER)
    top = int(values.argmax())
    return float(values[top]), q[top]


def _stochastic_pair(a: Gaussians, b: Gaussians, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """[√(2−α) μ, √α L_i W_i] and [√(2−α) ν Qᵀ, √α Q K_i], flattened: their distance² is
    Σ_i (2−α)‖μ_i − Qν_i‖² + α ‖L_i W_i − Q K_i‖², the metric's d² at Q, with W_i = polar(L_iᵀ Q K_i) the Bures
    alignment of each stimulus (Duong et al. 2023 eq. 7). The residual is first order in the error of Q where the
    cross term is second order, so the ascent goes on from the best Q for as long as the residual still falls."""
    _, q = _stochastic_alignment(a, b, alpha)
    (mu, factor_a), (nu, factor_b) = _pad_units(a, b)
    factor_a, factor_b = _pad_columns(factor_a, factor_b)  # the same k: every W_i is square and orthogonal
    mean_cross = (2.0 - alpha) * mu.mT @ nu
    means_weight, bures_weight = (2.0 - alpha) ** 0.5, alpha**0.5
    best, pair = np.inf, None
    for _ in range(STOCHASTIC_REFINE_ITER):
        w, _ = _bures_alignment(q.unsqueeze(0), factor_a, factor_b)
        candidate = (torch.cat([means_weight * mu.flatten(), bures_weight * (factor_a @ w[0]).flatten()]),
                     torch.cat([means_weight * (nu @ q.mT).flatten(), bures_weight * (q @ factor_b).flatten()]))
        # the chord between the unit vectors: scale-free, so it sees Q improve even when ‖a‖ ≠ ‖b‖ dominates ‖a − b‖
        residual = float(torch.linalg.norm(candidate[0] / torch.linalg.norm(candidate[0])
                                           - candidate[1] / torch.linalg.norm(candidate[1])))
        if residual >= best:
            break
        best, pair = residual, candidate
        q = _polar(mean_cross + alpha * (factor_a @ w[0] @ factor_b.mT).sum(dim=0))
    return pair


def _bures_alignment(q: torch.Tensor, factor_a: torch.Tensor, factor_b: torch.Tensor) -> tuple[torch.Tensor,
                                                                                                 torch.Tensor]:
    """For a batch of rotations Q (s × n × n): the per-stimulus Bures rotations W_i = polar(L_iᵀ Q K_i)
    (s × m × k_a × k_b) and the fidelity terms Σ_i ‖L_iᵀ Q K_i‖_* (s)."""
    u, s, vh = torch.linalg.svd(factor_a.mT.unsqueeze(0) @ q.unsqueeze(1) @ factor_b.unsqueeze(0),
                                full_matrices=False)
    return u @ vh, s.sum(dim=(-2, -1))


def _stochastic_ascent(
    q: torch.Tensor, mean_cross: torch.Tensor, factor_a: torch.Tensor, factor_b: torch.Tensor, alpha: float,
    max_iter: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Block coordinate ascent from a batch of rotations `q` (s × n × n): W_i = polar(L_iᵀ Q K_i), then
    Q = polar(Σμνᵀ + α Σ_i L_i W_i K_iᵀ), until no start improves by more than the tolerance.
    Returns the objective of every start (s) and the last rotations."""
    value = torch.full((len(q),), -torch.inf, dtype=q.dtype, device=q.device)
    for _ in range(max_iter):
        w, fidelity = _bures_alignment(q, factor_a, factor_b)
        new = (mean_cross * q).sum(dim=(-2, -1)) + alpha * fidelity
        converged = bool(((new - value) <= STOCHASTIC_TOL * new.abs().clamp_min(1.0)).all())
        value = torch.maximum(new, value)
        if converged:
            break
        q = _polar(mean_cross + alpha * (factor_a.unsqueeze(0) @ w @ factor_b.mT.unsqueeze(0)).sum(dim=1))
    return value, q


def _pad_units(a: Gaussians, b: Gaussians) -> tuple[Gaussians, Gaussians]:
    """Zero-pad the narrower stochastic representation to the wider one's number of units."""
    (mu, nu), (factor_a, factor_b) = _pad_columns(a[0], b[0]), _pad_columns(a[1], b[1], dim=1)
    return (mu, factor_a), (nu, factor_b)


def _polar(matrix: torch.Tensor) -> torch.Tensor:
    """The orthogonal polar factor U Vᵀ of `matrix` (batched): the Procrustes maximiser of tr(Qᵀ M)."""
    u, _, vh = torch.linalg.svd(matrix)
    return u @ vh


# ---- the stable user API ----------------------------------------------------------------------------------


def distance(
    X: object, Y: object, metric: Metric = "linear", alpha: float = 1.0, score: Score = "angular", center: bool = True,
) -> float:
    """The shape distance between two representations of the same stimuli (any widths)."""
    engine = ShapeMetric(metric, alpha, score, center)
    a, b = engine.prepare(X, "X"), engine.prepare(Y, "Y")
    _check_stimuli([X, Y], ["X", "Y"], engine.metric)
    return float(engine.distances([a], [b])[0])


def pairwise(
    reps: Sequence[object], metric: Metric = DEFAULT_METRIC, alpha: float = DEFAULT_ALPHA,
    score: Score = DEFAULT_SCORE, center: bool = DEFAULT_CENTER, device: str | torch.device | None = None,
    names: Sequence[str] | None = None,
) -> np.ndarray:
    """All pairwise distances of `reps` (m × n_i arrays, equal m, any widths) as a symmetric N × N array."""
    names = list(names) if names is not None else [f"reps[{i}]" for i in range(len(reps))]
    engine = ShapeMetric(metric, alpha, score, center, device)
    _check_stimuli(reps, names, engine.metric)
    prepared = [engine.prepare(rep, name) for rep, name in zip(reps, names, strict=True)]
    upper = np.triu_indices(len(prepared), k=1)
    out = np.zeros((len(prepared), len(prepared)))
    out[upper] = engine.distances(prepared, prepared, upper)
    return out + out.T


def _check_stimuli(reps: Sequence[object], names: Sequence[str], metric: str) -> None:
    """Every representation must have the same stimuli (and, for conv maps, the same height × width); the one
    that differs from the most common value is named (not merely the first that differs from reps[0])."""
    counts = [np.shape(rep)[0] if np.ndim(rep) else 0 for rep in reps]
    layout = INPUT_LAYOUT[metric]
    _name_odd_one(counts, names, "stimuli", f"compare representations of the same stimulus set ({layout})")
    if metric == "conv":  # maps of the wrong ndim are reported by `prepare`
        maps = [i for i, rep in enumerate(reps) if np.ndim(rep) == 4]
        sizes = [tuple(np.shape(reps[i])[2:]) for i in maps]
        _name_odd_one(sizes, [names[i] for i in maps], "height × width", "pool all maps to one height × width first")


def _name_odd_one(values: Sequence[object], names: Sequence[str], what: str, advice: str) -> None:
    if len(set(values)) > 1:
        common = Counter(values).most_common(1)[0][0]
        odd = next(i for i, value in enumerate(values) if value != common)
        ref = next(i for i, value in enumerate(values) if value == common)
        raise SurveyError(f"representation {names[odd]} has {values[odd]} {what} but {names[ref]} has {common}; "
                          f"{advice}")
