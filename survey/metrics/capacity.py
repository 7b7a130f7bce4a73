"""Manifold capacity and geometry by mean-field theory (MFTMA), and its check by simulation.

Chung, Lee & Sompolinsky, "Classification and Geometry of General Perceptual Manifolds", PRX 8, 031003 (2018);
Cohen, Chung, Lee & Sompolinsky, "Separability and geometry of object manifolds in deep neural networks",
Nat. Commun. 11, 746 (2020). The steps follow DESIGN §5.2, which is also what the widely used reference code
computes; the per-sample quadratic programme of that code is solved here as a batched non-negative least squares.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linprog, nnls

from survey.errors import NotApplicable, SurveyError
from survey.validation import check_int, real_array, resolve_device

# Center-correlation removal (DESIGN §5.2 step 2).
N_RESTARTS = 50  # Stiefel restarts per K; the minimum of lowest L is kept
STIEFEL_MAX_ITER = 300  # per restart
STIEFEL_GTOL = 1e-10  # stop when ‖Riemannian gradient‖ ≤ GTOL · max(1, L)
MINIMUM_GTOL = 1e-6  # a restart ending with ‖Riemannian gradient‖ ≤ MINIMUM_GTOL · max(1, L) reached a minimum
ARMIJO = 1e-4  # sufficient-decrease constant of the line search
WOLFE = 0.1  # strong Wolfe curvature: a step is final once |slope| ≤ WOLFE·|initial slope|
LOSS_ROUNDING = 1e-10  # changes of L below this fraction of L are rounding: steps are judged by slopes alone
ENERGY = 0.95  # maxK = 11 + number of leading singular values of the centers holding < 95% of their energy


@dataclass(frozen=True)
class CapacityResult:
    """Per-manifold capacity α_μ, radius R_M and dimension D_M, and their aggregates (DESIGN §5.2 step 5).

    `capacity` = 1 / mean(1/α_μ); `radius`, `dimension` are means. `center_correlation` is ρ₀, the mean
    |cos| between centers before any removal; `center_subspace` (N × K, orthonormal columns) is the center
    subspace removed (step 2), found or given; `K` is its number of directions.
    """

    capacities: np.ndarray
    radii: np.ndarray
    dimensions: np.ndarray
    capacity: float
    radius: float
    dimension: float
    center_correlation: float
    K: int
    center_subspace: np.ndarray


def manifold_capacity(
    manifolds: Sequence[np.ndarray],
    kappa: float = 0.0,
    n_t: int = 200,
    t_vectors: Sequence[np.ndarray] | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    center_subspace: np.ndarray | None = None,
) -> CapacityResult:
    """Mean-field manifold capacity at margin `kappa` (Chung et al. PRX 2018 eqs. 16–17; Cohen et al. 2020).

    `manifolds`: P ≥ 2 arrays N × M_μ (features × points). `t_vectors`: optional P arrays (D_μ+1) × n_t of
    Gaussian samples, D_μ = min(N, M_μ), expressed in the manifold's QR frame; otherwise drawn from `seed`,
    which also seeds the center-correlation removal. `center_subspace`: an N × K array with orthonormal columns,
    K < P (e.g. a result's `center_subspace`; N × 0 removes nothing), removed instead of searching for one.
    `device`: where the anchor points are solved (default: CUDA when available). Duplicate points are fine. A
    manifold whose center coincides with the global mean (after the removal) has no defined radius relative to
    its center and raises SurveyError.
    """
    xs = check_manifolds(manifolds)
    if not isinstance(kappa, numbers.Real) or not math.isfinite(kappa):
        raise SurveyError(f"kappa={kappa!r} is not a finite number; pass a finite margin such as 0.0")
    kappa = float(kappa)
    check_int("n_t", n_t, 1)
    check_int("seed", seed, 0)
    dims = [min(x.shape[0], x.shape[1]) for x in xs]
    if t_vectors is None:
        rng = np.random.default_rng([seed, 1])
        ts = [rng.standard_normal((d + 1, n_t)) for d in dims]
    else:
        ts = _check_t_vectors(t_vectors, dims, n_t)
    if center_subspace is not None:
        center_subspace = _check_center_subspace(center_subspace, xs[0].shape[0], len(xs))
    dev = resolve_device(device)
    origin, removed, rho0, k = center_structure(xs, seed, center_subspace)

    # Steps 3–5, one batch per manifold size.
    alpha, radius, dimension = np.empty(len(xs)), np.empty(len(xs)), np.empty(len(xs))
    removed_t = torch.from_numpy(removed).to(dev)
    origin_t = torch.from_numpy(origin.T).to(dev)
    for size in sorted({x.shape[1] for x in xs}):
        group = [mu for mu, x in enumerate(xs) if x.shape[1] == size]
        points = torch.from_numpy(np.stack([xs[mu].T for mu in group])).to(dev) - origin_t
        sbar = _normalised_frame(points, removed_t, group)
        t = torch.from_numpy(np.stack([ts[mu] for mu in group])).to(dev)
        a, r, d = (value.cpu().numpy() for value in _anchor_geometry(sbar, t, kappa))
        alpha[group], radius[group], dimension[group] = a, r, d
    with np.errstate(divide="ignore"):
        capacity = float(1.0 / np.mean(1.0 / alpha))
    return CapacityResult(capacities=alpha, radii=radius, dimensions=dimension, capacity=capacity,
                          radius=float(radius.mean()), dimension=float(dimension.mean()),
                          center_correlation=rho0, K=k, center_subspace=removed)


def center_structure(
    xs: list[np.ndarray], seed: int = 0, center_subspace: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, float, int]:
    """DESIGN §5.2 steps 1–2 on checked manifolds: global mean x̄ (N × 1), removed center subspace (N × K), ρ₀, K.

    Centers minus their mean are expressed in an orthonormal basis q of their span (Y = coordinates, P × rank;
    the left singular vectors above rounding, so that exactly low-rank centers keep a well-posed L); ρ₀ is their
    mean |cos|; the removed subspace is `center_subspace` when given (checked), else q V with V from the low-rank
    center-correlation removal (Cohen et al. 2020), whose restarts are seeded by `seed`.
    """
    origin = np.concatenate(xs, axis=1).mean(axis=1, keepdims=True)
    centers = np.stack([x.mean(axis=1) for x in xs], axis=1)  # N × P
    centered = centers - centers.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(centered, axis=0)
    if norms.min() <= 1e-12 * norms.max():
        mu = int(norms.argmin())
        raise NotApplicable(f"manifold {mu}'s center equals the mean of all centers, so its center direction is "
                          "undefined; drop that manifold or pass manifolds with distinct centers")
    q, singular, _ = np.linalg.svd(centered, full_matrices=False)
    rank = int(np.sum(singular > max(centered.shape) * np.finfo(np.float64).eps * singular[0]))
    q = q[:, :rank]
    y = centered.T @ q  # P × rank
    if center_subspace is not None:
        return origin, center_subspace, mean_abs_cosine(y), center_subspace.shape[1]
    v, k = _center_correlation_subspace(y, np.random.default_rng([seed, 0]))
    return origin, q @ v, mean_abs_cosine(y), k


def mean_abs_cosine(rows: np.ndarray) -> float:
    """Mean |cos| between distinct rows of `rows` (P × n): ρ₀ and res_K of DESIGN §5.2 (Cohen et al. 2020)."""
    unit = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    cosines = np.abs(unit @ unit.T)
    n = len(rows)
    return float((cosines.sum() - np.trace(cosines)) / (n * (n - 1)))


def check_manifolds(manifolds: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The P ≥ 2 manifolds (N × M_μ each, one N) as finite float64 arrays, or a one-line SurveyError."""
    if isinstance(manifolds, np.ndarray) and manifolds.ndim == 3:
        manifolds = list(manifolds)
    if not isinstance(manifolds, Sequence) or len(manifolds) < 2:
        raise SurveyError("manifolds must be a list of at least 2 arrays of shape N features × M points; "
                          "pass P ≥ 2 manifolds")
    xs = []
    for mu, m in enumerate(manifolds):
        x = real_array(m, f"manifold {mu}", (2,), "N features × M points")
        if xs and x.shape[0] != xs[0].shape[0]:
            raise SurveyError(f"manifold {mu} has {x.shape[0]} features but manifold 0 has {xs[0].shape[0]}; "
                              "pass manifolds from one representation (same N rows)")
        xs.append(x)
    return xs


def _check_t_vectors(t_vectors: Sequence[np.ndarray], dims: list[int], n_t: int) -> list[np.ndarray]:
    if len(t_vectors) != len(dims):
        raise SurveyError(f"t_vectors has {len(t_vectors)} arrays for {len(dims)} manifolds; pass one per manifold")
    ts = []
    for mu, (t, d) in enumerate(zip(t_vectors, dims, strict=True)):
        t = real_array(t, f"t_vectors[{mu}]", (2,), "(D+1) × n_t")
        if t.shape != (d + 1, n_t):
            raise SurveyError(f"t_vectors[{mu}] has shape {t.shape}; pass Gaussian samples of shape "
                              f"(D+1, n_t) = ({d + 1}, {n_t}), D = min(N, M_μ)")
        ts.append(t)
    return ts


def _check_center_subspace(center_subspace: object, n_features: int, n_manifolds: int) -> np.ndarray:
    """A given removed center subspace as a finite float64 N × K array with orthonormal columns, K < P."""
    fix = (f"pass a finite N × K array with orthonormal columns, N = {n_features} features and K < P = {n_manifolds} "
           "(e.g. a result's center_subspace)")
    if isinstance(center_subspace, np.ndarray) and center_subspace.size == 0:  # N × 0: nothing to remove
        subspace = center_subspace.astype(np.float64)
    else:
        subspace = real_array(center_subspace, "center_subspace", finite=False)
    if subspace.ndim != 2 or subspace.shape[0] != n_features or subspace.shape[1] >= n_manifolds:
        raise SurveyError(f"center_subspace has shape {subspace.shape}; {fix}")
    bad = int(np.count_nonzero(~np.isfinite(subspace)))
    if bad:
        raise SurveyError(f"center_subspace has {bad} non-finite values (NaN or inf); {fix}")
    error = float(np.abs(subspace.T @ subspace - np.eye(subspace.shape[1])).max(initial=0.0))
    if error > 1e-6:
        raise SurveyError(f"center_subspace's columns are not orthonormal (|VᵀV − I| reaches {error:.2g}); {fix}")
    return subspace


# ---------------------------------------------------------------- step 2: center-correlation removal


def _center_correlation_subspace(y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """V (rank × K*) spanning the center directions to remove, and K* (DESIGN §5.2 step 2; Cohen et al. 2020).

    For K = 1 … maxK, minimise L(V) on the Stiefel manifold from N_RESTARTS starts (the previous solution plus
    one random center direction), keep the minimum of lowest L, and record res_K; stop once res_K has risen
    three times in a row (K ≥ 5). K* = argmin res_K; K ≤ rank − 1 (≤ P − 2), so K = 0 when P = 2 or N = 1.
    L has no minimum where a center is removed entirely (c0_μ → 0), yet descends towards it: restarts that slide
    there never reach a small gradient and are not candidates; where every restart does, the search stops.
    """
    n_centers, rank = y.shape
    energy = np.cumsum(np.linalg.svd(y, compute_uv=False) ** 2)
    max_k = min(11 + int(np.sum(energy / energy[-1] < ENERGY)), rank - 1)
    gram = y @ y.T
    v = np.zeros((rank, 0))
    solutions, residuals = [np.zeros((rank, 0))], []
    for k in range(1, max_k + 1):
        starts = np.stack([np.linalg.qr(np.column_stack([y.T @ rng.standard_normal(n_centers), v]))[0]
                           for _ in range(N_RESTARTS)])
        candidates = _stiefel_minimise(y, gram, starts)
        loss, egrad = _correlation_loss(candidates, y, gram)
        grad = _tangent(candidates, egrad)
        minimum = np.sqrt(_inner(grad, grad)) <= MINIMUM_GTOL * np.maximum(1.0, loss)
        if not minimum.any():
            break
        v = candidates[int(np.argmin(np.where(minimum, loss, np.inf)))]
        solutions.append(v)
        residuals.append(mean_abs_cosine(y - y @ v @ v.T))
        if k >= 5 and residuals[-1] > residuals[-2] > residuals[-3] > residuals[-4]:
            break
    best = int(np.argmin(residuals)) + 1 if residuals else 0
    return solutions[best], best


def _correlation_loss(v: np.ndarray, y: np.ndarray, gram: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """L(V) = ½ Σ_μν (G − (YV)(YV)ᵀ)²_μν / (c0_μ c0_ν) and its Euclidean gradient, for V of shape (..., r, K).

    Cohen et al. 2020 (Methods, center correlation); with c = YV, E = G − ccᵀ, c0 = diag G − ‖c_μ‖²,
    F = E / (c0 c0ᵀ): ∂L/∂c = −2 F c + 2 (F² c0) ∘ c and ∂L/∂V = Yᵀ ∂L/∂c. Where V removes a center entirely
    (c0_μ = 0) L is undefined (nan or inf), which the line search rejects.
    """
    c = y @ v
    e = gram - c @ np.swapaxes(c, -1, -2)
    c0 = np.diagonal(gram) - np.sum(c * c, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        f = e / (c0[..., :, None] * c0[..., None, :])
        loss = 0.5 * np.sum(e * f, axis=(-2, -1))
        grad_c = -2.0 * f @ c + 2.0 * ((f * f) @ c0[..., None]) * c
    return loss, y.T @ grad_c


def _tangent(v: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Projection of z onto the tangent space of the Stiefel manifold at v (embedded metric)."""
    vtz = np.swapaxes(v, -1, -2) @ z
    return z - v @ (0.5 * (vtz + np.swapaxes(vtz, -1, -2)))


def _retract(v: np.ndarray) -> np.ndarray:
    """QR retraction: the Q factor with a non-negative diagonal of R."""
    q, r = np.linalg.qr(v)
    signs = np.where(np.diagonal(r, axis1=-2, axis2=-1) < 0, -1.0, 1.0)
    return q * signs[..., None, :]


def _inner(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=(-2, -1))


def _stiefel_minimise(y: np.ndarray, gram: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Minimise L(V) over orthonormal V from each start v[i] (batched): Riemannian conjugate gradient.

    Polak–Ribière+ directions transported by projection, QR retraction (Absil, Mahony & Sepulchre 2008, ch. 4
    and 8). Line search (Nocedal & Wright 2006, sec. 3.5): backtrack by quadratic interpolation to a step of
    Armijo decrease, then refine it by secant steps on the slope while they lower L, until the strong Wolfe
    condition |slope| ≤ WOLFE·|slope₀| holds (near-exact searches keep CG fast on ill-conditioned minima). Where
    a step changes L by less than its rounding, the slopes alone decide (Hager & Zhang 2005), so that V converges
    to the gradient's precision, not √ε. Stops per start when ‖grad‖ ≤ STIEFEL_GTOL·max(1, L), when no step is
    accepted, or after STIEFEL_MAX_ITER iterations.
    """
    loss, egrad = _correlation_loss(v, y, gram)
    grad = _tangent(v, egrad)
    direction = -grad
    gg = _inner(grad, grad)
    step = 1.0 / np.sqrt(np.maximum(gg, 1e-300))  # first trial: a unit move
    live = np.sqrt(gg) > STIEFEL_GTOL * np.maximum(1.0, loss)
    for _ in range(STIEFEL_MAX_ITER):
        idx = np.flatnonzero(live)
        if idx.size == 0:
            break
        slope = _inner(grad[idx], direction[idx])
        uphill = slope >= 0
        direction[idx[uphill]] = -grad[idx[uphill]]
        slope[uphill] = -gg[idx[uphill]]
        t = step[idx]
        new_v, new_loss, new_grad = v[idx].copy(), loss[idx].copy(), grad[idx].copy()
        taken = np.zeros(idx.size)  # the step accepted (0: none yet)
        pending = np.arange(idx.size)
        for _ in range(40):
            at, s0, ti = idx[pending], slope[pending], t[pending]
            trial = _retract(v[at] + ti[:, None, None] * direction[at])
            trial_loss, trial_egrad = _correlation_loss(trial, y, gram)
            trial_grad = _tangent(trial, trial_egrad)
            trial_slope = _inner(trial_grad, _tangent(trial, direction[at]))
            excess = trial_loss - loss[at] - ti * s0
            flat = np.abs(trial_loss - loss[at]) <= LOSS_ROUNDING * loss[at]
            wolfe = np.abs(trial_slope) <= -WOLFE * s0
            armijo = (trial_loss <= loss[at] + ARMIJO * ti * s0) & (trial_loss <= new_loss[pending])
            take = np.where(flat, wolfe, armijo)  # the best step so far
            new_v[pending[take]], new_loss[pending[take]] = trial[take], trial_loss[take]
            new_grad[pending[take]] = trial_grad[take]
            done = (take & wolfe) | ((taken[pending] > 0) & ~take)
            taken[pending[take]] = ti[take]
            more = ~done
            pending, s0, ti, take, flat = pending[more], s0[more], ti[more], take[more], flat[more]
            if pending.size == 0:
                break
            rise = s0 - trial_slope[more]
            secant = np.where(rise < 0, ti * s0 / np.minimum(rise, -1e-300), 10.0 * ti)  # where the slope would be 0
            quadratic = -s0 * ti**2 / (2.0 * np.maximum(excess[more], 1e-300))
            t[pending] = np.where(take | flat, np.clip(secant, 0.1 * ti, 10.0 * ti),
                                  np.clip(np.nan_to_num(quadratic, nan=0.0), 0.1 * ti, 0.5 * ti))
        stalled = taken == 0  # no step accepted: a (numerical) minimum
        new_gg = _inner(new_grad, new_grad)
        beta = np.maximum(0.0, _inner(new_grad, new_grad - _tangent(new_v, grad[idx])) / gg[idx])
        direction[idx] = -new_grad + beta[:, None, None] * _tangent(new_v, direction[idx])
        decrease = loss[idx] - new_loss
        new_slope = _inner(new_grad, direction[idx])
        # next first trial: 2ΔL/|slope| (Nocedal & Wright eq. 3.61), or t·slope_old/slope where ΔL is rounding (3.60)
        drop = np.where(decrease > LOSS_ROUNDING * new_loss, 2.0 * decrease, -taken * slope)
        step[idx] = np.where(new_slope < 0, drop / np.maximum(-new_slope, 1e-300), taken)
        v[idx], loss[idx], grad[idx], gg[idx] = new_v, new_loss, new_grad, new_gg
        live[idx] = ~stalled & (np.sqrt(new_gg) > STIEFEL_GTOL * np.maximum(1.0, new_loss))
    return v


# ---------------------------------------------------------------- steps 3–5: anchor points and estimators


def _normalised_frame(points: torch.Tensor, removed: torch.Tensor, group: list[int]) -> torch.Tensor:
    """S̄ = [S; 1ᵀ] ((D+1) × M each) for globally centered manifolds `points` (G × M × N, one point a row).

    DESIGN §5.2 step 3 (PRX 2018 sec. III): the removed center subspace is projected out, points are taken
    relative to the manifold center and divided by its norm, and rotated to an M-dimensional frame by economic
    QR when N > M (R with diagonal ≥ 0, so that the frame does not depend on the LAPACK build).
    """
    z = points - (points @ removed) @ removed.mT
    center = z.mean(dim=1, keepdim=True)
    norm = torch.linalg.vector_norm(center, dim=2, keepdim=True)
    scale = torch.linalg.vector_norm(points, dim=2).amax(dim=1)
    degenerate = (norm[:, 0, 0] <= 1e-12 * scale).nonzero()
    if degenerate.numel():
        mu = group[int(degenerate[0, 0])]
        raise NotApplicable(f"manifold {mu}'s center coincides with the global mean after centering, so radii "
                          "relative to it are undefined; drop that manifold or pass manifolds with distinct centers")
    s = ((z - center) / norm).mT  # G × N × M, column-major as LAPACK wants it
    if s.shape[1] > s.shape[2]:
        r = torch.linalg.qr(s, mode="r")[1]
        s = r * torch.where(torch.diagonal(r, dim1=1, dim2=2) < 0, -1.0, 1.0)[:, :, None]
    return torch.cat([s, torch.ones_like(s[:, :1])], dim=1)


def _anchor_geometry(sbar: torch.Tensor, t: torch.Tensor, kappa: float) -> tuple[torch.Tensor, ...]:
    """Capacity α, radius R and dimension D_M of each manifold S̄ (G × (D+1) × M) from samples t (G × (D+1) × n_t).

    DESIGN §5.2 steps 4–5; Chung et al. PRX 2018 eqs. 16–17 (α), 28 (R_M), 29 (D_M). The anchor of sample t is
    s̃ = S̄a*/Σa* with a* = argmin_{a≥0} ‖t + κ e_{D+1} − S̄a‖², or the point of largest projection when a* = 0.
    """
    n_dim = sbar.shape[1] - 1
    shift = torch.zeros_like(t[:, :, :1])
    shift[:, -1] = kappa
    a = batched_nnls(sbar, t + shift)
    mass = a.sum(dim=1, keepdim=True)
    best = (t[:, :n_dim].mT @ sbar[:, :n_dim]).argmax(dim=2)
    s0 = torch.gather(sbar, 2, best[:, None, :].expand(-1, sbar.shape[1], -1))
    s = torch.where(mass > 0, (sbar @ a) / torch.where(mass > 0, mass, 1.0), s0)
    margin = torch.clamp((t * s).sum(dim=1) + kappa, min=0.0)
    capacity = 1.0 / (margin**2 / (s * s).sum(dim=1)).mean(dim=1)
    spread = (s - s.mean(dim=2, keepdim=True))[:, :n_dim]
    radius = (spread * spread).sum(dim=1).mean(dim=1).sqrt()
    t_hat = _unit(t[:, :n_dim])
    s_hat = _unit(s[:, :n_dim])
    dimension = n_dim * (t_hat * s_hat).sum(dim=1).mean(dim=1) ** 2
    return capacity, radius, dimension


def _unit(x: torch.Tensor) -> torch.Tensor:
    norm = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    return x / torch.where(norm > 0, norm, 1.0)


def batched_nnls(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """x ≥ 0 minimising ‖a[g] x − b[g, :, j]‖ for every g, j: a (G × m × k), b (G × m × n) → x (G × k × n).

    Lawson & Hanson (1974, ch. 23) active-set method run on all G·n problems at once with the fixed Gram
    matrices aᵀa (float64); every answer is checked against the KKT conditions and any problem that fails
    them (or would cycle, or meets a singular passive set) is re-solved by scipy.optimize.nnls.
    """
    a, b = a.to(torch.float64), b.to(torch.float64)
    n_groups, n_rows, k = a.shape
    n = b.shape[2]
    gram = a.mT @ a
    rhs = (a.mT @ b).mT.reshape(n_groups * n, k)
    owner = torch.arange(n_groups, device=a.device).repeat_interleave(n)
    col_norm = torch.diagonal(gram, dim1=1, dim2=2).amax(dim=1).sqrt()
    scale = col_norm[owner] * torch.linalg.vector_norm(b, dim=1).reshape(-1)
    tol = 1e3 * torch.finfo(torch.float64).eps * max(n_rows, k) * scale
    x, failed = _lawson_hanson(gram, rhs, owner, tol)
    x = x.reshape(n_groups, n, k).mT
    # KKT: x ≥ 0 (by construction), w = aᵀ(b − ax) ≤ 0, and w = 0 where x > 0 (w from the residual, not the Gram).
    w = (a.mT @ (b - a @ x)).mT.reshape(-1, k)
    kkt_tol = 100.0 * tol[:, None]
    failed |= ((w > kkt_tol) | ((x.mT.reshape(-1, k) > 0) & (w.abs() > kkt_tol))).any(dim=1)
    for problem in failed.nonzero()[:, 0].tolist():
        g, j = divmod(problem, n)
        x[g, :, j] = torch.from_numpy(nnls(a[g].cpu().numpy(), b[g, :, j].cpu().numpy())[0]).to(x)
    return x


def _lawson_hanson(
    gram: torch.Tensor, rhs: torch.Tensor, owner: torch.Tensor, tol: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched Lawson–Hanson on min ½xᵀHx − fᵀx, x ≥ 0, problem i with H = gram[owner[i]], f = rhs[i].

    `owner` must be sorted. Finished problems drop out of the batch. Returns x and a mask of the problems
    that would cycle, met a singular passive set or ran out of iterations (the caller re-solves those exactly).
    """
    n_problems, k = rhs.shape
    x = torch.zeros_like(rhs)
    passive = torch.zeros(n_problems, k, dtype=torch.bool, device=rhs.device)
    failed = torch.zeros(n_problems, dtype=torch.bool, device=rhs.device)
    alive = torch.arange(n_problems, device=rhs.device)
    w = rhs
    for _ in range(3 * k):
        candidates = ~passive[alive] & (w > tol[alive, None])
        more = candidates.any(dim=1)
        alive, candidates, w = alive[more], candidates[more], w[more]
        if alive.numel() == 0:
            break
        entering = torch.where(candidates, w, -torch.inf).argmax(dim=1)
        passive[alive, entering] = True
        sub = alive
        for inner in range(k):
            z, singular = _solve_passive(gram, rhs, owner, passive, sub)
            if inner == 0:  # the entering variable must come in positive, else LH cycles (rounding): re-solve
                singular |= z.gather(1, entering[:, None])[:, 0] <= 0
            failed[sub[singular]] = True
            negative = passive[sub] & (z <= 0) & ~singular[:, None]
            bad = negative.any(dim=1)
            x[sub[~bad & ~singular]] = z[~bad & ~singular]
            if not bad.any():
                break
            # Step from x towards z until the first passive variable reaches 0; drop the zeros.
            sub, z, negative = sub[bad], z[bad], negative[bad]
            xs = x[sub]
            ratio = torch.where(negative, xs / torch.clamp(xs - z, min=torch.finfo(xs.dtype).tiny), torch.inf)
            step, leaving = ratio.min(dim=1)
            xs = torch.clamp(xs + step[:, None] * (z - xs), min=0.0)
            xs[torch.arange(len(sub), device=xs.device), leaving] = 0.0
            x[sub] = xs
            passive[sub] &= xs > 0
        alive = alive[~failed[alive]]
        if alive.numel() == 0:
            break
        w = rhs[alive] - _gram_times(gram, owner[alive], x[alive])
    failed[alive] = True  # out of iterations
    x[failed] = 0.0
    return x, failed


def _solve_passive(
    gram: torch.Tensor, rhs: torch.Tensor, owner: torch.Tensor, passive: torch.Tensor, sub: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """z with H_PP z_P = f_P and z = 0 off the passive set P, for problems `sub` (padded batched Cholesky)."""
    mask = passive[sub]
    counts = mask.sum(dim=1)
    width = max(int(counts.max()), 1)
    # Passive indices first, in order: column j goes to slot (number of passive columns before it).
    slot = torch.where(mask, mask.cumsum(dim=1) - 1, width)
    columns = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    order = torch.zeros(len(sub), width + 1, dtype=torch.long, device=mask.device).scatter_(1, slot, columns)
    order = order[:, :width]
    valid = torch.arange(width, device=mask.device)[None, :] < counts[:, None]
    h = gram[owner[sub][:, None, None], order[:, :, None], order[:, None, :]]
    eye = torch.eye(width, dtype=h.dtype, device=h.device)
    h = torch.where(valid[:, :, None] & valid[:, None, :], h, eye)
    f = torch.where(valid, torch.gather(rhs[sub], 1, order), 0.0)
    chol, info = torch.linalg.cholesky_ex(h)
    singular = info != 0
    chol[singular] = eye
    zp = torch.cholesky_solve(f[:, :, None], chol)[:, :, 0]
    singular |= ~torch.isfinite(zp).all(dim=1)
    zp = torch.where(singular[:, None], 0.0, zp)
    z = torch.zeros(len(sub), mask.shape[1] + 1, dtype=zp.dtype, device=zp.device)  # + a sink for the padding
    return z.scatter_(1, torch.where(valid, order, mask.shape[1]), zp)[:, :-1], singular


def _gram_times(gram: torch.Tensor, owner: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Rows of x (n × k) times their Gram matrices gram[owner] (`owner` sorted), as one padded batched matmul."""
    groups, inverse, counts = torch.unique_consecutive(owner, return_inverse=True, return_counts=True)
    position = torch.arange(len(owner), device=x.device) - (torch.cumsum(counts, 0) - counts)[inverse]
    padded = x.new_zeros(len(groups), int(counts.max()), x.shape[1])
    padded[inverse, position] = x
    return (padded @ gram[groups])[inverse, position]


# ---------------------------------------------------------------- simulated capacity


def simulated_capacity(manifolds: Sequence[np.ndarray], n_reps: int = 10, seed: int = 0) -> float:
    """Simulated capacity α_sim = P / N_c (Chung et al. PRX 2018 sec. VI; Cohen et al. 2020, Fig. 2).

    N_c is the smallest number of random Gaussian projections at which a random balanced dichotomy of the P
    manifolds is linearly separable (with bias) in half of `n_reps` trials. Each trial draws a dichotomy and an
    N × N projection matrix and finds, by bisection, the fewest leading projections that separate (separability
    only grows with more projections), with an exact LP feasibility test; N_c is the median over trials.
    """
    xs = check_manifolds(manifolds)
    check_int("n_reps", n_reps, 1)
    check_int("seed", seed, 0)
    points = np.concatenate(xs, axis=1)
    points = points - points.mean(axis=1, keepdims=True)
    points /= max(float(np.sqrt(np.mean(np.sum(points**2, axis=0)))), 1e-300)
    n_features, n_manifolds = points.shape[0], len(xs)
    owner = np.repeat(np.arange(n_manifolds), [x.shape[1] for x in xs])
    rng = np.random.default_rng(seed)
    guess = max(1, n_manifolds // 2)
    thresholds = []
    for _ in range(n_reps):
        signs = rng.permutation(np.where(np.arange(n_manifolds) < n_manifolds // 2, 1.0, -1.0))[owner]
        projection = rng.standard_normal((n_features, n_features)) / math.sqrt(n_features)
        n_c = _fewest_projections(points, signs, projection, guess)
        thresholds.append(n_c)
        guess = n_c if n_c <= n_features else guess
    n_c = sorted(thresholds)[(n_reps + 1) // 2 - 1]
    if n_c > n_features:
        raise NotApplicable(f"the manifolds are not linearly separable in half of {n_reps} random dichotomies even "
                          f"with all N={n_features} features, so the capacity is below P/N and cannot be simulated; "
                          "pass more features or fewer points per manifold")
    return n_manifolds / n_c


def _fewest_projections(points: np.ndarray, signs: np.ndarray, projection: np.ndarray, guess: int) -> int:
    """Fewest leading rows of `projection` under which the labelled points separate (N + 1 when none do).

    Steps geometrically (×1.5) from `guess` until the answer flips, then bisects between the last failing
    and the first separating count.
    """
    n_max = len(projection)
    lo, hi = 0, n_max + 1  # lo: known not separable (0 trivially); hi: known separable (N + 1: sentinel)
    n = min(max(guess, 1), n_max)
    downward = None
    while lo + 1 < hi:
        ok = _separable((projection[:n] @ points).T, signs)
        lo, hi = (lo, n) if ok else (n, hi)
        if downward is None:
            downward = ok
        if ok != downward or lo + 1 >= hi:
            break
        n = min(max(int(n / 1.5) if downward else math.ceil(n * 1.5), lo + 1), hi - 1)
    while lo + 1 < hi:
        n = (lo + hi) // 2
        lo, hi = (lo, n) if _separable((projection[:n] @ points).T, signs) else (n, hi)
    return hi


def _separable(z: np.ndarray, signs: np.ndarray) -> bool:
    """Exact linear separability with bias: is {w, b : y_i (w·z_i + b) ≥ 1 ∀i} non-empty? (LP, HiGHS)."""
    constraints = -signs[:, None] * np.column_stack([z, np.ones(len(z))])
    for method in ("highs-ds", "highs-ipm"):
        result = linprog(np.zeros(z.shape[1] + 1), A_ub=constraints, b_ub=-np.ones(len(z)), bounds=(None, None),
                         method=method)
        if result.status in (0, 2):
            return result.status == 0
    return False
