"""Energy-guided diffusion (EGG; Pierzchlewicz et al. 2023, Algorithm 1): sample a diffusion prior while every
respaced DDPM step subtracts `energy_scale` times the normalised gradient, with respect to x_t, of the energy of
the predicted clean image x̂₀ (DESIGN §5.5).

One step from x_t at timestep t to the previous respaced timestep s (ᾱ_s = 1 after the last):
    x̂₀ = (x_t − √(1 − ᾱ_t) ε̂(x_t, t)) / √ᾱ_t                        (Ho et al. 2020, eq. 15)
    μ = √ᾱ_s β / (1 − ᾱ_t) · x̂₀ + √(ᾱ_t/ᾱ_s) (1 − ᾱ_s) / (1 − ᾱ_t) · x_t,   β = 1 − ᾱ_t/ᾱ_s   (eq. 7)
    σ² = β (1 − ᾱ_s) / (1 − ᾱ_t)                                       (the "fixed small" variance)
    g = ∇_{x_t} E(adapt(x̂₀)),   x_s = μ + σ z − energy_scale · g / ‖g‖
The gradient is normalised per image (the paper's code normalises over its batch, which held one image), so a
batch of targets samples as each would alone; x̂₀ is clipped or dynamically thresholded when the prior's scheduler
asks for it (the paper's code does neither; the project's prior thresholds, `survey.mei.prior.train_prior`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from survey.errors import SurveyError
from survey.mei.ascent import device_clock, project_to_norm
from survey.mei.defaults import EGG_ENERGY_SCALE, EGG_STEPS
from survey.mei.prior import DiffusionPrior
from survey.validation import check_int, resolve_device


class NonFiniteEnergyError(SurveyError):
    """The energy of some images (their batch indices in `images`) was NaN or infinite at `timestep`."""

    def __init__(self, images: list[int], timestep: int) -> None:
        super().__init__(f"the energy is not finite for images {images} at timestep {timestep}; check the target "
                         "model (a NaN response) before sampling")
        self.images, self.timestep = images, timestep


@dataclass(frozen=True)
class Adapter:
    """Prior images (B × c × S × S) → the neuron model's input: resized to `shape`'s H × W (bilinear), grey
    replicated to its C channels, and projected to L2 norm `norm` (GA's constraint)."""

    shape: tuple[int, int, int]
    norm: float

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        channels, height, width = self.shape
        if images.shape[-2:] != (height, width):
            images = F.interpolate(images, size=(height, width), mode="bilinear", align_corners=False)
        if images.shape[1] != channels:
            if images.shape[1] != 1:
                raise SurveyError(f"the prior makes {images.shape[1]}-channel images and the model takes {channels}; "
                                  "use a grayscale (1-channel) prior or one with the model's channels")
            images = images.expand(-1, channels, -1, -1)
        return project_to_norm(images, self.norm)


@dataclass(frozen=True)
class Sampling:
    """Result of `energy_guided_diffusion` for B images: the adapted final `images`, their `energy`, the energy
    of x̂₀ at every step (steps × B) and the seconds taken."""

    images: torch.Tensor
    energy: torch.Tensor
    history: torch.Tensor
    seconds: float


@dataclass(frozen=True)
class Step:
    """One respaced DDPM step: t → `previous` (−1 after the last), with ᾱ at both."""

    timestep: int
    previous: int
    alpha: float
    alpha_previous: float

    def predict_clean(self, noisy: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x̂₀ from x_t and ε̂ (Ho et al. 2020, eq. 15)."""
        return (noisy - math.sqrt(1 - self.alpha) * noise) / math.sqrt(self.alpha)

    def posterior(self, clean: torch.Tensor, noisy: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Mean and standard deviation of q(x_s | x_t, x̂₀) (eq. 7, fixed-small variance)."""
        beta = 1 - self.alpha / self.alpha_previous
        mean = (math.sqrt(self.alpha_previous) * beta / (1 - self.alpha) * clean
                + math.sqrt(1 - beta) * (1 - self.alpha_previous) / (1 - self.alpha) * noisy)
        return mean, math.sqrt(max(beta * (1 - self.alpha_previous) / (1 - self.alpha), 1e-20))


def sampling_steps(prior: DiffusionPrior, steps: int) -> list[Step]:
    """The respaced steps of `prior` in sampling order."""
    timesteps = prior.respaced(steps)
    alphas = prior.alphas_cumprod.tolist()
    return [Step(t, s, alphas[t], alphas[s] if s >= 0 else 1.0)
            for t, s in zip(timesteps, [*timesteps[1:], -1], strict=True)]


def guidance(prior: DiffusionPrior, step: Step, noisy: torch.Tensor, energy: Callable[[torch.Tensor], torch.Tensor],
             adapt: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """At x_t: x̂₀ (detached), the energy E(adapt(x̂₀)) per image, and its gradient with respect to x_t through the
    denoiser (zero where the energy does not depend on the image)."""
    noisy = noisy.detach().requires_grad_(True)
    timesteps = torch.full((len(noisy),), step.timestep, device=noisy.device, dtype=torch.long)
    clean = step.predict_clean(noisy, prior.denoiser(noisy, timesteps))
    clean = prior.threshold(clean)
    values = energy(adapt(clean))
    if not torch.isfinite(values).all():
        raise NonFiniteEnergyError(torch.nonzero(~torch.isfinite(values)).flatten().tolist(), step.timestep)
    if not values.requires_grad:
        return clean.detach(), values.detach(), torch.zeros_like(noisy)
    (gradient,) = torch.autograd.grad(values.sum(), noisy)
    return clean.detach(), values.detach(), gradient


def energy_guided_diffusion(
    energy: Callable[[torch.Tensor], torch.Tensor],
    prior: DiffusionPrior,
    n_images: int,
    *,
    adapt: Callable[[torch.Tensor], torch.Tensor],
    generator: torch.Generator,
    steps: int = EGG_STEPS,
    energy_scale: float = EGG_ENERGY_SCALE,
    device: torch.device | str = "cpu",
    progress: Callable[[], object] | None = None,
) -> Sampling:
    """`n_images` samples of `prior`, each guided down its own `energy` (B adapted images → B energies), all in one
    batch per step. `generator` (on `device`) draws x_T and then each step's noise, in that order; `progress` is
    called after each step."""
    n_images = check_int("n_images", n_images, 1)
    if not (energy_scale >= 0 and math.isfinite(energy_scale)):
        raise SurveyError(f"energy_scale={energy_scale}: pass a finite scale ≥ 0")
    device = resolve_device(device)
    schedule = sampling_steps(prior, check_int("steps", steps, 1))
    shape = (n_images, prior.channels, prior.size, prior.size)
    noisy = torch.randn(shape, generator=generator, device=device)
    history = torch.empty((len(schedule), n_images))
    started = device_clock(device)
    for index, step in enumerate(schedule):
        with torch.enable_grad():
            clean, values, gradient = guidance(prior, step, noisy, energy, adapt)
        history[index] = values.cpu()
        mean, deviation = step.posterior(clean, noisy.detach())
        if step.previous >= 0:
            mean = mean + deviation * torch.randn(shape, generator=generator, device=device)
        lengths = gradient.flatten(1).norm(dim=1).clamp_min(torch.finfo(gradient.dtype).tiny)
        noisy = mean - energy_scale * gradient / lengths.view(-1, 1, 1, 1)
        if progress is not None:
            progress()
    with torch.no_grad():
        images = adapt(noisy)
        final = energy(images)
    return Sampling(images, final, history, device_clock(device) - started)

