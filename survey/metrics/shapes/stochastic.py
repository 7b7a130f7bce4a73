"""The Gaussian stochastic shape metric (Duong, Zhou, Nassar & Williams, ICLR 2023, eq. 7): each stimulus's
responses over repeats as a Gaussian; alpha interpolates the means' Procrustes term (0) and the Bures term of the
covariances (2)."""

from __future__ import annotations

import numpy as np
import torch

from survey.errors import SurveyError
from survey.metrics.shape import Gaussians, Prepared, ShapeFamily, pad_columns, polar

MAX_ITER = 2000
HEAT_ITER = 30  # steps each start takes before the best ones go on
RANDOM_STARTS = 16  # fixed pseudo-random rotations added to the three informed starts
KEEP = 4  # starts followed to convergence
TOL = 1e-12
REFINE_ITER = 500  # at most this many more ascent steps for a refined pair (see _stochastic_pair)


class StochasticMetric(ShapeFamily):
    def prepare(self, x: torch.Tensor, name: str) -> Prepared:
        """Per-stimulus Gaussians: means (m × n, centred over stimuli) and covariance factors L_i (m × n × k),
        Σ_i = L_i L_iᵀ with k = repeats (deviations / √(R−1)) or n (Σ_i^½), whichever is smaller."""
        repeats = x.shape[1]
        if repeats < 2:
            raise SurveyError(f"representation {name} has {repeats} repeat; "
                              "the stochastic metric needs ≥ 2 repeats per stimulus")
        means = x.mean(dim=1)
        factors = (x - means.unsqueeze(1)).mT / (repeats - 1) ** 0.5
        if repeats > x.shape[2]:
            eigenvalues, eigenvectors = torch.linalg.eigh(factors @ factors.mT)
            factors = (eigenvectors * eigenvalues.clamp_min(0).sqrt().unsqueeze(-2)) @ eigenvectors.mT
        if self.center:
            means = means - means.mean(dim=0)
        norm2 = (2.0 - self.alpha) * means.square().sum() + self.alpha * factors.square().sum()
        return Prepared((means, factors), float(norm2.sqrt()))

    def cross_pair(self, a: Prepared, b: Prepared) -> float:
        return _stochastic_alignment(a.data, b.data, self.alpha)[0]

    def aligned(self, a: Prepared, b: Prepared) -> tuple[torch.Tensor, torch.Tensor]:
        return _stochastic_pair(a.data, b.data, self.alpha)


def _stochastic_alignment(a: Gaussians, b: Gaussians, alpha: float) -> tuple[float, torch.Tensor]:
    """max over orthogonal Q of (2−α) Σ_i μ_iᵀ Q ν_i + α Σ_i ‖L_iᵀ Q K_i‖_* (Duong et al. 2023 eq. 7), where
    Σ_i = L_i L_iᵀ and Ψ_i = K_i K_iᵀ: ‖L_iᵀ Q K_i‖_* = ‖Σ_i^½ Q Ψ_i^½ Qᵀ‖_* is the Bures fidelity term.

    The problem is not concave and has many local maxima once the covariances matter (alpha > 0); a maximum that is
    missed makes the distance too large and can break the triangle inequality. Alternating closed-form Procrustes
    steps (per-stimulus W_i, then the shared Q) increase it monotonically. All starts run together as one batch:
    the means' Procrustes solution, the moment-matched one, the identity and `RANDOM_STARTS` fixed
    pseudo-random rotations each take `HEAT_ITER` steps; the best `KEEP` go on to
    convergence; returns the largest value and its rotation Q.
    """
    (mu, factor_a), (nu, factor_b) = _pad_units(a, b)
    n = mu.shape[1]
    mean_cross = (2.0 - alpha) * mu.mT @ nu  # Σ_i μ_i ν_iᵀ, weighted
    eye = torch.eye(n, dtype=mu.dtype, device=mu.device)
    if alpha == 0.0:  # means only: Procrustes in closed form
        return float(torch.linalg.svdvals(mean_cross).sum()), polar(mean_cross)
    moments = (factor_a @ factor_a.mT @ factor_b @ factor_b.mT).sum(dim=0)
    generator = torch.Generator().manual_seed(n)
    random = torch.randn(RANDOM_STARTS, n, n, generator=generator, dtype=mu.dtype).to(mu.device)
    starts = torch.cat([torch.stack([mu.mT @ nu, mean_cross + alpha * moments, eye]), random])
    values, q = _stochastic_ascent(polar(starts), mean_cross, factor_a, factor_b, alpha, HEAT_ITER)
    best = torch.topk(values, min(KEEP, len(values))).indices
    values, q = _stochastic_ascent(q[best], mean_cross, factor_a, factor_b, alpha, MAX_ITER)
    top = int(values.argmax())
    return float(values[top]), q[top]


def _stochastic_pair(a: Gaussians, b: Gaussians, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """[√(2−α) μ, √α L_i W_i] and [√(2−α) ν Qᵀ, √α Q K_i], flattened: their distance² is
    Σ_i (2−α)‖μ_i − Qν_i‖² + α ‖L_i W_i − Q K_i‖², the metric's d² at Q, with W_i = polar(L_iᵀ Q K_i) the Bures
    alignment of each stimulus (Duong et al. 2023 eq. 7). The residual is first order in the error of Q where the
    cross term is second order, so the ascent goes on from the best Q for as long as the residual still falls."""
    _, q = _stochastic_alignment(a, b, alpha)
    (mu, factor_a), (nu, factor_b) = _pad_units(a, b)
    factor_a, factor_b = pad_columns(factor_a, factor_b)  # the same k: every W_i is square and orthogonal
    mean_cross = (2.0 - alpha) * mu.mT @ nu
    means_weight, bures_weight = (2.0 - alpha) ** 0.5, alpha**0.5
    best, pair = np.inf, None
    for _ in range(REFINE_ITER):
        w, _ = _bures_alignment(q.unsqueeze(0), factor_a, factor_b)
        candidate = (torch.cat([means_weight * mu.flatten(), bures_weight * (factor_a @ w[0]).flatten()]),
                     torch.cat([means_weight * (nu @ q.mT).flatten(), bures_weight * (q @ factor_b).flatten()]))
        # the chord between the unit vectors: scale-free, so it sees Q improve even when ‖a‖ ≠ ‖b‖ dominates ‖a − b‖
        residual = float(torch.linalg.norm(candidate[0] / torch.linalg.norm(candidate[0])
                                           - candidate[1] / torch.linalg.norm(candidate[1])))
        if residual >= best:
            break
        best, pair = residual, candidate
        q = polar(mean_cross + alpha * (factor_a @ w[0] @ factor_b.mT).sum(dim=0))
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
        converged = bool(((new - value) <= TOL * new.abs().clamp_min(1.0)).all())
        value = torch.maximum(new, value)
        if converged:
            break
        q = polar(mean_cross + alpha * (factor_a.unsqueeze(0) @ w @ factor_b.mT.unsqueeze(0)).sum(dim=1))
    return value, q


def _pad_units(a: Gaussians, b: Gaussians) -> tuple[Gaussians, Gaussians]:
    """Zero-pad the narrower stochastic representation to the wider one's number of units."""
    (mu, nu), (factor_a, factor_b) = pad_columns(a[0], b[0]), pad_columns(a[1], b[1], dim=1)
    return (mu, factor_a), (nu, factor_b)
