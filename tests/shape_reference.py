"""Plain per-pair shape distances written straight from DESIGN §5.1, used to check `survey.metrics.shape`.

Nothing here is prepared once or batched: every call re-centres and re-whitens both members with `eigh`, pads the
narrower one with zero columns and takes full nuclear norms. The tests compare the engine with these, and
`benchmarks/shape_distances.py` times the engine against them.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

EIGENVALUE_FLOOR = 1e-7


def score(cross: float, norm2_a: float, norm2_b: float, kind: str) -> float:
    """Angular arccos(⟨a,b⟩/(‖a‖‖b‖)) or euclidean sqrt(‖a‖² + ‖b‖² − 2⟨a,b⟩)."""
    if kind == "angular":
        return float(np.arccos(np.clip(cross / np.sqrt(norm2_a * norm2_b), -1.0, 1.0)))
    return float(np.sqrt(max(norm2_a + norm2_b - 2.0 * cross, 0.0)))


def pad(X: np.ndarray, width: int) -> np.ndarray:
    """Zero columns appended up to `width` (on the last axis)."""
    extra = [(0, 0)] * (X.ndim - 1) + [(0, width - X.shape[-1])]
    return np.pad(X, extra)


def whiten(X: np.ndarray, alpha: float, center: bool = True) -> np.ndarray:
    """X_w = Xc Z, Z = V diag(c·d) Vᵀ, d = α + (1 − α) λ^(−1/2) (λ of XcᵀXc clipped at 1e-7), ‖X_w‖_F = ‖Xc‖_F."""
    Xc = X - X.mean(axis=0) if center else X
    lam, V = np.linalg.eigh(Xc.T @ Xc)
    d = alpha + (1.0 - alpha) / np.sqrt(np.maximum(lam, EIGENVALUE_FLOOR))
    Xw = Xc @ (V * d) @ V.T
    c = np.linalg.norm(Xc) / np.linalg.norm(Xw)
    return c * Xw


def linear(X: np.ndarray, Y: np.ndarray, alpha: float = 1.0, kind: str = "angular", center: bool = True) -> float:
    """Linear shape distance (partial whitening alpha, orthogonal alignment)."""
    width = max(X.shape[1], Y.shape[1])
    Xw, Yw = pad(whiten(X, alpha, center), width), pad(whiten(Y, alpha, center), width)
    cross = np.linalg.norm(Xw.T @ Yw, "nuc")
    return score(cross, np.sum(Xw**2), np.sum(Yw**2), kind)


def permutation(X: np.ndarray, Y: np.ndarray, kind: str = "angular", center: bool = True) -> float:
    """Shape distance with alignment restricted to permutations of the (zero-padded, centred) units."""
    width = max(X.shape[1], Y.shape[1])
    Xc = pad(X - X.mean(axis=0) if center else X, width)
    Yc = pad(Y - Y.mean(axis=0) if center else Y, width)
    gains = Xc.T @ Yc
    row, col = linear_sum_assignment(-gains)
    return score(gains[row, col].sum(), np.sum(Xc**2), np.sum(Yc**2), kind)


def cka(X: np.ndarray, Y: np.ndarray, kind: str = "angular") -> float:
    """arccos(linear CKA) or sqrt(2 − 2 CKA), CKA from the centred Gram matrices."""
    m = len(X)
    H = np.eye(m) - np.ones((m, m)) / m
    K, L = H @ X @ X.T @ H, H @ Y @ Y.T @ H
    value = np.sum(K * L) / (np.linalg.norm(K) * np.linalg.norm(L))
    return score(value, 1.0, 1.0, kind)


def conv(X: np.ndarray, Y: np.ndarray, alpha: float = 1.0, kind: str = "angular") -> float:
    """Convolutional metric on m × C × H × W maps: channels centred and partially whitened over stimuli and
    positions, then the linear cross term maximised over every circular shift (np.roll)."""
    m, _, height, width = X.shape
    channels = max(X.shape[1], Y.shape[1])

    def prepared(maps: np.ndarray) -> np.ndarray:
        rows = maps.transpose(0, 2, 3, 1).reshape(-1, maps.shape[1])
        rows = pad(whiten(rows, alpha), channels)
        return rows.reshape(m, height, width, channels)

    Xw, Yw = prepared(X), prepared(Y)
    flat_x = Xw.reshape(-1, channels)
    best = -np.inf
    for dy in range(height):
        for dx in range(width):
            shifted = np.roll(Yw, (dy, dx), axis=(1, 2)).reshape(-1, channels)
            best = max(best, np.linalg.norm(flat_x.T @ shifted, "nuc"))
    return score(best, np.sum(Xw**2), np.sum(Yw**2), kind)


# ---- the same distances from the aligned residual (no cancellation near 0) ----------------------------------------


def residual_score(A: np.ndarray, B: np.ndarray, kind: str) -> float:
    """‖A − B‖, or the angle 2 arcsin(‖Â − B̂‖ / 2) between them, for A and the aligned B."""
    if kind == "euclidean":
        return float(np.linalg.norm(A - B))
    chord = np.linalg.norm(A / np.linalg.norm(A) - B / np.linalg.norm(B))
    return float(2.0 * np.arcsin(min(chord / 2.0, 1.0)))


def procrustes(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """The orthogonal Q maximising tr(Aᵀ B Q) (A, B of one shape)."""
    u, _, vt = np.linalg.svd(B.T @ A)
    return u @ vt


def aligned_residual(X: np.ndarray, Y: np.ndarray, metric: str, alpha: float = 1.0, kind: str = "angular") -> float:
    """The metric's distance as the residual between X and the optimally aligned Y, written from the definitions:
    min_Q ‖X_w − Y_w Q‖ (linear), min_P ‖X_c − Y_c P‖ (permutation), ‖K̂ − L̂‖_F (CKA), and the conv residual at the
    best circular shift."""
    if metric == "cka":
        m = len(X)
        H = np.eye(m) - np.ones((m, m)) / m
        K, L = H @ X @ X.T @ H, H @ Y @ Y.T @ H
        return residual_score(K / np.linalg.norm(K), L / np.linalg.norm(L), kind)
    if metric == "conv":
        m, _, height, width = X.shape
        channels = max(X.shape[1], Y.shape[1])

        def prepared(maps: np.ndarray) -> np.ndarray:
            rows = pad(whiten(maps.transpose(0, 2, 3, 1).reshape(-1, maps.shape[1]), alpha), channels)
            return rows.reshape(m, height, width, channels)

        Xw, Yw = prepared(X), prepared(Y)
        shifts = [np.roll(Yw, (dy, dx), axis=(1, 2)).reshape(-1, channels) for dy in range(height)
                  for dx in range(width)]
        flat_x = Xw.reshape(-1, channels)
        best = max(shifts, key=lambda shifted: np.linalg.norm(flat_x.T @ shifted, "nuc"))
        return residual_score(flat_x, best @ procrustes(flat_x, best), kind)
    width = max(X.shape[1], Y.shape[1])
    if metric == "permutation":
        Xc, Yc = pad(X - X.mean(axis=0), width), pad(Y - Y.mean(axis=0), width)
        row, col = linear_sum_assignment(-(Xc.T @ Yc))
        return residual_score(Xc[:, row], Yc[:, col], kind)
    Xw, Yw = pad(whiten(X, alpha), width), pad(whiten(Y, alpha), width)
    return residual_score(Xw, Yw @ procrustes(Xw, Yw), kind)


# ---- stochastic (Gaussian) shape metric ------------------------------------------------------------------------


def gaussians(trials: np.ndarray, center: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Per-stimulus means (m × n, centred over stimuli) and sample covariances (m × n × n, ddof 1)."""
    means = trials.mean(axis=1)
    dev = trials - means[:, None, :]
    covs = np.einsum("irn,irk->ink", dev, dev) / (trials.shape[1] - 1)
    if center:
        means = means - means.mean(axis=0)
    return means, covs


def psd_sqrt(S: np.ndarray) -> np.ndarray:
    lam, V = np.linalg.eigh(S)
    return (V * np.sqrt(np.maximum(lam, 0.0))) @ V.T


def bures2(S: np.ndarray, P: np.ndarray) -> float:
    """Squared Bures distance tr S + tr P − 2 tr((S^½ P S^½)^½), both roots from eigh of symmetric PSD matrices
    (not the nuclear-norm identity the engine uses). Near-zero eigenvalues leave ~1e-8 of noise in the root."""
    root = psd_sqrt(S)
    inner = root @ P @ root
    fidelity = np.sqrt(np.maximum(np.linalg.eigvalsh((inner + inner.T) / 2), 0.0)).sum()
    return float(np.trace(S) + np.trace(P) - 2.0 * fidelity)


def stochastic_objective(a: tuple, b: tuple, Q: np.ndarray, alpha: float) -> float:
    """d²(Q) = Σ_i (2−α)‖μ_i − Qν_i‖² + α B²(Σ_i, QΨ_iQᵀ) for one orthogonal Q (units zero-padded)."""
    (mu, sa), (nu, sb) = a, b
    total = (2.0 - alpha) * np.sum((mu - nu @ Q.T) ** 2)
    if alpha > 0:
        total += alpha * sum(bures2(S, Q @ P @ Q.T) for S, P in zip(sa, sb, strict=True))
    return float(total)


def pad_gaussians(g: tuple, width: int) -> tuple:
    means, covs = g
    extra = width - means.shape[1]
    return np.pad(means, ((0, 0), (0, extra))), np.pad(covs, ((0, 0), (0, extra), (0, extra)))


def stochastic(X: np.ndarray, Y: np.ndarray, alpha: float = 1.0, kind: str = "angular", n_starts: int = 4,
               seed: int = 0, max_iter: int = 5000) -> tuple[float, np.ndarray]:
    """Plain alternating ascent for max_Q (2−α)Σ μ_iᵀQν_i + α Σ tr((Σ_i^½ QΨ_iQᵀ Σ_i^½)^½) from the means'
    Procrustes solution, the identity and random rotations; returns the distance and the best Q."""
    width = max(X.shape[2], Y.shape[2])
    a, b = pad_gaussians(gaussians(X), width), pad_gaussians(gaussians(Y), width)
    (mu, sa), (nu, sb) = a, b
    ra = np.stack([psd_sqrt(S) for S in sa])
    rb = np.stack([psd_sqrt(P) for P in sb])
    M = (2.0 - alpha) * mu.T @ nu

    def polar(A: np.ndarray) -> np.ndarray:
        u, _, vt = np.linalg.svd(A)
        return u @ vt

    def value(Q: np.ndarray) -> float:
        return float(np.sum(M * Q) + alpha * sum(np.linalg.norm(r.T @ Q @ s, "nuc") for r, s in zip(ra, rb,
                                                                                                    strict=True)))

    rng = np.random.default_rng(seed)
    starts = [polar(mu.T @ nu), np.eye(width)] + [polar(rng.standard_normal((width, width))) for _ in range(n_starts)]
    best_value, best_q = -np.inf, None
    for Q in starts:
        current = value(Q)
        for _ in range(max_iter):
            G = M.copy()
            for r, s in zip(ra, rb, strict=True):
                u, _, vt = np.linalg.svd(r.T @ Q @ s)
                G += alpha * r @ (u @ vt) @ s.T
            Q = polar(G)
            new = value(Q)
            if new - current <= 1e-14 * max(abs(new), 1.0):
                current = max(new, current)
                break
            current = new
        if current > best_value:
            best_value, best_q = current, Q
    norm2_a = (2.0 - alpha) * np.sum(mu**2) + alpha * np.trace(sa, axis1=1, axis2=2).sum()
    norm2_b = (2.0 - alpha) * np.sum(nu**2) + alpha * np.trace(sb, axis1=1, axis2=2).sum()
    return score(best_value, norm2_a, norm2_b, kind), best_q


def reference(X: np.ndarray, Y: np.ndarray, metric: str, alpha: float = 1.0, kind: str = "angular") -> float:
    """Dispatch to the plain implementation of `metric` (stochastic: the plain ascent's distance)."""
    if metric == "linear":
        return linear(X, Y, alpha, kind)
    if metric == "permutation":
        return permutation(X, Y, kind)
    if metric == "cka":
        return cka(X, Y, kind)
    if metric == "conv":
        return conv(X, Y, alpha, kind)
    return stochastic(X, Y, alpha, kind)[0]
