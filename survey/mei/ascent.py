"""Gradient-ascent MEIs: the baseline of Pierzchlewicz et al. 2023 (after Walker et al. 2019), batched over targets
and seeds (DESIGN §5.5).

The recipe: Gaussian initialisation, AdamW (lr 10), the gradient blurred by a Gaussian (σ = 1 px), the image at a
fixed L2 norm after every step, 1,000 steps, several seeds with the best kept by activation; optionally a random
jitter (circular shift) of the image before each forward pass and a Fourier parametrisation with a 1/f spectrum
(Olah et al. 2017).

The image is the projection ``norm · z / ‖z‖`` of the optimised tensor z, so the objective's gradient is the part
tangent to the norm sphere, and z keeps its own scale: as z grows, AdamW's fixed-size steps turn the image less and
less, which lets it settle. Hence AdamW's decoupled weight decay is off (it would shrink z by lr · decay each step
and hold its scale down; on the image it is a no-op under the projection anyway), and z starts as long as one AdamW
step (lr per coordinate). Measured on a linear unit w·x, cosine of the MEI to w: re-normalising z after each step
0.97, keeping the gradient's radial part 0.57 (AdamW's steps are sign-like under a constant gradient), z started at
the image's norm 0.978, this recipe 0.9997 at every norm and seed tried.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from survey.errors import SurveyError
from survey.mei.defaults import GA_BLUR_SIGMA, GA_LR, GA_STEPS
from survey.validation import check_int, resolve_device


@dataclass(frozen=True)
class Ascent:
    """Result of `gradient_ascent` for B images: `images` B × C × H × W at the norm, their final `activation` (B),
    the activation of every step (steps × B, before that step's update) and the seconds it took."""

    images: torch.Tensor
    activation: torch.Tensor
    history: torch.Tensor
    seconds: float


def gaussian_kernel(sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """The normalised 1-D Gaussian of standard deviation `sigma`, cut at `truncate` σ (scipy.ndimage's radius)."""
    radius = int(truncate * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return kernel / kernel.sum()


def blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Each channel of B × C × H × W `images` convolved with a 2-D Gaussian of `sigma` pixels (separable, mirrored
    edges: scipy.ndimage.gaussian_filter with mode="mirror"); σ = 0 returns the input."""
    if sigma == 0:
        return images
    kernel = gaussian_kernel(sigma).to(images)
    radius = kernel.numel() // 2
    batch, channels, height, width = images.shape
    if radius >= min(height, width):
        raise SurveyError(f"blur sigma={sigma} needs images wider than {radius} px (got {height} × {width}); pass a "
                          "smaller sigma")
    flat = images.reshape(batch * channels, 1, height, width)
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1))
    return flat.reshape(batch, channels, height, width)


def project_to_norm(images: torch.Tensor, norm: float) -> torch.Tensor:
    """Each image (first axis) rescaled to L2 norm `norm`."""
    lengths = images.flatten(1).norm(dim=1).clamp_min(torch.finfo(images.dtype).tiny)
    return images * (norm / lengths).view(-1, *([1] * (images.ndim - 1)))


def fourier_scale(height: int, width: int, decay: float = 1.0) -> torch.Tensor:
    """Amplitude 1 / max(f, 1/max(H, W))^decay over rfft2 frequencies f (cycles per pixel): a 1/f prior for the
    Fourier parametrisation, normalised to unit mean."""
    fy = torch.fft.fftfreq(height, dtype=torch.float64)[:, None]
    fx = torch.fft.rfftfreq(width, dtype=torch.float64)[None, :]
    frequency = torch.sqrt(fx**2 + fy**2).clamp_min(1.0 / max(height, width))
    scale = frequency ** -decay
    return scale / scale.mean()


def gradient_ascent(
    objective: Callable[[torch.Tensor], torch.Tensor],
    n_images: int,
    shape: tuple[int, int, int],
    *,
    norm: float,
    generator: torch.Generator,
    steps: int = GA_STEPS,
    lr: float = GA_LR,
    blur_sigma: float = GA_BLUR_SIGMA,
    jitter: int = 0,
    fourier: bool = False,
    device: torch.device | str = "cpu",
    progress: Callable[[], object] | None = None,
) -> Ascent:
    """Maximise `objective` (B images → B activations, image b for its own target) over `n_images` images of
    `shape` (C × H × W) at L2 norm `norm`, all in one batched forward/backward pass per step. `generator` (on
    `device`) makes every random draw: the initialisation, then the jitter shifts. `progress` is called after each
    step."""
    n_images = check_int("n_images", n_images, 1)
    steps = check_int("steps", steps, 1)
    jitter = check_int("jitter", jitter, 0)
    if not (norm > 0 and math.isfinite(norm)):
        raise SurveyError(f"norm={norm} is not a positive number; pass the L2 norm the MEIs should have")
    if not (lr > 0 and blur_sigma >= 0):
        raise SurveyError(f"lr={lr}, blur_sigma={blur_sigma}: pass lr > 0 and blur_sigma ≥ 0")
    channels, height, width = shape
    blur(torch.zeros(1, 1, height, width), blur_sigma)  # a sigma too wide for the images fails here, not mid-run
    device = resolve_device(device)
    if fourier:
        spectrum = fourier_scale(height, width).to(device, torch.float32)
        parameter = torch.randn((n_images, channels, height, width // 2 + 1, 2), generator=generator,
                                device=device)

        def pixels() -> torch.Tensor:
            return torch.fft.irfft2(torch.view_as_complex(parameter) * spectrum, s=(height, width), norm="ortho")
    else:
        parameter = torch.randn((n_images, channels, height, width), generator=generator, device=device)

        def pixels() -> torch.Tensor:
            return parameter.view_as(parameter)  # a fresh node each step, for the per-step gradient hook

    with torch.no_grad():  # z starts as long as one AdamW step (lr per coordinate)
        lengths = pixels().flatten(1).norm(dim=1).clamp_min(1e-30)
        parameter.mul_((lr * math.sqrt(parameter[0].numel()) / lengths).view(-1, *[1] * (parameter.ndim - 1)))
    parameter.requires_grad_(True)
    optimiser = torch.optim.AdamW([parameter], lr=lr, weight_decay=0.0)  # decay would undo z's growth
    history = torch.empty((steps, n_images), device=device)
    started = device_clock(device)
    for step in range(steps):
        optimiser.zero_grad(set_to_none=True)
        z = pixels()
        if blur_sigma > 0:
            z.register_hook(lambda gradient: blur(gradient, blur_sigma))
        image = project_to_norm(z, norm)
        if jitter:
            dy, dx = (int(v) for v in torch.randint(-jitter, jitter + 1, (2,), generator=generator, device=device))
            image = torch.roll(image, shifts=(dy, dx), dims=(-2, -1))
        activation = objective(image)
        history[step] = activation.detach()
        (-activation.sum()).backward()
        optimiser.step()
        if progress is not None:
            progress()
    with torch.no_grad():
        images = project_to_norm(pixels(), norm)
        final = objective(images)
    return Ascent(images, final, history.cpu(), device_clock(device) - started)


def device_clock(device: torch.device) -> float:
    """Seconds on a wall clock, after the device has finished its queued work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def best_of_seeds(activation: torch.Tensor, n_seeds: int) -> torch.Tensor:
    """For activations laid out target-major (target t, seed s at t · n_seeds + s), the index of each target's best
    seed in that layout."""
    per_target = activation.view(-1, n_seeds)
    return per_target.argmax(dim=1) + torch.arange(per_target.shape[0], device=activation.device) * n_seeds
