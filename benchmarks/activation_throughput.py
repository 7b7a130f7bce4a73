"""Activation extraction throughput vs a bare torch forward loop over the same model and batches.

    python benchmarks/activation_throughput.py [--device cpu|cuda] [--n 2048] [--batch-size 256]
        [--model zoo | --model torchvision:resnet18 --size 112]

Prints JSON: images/s of the bare loop (baseline, measured in the same run) and of `survey.activations.extract`
hooking every representation layer (with and without full conv maps kept), and the overhead ratios.
`overhead_pooled` is the extraction machinery (hooks, batching, pooling, host copies); `overhead_spatial`
adds materialising every full conv map in fresh host memory (hundreds of MB, dominated by first-touch page
faults), which the conv metric needs and a bare loop never does.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from survey.activations import extract, preprocess
from survey.sources.external import build_external
from survey.sources.zoo import CellSpec, build_network
from survey.stimuli import NaturalPatches
from survey.validation import resolve_device

# A mid-sized zoo architecture: 3 stacks of 2 cells, width 32 (NAS-Bench-101-like cell with all three ops).
SPEC = CellSpec(
    matrix=((0, 1, 1, 0, 0), (0, 0, 0, 1, 0), (0, 0, 0, 1, 1), (0, 0, 0, 0, 1), (0, 0, 0, 0, 0)),
    ops=("conv3x3", "conv1x1", "maxpool3x3"), stacks=3, cells_per_stack=2, width=32, activation="relu",
)


def bare_loop(model: torch.nn.Module, images: np.ndarray, batch_size: int, device: torch.device) -> None:
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size]))
            model(preprocess(batch.to(device, non_blocking=True)))
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--n", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", default="zoo", help="zoo, or torchvision:NAME (hooks its residual stages)")
    args = parser.parse_args()
    device = resolve_device(args.device)
    images = NaturalPatches(name="bench", n=args.n, size=args.size).generate().images
    if args.model == "zoo":
        model = build_network(SPEC)
        layers = list(model.layer_names)
    else:
        kind, name = args.model.split(":")
        model = build_external(kind, name)
        layers = ["layer1", "layer2", "layer3", "layer4", "avgpool"]
    model = model.eval().to(device)

    def ours(keep_spatial: bool) -> None:
        extract(model, images, layers, batch_size=args.batch_size, device=device, keep_spatial=keep_spatial)

    timed(lambda: bare_loop(model, images, args.batch_size, device))  # warm-up (allocator, cuDNN autotune)
    timed(lambda: ours(True))
    order = [("bare", lambda: bare_loop(model, images, args.batch_size, device)),
             ("pooled", lambda: ours(False)), ("spatial", lambda: ours(True))]
    seconds = {name: [] for name, _ in order}
    for _ in range(args.repeats):  # interleaved so that machine noise hits every variant alike
        for name, fn in order:
            seconds[name].append(timed(fn))
    median = {name: statistics.median(values) for name, values in seconds.items()}
    result = {
        "model": args.model, "device": str(device), "torch_threads": torch.get_num_threads(), "n_images": args.n,
        "batch_size": args.batch_size, "image_size": args.size, "layers": len(layers),
        "bare_images_per_s": args.n / median["bare"],
        "extract_pooled_images_per_s": args.n / median["pooled"],
        "extract_spatial_images_per_s": args.n / median["spatial"],
        "overhead_pooled": median["pooled"] / median["bare"] - 1,
        "overhead_spatial": median["spatial"] / median["bare"] - 1,
        "target_overhead": 0.15,
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
