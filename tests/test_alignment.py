"""Manifold alignment (centers, axes, centers against axes) and linear decodability of manifold labels."""

from __future__ import annotations

import math

import numpy as np
import pytest

from survey.errors import SurveyError
from survey.metrics.alignment import decodability, manifold_alignment
from survey.metrics.capacity import manifold_capacity


def line_manifold(center: np.ndarray, axis: np.ndarray, rng: np.random.Generator, n_points: int = 40,
                  noise: float = 1e-4) -> np.ndarray:
    """Points spread along `axis` around `center` (mean exactly `center`), plus tiny isotropic noise."""
    spread = rng.standard_normal(n_points)
    points = center[:, None] + np.outer(axis, spread) + noise * rng.standard_normal((len(center), n_points))
    return points - points.mean(axis=1, keepdims=True) + center[:, None]


def basis(n: int, i: int) -> np.ndarray:
    e = np.zeros(n)
    e[i] = 1.0
    return e


def test_collinear_centers_align_fully():
    rng = np.random.default_rng(0)
    u = rng.standard_normal(30)
    manifolds = [line_manifold(k * u, rng.standard_normal(30), rng) for k in (-2.0, -1.0, 1.5, 3.0)]
    assert manifold_alignment(manifolds).center_alignment == pytest.approx(1.0, abs=1e-12)


def test_orthogonal_centers():
    # Centers 5·e_μ; after subtracting their mean, every pair has cos = −1/(P−1): the alignment is exactly 1/(P−1).
    rng = np.random.default_rng(1)
    n = 60
    manifolds = [line_manifold(5 * basis(2 * n, mu), basis(2 * n, n + mu), rng) for mu in range(n)]
    result = manifold_alignment(manifolds)
    assert result.center_alignment == pytest.approx(1 / (n - 1), rel=1e-9)
    assert result.center_alignment < 0.02
    # The same quantity as the capacity's center correlation ρ₀ for manifolds of equal size.
    assert manifold_capacity(manifolds, n_t=10).center_correlation == pytest.approx(result.center_alignment)


def test_shared_axis_aligns_fully():
    rng = np.random.default_rng(2)
    axis = rng.standard_normal(50)
    manifolds = [line_manifold(3 * rng.standard_normal(50), axis, rng) for _ in range(6)]
    result = manifold_alignment(manifolds, n_axes=3)
    assert result.axis_alignment == pytest.approx(1.0, abs=1e-3)


def test_orthogonal_axes_do_not_align():
    rng = np.random.default_rng(3)
    n = 8
    manifolds = [line_manifold(4 * basis(2 * n, mu), basis(2 * n, n + mu), rng) for mu in range(n)]
    result = manifold_alignment(manifolds)
    assert result.axis_alignment == pytest.approx(0.0, abs=1e-3)
    assert result.center_axis_alignment == pytest.approx(0.0, abs=1e-3)


def test_centers_along_other_manifolds_axes():
    # All centers on one line, and every manifold varies along that same line: center–axis alignment 1.
    rng = np.random.default_rng(4)
    u = rng.standard_normal(20)
    u /= np.linalg.norm(u)
    manifolds = [line_manifold(k * u, u, rng) for k in (-3.0, -1.0, 2.0, 4.0)]
    result = manifold_alignment(manifolds)
    assert result.center_axis_alignment == pytest.approx(1.0, abs=1e-3)
    assert result.axis_alignment == pytest.approx(1.0, abs=1e-3)


def test_axis_weights_follow_variance():
    # Two axes per manifold, 9:1 variance; the shared axis carries 90%: alignment ≈ 0.9·0.9 = 0.81.
    rng = np.random.default_rng(5)
    shared = basis(40, 0)
    manifolds = []
    for mu in range(4):
        z = rng.standard_normal((2, 4000))
        z = (z - z.mean(axis=1, keepdims=True)) / z.std(axis=1, keepdims=True)
        z = np.linalg.qr(z.T)[0].T * math.sqrt(4000)  # exactly uncorrelated, unit variance
        points = 3 * np.outer(shared, z[0]) + np.outer(basis(40, 1 + mu), z[1])
        manifolds.append(points + 10 * basis(40, 10 + mu)[:, None])
    result = manifold_alignment(manifolds, n_axes=2)
    assert result.axis_alignment == pytest.approx(0.81, abs=1e-6)


def test_point_manifolds_have_no_axes():
    rng = np.random.default_rng(6)
    result = manifold_alignment([rng.standard_normal((10, 1)) for _ in range(5)])
    assert 0 < result.center_alignment <= 1
    assert math.isnan(result.axis_alignment) and math.isnan(result.center_axis_alignment)


def test_decodability_separated_and_identical():
    rng = np.random.default_rng(7)
    separated = [10 * rng.standard_normal((20, 1)) + rng.standard_normal((20, 40)) for _ in range(4)]
    assert decodability(separated) >= 0.99
    identical = [rng.standard_normal((20, 40)) for _ in range(4)]
    assert decodability(identical) < 0.4  # chance is 0.25
    assert decodability(identical, seed=1) == decodability(identical, seed=1)


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (lambda: decodability([np.ones((3, 4)), np.zeros((3, 6))]), "manifold 0 has 4 points, fewer than n_splits=5"),
        (lambda: decodability([np.ones((3, 4)), np.zeros((3, 6))], n_splits=1), "n_splits"),
        (lambda: manifold_alignment([np.ones((3, 4)), np.zeros((3, 6))], n_axes=0), "n_axes"),
        (lambda: manifold_alignment([np.ones((3, 4))]), "at least 2"),
        (lambda: manifold_alignment([np.ones((3, 4)), np.zeros((3, 4)), -np.ones((3, 4))]), "manifold 1's center"),
    ],
)
def test_bad_input_is_one_line(call, expected):
    with pytest.raises(SurveyError) as error:
        call()
    assert expected in str(error.value)
    assert "\n" not in str(error.value)
