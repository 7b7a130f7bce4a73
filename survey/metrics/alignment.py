"""Manifold alignment and linear decodability of manifold labels (DESIGN §5.2).

Cohen, Chung, Lee & Sompolinsky, Nat. Commun. 11, 746 (2020) (center correlation, axes alignment and
center–axes alignment of object manifolds); Kuoch et al. 2023, "Probing Biological and Artificial Neural
Networks with Task-dependent Neural Manifolds" (the same alignments set beside linear decoding).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import RidgeClassifier
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from survey.errors import NotApplicable
from survey.metrics.capacity import check_manifolds, mean_abs_cosine
from survey.validation import check_int


@dataclass(frozen=True)
class AlignmentResult:
    """Mean |cos| between manifold centers, between manifold axes, and between centers and other manifolds' axes.

    Each lies in [0, 1]; the axis-based two are NaN when fewer than two manifolds have any spread.
    """

    center_alignment: float
    axis_alignment: float
    center_axis_alignment: float


def manifold_alignment(manifolds: Sequence[np.ndarray], n_axes: int = 5) -> AlignmentResult:
    """Center, axis and center–axis alignment of P manifolds (N × M_μ each) (Cohen et al. 2020; Kuoch et al. 2023).

    Centers c_μ are manifold means minus the mean of all points. Axes u_μk are the top `n_axes` principal
    directions of manifold μ (left singular vectors of its centered points) with weights w_μk = their share of
    the kept variance. Then, over ordered pairs μ ≠ ν:
    center_alignment = mean |cos(c_μ, c_ν)|;
    axis_alignment = mean Σ_kl w_μk w_νl |u_μk · u_νl| (1 when all manifolds vary along one shared line,
    0 when their axes are mutually orthogonal);
    center_axis_alignment = mean Σ_l w_νl |ĉ_μ · u_νl|.
    Manifolds without spread (one point, or all points equal) have no axes and are left out of the last two.
    """
    xs = check_manifolds(manifolds)
    check_int("n_axes", n_axes, 1)
    origin = np.concatenate(xs, axis=1).mean(axis=1)
    centers = np.stack([x.mean(axis=1) for x in xs]) - origin  # P × N
    norms = np.linalg.norm(centers, axis=1)
    if norms.min() <= 1e-12 * norms.max():
        mu = int(norms.argmin())
        raise NotApplicable(f"manifold {mu}'s center equals the mean of all points, so its direction is undefined; "
                          "drop that manifold or pass manifolds with distinct centers")
    units = centers / norms[:, None]
    center_alignment = mean_abs_cosine(centers)

    axes, weights, owners = [], [], []
    for mu, x in enumerate(xs):
        u, sv, _ = np.linalg.svd(x - x.mean(axis=1, keepdims=True), full_matrices=False)
        keep = sv[:n_axes] > 1e-12 * max(x.shape) * sv[0]
        if keep.any():
            variance = sv[:n_axes][keep] ** 2
            axes.append(u[:, :n_axes][:, keep].T)
            weights.append(variance / variance.sum())
            owners.append(np.full(int(keep.sum()), mu))
    if len(axes) < 2:
        return AlignmentResult(center_alignment, float("nan"), float("nan"))
    axes_all, weight, owner = np.concatenate(axes), np.concatenate(weights), np.concatenate(owners)
    with_axes = np.unique(owner)
    # Per pair of manifolds: Σ_kl w_μk w_νl |u_μk·u_νl| via a one-hot owner matrix (manifolds × axes).
    onehot = (owner[None, :] == with_axes[:, None]) * weight[None, :]
    pair = onehot @ np.abs(axes_all @ axes_all.T) @ onehot.T
    n = len(with_axes)
    axis_alignment = float((pair.sum() - np.trace(pair)) / (n * (n - 1)))
    # Center of μ against the axes of ν ≠ μ.
    center_axis = np.abs(units @ axes_all.T) @ onehot.T  # P × manifolds with axes
    other = np.arange(len(xs))[:, None] != with_axes[None, :]
    center_axis_alignment = float(center_axis[other].mean())
    return AlignmentResult(center_alignment, axis_alignment, center_axis_alignment)


def decodability(manifolds: Sequence[np.ndarray], n_splits: int = 5, seed: int = 0) -> float:
    """Held-out accuracy of a linear classifier of the manifold labels (Kuoch et al. 2023; DESIGN §5.2).

    Standardised features and a ridge (least-squares, one-vs-rest) linear classifier, scored by stratified
    `n_splits`-fold cross-validation shuffled with `seed`; chance is about 1/P.
    """
    xs = check_manifolds(manifolds)
    check_int("n_splits", n_splits, 2)
    check_int("seed", seed, 0)
    sizes = [x.shape[1] for x in xs]
    if min(sizes) < n_splits:
        mu = int(np.argmin(sizes))
        raise NotApplicable(f"manifold {mu} has {sizes[mu]} points, fewer than n_splits={n_splits} folds; "
                          f"pass n_splits ≤ {sizes[mu]} or more points per manifold")
    points = np.concatenate(xs, axis=1).T
    labels = np.repeat(np.arange(len(xs)), sizes)
    folds = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    model = make_pipeline(StandardScaler(), RidgeClassifier(alpha=1.0))
    return float(cross_val_score(model, points, labels, cv=folds, scoring="accuracy").mean())
