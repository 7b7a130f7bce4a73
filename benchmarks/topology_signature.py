"""Topology-signature throughput vs contour tracing with skimage.measure.find_contours on random smooth tuning maps.

    python benchmarks/topology_signature.py [--n-maps 10000] [--size 21] [--n-levels 21] [--baseline-maps 200]

Prints JSON: `compile_s` (the first, small call: JIT compile, or a load from numba's on-disk cache when `jit_cache`
is "hit"), then the median wall time of `survey.metrics.topology.signature` over the whole batch on all numba
threads, and the baseline measured in the same run: `find_contours(f, t, fully_connected='low')` at every level of
the first `--baseline-maps` maps, counting closed and open contours, extrapolated linearly to `--n-maps`. The two
are compared on the interior levels (the end levels tie with the min / max pixel, where the methods' tie rules
differ).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numba
import numpy as np
from scipy.ndimage import gaussian_filter
from skimage.measure import find_contours

from survey.metrics import topology


def smooth_maps(n_maps: int, size: int, seed: int) -> np.ndarray:
    """Gaussian-filtered noise with a random width (1 to 3 px) per map, rescaled per map to [0, 1]."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((n_maps, size, size))
    maps = np.stack([gaussian_filter(f, s) for f, s in zip(noise, rng.uniform(1.0, 3.0, n_maps), strict=True)])
    low = maps.min(axis=(1, 2), keepdims=True)
    return (maps - low) / (maps.max(axis=(1, 2), keepdims=True) - low)


def traced_counts(maps: np.ndarray, levels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Closed and open contour counts (B × L) by marching squares, the baseline."""
    closed = np.zeros((len(maps), len(levels)), np.int32)
    total = np.zeros_like(closed)
    for b, f in enumerate(maps):
        for i, t in enumerate(levels):
            contours = find_contours(f, t, fully_connected="low")
            total[b, i] = len(contours)
            closed[b, i] = sum(bool((c[0] == c[-1]).all()) for c in contours)
    return closed, total - closed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-maps", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=21)
    parser.add_argument("--n-levels", type=int, default=21)
    parser.add_argument("--baseline-maps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    maps = smooth_maps(args.n_maps, args.size, args.seed)

    start = time.perf_counter()
    topology.signature(maps[:8], args.n_levels)
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        sig = topology.signature(maps, args.n_levels)
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)

    subset = maps[: args.baseline_maps]
    start = time.perf_counter()
    n_loop, n_line = traced_counts(subset, sig.levels)
    baseline_s = (time.perf_counter() - start) * args.n_maps / len(subset)
    interior = slice(1, args.n_levels - 1)
    mismatches = int((n_loop[:, interior] != sig.n_loop[: len(subset), interior]).sum()
                     + (n_line[:, interior] != sig.n_line[: len(subset), interior]).sum())

    print(json.dumps({
        "n_maps": args.n_maps, "size": args.size, "n_levels": args.n_levels,
        "threads": numba.get_num_threads(), "cpus": os.cpu_count(),
        "compile_s": round(compile_s, 3), "jit_cache": "hit" if topology._sweep.stats.cache_hits else "miss",
        "seconds": round(seconds, 4), "seconds_min": round(min(times), 4),
        "maps_per_s": round(args.n_maps / seconds),
        "baseline": {
            "method": "skimage.measure.find_contours(fully_connected='low') per map and level",
            "n_maps_measured": len(subset), "seconds_extrapolated": round(baseline_s, 2),
            "maps_per_s": round(args.n_maps / baseline_s),
        },
        "speedup": round(baseline_s / seconds, 1),
        "agree_on_subset": mismatches == 0, "mismatched_entries": mismatches,
        "compared_levels": f"1..{args.n_levels - 2} of 0..{args.n_levels - 1}",
    }))


if __name__ == "__main__":
    main()
