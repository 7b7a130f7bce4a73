"""The project's diffusion priors for EGG: how one is built (trained, then checked on its own samples), and the ones
the package ships.

A shipped prior is exactly what the `prior` stage builds for one recipe (seed included) on the bundled natural
images: the stage registers it in seconds instead of training it for minutes on the user's machine. Each lives in
a folder here: ``weights.safetensors``, ``prior.json`` (recipe, image size, UNet and scheduler configs, loss per
step, training seconds, spectrum slopes) and the samples' and patches' grids as PNG. ``python -m survey.priors``
builds them again from the demo config's recipe.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from survey.images import png_bytes
from survey.mei.egg import energy_guided_diffusion
from survey.mei.prior import TrainedPrior, prior_patches, radial_power_slope, train_prior

FOLDER = Path(__file__).resolve().parent


@dataclass(frozen=True)
class BuiltPrior:
    """A trained prior ready to register: the network and schedule, its loss per step and training seconds, and
    the radial power-spectrum slopes (and grids) of its unguided samples and of its training patches."""

    trained: TrainedPrior
    sample_slope: float
    patch_slope: float
    samples_png: bytes
    patches_png: bytes


def build_prior(recipe: dict, size: int, device: torch.device, check_samples: int, check_steps: int,
                progress: Callable[[], object] | None = None) -> BuiltPrior:
    """Train a prior by `recipe` (the `prior:` config's training fields) at `size` px, then draw `check_samples`
    unguided samples in `check_steps` respaced steps to check it against its patches (the radial power-spectrum
    slope is ≈ −2 for natural images)."""
    patches = prior_patches(recipe["n_patches"], size, recipe["seed"], recipe["channels"])
    trained = train_prior(patches, widths=recipe["widths"], steps=recipe["steps"], batch_size=recipe["batch_size"],
                          lr=recipe["lr"], timesteps=recipe["timesteps"], seed=recipe["seed"], device=device,
                          progress=progress)
    samples = energy_guided_diffusion(lambda images: images.new_zeros(len(images)), trained.prior(), check_samples,
                                      adapt=lambda images: images, energy_scale=0.0, steps=check_steps,
                                      generator=torch.Generator(device).manual_seed(recipe["seed"]),
                                      device=device).images.cpu().numpy()
    return BuiltPrior(trained, radial_power_slope(samples.mean(axis=1)),  # of the luminance (channel mean)
                      radial_power_slope(patches[::max(1, len(patches) // 1024)].mean(axis=1)),
                      png_bytes(tile(samples)), png_bytes(tile(patches[:check_samples])))


def tile(images: np.ndarray, columns: int = 8) -> np.ndarray:
    """n × C × H × W images as one C × rows·H × columns·W grid (blank cells at the end)."""
    n, channels, height, width = images.shape
    rows = -(-n // columns)
    grid = np.zeros((channels, rows * height, columns * width), dtype=images.dtype)
    for index, image in enumerate(images):
        row, column = divmod(index, columns)
        grid[:, row * height:(row + 1) * height, column * width:(column + 1) * width] = image
    return grid


def save_weights(trained: TrainedPrior, path: Path | str) -> None:
    """The UNet's weights as a safetensors file."""
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in trained.unet.state_dict().items()}, str(path))


def unet_settings(trained: TrainedPrior) -> dict:
    """The UNet's diffusers config, without diffusers' private keys (what `UNet2DModel.from_config` takes)."""
    return {k: v for k, v in dict(trained.unet.config).items() if not k.startswith("_")}


def ship(built: BuiltPrior, recipe: dict, size: int, folder: Path) -> None:
    """Write `built` as a shipped prior in `folder` (see the module's docstring)."""
    folder.mkdir(parents=True, exist_ok=True)
    trained = built.trained
    save_weights(trained, folder / "weights.safetensors")
    description = {"recipe": recipe, "size": size, "unet_config": unet_settings(trained),
                   "scheduler_config": trained.scheduler_config, "losses": trained.losses.tolist(),
                   "seconds": trained.seconds, "sample_slope": built.sample_slope, "patch_slope": built.patch_slope}
    (folder / "prior.json").write_text(json.dumps(description, indent=1, sort_keys=True, default=list))
    (folder / "samples.png").write_bytes(built.samples_png)
    (folder / "patches.png").write_bytes(built.patches_png)


def shipped_prior(recipe: dict, size: int) -> tuple[BuiltPrior, Path] | None:
    """The shipped prior built by exactly `recipe` at `size` px, with its weights file; None when none is."""
    from diffusers import UNet2DModel

    from survey.sources.checkpoints import load_into

    for description_path in sorted(FOLDER.glob("*/prior.json")):
        description = json.loads(description_path.read_text())
        if description["recipe"] != recipe or description["size"] != size:
            continue
        folder = description_path.parent
        unet = UNet2DModel.from_config(description["unet_config"])
        load_into(unet, folder / "weights.safetensors")
        trained = TrainedPrior(unet.eval().requires_grad_(False), description["scheduler_config"],
                               np.asarray(description["losses"]), description["seconds"])
        built = BuiltPrior(trained, description["sample_slope"], description["patch_slope"],
                           (folder / "samples.png").read_bytes(), (folder / "patches.png").read_bytes())
        return built, folder / "weights.safetensors"
    return None
