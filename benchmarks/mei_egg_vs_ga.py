"""Compute per MEI: gradient ascent (1,000 steps) against energy-guided diffusion (100 respaced steps), same run, same
targets, same device (Pierzchlewicz et al. 2023 report EGG ≈ 4.7× cheaper with a ResNet-50 ensemble as the model).

    python -m benchmarks.mei_egg_vs_ga [--device cpu|cuda] [--targets 8] [--seeds 2] [--prior FOLDER]

The targets are channels (at the spatial centre) of the last cell of the zoo architecture of
benchmarks/activation_throughput.py, all targets × seeds in one batch for each method. The prior is a diffusers
folder (`survey prior train --out`), or by default an untrained UNet of the project prior's default size: the
compute is the same, only the images differ, so activations are compared only with --prior. Prints JSON: seconds
per MEI for each method, their ratio (GA / EGG) and the mean best activation of each.
"""

from __future__ import annotations

import argparse
import json

import torch

from survey.config import EggConfig, MeiConfig, PriorConfig
from survey.mei.ascent import gradient_ascent
from survey.mei.egg import Adapter, energy_guided_diffusion
from survey.mei.prior import diffusers_prior, load_diffusers_prior, unet_config
from survey.mei.targets import LayerResponses, RowTargets
from survey.sources.zoo import build_network
from survey.validation import resolve_device

from .activation_throughput import SPEC


def untrained_prior(size: int, device: torch.device):
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(**unet_config(size, 1, PriorConfig().widths)).to(device).eval().requires_grad_(False)
    return diffusers_prior(unet, dict(DDPMScheduler(num_train_timesteps=PriorConfig().timesteps).config))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--targets", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--ga-steps", type=int, default=MeiConfig.model_fields["steps"].default)
    parser.add_argument("--egg-steps", type=int, default=EggConfig().steps)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--norm", type=float, default=10.0)
    parser.add_argument("--prior", default=None, help="a diffusers folder (default: an untrained UNet)")
    args = parser.parse_args()
    device = resolve_device(args.device)
    network = build_network(SPEC, seed=0).to(device).eval()
    layer = network.layer_names[-2]
    rows = [channel for channel in range(args.targets) for _ in range(args.seeds)]
    objective = RowTargets(LayerResponses(network, layer, {"input_size": None, "mean": None, "std": None},
                                          torch.full((3,), 0.5)), rows).to(device)
    shape = (3, args.size, args.size)
    prior = load_diffusers_prior(args.prior, device) if args.prior else untrained_prior(args.size, device)

    def ga(steps: int):
        return gradient_ascent(objective, len(rows), shape, norm=args.norm, steps=steps, device=device,
                               generator=torch.Generator(device).manual_seed(0))

    def egg(steps: int):
        result = energy_guided_diffusion(lambda images: -objective(images), prior, len(rows),
                                         adapt=Adapter(shape, args.norm), steps=steps, device=device,
                                         energy_scale=EggConfig().energy_scale,
                                         generator=torch.Generator(device).manual_seed(0))
        return result.seconds, -result.energy

    ga(5), egg(5)  # warm-up: allocator, kernels
    ascent = ga(args.ga_steps)
    egg_seconds, egg_activation = egg(args.egg_steps)
    meis = len(rows)

    def best(activation: torch.Tensor) -> float:
        return round(float(activation.view(args.targets, args.seeds).max(dim=1).values.mean()), 4)

    print(json.dumps({
        "device": str(device), "targets": args.targets, "seeds": args.seeds, "layer": layer,
        "ga_steps": args.ga_steps, "egg_steps": args.egg_steps, "prior": args.prior or "untrained (timing only)",
        "ga_seconds_per_mei": round(ascent.seconds / meis, 4), "egg_seconds_per_mei": round(egg_seconds / meis, 4),
        "ga_over_egg": round(ascent.seconds / egg_seconds, 2),
        "ga_best_activation_mean": best(ascent.activation),
        "egg_best_activation_mean": best(egg_activation) if args.prior else None,
    }, indent=1))


if __name__ == "__main__":
    main()
