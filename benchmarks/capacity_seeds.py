"""Seed agreement and cost of the center-correlation removal (DESIGN §5.2 step 2), the part of MFTMA that searches.

    python benchmarks/capacity_seeds.py [--cases 48] [--seeds 0,1]

The restarts of the Stiefel search are drawn from the seed, so two seeds agree only where the search finds the
minimum of lowest L both times. Cases: P = 10 Gaussian-cloud manifolds (N = 60, M = 20, 5-dimensional) whose centers
share a random rank-1…4 part at a random scale (ρ₀ from about 0.1 to 0.6), as `tests/test_capacity.py`'s
`moderately_correlated`, one case per case seed; each seed's capacities are computed with the same t-vectors, so only
the removal can differ. A case agrees when every manifold's capacity, radius and dimension agree within 1e-6. Also
times the search on P = 16 and P = 50 cases. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np

from survey.metrics.capacity import center_structure, check_manifolds, manifold_capacity


def clouds(case: int, n_manifolds: int = 10, n_features: int = 60, n_points: int = 20, dim: int = 5) -> list:
    rng = np.random.default_rng([case, 17])
    rank, scale = int(rng.integers(1, 5)), float(rng.uniform(0.4, 1.5))
    shared = rng.standard_normal((n_features, rank)) * scale
    result = []
    for _ in range(n_manifolds):
        center = shared @ rng.standard_normal(rank) + rng.standard_normal(n_features)
        basis = np.linalg.qr(rng.standard_normal((n_features, dim)))[0]
        result.append(center[:, None] + 0.4 * math.sqrt(n_features / dim) * basis
                      @ rng.standard_normal((dim, n_points)))
    return result


def agree(a, b, atol: float = 1e-6) -> bool:
    return a.K == b.K and all(np.allclose(getattr(a, name), getattr(b, name), rtol=0, atol=atol)
                              for name in ("capacities", "radii", "dimensions"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=48)
    parser.add_argument("--seeds", default="0,1")
    args = parser.parse_args()
    seeds = [int(seed) for seed in args.seeds.split(",")]
    agreeing, seconds, failures = 0, [], []
    for case in range(args.cases):
        manifolds = clouds(case)
        rng = np.random.default_rng(99)
        t_vectors = [rng.standard_normal((min(x.shape) + 1, 100)) for x in manifolds]
        runs = []
        for seed in seeds:
            started = time.perf_counter()
            runs.append(manifold_capacity(manifolds, n_t=100, t_vectors=t_vectors, seed=seed))
            seconds.append(time.perf_counter() - started)
        if all(agree(runs[0], run) for run in runs[1:]):
            agreeing += 1
        else:
            failures.append({"case": case, "K": [run.K for run in runs],
                             "capacity": [round(run.capacity, 6) for run in runs]})
    timing = {}
    for name, (p, n, m, d) in {"P16_N512": (16, 512, 16, 8), "P50_N1000": (50, 1000, 40, 10)}.items():
        manifolds = check_manifolds(clouds(0, p, n, m, d))
        started = time.perf_counter()
        center_structure(manifolds, seed=0)
        timing[name] = round(time.perf_counter() - started, 3)
    print(json.dumps({"cases": args.cases, "seeds": seeds, "agreeing": agreeing, "failures": failures,
                      "seconds_per_run_median": round(float(np.median(seconds)), 3),
                      "seconds_total": round(float(np.sum(seconds)), 1), "center_search_seconds": timing}, indent=1))


if __name__ == "__main__":
    main()
