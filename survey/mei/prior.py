"""Diffusion priors for EGG (DESIGN §5.5): a denoiser that predicts the noise ε in x_t = √ᾱ_t x₀ + √(1 − ᾱ_t) ε
(Ho et al. 2020, eq. 4 and 14) together with its training schedule ᾱ.

Any callable ``denoiser(x_t, t) → ε̂`` can be a prior (`DiffusionPrior`); `load_diffusers_prior` makes one from a
local `diffusers` folder (``unet/`` and ``scheduler/``, as `save_pretrained` writes them), and `train_prior` trains
the project's own: a small `UNet2DModel` on grayscale (or RGB) patches of the bundled natural images, in [−1, 1].
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from survey.errors import SurveyError
from survey.images import BUNDLED_IMAGES, bundled_image, cut_patches
from survey.mei.defaults import PRIOR_BATCH_SIZE, PRIOR_LR, PRIOR_STEPS, PRIOR_TIMESTEPS, PRIOR_WIDTHS
from survey.validation import resolve_device

PRIOR_FILES = ("unet/config.json", "unet/diffusion_pytorch_model.safetensors", "scheduler/scheduler_config.json")


class Denoiser(Protocol):
    """ε̂ from noisy images x_t (B × C × S × S) and their integer timesteps t (B)."""

    def __call__(self, noisy: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class DiffusionPrior:
    """A denoiser with the ᾱ schedule it was trained under, on `channels` × `size` × `size` images in [−1, 1]."""

    denoiser: Denoiser
    alphas_cumprod: torch.Tensor  # ᾱ_t for t = 0 … T − 1
    channels: int
    size: int
    clip: float | None = None  # clip x̂₀ to [−clip, clip] while sampling (diffusers' clip_sample); None: never
    # dynamic thresholding instead (Saharia et al. 2022, §2.3; diffusers' `thresholding`): this quantile s of |x̂₀|
    # per image, held to [1, clip], and x̂₀ clipped to [−s, s] then divided by s
    dynamic_ratio: float | None = None

    def threshold(self, clean: torch.Tensor) -> torch.Tensor:
        """x̂₀ limited as the prior's scheduler asks: clipped, dynamically thresholded, or left alone."""
        if self.dynamic_ratio is not None:
            level = torch.quantile(clean.flatten(1).abs(), self.dynamic_ratio, dim=1)
            level = level.clamp(1.0, self.clip).view(-1, *[1] * (clean.ndim - 1))
            return torch.maximum(torch.minimum(clean, level), -level) / level
        if self.clip is not None:
            return clean.clamp(-self.clip, self.clip)
        return clean

    def respaced(self, steps: int) -> list[int]:
        """`steps` of the T training timesteps, evenly spaced from 0 and in sampling order (T − T/steps, …, 0): the
        respacing of Nichol & Dhariwal 2021 and diffusers' "leading" spacing."""
        total = len(self.alphas_cumprod)
        if not 1 <= steps <= total:
            raise SurveyError(f"steps={steps}: the prior was trained with {total} timesteps; pass 1 ≤ steps ≤ {total}")
        stride = total // steps
        return [step * stride for step in reversed(range(steps))]


def prior_patches(n: int, size: int, seed: int, channels: int = 1,
                  images: Sequence[str] = BUNDLED_IMAGES) -> np.ndarray:
    """`n` random size × size patches cut evenly from the bundled images as n × channels × size × size float32 in
    [−1, 1]: luminance (ITU-R 601) for 1 channel, RGB for 3."""
    if channels not in (1, 3):
        raise SurveyError(f"prior channels={channels}: pass 1 (grayscale) or 3 (RGB)")
    rng = np.random.default_rng(seed)
    per_image, extra = divmod(n, len(images))
    patches = [cut_patches(bundled_image(name), per_image + (index < extra), size, rng)
               for index, name in enumerate(images) if per_image + (index < extra)]
    rgb = np.concatenate(patches)
    if channels == 1:
        rgb = np.tensordot(np.array([0.299, 0.587, 0.114], dtype=np.float32), rgb, axes=([0], [1]))[:, None]
    return np.ascontiguousarray(rgb * 2 - 1, dtype=np.float32)


def unet_config(size: int, channels: int, widths: Sequence[int]) -> dict:
    """A small `UNet2DModel` without attention: one ResNet block per level, `widths` channels per level."""
    return {"sample_size": size, "in_channels": channels, "out_channels": channels,
            "block_out_channels": list(widths), "layers_per_block": 1,
            "down_block_types": ["DownBlock2D"] * len(widths), "up_block_types": ["UpBlock2D"] * len(widths),
            "norm_num_groups": min(8, *widths)}


@dataclass(frozen=True)
class TrainedPrior:
    """`train_prior`'s result: the network, its scheduler config, the loss of every step and the seconds taken."""

    unet: torch.nn.Module
    scheduler_config: dict
    losses: np.ndarray
    seconds: float

    def prior(self) -> DiffusionPrior:
        return diffusers_prior(self.unet, self.scheduler_config)


def train_prior(patches: np.ndarray, *, widths: Sequence[int] = PRIOR_WIDTHS, steps: int = PRIOR_STEPS,
                batch_size: int = PRIOR_BATCH_SIZE, lr: float = PRIOR_LR, timesteps: int = PRIOR_TIMESTEPS,
                seed: int = 0, device: torch.device | str = "cpu",
                progress: Callable[[], object] | None = None) -> TrainedPrior:
    """Fit a `UNet2DModel` to predict ε on `patches` (n × C × S × S in [−1, 1]) by the simple loss of Ho et al.
    2020 (eq. 14) under diffusers' linear β schedule (Ho et al. 2020, §4); AdamW with a cosine-decayed rate; all
    randomness from `seed`; `progress` is called after each step."""
    from diffusers import DDPMScheduler, UNet2DModel

    if patches.ndim != 4 or patches.shape[2] != patches.shape[3]:
        raise SurveyError(f"prior patches have shape {patches.shape}; pass n × C × S × S square images")
    device = resolve_device(device)
    generator = torch.Generator(device).manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DModel(**unet_config(patches.shape[2], patches.shape[1], widths)).to(device).train()
    # x̂₀ dynamically thresholded while sampling (Saharia et al. 2022): unlimited, a prior this small drifts out of
    # range (samples' std 4 against the patches' 0.5 at 32 px), and plain clipping to [−1, 1] over-smooths them
    scheduler = DDPMScheduler(num_train_timesteps=timesteps, beta_schedule="linear", thresholding=True,
                              dynamic_thresholding_ratio=0.995, sample_max_value=3.0)
    scheduler_config = dict(scheduler.config)
    alphas = scheduler.alphas_cumprod.to(device, torch.float32)  # the ᾱ sampling uses (`diffusers_prior`)
    data = torch.from_numpy(patches).to(device)
    optimiser = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps)
    losses = np.empty(steps)
    started = time.perf_counter()
    for step in range(steps):
        rows = torch.randint(0, len(data), (batch_size,), generator=generator, device=device)
        clean = data[rows]
        clean = torch.where(torch.rand((batch_size, 1, 1, 1), generator=generator, device=device) < 0.5,
                            clean, clean.flip(-1))  # mirrored patches are natural patches too
        t = torch.randint(0, timesteps, (batch_size,), generator=generator, device=device)
        noise = torch.randn(clean.shape, generator=generator, device=device)
        alpha = alphas[t].view(-1, 1, 1, 1)
        loss = torch.mean((unet(alpha.sqrt() * clean + (1 - alpha).sqrt() * noise, t).sample - noise) ** 2)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        decay.step()
        losses[step] = float(loss.detach())
        if progress is not None:
            progress()
    return TrainedPrior(unet.eval().requires_grad_(False), scheduler_config, losses, time.perf_counter() - started)


def diffusers_prior(unet: torch.nn.Module, scheduler_config: dict) -> DiffusionPrior:
    """A `UNet2DModel` predicting ε and its DDPM scheduler config as a `DiffusionPrior`."""
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_config(scheduler_config)
    if scheduler.config.prediction_type != "epsilon":
        raise SurveyError(f"the prior's scheduler predicts {scheduler.config.prediction_type!r}; EGG needs a denoiser "
                          "that predicts the noise (prediction_type: epsilon)")

    def denoiser(noisy: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return unet(noisy, timesteps).sample

    config = unet.config
    if config.in_channels != config.out_channels:
        raise SurveyError(f"the prior's UNet maps {config.in_channels} channels to {config.out_channels}; EGG needs "
                          "ε with the image's channels (a learned variance is not supported)")
    settings = scheduler.config
    if settings.thresholding:
        clip, ratio = float(settings.sample_max_value), float(settings.dynamic_thresholding_ratio)
    else:
        clip, ratio = (float(settings.clip_sample_range) if settings.clip_sample else None), None
    return DiffusionPrior(denoiser, scheduler.alphas_cumprod.to(torch.float64), config.in_channels,
                          int(config.sample_size), clip, ratio)


def save_prior(unet: torch.nn.Module, scheduler_config: dict, folder: str | Path) -> None:
    """`folder` as a diffusers model folder: ``unet/`` (config, safetensors) and ``scheduler/``."""
    from diffusers import DDPMScheduler

    unet.save_pretrained(Path(folder) / "unet", safe_serialization=True)
    DDPMScheduler.from_config(scheduler_config).save_pretrained(Path(folder) / "scheduler")


def load_diffusers_prior(folder: str | Path, device: torch.device | str = "cpu") -> DiffusionPrior:
    """A prior from a local diffusers folder (``unet/`` + ``scheduler/``; local files only, weights as
    safetensors, nothing unpickled)."""
    from diffusers import DDPMScheduler, UNet2DModel

    folder = Path(folder).expanduser()
    missing = [name for name in PRIOR_FILES if not (folder / name).is_file()]
    if missing:
        raise SurveyError(f"prior folder {folder} lacks {', '.join(missing)}; pass a folder written by "
                          "`survey prior train --out` or diffusers' save_pretrained (unet/ and scheduler/)")
    unet = UNet2DModel.from_pretrained(folder, subfolder="unet", local_files_only=True, use_safetensors=True,
                                       low_cpu_mem_usage=False)
    scheduler = DDPMScheduler.from_pretrained(folder, subfolder="scheduler", local_files_only=True)
    return diffusers_prior(unet.to(device).eval().requires_grad_(False), dict(scheduler.config))


def load_prior_callable(target: str) -> DiffusionPrior:
    """A user's adapter: ``module:callable`` returning a `DiffusionPrior`."""
    import importlib

    module_name, _, name = target.partition(":")
    try:
        factory: Callable[[], DiffusionPrior] = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as error:
        raise SurveyError(f"prior {target!r} cannot be imported ({error}); pass module:callable returning a "
                          "DiffusionPrior, or a diffusers folder") from error
    prior = factory()
    if not isinstance(prior, DiffusionPrior):
        raise SurveyError(f"prior {target!r} returned {type(prior).__name__}, not a DiffusionPrior")
    return prior


def radial_power_slope(images: np.ndarray, low: float = 1 / 16, high: float = 1 / 4) -> float:
    """The slope of log power against log spatial frequency (cycles per pixel, radially averaged over the
    mean-removed, Hann-windowed images of shape n × H × W) between `low` and `high`: ≈ −2 for natural images
    (van der Schaaf & van Hateren 1996), 0 for white noise."""
    images = np.asarray(images, dtype=np.float64)
    height, width = images.shape[-2:]
    window = np.outer(np.hanning(height), np.hanning(width))
    centred = (images - images.mean(axis=(-2, -1), keepdims=True)) * window
    power = (np.abs(np.fft.fft2(centred)) ** 2).mean(axis=0)
    fy, fx = np.meshgrid(np.fft.fftfreq(height), np.fft.fftfreq(width), indexing="ij")
    radius = np.sqrt(fx**2 + fy**2)
    edges = np.geomspace(low, high, 9)
    centres, levels = [], []
    for lo, hi in itertools.pairwise(edges):
        inside = (radius >= lo) & (radius < hi)
        if inside.any():
            centres.append(math.sqrt(lo * hi))
            levels.append(power[inside].mean())
    return float(np.polyfit(np.log(centres), np.log(levels), 1)[0])
