"""MEI throughput: all targets × seeds in one batched gradient ascent against one ascent per target, same run.

    python -m benchmarks.mei_throughput [--device cpu|cuda] [--targets 16] [--seeds 2] [--steps 200] [--size 32]

The targets are channels (at the spatial centre) of the last cell of a mid-sized zoo architecture (the one
benchmarks/activation_throughput.py uses), with the paper's recipe (AdamW lr 10, σ = 1 gradient blur, fixed norm).
Prints JSON: seconds and MEIs per second of the per-target loop (baseline) and of the batch, their ratio, and the
largest difference in final activation between the two (they optimise the same objectives from other draws).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from survey.mei.ascent import gradient_ascent
from survey.mei.targets import LayerResponses, RowTargets
from survey.sources.zoo import build_network
from survey.validation import resolve_device

from .activation_throughput import SPEC


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--targets", type=int, default=16)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--norm", type=float, default=10.0)
    args = parser.parse_args()
    device = resolve_device(args.device)
    network = build_network(SPEC, seed=0).to(device).eval()
    layer = network.layer_names[-2]
    preprocessing = {"input_size": None, "mean": None, "std": None}
    grey = torch.full((3,), 0.5)
    shape = (3, args.size, args.size)

    def ascend(channels: list[int], seed: int) -> torch.Tensor:
        rows = [c for c in channels for _ in range(args.seeds)]
        objective = RowTargets(LayerResponses(network, layer, preprocessing, grey), rows).to(device)
        result = gradient_ascent(objective, len(rows), shape, norm=args.norm, steps=args.steps, device=device,
                                 generator=torch.Generator(device).manual_seed(seed))
        return result.activation.view(len(channels), args.seeds).max(dim=1).values.cpu()

    channels = list(range(args.targets))
    ascend(channels[:1], 0)  # warm-up: allocator, kernels
    started = time.perf_counter()
    looped = torch.cat([ascend([channel], channel) for channel in channels])
    loop_seconds = time.perf_counter() - started
    started = time.perf_counter()
    batched = ascend(channels, 0)
    batch_seconds = time.perf_counter() - started
    meis = args.targets * args.seeds
    print(json.dumps({
        "device": str(device), "targets": args.targets, "seeds": args.seeds, "steps": args.steps, "layer": layer,
        "loop_seconds": round(loop_seconds, 3), "batch_seconds": round(batch_seconds, 3),
        "loop_meis_per_second": round(meis / loop_seconds, 3), "batch_meis_per_second": round(meis / batch_seconds, 3),
        "speedup": round(loop_seconds / batch_seconds, 2),
        "best_activation_loop_mean": round(float(looped.mean()), 4),
        "best_activation_batch_mean": round(float(batched.mean()), 4),
    }, indent=1))


if __name__ == "__main__":
    main()
