"""Manifold capacity (MFTMA): analytic values, agreement with simulation, the solvers, and bad input."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest
import torch
from scipy.optimize import nnls
from scipy.stats import norm

from survey.errors import SurveyError
from survey.metrics import capacity
from survey.metrics.capacity import (
    _anchor_geometry,
    _center_correlation_subspace,
    _correlation_loss,
    _retract,
    _stiefel_minimise,
    _tangent,
    batched_nnls,
    manifold_capacity,
    mean_abs_cosine,
    simulated_capacity,
)


def point_capacity(kappa: float) -> float:
    """α₀(κ) of a point manifold: α₀⁻¹ = (1+κ²)Φ(κ) + κφ(κ) (Gardner 1988; Chung et al. PRX 2018 eq. 7)."""
    return 1.0 / ((1 + kappa**2) * norm.cdf(kappa) + kappa * norm.pdf(kappa))


def geometry(sbar: np.ndarray, n_t: int, kappa: float = 0.0, seed: int = 0) -> tuple[float, float, float]:
    """α, R, D_M of one manifold S̄ ((D+1) × M) by the per-manifold estimator alone (no centering, no removal)."""
    t = np.random.default_rng(seed).standard_normal((1, sbar.shape[0], n_t))
    values = _anchor_geometry(torch.from_numpy(sbar[None]), torch.from_numpy(t), kappa)
    return tuple(float(v[0]) for v in values)


def gaussian_clouds(n_manifolds: int, n_features: int, n_points: int, dim: int, spread: float, seed: int = 0,
                    shared_rank: int = 0, shared_scale: float = 3.0) -> list[np.ndarray]:
    """Points scattered over a random `dim`-dimensional subspace around random centers (plus shared structure)."""
    rng = np.random.default_rng(seed)
    shared = rng.standard_normal((n_features, shared_rank)) * shared_scale
    clouds = []
    for _ in range(n_manifolds):
        center = shared @ rng.standard_normal(shared_rank) + rng.standard_normal(n_features)
        basis = np.linalg.qr(rng.standard_normal((n_features, dim)))[0]
        clouds.append(center[:, None] + spread * math.sqrt(n_features / dim) * basis
                      @ rng.standard_normal((dim, n_points)))
    return clouds


def test_point_capacity_formula_values():
    assert point_capacity(0.0) == pytest.approx(2.0)
    assert point_capacity(0.5) == pytest.approx(0.961, abs=5e-4)


@pytest.mark.parametrize("kappa", [0.0, 0.5])
def test_single_point_capacity(kappa):
    alpha, radius, dimension = geometry(np.array([[0.0], [1.0]]), n_t=40_000, kappa=kappa)
    assert alpha == pytest.approx(point_capacity(kappa), rel=0.03)
    assert radius == 0.0
    assert dimension == 0.0


@pytest.mark.parametrize("dim", [1, 2, 5, 10])
def test_regular_simplex_capacity(dim):
    # D+1 vertices of a regular simplex centred at 0 with circumradius √D: S̄'s columns are orthogonal, α = 2/(D+1).
    centred = np.eye(dim + 1) - 1.0 / (dim + 1)
    u, s, _ = np.linalg.svd(centred)
    vertices = (u[:, :dim] * s[:dim]).T
    vertices *= math.sqrt(dim) / np.linalg.norm(vertices, axis=0)
    sbar = np.vstack([vertices, np.ones((1, dim + 1))])
    np.testing.assert_allclose(sbar.T @ sbar, (dim + 1) * np.eye(dim + 1), atol=1e-12)
    alpha, radius, _ = geometry(sbar, n_t=20_000)
    assert alpha == pytest.approx(2.0 / (dim + 1), rel=0.03)
    assert radius <= math.sqrt(dim)


@pytest.mark.parametrize("kappa", [0.0, 0.5])
def test_point_manifolds_full_pipeline(kappa):
    rng = np.random.default_rng(3)
    points = [rng.standard_normal((400, 1)) for _ in range(60)]
    result = manifold_capacity(points, kappa=kappa, n_t=4000)
    assert result.capacity == pytest.approx(point_capacity(kappa), rel=0.03)
    np.testing.assert_array_equal(result.radii, 0.0)
    assert result.capacities.shape == result.radii.shape == result.dimensions.shape == (60,)
    assert 0.0 < result.center_correlation < 0.1  # random centers in 400 dimensions: nearly orthogonal
    assert 0 <= result.K <= 58


def test_simulated_capacity_matches_theory():
    clouds = gaussian_clouds(50, 1000, 50, dim=10, spread=0.25)
    theory = manifold_capacity(clouds, n_t=500).capacity
    simulated = simulated_capacity(clouds, n_reps=10)
    assert 0.3 < theory < 3
    assert simulated == pytest.approx(theory, rel=0.15)


def test_capacity_falls_as_manifolds_grow():
    small = manifold_capacity(gaussian_clouds(20, 300, 30, dim=5, spread=0.1), n_t=300)
    large = manifold_capacity(gaussian_clouds(20, 300, 30, dim=5, spread=0.6), n_t=300)
    assert large.capacity < small.capacity < 2.0
    assert large.radius > small.radius


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_planted_center_structure_is_removed(rank):
    clouds = gaussian_clouds(30, 200, 10, dim=10, spread=0.3, seed=1, shared_rank=rank)
    result = manifold_capacity(clouds, n_t=100)
    assert rank == result.K
    assert result.center_correlation > 0.3


def test_deterministic():
    clouds = gaussian_clouds(12, 80, 15, dim=6, spread=0.4, seed=5, shared_rank=1)
    first, second = manifold_capacity(clouds, seed=7), manifold_capacity(clouds, seed=7)
    for name in ("capacities", "radii", "dimensions"):
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name))
    assert (first.capacity, first.K, first.center_correlation) == (second.capacity, second.K, second.center_correlation)
    rng = np.random.default_rng(0)
    t_vectors = [rng.standard_normal((16, 50)) for _ in clouds]  # D = min(N, M) = 15
    given = [manifold_capacity(clouds, n_t=50, t_vectors=t_vectors, seed=s) for s in (1, 1)]
    np.testing.assert_array_equal(given[0].capacities, given[1].capacities)
    np.testing.assert_array_equal(given[0].dimensions, given[1].dimensions)


def test_duplicated_points_change_nothing():
    # Every point twice: same centers, same convex hulls, so the same anchors for the same t-vectors (N < M: no QR).
    # Not bit for bit: the means round differently, and the center-removal optimiser carries that to ~1e-8.
    clouds = gaussian_clouds(6, 5, 12, dim=5, spread=0.3, seed=2)
    rng = np.random.default_rng(1)
    t_vectors = [rng.standard_normal((6, 400)) for _ in clouds]
    once = manifold_capacity(clouds, n_t=400, t_vectors=t_vectors)
    twice = manifold_capacity([np.repeat(x, 2, axis=1) for x in clouds], n_t=400, t_vectors=t_vectors)
    np.testing.assert_allclose(twice.capacities, once.capacities, rtol=1e-6)
    np.testing.assert_allclose(twice.radii, once.radii, rtol=1e-6)


@pytest.mark.parametrize(("rows", "cols"), [(20, 8), (101, 100), (6, 15)])
def test_batched_nnls_matches_scipy(rows, cols, monkeypatch):
    rng = np.random.default_rng(rows)
    a = rng.standard_normal((3, rows, cols))
    a[:, -1] = 1.0  # like S̄: a row of ones
    b = rng.standard_normal((3, rows, 40))
    fallbacks = []
    monkeypatch.setattr(capacity, "nnls", lambda *args: fallbacks.append(args) or nnls(*args))
    x = batched_nnls(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    assert not fallbacks  # the batched active set alone solved them
    assert (x >= 0).all()
    for g in range(3):
        for j in range(40):
            reference = nnls(a[g], b[g, :, j])[0]
            if rows >= cols:  # unique solution
                np.testing.assert_allclose(x[g, :, j], reference, atol=1e-8)
            residual = np.linalg.norm(a[g] @ x[g, :, j] - b[g, :, j])
            assert residual == pytest.approx(np.linalg.norm(a[g] @ reference - b[g, :, j]), abs=1e-8)


def test_batched_nnls_fallback_is_exact(monkeypatch):
    # Problems the batched active set gives up on are re-solved one by one by scipy.
    monkeypatch.setattr(capacity, "_lawson_hanson", lambda gram, rhs, *_: (torch.zeros_like(rhs),
                                                                            torch.ones(len(rhs), dtype=torch.bool)))
    rng = np.random.default_rng(8)
    a, b = rng.standard_normal((2, 10, 7)), rng.standard_normal((2, 10, 5))
    x = batched_nnls(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    for g in range(2):
        for j in range(5):
            np.testing.assert_allclose(x[g, :, j], nnls(a[g], b[g, :, j])[0], atol=1e-12)


def test_batched_nnls_duplicate_columns():
    rng = np.random.default_rng(4)
    a = rng.standard_normal((1, 12, 6))
    a = np.concatenate([a, a[:, :, :3]], axis=2)  # singular Gram matrix
    b = rng.standard_normal((1, 12, 30))
    x = batched_nnls(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    for j in range(30):
        best = np.linalg.norm(a[0] @ nnls(a[0], b[0, :, j])[0] - b[0, :, j])
        assert np.linalg.norm(a[0] @ x[0, :, j] - b[0, :, j]) == pytest.approx(best, abs=1e-8)


def center_coordinates(seed: int = 0, n: int = 12, rank: int = 11) -> tuple[np.ndarray, np.ndarray]:
    y = np.random.default_rng(seed).standard_normal((n, rank))
    y -= y.mean(axis=0)
    return y, y @ y.T


def test_correlation_loss_gradient_matches_finite_differences():
    y, gram = center_coordinates()
    rng = np.random.default_rng(1)
    v = np.linalg.qr(rng.standard_normal((11, 3)))[0]
    _, egrad = _correlation_loss(v, y, gram)
    for _ in range(5):
        e = rng.standard_normal(v.shape)
        eps = 1e-6
        numeric = (_correlation_loss(v + eps * e, y, gram)[0] - _correlation_loss(v - eps * e, y, gram)[0]) / (2 * eps)
        assert np.sum(egrad * e) == pytest.approx(numeric, rel=1e-6, abs=1e-8)
    # Riemannian gradient: the slope of L along a retracted tangent curve.
    xi = _tangent(v, rng.standard_normal(v.shape))
    eps = 1e-6
    numeric = (_correlation_loss(_retract(v + eps * xi), y, gram)[0]
               - _correlation_loss(_retract(v - eps * xi), y, gram)[0]) / (2 * eps)
    assert np.sum(_tangent(v, egrad) * xi) == pytest.approx(numeric, rel=1e-6, abs=1e-8)


def test_stiefel_minimise_finds_planted_subspace():
    # Centers = a shared rank-2 part + noise: the minimiser of L spans (nearly) the top-2 principal directions.
    rng = np.random.default_rng(2)
    y = 3 * rng.standard_normal((20, 2)) @ rng.standard_normal((2, 19)) + rng.standard_normal((20, 19))
    y -= y.mean(axis=0)
    gram = y @ y.T
    starts = np.stack([np.linalg.qr(rng.standard_normal((19, 2)))[0] for _ in range(4)])
    solved = _stiefel_minimise(y, gram, starts.copy())
    assert (_correlation_loss(solved, y, gram)[0] < 0.5 * _correlation_loss(starts, y, gram)[0]).all()
    np.testing.assert_allclose(np.swapaxes(solved, 1, 2) @ solved, np.broadcast_to(np.eye(2), (4, 2, 2)), atol=1e-10)
    top = np.linalg.svd(y)[2][:2].T
    assert np.linalg.svd(top.T @ solved, compute_uv=False).min() > 0.98  # cosines of the principal angles


def test_center_removal_small_p_and_residual():
    y, _ = center_coordinates(n=2, rank=1)
    v, k = _center_correlation_subspace(y, np.random.default_rng(0))
    assert k == 0 and v.shape == (1, 0)
    y, _ = center_coordinates(n=20, rank=19)
    v, k = _center_correlation_subspace(y, np.random.default_rng(0))
    assert 1 <= k <= 18
    assert mean_abs_cosine(y - y @ v @ v.T) < mean_abs_cosine(y) + 0.05


def fixed_t_runs(clouds: list[np.ndarray], seeds: Sequence[int], **kwargs) -> list[capacity.CapacityResult]:
    """manifold_capacity at each seed with the same t-vectors, so that only the center removal may differ."""
    rng = np.random.default_rng(99)
    t_vectors = [rng.standard_normal((min(x.shape) + 1, 100)) for x in clouds]
    return [manifold_capacity(clouds, n_t=100, t_vectors=t_vectors, seed=seed, **kwargs) for seed in seeds]


def moderately_correlated() -> list[np.ndarray]:
    """P = 10 clouds whose centers share a rank-3 part (ρ₀ ≈ 0.3); L has several local minima at K = 1 and 2."""
    return gaussian_clouds(10, 60, 20, dim=5, spread=0.4, seed=10, shared_rank=3, shared_scale=0.8)


def test_center_removal_does_not_depend_on_the_seed():
    # The minimum of lowest L must be found, to the gradient's precision, whatever seed draws the restarts (keeping
    # the most stable of 10 loosely converged restarts, as before, gave capacities up to 0.5 apart here).
    clouds = moderately_correlated()
    runs = fixed_t_runs(clouds, range(5))
    assert 0.2 < runs[0].center_correlation < 0.4
    assert runs[0].K >= 1
    for run in runs[1:]:
        assert run.K == runs[0].K
        for name in ("capacities", "radii", "dimensions"):
            np.testing.assert_allclose(getattr(run, name), getattr(runs[0], name), rtol=0, atol=1e-6)
        assert run.capacity == pytest.approx(runs[0].capacity, abs=1e-6)


def test_given_center_subspace_reproduces_the_run():
    clouds = moderately_correlated()
    found = fixed_t_runs(clouds, [0])[0]
    basis = found.center_subspace
    assert basis.shape == (60, found.K) and found.K >= 1
    np.testing.assert_allclose(basis.T @ basis, np.eye(found.K), atol=1e-12)
    given = fixed_t_runs(clouds, [4], center_subspace=basis)[0]  # another seed: no search, the same removal
    assert (given.K, given.center_correlation) == (found.K, found.center_correlation)
    np.testing.assert_array_equal(given.center_subspace, basis)
    for name in ("capacities", "radii", "dimensions"):
        np.testing.assert_allclose(getattr(given, name), getattr(found, name), rtol=1e-10, atol=0)
    for name in ("capacity", "radius", "dimension"):
        assert getattr(given, name) == pytest.approx(getattr(found, name), rel=1e-10)


def test_given_center_subspace_analytic():
    # Regular simplices (D+1 = 4 vertices, circumradius √D times the center norm left after removing e₁) around
    # centers with a large shared e₁ part: removing e₁ leaves S̄ with orthogonal columns, so α_μ = 2/(D+1) exactly
    # (DESIGN §5.2 analytic checks); removing nothing (N × 0) divides by the larger full center norm instead.
    rng = np.random.default_rng(5)
    n, dim, p = 12, 3, 4
    centred = np.eye(dim + 1) - 1.0 / (dim + 1)
    u, sv, _ = np.linalg.svd(centred)
    vertices = (u[:, :dim] * sv[:dim]).T
    vertices *= math.sqrt(dim) / np.linalg.norm(vertices, axis=0)
    w = rng.standard_normal((n, p))
    w[0] = 0.0
    w -= w.mean(axis=1, keepdims=True)
    shared = np.array([6.0, -2.0, -8.0, 4.0])  # sums to 0, so the global mean is 0
    manifolds = []
    for mu in range(p):
        basis = np.linalg.qr(rng.standard_normal((n - 1, dim)))[0]
        offsets = np.vstack([np.zeros((1, dim + 1)), np.linalg.norm(w[:, mu]) * basis @ vertices])
        manifolds.append((shared[mu] * np.eye(n)[:, 0] + w[:, mu])[:, None] + offsets)
    t_vectors = [rng.standard_normal((dim + 2, 20_000)) for _ in manifolds]  # D_μ = min(N, M) = 4
    e1 = np.eye(n)[:, :1]
    removed = manifold_capacity(manifolds, n_t=20_000, t_vectors=t_vectors, center_subspace=e1)
    kept = manifold_capacity(manifolds, n_t=20_000, t_vectors=t_vectors, center_subspace=np.zeros((n, 0)))
    assert (removed.K, kept.K) == (1, 0)
    np.testing.assert_allclose(removed.capacities, 2.0 / (dim + 1), rtol=0.03)
    assert (kept.capacities > 1.05 * removed.capacities).all()
    # P = 2: the search has nothing to remove (K ≤ P − 2), and a given N × 0 subspace gives that very run.
    pair = [rng.standard_normal((30, 8)) + 2, rng.standard_normal((30, 5)) - 2]
    searched = manifold_capacity(pair, n_t=100)
    given = manifold_capacity(pair, n_t=100, center_subspace=np.zeros((30, 0)))
    assert searched.K == given.K == 0 and searched.center_subspace.shape == (30, 0)
    np.testing.assert_array_equal(given.capacities, searched.capacities)
    np.testing.assert_array_equal(given.radii, searched.radii)


def test_bad_center_subspace_fails_before_computing(monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("computed before checking center_subspace")

    monkeypatch.setattr(capacity, "center_structure", never)
    monkeypatch.setattr(capacity, "_anchor_geometry", never)
    clouds = gaussian_clouds(4, 10, 5, dim=3, spread=0.3)
    for bad in (np.eye(11)[:, :1], np.full((10, 1), np.nan)):
        with pytest.raises(SurveyError, match="center_subspace"):
            manifold_capacity(clouds, center_subspace=bad)


def test_two_manifolds():
    rng = np.random.default_rng(0)
    result = manifold_capacity([rng.standard_normal((30, 8)) + 2, rng.standard_normal((30, 5)) - 2], n_t=100)
    assert result.K == 0
    assert result.center_correlation == pytest.approx(1.0)
    assert np.isfinite(result.capacities).all()


GOOD = [np.ones((4, 3)) * np.arange(3), np.zeros((4, 3))]


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"manifolds": [np.ones((4, 3))]}, "at least 2"),
        ({"manifolds": [np.ones((4, 3)), np.full((4, 3), np.nan)]}, "manifold 1 has 12 non-finite values (NaN"),
        ({"manifolds": [np.ones((4, 3)), np.full((4, 3), np.inf)]}, "manifold 1 has 12 non-finite values (NaN or inf"),
        ({"manifolds": [np.ones((4, 3)), np.zeros((5, 3))]}, "manifold 1 has 5 features"),
        ({"manifolds": [np.ones((4, 3)), np.zeros((4, 0))]}, "manifold 1 is empty (shape (4, 0))"),
        ({"manifolds": [np.ones(4), np.zeros(4)]}, "manifold 0 has shape (4,)"),
        ({"manifolds": [np.ones((4, 3)), np.zeros((4, 2)), -np.ones((4, 3))]}, "manifold 1's center"),
        ({"manifolds": [np.ones((4, 3)), [["a", "b"]] * 4]}, "manifold 1 is not a numeric array"),
        ({"manifolds": GOOD, "kappa": float("nan")}, "kappa"),
        ({"manifolds": GOOD, "kappa": "0.5"}, "kappa"),
        ({"manifolds": GOOD, "n_t": 0}, "n_t=0 must be an integer ≥ 1"),
        ({"manifolds": GOOD, "n_t": 2.5}, "n_t"),
        ({"manifolds": GOOD, "seed": -1}, "seed"),
        ({"manifolds": GOOD, "t_vectors": [np.zeros((5, 200))] * 2}, "t_vectors[0] has shape (5, 200)"),
        ({"manifolds": GOOD, "t_vectors": [np.zeros((4, 200))]}, "t_vectors has 1 arrays"),
        ({"manifolds": GOOD, "device": "nonsense"}, "device"),
        ({"manifolds": GOOD, "center_subspace": np.eye(5)[:, :1]}, "center_subspace has shape (5, 1)"),
        ({"manifolds": GOOD, "center_subspace": np.full((4, 1), np.nan)}, "center_subspace has 4 non-finite values"),
        ({"manifolds": GOOD, "center_subspace": np.eye(4)[:, :2]}, "K < P = 2"),
        ({"manifolds": GOOD, "center_subspace": np.ones((4, 1))}, "center_subspace's columns are not orthonormal"),
        ({"manifolds": GOOD, "center_subspace": np.zeros(4)}, "center_subspace has shape (4,)"),
    ],
)
def test_bad_input_is_one_line(kwargs, expected):
    with pytest.raises(SurveyError) as error:
        manifold_capacity(**kwargs)
    message = str(error.value)
    assert expected in message
    assert "\n" not in message and ";" in message


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present")
def test_cuda_requested_without_cuda():
    with pytest.raises(SurveyError, match="CUDA is not available"):
        manifold_capacity(GOOD, device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    clouds = gaussian_clouds(10, 60, 20, dim=5, spread=0.4)
    cpu, cuda = manifold_capacity(clouds, device="cpu"), manifold_capacity(clouds, device="cuda")
    np.testing.assert_allclose(cuda.capacities, cpu.capacities, rtol=1e-8)


def test_simulated_capacity_bad_input():
    with pytest.raises(SurveyError, match="n_reps"):
        simulated_capacity(GOOD, n_reps=0)
    with pytest.raises(SurveyError, match="not linearly separable"):
        simulated_capacity([np.array([[0.0, 2.0]]), np.array([[1.0, 3.0]])], n_reps=1)
