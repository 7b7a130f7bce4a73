"""Compute per MEI: gradient ascent (1,000 steps) against energy-guided diffusion (100 respaced steps), same run, same
targets, same device (Pierzchlewicz et al. 2023 report EGG ≈ 4.7× cheaper with a ResNet-50 ensemble as the model).

    python -m benchmarks.mei_egg_vs_ga [--device cpu|cuda] [--targets 8] [--seeds 2] [--prior FOLDER]

The targets are channels (at the spatial centre) of the last cell of the zoo architecture of
benchmarks/activation_throughput.py, all targets × seeds in one batch for each method. The prior is a diffusers
folder (`survey prior train --out`), or by default an untrained UNet of the project prior's default size: the
compute is the same, only the images differ, so activations are compared only with --prior. Prints JSON: seconds
per MEI for each method, their ratio (GA / EGG), the mean best activation of each and, with --prior, EGG's at
other energy scales (the paper's 10 was set for 256 × 256 × 3 images: per pixel, a normalised gradient step is
√(3 · 256² / (H · W)) times larger on H × W grey images) and EGG reconstructions of held-out patches from the
layer's responses against a white-noise baseline.
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


def reconstruct(network: torch.nn.Module, layer: str, prior, shape: tuple[int, int, int], device: torch.device,
                steps: int, n_images: int = 4) -> dict:
    """EGG reconstructions of held-out grey natural patches from `layer`'s whole response map (energy: response-space
    MSE): the Pearson r of each with its patch, against 200 white-noise images' r with the same patches."""
    from survey.mei.prior import prior_patches

    patches = torch.from_numpy(prior_patches(200, shape[-1], seed=12_345)[-n_images:]).to(device)
    norm = float(patches.flatten(1).norm(dim=1).mean())
    adapt = Adapter(shape, norm)
    model = LayerResponses(network, layer, {"input_size": None, "mean": None, "std": None}, torch.full((3,), 0.5))
    model = model.to(device)
    with torch.no_grad():
        target = model.layer_output(adapt(patches)).flatten(1)

    def energy(images: torch.Tensor) -> torch.Tensor:
        return ((model.layer_output(images).flatten(1) - target) ** 2).mean(dim=1)

    result = energy_guided_diffusion(energy, prior, n_images, adapt=adapt, steps=steps, energy_scale=1.0,
                                     device=device, generator=torch.Generator(device).manual_seed(0))

    def correlation(images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        a = images.flatten(1) - images.flatten(1).mean(1, keepdim=True)
        b = reference.flatten(1) - reference.flatten(1).mean(1, keepdim=True)
        return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))

    egg = correlation(result.images[:, :1], patches).cpu()
    noise = torch.randn((200, 1, *shape[1:]), generator=torch.Generator().manual_seed(1)).to(device)
    baseline = torch.stack([correlation(noise, patch.expand(200, -1, -1, -1)) for patch in patches]).cpu()
    return {"layer": layer, "egg_r": [round(float(r), 3) for r in egg],
            "noise_r_mean": round(float(baseline.mean()), 3), "noise_r_std": round(float(baseline.std()), 3)}


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
    parser.add_argument("--scales", default="1,2,3", help="with --prior: EGG's activation at these energy scales too")
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

    def egg(steps: int, scale: float = EggConfig().energy_scale):
        result = energy_guided_diffusion(lambda images: -objective(images), prior, len(rows),
                                         adapt=Adapter(shape, args.norm), steps=steps, device=device,
                                         energy_scale=scale, generator=torch.Generator(device).manual_seed(0))
        return result.seconds, -result.energy

    ga(5), egg(5)  # warm-up: allocator, kernels
    ascent = ga(args.ga_steps)
    egg_seconds, egg_activation = egg(args.egg_steps)
    meis = len(rows)

    def best(activation: torch.Tensor) -> float:
        return round(float(activation.view(args.targets, args.seeds).max(dim=1).values.mean()), 4)

    reconstruction = reconstruct(network, layer, prior, shape, device, args.egg_steps) if args.prior else None
    print(json.dumps({
        "device": str(device), "targets": args.targets, "seeds": args.seeds, "layer": layer,
        "ga_steps": args.ga_steps, "egg_steps": args.egg_steps, "prior": args.prior or "untrained (timing only)",
        "ga_seconds_per_mei": round(ascent.seconds / meis, 4), "egg_seconds_per_mei": round(egg_seconds / meis, 4),
        "ga_over_egg": round(ascent.seconds / egg_seconds, 2),
        "ga_best_activation_mean": best(ascent.activation),
        "egg_best_activation_mean": best(egg_activation) if args.prior else None,
        "egg_energy_scale": EggConfig().energy_scale,
        "egg_best_activation_mean_by_scale": ({scale: best(egg(args.egg_steps, float(scale))[1])
                                               for scale in args.scales.split(",")} if args.prior else None),
        "reconstruction": reconstruction,
    }, indent=1))


if __name__ == "__main__":
    main()
