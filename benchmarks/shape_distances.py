"""Shape-metric throughput: the prepared, batched engine vs the plain per-pair formulas, then all pairs of a survey.

    python benchmarks/shape_distances.py [--quick] [--device cpu|cuda] [--n-large 1000]

Prints one JSON object:
1. `plain_vs_engine`: N = 50 representations of 1000 stimuli × 100 units, alpha ∈ {0.5, 1}, angular score:
   `survey.metrics.shape.pairwise` against `tests/shape_reference.linear` per pair (re-whitening both members with
   eigh, zero padding, nuclear norm by full SVD), seconds each, the speed-up and the largest absolute difference
   (must be ≤ 1e-9).
2. `all_pairs_cpu`: all N(N−1)/2 pairs of `--n-large` representations of 1000 × 64 (alpha = 1, angular) on the
   machine's cores, through the engine API (`prepare` once, then `distances` one tile of rows at a time so that
   progress goes to stderr); seconds and pairs per second, and a spot check of a few pairs against the plain formulas.
3. `all_pairs_cuda` (with `--device cuda`): the same at N = 2 × `--n-large` on the GPU.
Synthetic representations share a latent stimulus structure (random read-outs of 20 latent factors plus noise of a
random level), so their distances spread out as real networks' do.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from survey.metrics.shape import ShapeMetric, pairwise
from tests.shape_reference import linear as plain_linear


def representations(n_reps: int, m: int, n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((m, 20))
    return [latent @ rng.standard_normal((20, n)) + rng.uniform(0.2, 2.0) * rng.standard_normal((m, n))
            for _ in range(n_reps)]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def plain_vs_engine(n_reps: int, m: int, n: int, device: str) -> list[dict]:
    reps = representations(n_reps, m, n, seed=1)
    upper = np.triu_indices(n_reps, k=1)
    out = []
    for alpha in (0.5, 1.0):
        start = time.perf_counter()
        engine = pairwise(reps, "linear", alpha, "angular", device=device)
        engine_s = time.perf_counter() - start
        start = time.perf_counter()
        plain = np.array([plain_linear(reps[i], reps[j], alpha, "angular") for i, j in zip(*upper, strict=True)])
        plain_s = time.perf_counter() - start
        diff = float(np.abs(engine[upper] - plain).max())
        log(f"alpha={alpha}: engine {engine_s:.2f} s, plain {plain_s:.2f} s, max |diff| {diff:.2e}")
        out.append({"alpha": alpha, "n_reps": n_reps, "stimuli": m, "units": n, "pairs": len(plain),
                    "engine_s": round(engine_s, 3), "plain_s": round(plain_s, 3),
                    "speedup": round(plain_s / engine_s, 1), "max_abs_diff": diff, "within_1e-9": diff <= 1e-9})
    return out


def all_pairs(n_reps: int, m: int, n: int, device: str, tile: int = 100) -> dict:
    """Every pair of `n_reps` representations (alpha = 1, angular) with the engine, one row tile at a time."""
    start = time.perf_counter()
    reps = representations(n_reps, m, n, seed=2)
    make_s = time.perf_counter() - start
    engine = ShapeMetric("linear", 1.0, "angular", device=device)
    start = time.perf_counter()
    prepared = []
    for i, rep in enumerate(reps):
        prepared.append(engine.prepare(rep, f"reps[{i}]"))
        if (i + 1) % 250 == 0:
            log(f"{engine.device.type}: prepared {i + 1}/{n_reps} in {time.perf_counter() - start:.1f} s")
    if engine.device.type == "cuda":
        torch.cuda.synchronize()
    prepare_s = time.perf_counter() - start
    rows, cols = np.triu_indices(n_reps, k=1)
    distances = np.empty(len(rows))
    start = time.perf_counter()
    for first in range(0, n_reps, tile):
        in_tile = (rows >= first) & (rows < first + tile)
        distances[in_tile] = engine.distances(prepared, prepared, (rows[in_tile], cols[in_tile]))
        done = int(np.count_nonzero(rows < first + tile))
        elapsed = time.perf_counter() - start
        log(f"{engine.device.type}: {done:,}/{len(rows):,} pairs, {elapsed:.1f} s, {done / elapsed:,.0f} pairs/s")
    pairs_s = time.perf_counter() - start
    rng = np.random.default_rng(3)
    spot = rng.choice(len(rows), size=min(20, len(rows)), replace=False)
    spot_diff = max(abs(distances[k] - plain_linear(reps[rows[k]], reps[cols[k]], 1.0, "angular")) for k in spot)
    return {"device": str(engine.device), "n_reps": n_reps, "stimuli": m, "units": n, "alpha": 1.0,
            "score": "angular", "pairs": len(rows), "make_data_s": round(make_s, 2), "prepare_s": round(prepare_s, 2),
            "pairs_s": round(pairs_s, 2), "total_s": round(prepare_s + pairs_s, 2),
            "pairs_per_s": round(len(rows) / pairs_s), "spot_check_pairs": len(spot),
            "spot_check_max_abs_diff": float(spot_diff),
            "distance_range": [float(distances.min()), float(distances.max())]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run in seconds")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--n-large", type=int, default=1000, help="representations in the all-pairs CPU run")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch sees no CUDA device")
    n_reps, m, n = (10, 300, 60) if args.quick else (50, 1000, 100)
    n_large, m_large = (min(args.n_large, 120), 300) if args.quick else (args.n_large, 1000)

    result: dict = {
        "machine": {"cpu_count": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)),
                    "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "quick": args.quick,
        "plain_vs_engine": plain_vs_engine(n_reps, m, n, "cpu"),
        "all_pairs_cpu": all_pairs(n_large, m_large, 64, "cpu"),
    }
    if args.device == "cuda":
        all_pairs(8, m_large, 64, "cuda")  # warm-up: CUDA context, cuBLAS / cuSOLVER handles
        result["all_pairs_cuda"] = all_pairs(2 * n_large, m_large, 64, "cuda", tile=200)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
