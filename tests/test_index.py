"""VectorIndex: exact flat search, HNSW recall, serialisation, reconstruction and input errors."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from survey.errors import SurveyError
from survey.vector_index import MISSING_ID, VectorIndex


def clustered(n: int, dim: int = 32, n_clusters: int = 50, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=4.0, size=(n_clusters, dim))
    spread = rng.uniform(0.5, 1.5, size=(n_clusters, 1))
    labels = rng.integers(n_clusters, size=n)
    return (centres[labels] + spread[labels] * rng.normal(size=(n, dim))).astype(np.float32)


def brute_force(data: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    distances = np.linalg.norm(queries[:, None, :].astype(np.float64) - data[None, :, :], axis=2)
    order = np.argsort(distances, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(distances, order, axis=1), order


def test_flat_search_equals_numpy_brute_force() -> None:
    data, queries = clustered(2000, dim=16), clustered(60, dim=16, seed=1)
    ids = np.arange(2000, dtype=np.int64) * 7 + 3
    index = VectorIndex.build(data, ids)
    assert (index.kind, index.ntotal, index.dim) == ("flat", 2000, 16)
    expected_distances, expected_rows = brute_force(data, queries, 10)
    distances, found = index.search(queries, 10)
    assert distances.shape == found.shape == (60, 10) and found.dtype == np.int64
    np.testing.assert_array_equal(found, ids[expected_rows])
    np.testing.assert_allclose(distances, expected_distances, rtol=1e-5)
    single_distances, single = index.search(queries[0], 10)  # one 1-D query, FAISS's non-BLAS path
    np.testing.assert_array_equal(single, found[:1])
    np.testing.assert_allclose(single_distances, expected_distances[:1], rtol=1e-5)


def test_k_is_clipped_to_the_index_size() -> None:
    data = clustered(5)
    distances, found = VectorIndex.build(data, np.arange(5)).search(data, 50)
    assert found.shape == (5, 5) and sorted(found[0].tolist()) == [0, 1, 2, 3, 4]
    assert (found[:, 0] == np.arange(5)).all() and np.allclose(distances[:, 0], 0.0, atol=1e-3)


def test_hnsw_recall_against_flat() -> None:
    data, queries = clustered(5000), clustered(200, seed=1)
    ids = np.arange(5000, dtype=np.int64)
    _, exact = VectorIndex.build(data, ids).search(queries, 10)
    hnsw = VectorIndex.build(data, ids, kind="hnsw")  # the shipped defaults: M=32, ef 200/128
    assert hnsw.kind == "hnsw"
    distances, approximate = hnsw.search(queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(approximate, exact, strict=True)])
    assert recall >= 0.95
    assert (approximate != MISSING_ID).all() and (np.diff(distances, axis=1) >= 0).all()


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_bytes_round_trip_and_reconstruct(kind: str) -> None:
    data, queries = clustered(1000), clustered(20, seed=1)
    ids = np.random.default_rng(0).permutation(10_000)[:1000]
    index = VectorIndex.build(data, ids, kind=kind)
    blob = index.to_bytes()
    assert isinstance(blob, bytes)
    restored = VectorIndex.from_bytes(blob)
    assert (restored.kind, restored.ntotal, restored.dim) == (kind, 1000, 32)
    for got, want in zip(restored.search(queries, 10), index.search(queries, 10), strict=True):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(restored.reconstruct(ids[17]), data[17])
    np.testing.assert_array_equal(index.reconstruct(int(ids[999])), data[999])
    with pytest.raises(SurveyError, match="not in the index"):
        index.reconstruct(10_000)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda d: VectorIndex.build(d, [0, 1, 1]), "duplicated"),
        (lambda d: VectorIndex.build(np.where(np.arange(3)[:, None] == 1, np.nan, d), [0, 1, 2]), "NaN"),
        (lambda d: VectorIndex.build(d, [0, 1]), "ids: expected 3"),
        (lambda d: VectorIndex.build(d, [0.0, 1.0, 2.0]), "ids: expected 3 integers"),
        (lambda d: VectorIndex.build(d, [0, -1, 2]), "FAISS uses −1"),
        (lambda d: VectorIndex.build(d, [0, 1, 2], kind="ivf"), "kind"),
        (lambda d: VectorIndex.build(d, [0, 1, 2], kind="hnsw", hnsw_m=1), "hnsw_m"),
        (lambda d: VectorIndex.build(d.astype(np.complex64), [0, 1, 2]), "not real-valued"),
        (lambda d: VectorIndex.build(np.zeros((0, 4)), []), "non-empty"),
        (lambda d: VectorIndex.build(d, [0, 1, 2]).search(d[:, :3], 1), "dimension 3 but the index has 4"),
        (lambda d: VectorIndex.build(d, [0, 1, 2]).search(d, 0), "k=0 must be an integer ≥ 1"),
        (lambda d: VectorIndex.build(d, [0, 1, 2]).search(np.full((1, 4), np.inf), 1), "NaN or inf"),
        (lambda d: VectorIndex.from_bytes(b"not an index"), "index bytes"),
        (lambda d: VectorIndex.from_bytes(faiss.serialize_index(faiss.IndexFlatL2(4)).tobytes()), "not an L2"),
    ],
)
def test_bad_input_raises_one_line_survey_error(call, message: str) -> None:
    with pytest.raises(SurveyError, match=message) as caught:
        call(clustered(3, dim=4))
    assert "\n" not in str(caught.value)
