"""Single-query k-NN latency of VectorIndex (flat and HNSW) vs a numpy brute-force baseline.

    python benchmarks/search_latency.py [--n 100000] [--dim 32] [--queries 1000] [--k 10] [--threads CORES]

Prints one JSON object: build seconds per index kind, p50/p99 milliseconds of single queries (one query per
call, each timed alone after a warm-up; the three searchers take turns in chunks of 100 queries so that machine
noise hits them alike without one library's idle threads disturbing the next call), HNSW recall@k against the
exact flat index, and the numpy baseline measured in the same run (squared norms precomputed, one
matrix-vector product, argpartition).

On a shared or small machine prefer `--threads 1` for single-query latency: FAISS parallelises over queries,
so extra OpenMP threads do not speed up one query, and each parallel region waits for every thread to be
scheduled, which turns other load into p99 spikes of tens of milliseconds.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable

import faiss
import numpy as np

from survey.vector_index import VectorIndex

CHUNK = 100  # timed queries per searcher before switching to the next one
REWARM = 5  # untimed queries after each switch (the other library's threads and caches settle)


def clustered(n: int, dim: int, n_clusters: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n points from a Gaussian mixture with clusters of varied spread, and a function drawing more from it."""
    centres = rng.normal(scale=4.0, size=(n_clusters, dim))
    spread = rng.uniform(0.5, 1.5, size=(n_clusters, 1))

    def draw(count: int) -> np.ndarray:
        labels = rng.integers(n_clusters, size=count)
        return (centres[labels] + spread[labels] * rng.normal(size=(count, dim))).astype(np.float32)

    return draw(n), draw


def numpy_searcher(data: np.ndarray, k: int) -> Callable[[np.ndarray], np.ndarray]:
    norms = np.einsum("ij,ij->i", data, data)

    def search(query: np.ndarray) -> np.ndarray:
        squared = norms - 2.0 * (data @ query)
        nearest = np.argpartition(squared, k - 1)[:k]
        return nearest[np.argsort(squared[nearest])]

    return search


def percentiles(samples_ns: list[int]) -> dict[str, float]:
    p50, p99 = np.percentile(np.asarray(samples_ns) / 1e6, [50, 99])
    return {"p50_ms": round(float(p50), 4), "p99_ms": round(float(p99), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--clusters", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--ef-construction", type=int, default=200)
    parser.add_argument("--ef-search", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="FAISS OpenMP threads")
    args = parser.parse_args()
    faiss.omp_set_num_threads(args.threads)
    data, draw = clustered(args.n, args.dim, args.clusters, np.random.default_rng(args.seed))
    queries = draw(args.warmup + args.queries)
    ids = np.arange(args.n, dtype=np.int64)

    build_s = {}
    indexes = {}
    for kind in ("flat", "hnsw"):
        start = time.perf_counter()
        indexes[kind] = VectorIndex.build(data, ids, kind=kind, hnsw_m=args.hnsw_m,
                                          ef_construction=args.ef_construction, ef_search=args.ef_search)
        build_s[kind] = round(time.perf_counter() - start, 3)

    searchers: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        kind: (lambda q, index=index: index.search(q, args.k)[1][0]) for kind, index in indexes.items()
    }
    searchers["numpy_bruteforce"] = numpy_searcher(data, args.k)
    warmup, timed = queries[: args.warmup], queries[args.warmup :]
    for search in searchers.values():
        for query in warmup:
            search(query)
    samples: dict[str, list[int]] = {name: [] for name in searchers}
    found: dict[str, list[np.ndarray]] = {name: [] for name in searchers}
    for first in range(0, len(timed), CHUNK):
        for name, search in searchers.items():
            for query in warmup[:REWARM]:
                search(query)
            for query in timed[first : first + CHUNK]:
                start = time.perf_counter_ns()
                result = search(query)
                samples[name].append(time.perf_counter_ns() - start)
                found[name].append(result)

    def recall(name: str) -> float:
        hits = [len(np.intersect1d(a, b)) for a, b in zip(found[name], found["flat"], strict=True)]
        return round(float(np.mean(hits)) / args.k, 4)

    latency = {name: percentiles(values) for name, values in samples.items()}
    print(json.dumps({
        "n": args.n, "dim": args.dim, "queries": args.queries, "k": args.k, "clusters": args.clusters,
        "hnsw": {"m": args.hnsw_m, "ef_construction": args.ef_construction, "ef_search": args.ef_search},
        "threads": args.threads, "faiss": faiss.__version__, "numpy": np.__version__,
        "build_s": build_s,
        "latency": latency,
        f"hnsw_recall_at_{args.k}": recall("hnsw"),
        f"numpy_recall_at_{args.k}": recall("numpy_bruteforce"),
        "speedup_p50_vs_numpy": {kind: round(latency["numpy_bruteforce"]["p50_ms"] / latency[kind]["p50_ms"], 2)
                                 for kind in indexes},
    }))


if __name__ == "__main__":
    main()
