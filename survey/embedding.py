"""Euclidean embeddings of a distance matrix: classical MDS and its landmark (out-of-sample) extension.

Classical (Torgerson 1952; Gower 1966) MDS double-centres the squared distances, B = −½ J D² J, and keeps
the top eigenpairs of B. Negative eigenvalues measure how far the metric is from Euclidean. Landmark MDS
(de Silva & Tenenbaum 2004) runs classical MDS on L landmarks only and places any other item from its
distances to those landmarks, x = −½ L# (δ − δ_μ), so new representations never need the full matrix.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from survey.errors import SurveyError
from survey.validation import check_int, real_array

SYMMETRY_RTOL = 1e-6  # |D − Dᵀ| and |diag D| allowed, relative to max |D| (float32-computed metrics pass)


@dataclass(frozen=True)
class Embedding:
    """Classical MDS result.

    `vectors` (N×k float64, centred) has `n_positive` ≤ k informative columns; when B has fewer than k
    positive eigenvalues the remaining columns are zero. `eigenvalues` are all N eigenvalues of B, descending.
    `stress` is Kruskal stress-1 between the given and embedded distances over pairs i < j; `negative_mass`
    is Σ|λ<0| / Σ|λ| (0 for a Euclidean metric); `explained` is the share of positive eigenvalue mass kept.
    """

    vectors: np.ndarray
    eigenvalues: np.ndarray
    stress: float
    negative_mass: float
    explained: float
    n_positive: int


def _distances(name: str, value: Any, ndim: int) -> np.ndarray:
    """Finite, non-negative distances as a float64 array of `ndim` dimensions."""
    array = real_array(value, name, (ndim,))
    if (array < 0).any():
        raise SurveyError(f"{name}: contains negative distances (min {array.min():.3g}); distances must be ≥ 0")
    return array


def _distance_matrix(name: str, distances: Any) -> np.ndarray:
    """Validated, exactly symmetrised N×N distance matrix with a zero diagonal."""
    matrix = _distances(name, distances, 2)
    n = matrix.shape[0]
    if matrix.shape != (n, n) or n < 1:
        raise SurveyError(f"{name}: expected a square N×N matrix, got shape {matrix.shape}; pass all pair distances")
    tolerance = SYMMETRY_RTOL * max(float(matrix.max()), np.finfo(np.float64).tiny)
    asymmetry = float(np.abs(matrix - matrix.T).max())
    if asymmetry > tolerance:
        raise SurveyError(f"{name}: not symmetric (max |D − Dᵀ| = {asymmetry:.3g}); fix the metric or use (D+D.T)/2")
    if float(np.abs(np.diag(matrix)).max()) > tolerance:
        raise SurveyError(f"{name}: diagonal is not zero (max {np.abs(np.diag(matrix)).max():.3g}); set it to 0")
    matrix = (matrix + matrix.T) / 2
    np.fill_diagonal(matrix, 0.0)
    return matrix


def _spectrum_summary(eigenvalues: np.ndarray, n_components: int) -> tuple[float, float, int]:
    """(negative_mass, explained, n_positive) of a descending spectrum; |λ| ≤ N·eps·max|λ| counts as zero."""
    scale = float(np.abs(eigenvalues).max()) if eigenvalues.size else 0.0
    tolerance = eigenvalues.size * np.finfo(np.float64).eps * scale
    positive = eigenvalues[eigenvalues > tolerance]
    negative = eigenvalues[eigenvalues < -tolerance]
    total = float(np.abs(eigenvalues).sum())
    negative_mass = float(np.abs(negative).sum()) / total if total > 0 else 0.0
    n_positive = min(n_components, positive.size)
    explained = float(positive[:n_positive].sum() / positive.sum()) if positive.size else 1.0
    return negative_mass, explained, n_positive


def pair_stress(given: np.ndarray, vectors_a: np.ndarray, vectors_b: np.ndarray) -> float:
    """Kruskal stress-1 over a set of pairs: sqrt(Σ (d_ij − ‖x_i − x_j‖)² / Σ d_ij²), with `given` the pairs' d_ij
    and `vectors_a`, `vectors_b` their embedded endpoints (a sample of pairs estimates the stress of all)."""
    if given.size == 0 or not given.any():
        return 0.0
    embedded = np.linalg.norm(vectors_a - vectors_b, axis=1)
    return float(np.sqrt(((given - embedded) ** 2).sum() / (given**2).sum()))


def kruskal_stress(matrix: np.ndarray, vectors: np.ndarray) -> float:
    """Kruskal stress-1 between the distances of `matrix` and those of `vectors`, over pairs i < j."""
    i, j = np.triu_indices(len(matrix), k=1)
    return pair_stress(matrix[i, j], vectors[i], vectors[j])


def _classical(matrix: np.ndarray, n_components: int) -> Embedding:
    squared = matrix**2
    row_mean = squared.mean(axis=1)
    centred = -0.5 * (squared - row_mean[:, None] - row_mean[None, :] + row_mean.mean())
    eigenvalues, eigenvectors = np.linalg.eigh(centred)
    eigenvalues, eigenvectors = eigenvalues[::-1].copy(), eigenvectors[:, ::-1]
    negative_mass, explained, n_positive = _spectrum_summary(eigenvalues, n_components)
    kept = eigenvectors[:, :n_positive]
    # Fix each eigenvector's sign (largest-magnitude entry positive) so repeated runs give the same axes.
    signs = np.sign(kept[np.abs(kept).argmax(axis=0), np.arange(n_positive)])
    vectors = np.zeros((matrix.shape[0], n_components))
    vectors[:, :n_positive] = kept * signs * np.sqrt(eigenvalues[:n_positive])
    return Embedding(vectors, eigenvalues, kruskal_stress(matrix, vectors), negative_mass, explained, n_positive)


def classical_mds(distances: np.ndarray, n_components: int) -> Embedding:
    """Classical MDS (Torgerson 1952; Gower 1966) of a symmetric N×N distance matrix into `n_components` dims."""
    matrix = _distance_matrix("distances", distances)
    return _classical(matrix, check_int("n_components", n_components, 1, matrix.shape[0]))


def maxmin_landmarks(
    distances: np.ndarray | Callable[[int], np.ndarray],
    n_landmarks: int,
    seed: int = 0,
    n_items: int | None = None,
) -> np.ndarray:
    """Greedy max–min (farthest-point) landmark indices, as recommended by de Silva & Tenenbaum (2004).

    The first landmark is drawn with `seed`; each next one is the item farthest from all landmarks chosen so
    far. `distances` is an N×N matrix, or a function returning the N distances from item i (then pass
    `n_items` = N), so only L rows are ever computed. Returns int64 indices in pick order.
    """
    if callable(distances):
        n = check_int("n_items", n_items, 1)
        row = distances
    else:
        matrix = _distance_matrix("distances", distances)
        n = matrix.shape[0]

        def row(i: int) -> np.ndarray:
            return matrix[i]

    n_landmarks = check_int("n_landmarks", n_landmarks, 1, n)
    picks = [int(np.random.default_rng(seed).integers(n))]
    nearest = np.full(n, np.inf)
    for _ in range(n_landmarks - 1):
        values = _distances(f"distances from item {picks[-1]}", row(picks[-1]), 1)
        if values.shape != (n,):
            raise SurveyError(f"distances from item {picks[-1]}: got shape {values.shape}; return all {n} distances")
        np.minimum(nearest, values, out=nearest)
        nearest[picks] = -np.inf
        picks.append(int(nearest.argmax()))
    return np.asarray(picks, dtype=np.int64)


def fold_nearest(nearest: np.ndarray, items_a: np.ndarray, items_b: np.ndarray, distances: np.ndarray) -> None:
    """Fold stored landmark-row pairs into `nearest`, each item's distance to its nearest landmark (in place).

    The max–min state of `maxmin_landmarks` kept from pairs (a, b, d) instead of whole rows: every pair holds a
    landmark, so d bounds both ends' nearest-landmark distance (a landmark's own entry is reset by the caller).
    Items −1 lie outside the candidates and are skipped. A minimum is idempotent: folding a pair twice, or the rows
    in any order, gives the same vector, so rows may be folded incrementally as they are stored."""
    for items in (items_a, items_b):
        held = items >= 0
        np.minimum.at(nearest, items[held], distances[held])


class LandmarkMDS:
    """Landmark MDS (de Silva & Tenenbaum 2004): classical MDS of L landmarks, then x = −½ L# (δ − δ_μ).

    `fit` takes the L×L landmark distance matrix; `transform` takes n×L distances (not squared) from any
    items to the same landmarks, in the same order. Fitted state: `embedding_` (landmark MDS result),
    `pinv_` (k×L pseudo-inverse transpose L#, zero rows for padded components) and `mean_sq_distances_` (δ_μ,
    the column means of the squared landmark distances).
    """

    _ARRAYS = ("landmark_vectors", "eigenvalues", "pinv", "mean_sq_distances", "stress")

    def __init__(self, n_components: int, n_landmarks: int) -> None:
        self.n_landmarks = check_int("n_landmarks", n_landmarks, 1)
        self.n_components = check_int("n_components", n_components, 1, self.n_landmarks)
        self.embedding_: Embedding | None = None
        self.pinv_: np.ndarray | None = None
        self.mean_sq_distances_: np.ndarray | None = None

    def fit(self, landmark_distances: np.ndarray) -> LandmarkMDS:
        """Embed the landmarks by classical MDS and store the out-of-sample map."""
        matrix = _distance_matrix("landmark_distances", landmark_distances)
        if matrix.shape[0] != self.n_landmarks:
            raise SurveyError(
                f"landmark_distances: {matrix.shape[0]}×{matrix.shape[0]} but n_landmarks={self.n_landmarks}; "
                "pass the distances among exactly those landmarks"
            )
        embedding = _classical(matrix, self.n_components)
        kept = embedding.n_positive
        pinv = np.zeros((self.n_components, self.n_landmarks))
        pinv[:kept] = (embedding.vectors[:, :kept] / embedding.eigenvalues[:kept]).T
        self.embedding_, self.pinv_, self.mean_sq_distances_ = embedding, pinv, (matrix**2).mean(axis=0)
        return self

    def transform(self, distances_to_landmarks: np.ndarray) -> np.ndarray:
        """Place items from their n×L distances to the landmarks: n×k float64 coordinates."""
        if self.pinv_ is None or self.mean_sq_distances_ is None:
            raise SurveyError("LandmarkMDS: not fitted; call fit(landmark_distances) or LandmarkMDS.from_state(state)")
        distances = _distances("distances_to_landmarks", distances_to_landmarks, 2)
        if distances.shape[1] != self.n_landmarks:
            raise SurveyError(
                f"distances_to_landmarks: shape {distances.shape} but the fit has {self.n_landmarks} landmarks; "
                f"pass an n×{self.n_landmarks} matrix in landmark order"
            )
        return -0.5 * (distances**2 - self.mean_sq_distances_) @ self.pinv_.T

    def fit_transform(self, landmark_distances: np.ndarray) -> np.ndarray:
        """`fit`, then the landmarks' own L×k coordinates (equal to `transform(landmark_distances)`)."""
        return self.fit(landmark_distances).embedding_.vectors.copy()

    def state_dict(self) -> dict[str, np.ndarray | int]:
        """Fitted state as plain ints and float64 arrays (`stress` 0-d), ready for safetensors or npz."""
        if self.embedding_ is None:
            raise SurveyError("LandmarkMDS: not fitted; call fit(landmark_distances) before state_dict()")
        return {
            "n_components": self.n_components,
            "n_landmarks": self.n_landmarks,
            "landmark_vectors": self.embedding_.vectors.copy(),
            "eigenvalues": self.embedding_.eigenvalues.copy(),
            "pinv": self.pinv_.copy(),
            "mean_sq_distances": self.mean_sq_distances_.copy(),
            "stress": np.asarray(self.embedding_.stress, dtype=np.float64),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> LandmarkMDS:
        """Rebuild a fitted estimator from `state_dict()` output (ints may come back as 0-d arrays)."""
        missing = sorted({"n_components", "n_landmarks", *cls._ARRAYS} - set(state))
        if missing:
            raise SurveyError(f"LandmarkMDS state: missing {', '.join(missing)}; pass the dict from state_dict()")
        model = cls(*(int(np.asarray(state[key]).item()) for key in ("n_components", "n_landmarks")))
        k, n = model.n_components, model.n_landmarks
        arrays = {key: np.asarray(state[key], dtype=np.float64) for key in cls._ARRAYS}
        expected = {"landmark_vectors": (n, k), "eigenvalues": (n,), "pinv": (k, n), "mean_sq_distances": (n,),
                    "stress": ()}
        for key, shape in expected.items():
            if arrays[key].shape != shape:
                raise SurveyError(f"LandmarkMDS state: {key} has shape {arrays[key].shape}, expected {shape}; "
                                  "the state is corrupt or from another model")
        negative_mass, explained, n_positive = _spectrum_summary(arrays["eigenvalues"], k)
        model.embedding_ = Embedding(arrays["landmark_vectors"], arrays["eigenvalues"], float(arrays["stress"]),
                                     negative_mass, explained, n_positive)
        model.pinv_, model.mean_sq_distances_ = arrays["pinv"], arrays["mean_sq_distances"]
        return model
