"""Classical and landmark MDS: exact recovery of Euclidean configurations, diagnostics of non-Euclidean ones."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from survey.embedding import Embedding, LandmarkMDS, classical_mds, maxmin_landmarks
from survey.errors import SurveyError


def points(n: int = 60, dim: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, dim)) * np.array([3.0, 2.0, 1.0][:dim])


def align(source: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Orthogonal Procrustes: rotation/reflection R and translation t so that source @ R + t ≈ target."""
    source_mean, target_mean = source.mean(axis=0), target.mean(axis=0)
    u, _, vt = np.linalg.svd((source - source_mean).T @ (target - target_mean))
    rotation = u @ vt
    return rotation, target_mean - source_mean @ rotation, source @ rotation + target_mean - source_mean @ rotation


def test_classical_mds_recovers_euclidean_configuration() -> None:
    x = points()
    distances = cdist(x, x)
    embedding = classical_mds(distances, 3)
    assert isinstance(embedding, Embedding)
    assert embedding.vectors.shape == (60, 3) and embedding.vectors.dtype == np.float64
    assert embedding.eigenvalues.shape == (60,) and (np.diff(embedding.eigenvalues) <= 0).all()
    np.testing.assert_allclose(cdist(embedding.vectors, embedding.vectors), distances, atol=1e-9)
    assert embedding.stress < 1e-12 and embedding.negative_mass < 1e-12
    assert embedding.explained == pytest.approx(1.0) and embedding.n_positive == 3
    np.testing.assert_allclose(align(embedding.vectors, x)[2], x, atol=1e-9)
    np.testing.assert_allclose(embedding.vectors.mean(axis=0), 0.0, atol=1e-12)


def test_classical_mds_pads_missing_dimensions_and_truncates_extra_ones() -> None:
    x = points(dim=2)
    padded = classical_mds(cdist(x, x), 4)
    assert padded.n_positive == 2 and padded.vectors.shape == (60, 4)
    assert not padded.vectors[:, 2:].any() and padded.stress < 1e-12
    truncated = classical_mds(cdist(x, x), 1)
    assert truncated.n_positive == 1 and 0.5 < truncated.explained < 1 and truncated.stress > 0.01
    np.testing.assert_allclose(truncated.vectors[:, 0], padded.vectors[:, 0], atol=1e-12)  # same sign convention


def test_classical_mds_of_identical_points_is_all_zero() -> None:
    embedding = classical_mds(np.zeros((5, 5)), 2)
    assert not embedding.vectors.any() and embedding.n_positive == 0
    assert (embedding.stress, embedding.negative_mass, embedding.explained) == (0.0, 0.0, 1.0)


def test_non_euclidean_metric_has_negative_mass_and_stress() -> None:
    unit = points(n=80)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    geodesic = np.arccos(np.clip(unit @ unit.T, -1.0, 1.0))  # great-circle distance on the sphere
    np.fill_diagonal(geodesic, 0.0)
    embedding = classical_mds(geodesic, 3)
    assert embedding.negative_mass > 1e-3 and embedding.stress > 1e-3
    assert embedding.explained < 1.0


def landmark_setup(n_landmarks: int = 12) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = points(n=200)
    distances = cdist(x, x)
    return x, distances, maxmin_landmarks(distances, n_landmarks, seed=1)


def test_landmark_mds_places_out_of_sample_points_exactly() -> None:
    x, distances, landmarks = landmark_setup()
    model = LandmarkMDS(n_components=3, n_landmarks=12).fit(distances[np.ix_(landmarks, landmarks)])
    placed = model.transform(distances[:, landmarks])
    np.testing.assert_allclose(cdist(placed, placed), distances, atol=1e-8)
    rotation, shift, _ = align(placed[landmarks], x[landmarks])  # rigid motion fixed by the landmarks alone
    np.testing.assert_allclose(placed @ rotation + shift, x, atol=1e-8)
    np.testing.assert_allclose(placed[landmarks], model.embedding_.vectors, atol=1e-9)


def test_landmark_mds_with_all_points_as_landmarks_equals_classical_mds() -> None:
    x = points(n=40)
    distances = cdist(x, x)
    model = LandmarkMDS(3, 40)
    fitted = model.fit_transform(distances)
    np.testing.assert_allclose(fitted, classical_mds(distances, 3).vectors, atol=1e-12)
    np.testing.assert_allclose(model.transform(distances), fitted, atol=1e-9)


def test_landmark_state_round_trips_through_npz(tmp_path) -> None:
    _, distances, landmarks = landmark_setup()
    model = LandmarkMDS(3, 12).fit(distances[np.ix_(landmarks, landmarks)])
    state = model.state_dict()
    assert all(isinstance(v, int | np.ndarray) for v in state.values())
    np.savez(tmp_path / "state.npz", **state)
    with np.load(tmp_path / "state.npz") as stored:
        restored = LandmarkMDS.from_state(dict(stored))
    np.testing.assert_array_equal(restored.transform(distances[:, landmarks]), model.transform(distances[:, landmarks]))
    for field in ("vectors", "eigenvalues", "stress", "negative_mass", "explained", "n_positive"):
        np.testing.assert_array_equal(getattr(restored.embedding_, field), getattr(model.embedding_, field))
    broken = {**state, "pinv": state["pinv"][:, :5]}
    with pytest.raises(SurveyError, match="pinv has shape"):
        LandmarkMDS.from_state(broken)
    with pytest.raises(SurveyError, match="missing mean_sq_distances"):
        LandmarkMDS.from_state({k: v for k, v in state.items() if k != "mean_sq_distances"})


def test_maxmin_landmarks_are_deterministic_and_spread() -> None:
    _, distances, first = landmark_setup()
    np.testing.assert_array_equal(first, maxmin_landmarks(distances, 12, seed=1))
    assert first.dtype == np.int64 and len(set(first.tolist())) == 12
    assert first[1] == distances[first[0]].argmax()  # second pick: farthest from the first
    picked_spread = distances[np.ix_(first[:4], first[:4])][np.triu_indices(4, 1)].min()
    random_spread = np.median([distances[np.ix_(p, p)][np.triu_indices(4, 1)].min() for p in (
        np.random.default_rng(s).choice(200, 4, replace=False) for s in range(50))])
    assert picked_spread > 2 * random_spread
    rows = maxmin_landmarks(lambda i: distances[i], 12, seed=1, n_items=200)
    np.testing.assert_array_equal(rows, first)


def test_maxmin_never_repeats_a_landmark_among_duplicates() -> None:
    picks = maxmin_landmarks(np.zeros((4, 4)), 4, seed=0)
    assert sorted(picks.tolist()) == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("distances", "message"),
    [
        (np.zeros((3, 4)), "square"),
        (np.array([[0.0, np.nan], [np.nan, 0.0]]), "NaN"),
        (np.array([[0.0, 1.0], [2.0, 0.0]]), "not symmetric"),
        (np.array([[0.0, -1.0], [-1.0, 0.0]]), "negative"),
        (np.array([[1.0, 1.0], [1.0, 0.0]]), "diagonal"),
        (np.zeros(3), "2-D"),
        ([["a", "b"], ["c", "d"]], "not a numeric"),
    ],
)
def test_classical_mds_rejects_bad_matrices(distances: np.ndarray, message: str) -> None:
    with pytest.raises(SurveyError, match=message) as caught:
        classical_mds(distances, 1)
    assert "\n" not in str(caught.value) and str(caught.value).startswith("distances")


def test_bad_components_and_landmark_shapes_raise_one_line_errors() -> None:
    _, distances, landmarks = landmark_setup()
    for call, message in [
        (lambda: classical_mds(distances, 0), "n_components"),
        (lambda: classical_mds(distances[:3, :3], 4), "n_components"),
        (lambda: LandmarkMDS(3, 12).transform(distances[:, landmarks]), "not fitted"),
        (lambda: LandmarkMDS(3, 12).state_dict(), "not fitted"),
        (lambda: LandmarkMDS(13, 12), "n_components"),
        (lambda: LandmarkMDS(3, 11).fit(distances[np.ix_(landmarks, landmarks)]), "n_landmarks=11"),
        (lambda: LandmarkMDS(3, 12).fit(distances[np.ix_(landmarks, landmarks)]).transform(distances[:, :5]),
         "12 landmarks"),
        (lambda: maxmin_landmarks(distances, 201), "n_landmarks"),
        (lambda: maxmin_landmarks(lambda i: distances[i], 3), "n_items"),
        (lambda: maxmin_landmarks(lambda i: distances[i, :10], 3, n_items=200), "return all 200"),
    ]:
        with pytest.raises(SurveyError, match=message) as caught:
            call()
        assert "\n" not in str(caught.value)
