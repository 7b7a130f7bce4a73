"""Nearest-neighbour index over embedded representations: FAISS exact flat L2, or HNSW (Malkov & Yashunin 2018)."""

from __future__ import annotations

import re
from typing import Any, Literal

import faiss
import numpy as np

from survey.errors import SurveyError, one_line
from survey.validation import check_int, real_array

IndexKind = Literal["flat", "hnsw"]
MISSING_ID = -1  # FAISS's id for "no result"; search() pairs it with an infinite distance


def _faiss_reason(error: Exception) -> str:
    """A FAISS exception's message without its "Error in <C++ signature> at <file>:<line>: " prefix."""
    return one_line(re.sub(r"^Error in .*? at \S+:\d+: ", "", str(error)), 100)


def _as_vectors(name: str, value: Any, dim: int | None = None) -> np.ndarray:
    """C-contiguous float32 n × d array of finite values (after the cast); a 1-D array is one vector."""
    array = real_array(np.atleast_2d(np.asarray(value)), name, (2,), "n vectors × d", dtype=np.float32)
    if dim is not None and array.shape[1] != dim:
        raise SurveyError(f"{name}: vectors have dimension {array.shape[1]} but the index has {dim}; match them")
    return array


def _as_ids(value: Any, n: int) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype.kind not in "iu" or array.shape != (n,):
        raise SurveyError(f"ids: expected {n} integers (one per vector), got {array.dtype} shape {array.shape}")
    if array.size and (array.min() < 0 or array.max() > np.iinfo(np.int64).max):
        raise SurveyError("ids: must lie in [0, 2**63 − 1] (FAISS uses −1 for 'no result'); renumber them")
    array = array.astype(np.int64)
    unique, counts = np.unique(array, return_counts=True)
    if (counts > 1).any():
        raise SurveyError(f"ids: {int((counts > 1).sum())} duplicated (first {unique[counts > 1][0]}); make ids unique")
    return array


class VectorIndex:
    """FAISS `IndexIDMap2` over an exact `IndexFlatL2` ("flat") or an `IndexHNSWFlat` graph ("hnsw").

    Build with `VectorIndex.build` or restore with `VectorIndex.from_bytes`. Distances are Euclidean (not
    squared), float32.
    """

    def __init__(self, index: faiss.IndexIDMap2) -> None:
        l2 = isinstance(index, faiss.IndexIDMap2) and index.metric_type == faiss.METRIC_L2
        inner = faiss.downcast_index(index.index) if l2 else None
        if isinstance(inner, faiss.IndexHNSWFlat):
            self.kind: IndexKind = "hnsw"
        elif isinstance(inner, faiss.IndexFlatL2):
            self.kind = "flat"
        else:
            raise SurveyError(f"index: {type(index).__name__} is not an L2 IndexIDMap2 over IndexFlatL2/IndexHNSWFlat; "
                              "build it with VectorIndex.build")
        self._index = index

    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        ids: np.ndarray,
        kind: IndexKind = "flat",
        hnsw_m: int = 32,
        ef_construction: int = 200,
        ef_search: int = 128,
    ) -> VectorIndex:
        """Index n×d `vectors` under unique non-negative int64 `ids` (HNSW: `hnsw_m` links, the two ef beams)."""
        if kind not in ("flat", "hnsw"):
            raise SurveyError(f"kind: got {kind!r}; use 'flat' (exact) or 'hnsw' (approximate, faster)")
        for name, value, low in (("hnsw_m", hnsw_m, 2), ("ef_construction", ef_construction, 1),
                                 ("ef_search", ef_search, 1)):
            check_int(name, value, low)
        data = _as_vectors("vectors", vectors)
        keys = _as_ids(ids, data.shape[0])
        dim = data.shape[1]
        if kind == "flat":
            inner = faiss.IndexFlatL2(dim)
        else:
            inner = faiss.IndexHNSWFlat(dim, int(hnsw_m))
            inner.hnsw.efConstruction = int(ef_construction)
            inner.hnsw.efSearch = int(ef_search)
        index = faiss.IndexIDMap2(inner)
        index.add_with_ids(data, keys)
        return cls(index)

    @property
    def ntotal(self) -> int:
        """Number of stored vectors."""
        return int(self._index.ntotal)

    @property
    def dim(self) -> int:
        """Vector dimension d."""
        return int(self._index.d)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest stored vectors of each query: (m×k' float32 distances, m×k' int64 ids), k' = min(k, ntotal).

        Rows are sorted by distance. A slot HNSW could not fill keeps id −1 (`MISSING_ID`) and distance inf, so
        masks such as `ids >= 0` stay aligned. A 1-D query is one row.
        """
        check_int("k", k, 1)
        data = _as_vectors("queries", queries, self.dim)
        squared, ids = self._index.search(data, min(int(k), self.ntotal))
        distances = np.sqrt(np.maximum(squared, 0.0))
        distances[ids == MISSING_ID] = np.inf
        return distances, ids

    def reconstruct(self, id_: int) -> np.ndarray:
        """The stored float32 vector with id `id_`."""
        try:
            return self._index.reconstruct(int(id_))
        except (RuntimeError, TypeError, ValueError, OverflowError) as error:
            raise SurveyError(f"id {id_!r}: not in the index ({_faiss_reason(error)}); pass a stored id") from error

    def to_bytes(self) -> bytes:
        """FAISS's own serialisation of the whole index (ids and HNSW graph included; no pickle)."""
        return faiss.serialize_index(self._index).tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> VectorIndex:
        """Restore an index written by `to_bytes`."""
        try:
            index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        except (RuntimeError, TypeError, ValueError) as error:
            reason = _faiss_reason(error)
            raise SurveyError(f"index bytes: unreadable ({reason}); pass what to_bytes() wrote") from error
        return cls(index)
