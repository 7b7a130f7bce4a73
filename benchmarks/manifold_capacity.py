"""Manifold capacity (MFTMA) wall time vs the reference algorithm's per-sample solve, same data, same run.

    python benchmarks/manifold_capacity.py [--device cpu|cuda|auto] [--repeats 3] [--representations 100]

P = 50 Gaussian-cloud manifolds (M = 100 points, N = 1000 features, a shared rank-4 center structure), n_t = 200.
`ours`: `survey.metrics.capacity.manifold_capacity` (batched non-negative least squares on the fixed Gram
matrices). `baseline`: the reference code's per-manifold, per-sample loop (maxproj, then one
scipy.optimize.nnls per Gaussian sample, which is the exact dual of its per-sample QP) with the same center
removal, frames and t-vectors, so the capacities must agree to rounding. `slsqp_*`: the QP of the reference code
itself (min ‖V − t‖² s.t. S̄ᵀV ≤ −κ) by scipy's SLSQP, timed on one manifold's samples and extrapolated to all P.
`--representations R` (default 100 on CUDA, 0 on CPU) also times a survey-sized batch: R representations × P.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from scipy.optimize import minimize, nnls

from survey.metrics.capacity import center_structure, check_manifolds, manifold_capacity

P, M, N, N_T, SHARED_RANK, DIM = 50, 100, 1000, 200, 4, 30


def gaussian_clouds(seed: int) -> list[np.ndarray]:
    """P clouds of M points spread over random DIM-dimensional subspaces (power-law variances) around centers
    that share a rank-SHARED_RANK component."""
    rng = np.random.default_rng(seed)
    shared = rng.standard_normal((N, SHARED_RANK))
    spectrum = np.arange(1, DIM + 1) ** -0.5
    spectrum *= np.sqrt(N) / np.linalg.norm(spectrum)
    clouds = []
    for _ in range(P):
        center = 0.7 * shared @ rng.standard_normal(SHARED_RANK) + rng.standard_normal(N)
        basis = np.linalg.qr(rng.standard_normal((N, DIM)))[0]
        clouds.append(center[:, None] + (basis * spectrum) @ rng.standard_normal((DIM, M)))
    return clouds


def frame(x: np.ndarray, origin: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """S̄ of one manifold as the reference code builds it (QR frame with R's diagonal ≥ 0, as ours)."""
    z = x - origin
    z = z - removed @ (removed.T @ z)
    center = z.mean(axis=1, keepdims=True)
    s = (z - center) / np.linalg.norm(center)
    if s.shape[0] > s.shape[1]:
        r = np.linalg.qr(s, mode="r")
        s = r * np.where(np.diag(r) < 0, -1.0, 1.0)[:, None]
    return np.vstack([s, np.ones((1, s.shape[1]))])


def anchors_per_sample(sbar: np.ndarray, t: np.ndarray, kappa: float, solve: Callable) -> np.ndarray:
    """Anchor points s̃ one sample at a time, as in the reference code's each_manifold_analysis_D1."""
    n_dim = sbar.shape[0] - 1
    anchors = np.empty_like(t)
    for i in range(t.shape[1]):
        s0 = sbar[:, np.argmax(t[:n_dim, i] @ sbar[:n_dim])]
        anchor = None if t[:, i] @ s0 + kappa < 0 else solve(sbar, t[:, i], kappa)
        anchors[:, i] = s0 if anchor is None else anchor
    return anchors


def nnls_solve(sbar: np.ndarray, t: np.ndarray, kappa: float) -> np.ndarray | None:
    """s̃ = S̄a/Σa with a = argmin_{a≥0} ‖t + κe − S̄a‖ (DESIGN §5.2 step 4)."""
    b = t.copy()
    b[-1] += kappa
    a = nnls(sbar, b)[0]
    return sbar @ a / a.sum() if a.sum() > 0 else None


def slsqp_solve(sbar: np.ndarray, t: np.ndarray, kappa: float) -> np.ndarray | None:
    """The reference QP min ½‖V − t‖² s.t. S̄ᵀV ≤ −κ; t − V = S̄a, so s̃ = (t − V)/(t − V)_{D+1}."""
    constraint = {"type": "ineq", "fun": lambda v: -(sbar.T @ v) - kappa, "jac": lambda v: -sbar.T}
    v = minimize(lambda v: 0.5 * np.sum((v - t) ** 2), t, jac=lambda v: v - t, constraints=[constraint],
                 method="SLSQP", options={"ftol": 1e-12, "maxiter": 1000}).x
    return None if np.linalg.norm(t - v) < 1e-8 else (t - v) / (t - v)[-1]


def estimators(anchors: np.ndarray, t: np.ndarray, kappa: float) -> float:
    """Capacity α of one manifold from its anchors (PRX 2018 eqs. 16–17)."""
    margin = np.maximum((t * anchors).sum(axis=0) + kappa, 0.0)
    return 1.0 / np.mean(margin**2 / (anchors**2).sum(axis=0))


def baseline(clouds: list[np.ndarray], t_vectors: list[np.ndarray], kappa: float = 0.0) -> np.ndarray:
    """Per-manifold capacities by the reference algorithm, one NNLS per sample."""
    xs = check_manifolds(clouds)
    origin, removed, _, _ = center_structure(xs, seed=0)
    return np.array([estimators(anchors_per_sample(frame(x, origin, removed), t, kappa, nnls_solve), t, kappa)
                     for x, t in zip(xs, t_vectors, strict=True)])


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--representations", type=int, default=None)
    args = parser.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    clouds = gaussian_clouds(0)
    rng = np.random.default_rng(1)
    t_vectors = [rng.standard_normal((M + 1, N_T)) for _ in range(P)]

    def ours() -> object:
        result = manifold_capacity(clouds, n_t=N_T, t_vectors=t_vectors, seed=0, device=device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return result

    ours()  # warm-up
    runs = [timed(ours) for _ in range(args.repeats)]
    ours_s = statistics.median(seconds for seconds, _ in runs)
    result = runs[0][1]
    removal_s = statistics.median(timed(lambda: center_structure(check_manifolds(clouds), seed=0))[0]
                                  for _ in range(args.repeats))
    baseline_s, baseline_alphas = timed(lambda: baseline(clouds, t_vectors))
    baseline_capacity = 1.0 / np.mean(1.0 / baseline_alphas)

    xs = check_manifolds(clouds)
    origin, removed, _, _ = center_structure(xs, seed=0)
    sbar = frame(xs[0], origin, removed)
    slsqp_s, anchors = timed(lambda: anchors_per_sample(sbar, t_vectors[0], 0.0, slsqp_solve))
    slsqp_alpha = estimators(anchors, t_vectors[0], 0.0)

    report = {
        "device": str(device), "torch_threads": torch.get_num_threads(), "load_average": os.getloadavg()[0],
        "P": P, "M": M, "N": N, "n_t": N_T,
        "K": result.K, "center_correlation": result.center_correlation, "capacity": result.capacity,
        "radius": result.radius, "dimension": result.dimension,
        "ours_s": ours_s, "ours_runs_s": [seconds for seconds, _ in runs],
        "center_removal_s": removal_s,
        "baseline_nnls_per_sample_s": baseline_s,
        "speedup": baseline_s / ours_s,
        "speedup_anchor_step": (baseline_s - removal_s) / max(ours_s - removal_s, 1e-9),
        "capacity_rel_diff": abs(result.capacity - baseline_capacity) / baseline_capacity,
        "capacity_rel_diff_max_manifold": float(np.max(np.abs(result.capacities - baseline_alphas) / baseline_alphas)),
        "slsqp_per_sample_ms": 1e3 * slsqp_s / N_T,
        "slsqp_extrapolated_s": removal_s + slsqp_s * P,
        "slsqp_speedup_extrapolated": (removal_s + slsqp_s * P) / ours_s,
        "slsqp_manifold0_capacity_rel_diff": abs(slsqp_alpha - result.capacities[0]) / result.capacities[0],
        "target_s": 1.5,
    }
    n_reps = args.representations if args.representations is not None else (100 if device.type == "cuda" else 0)
    if n_reps:
        seconds = []
        for r in range(n_reps):
            representation = gaussian_clouds(1000 + r)  # generated outside the timed call
            seconds.append(timed(lambda c=representation: manifold_capacity(c, n_t=N_T, seed=0, device=device))[0])
        report |= {"survey_representations": n_reps, "survey_s": sum(seconds),
                   "survey_s_per_representation": statistics.median(seconds)}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
