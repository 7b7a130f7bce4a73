"""Build the priors the package ships (minutes on a CPU): ``python -m survey.priors``. Each is what the `prior` stage
trains for the demo config's recipe, with one torch thread as the demo's workers run it."""

from __future__ import annotations

import torch

from survey.config import DEMO_CONFIG, load_config
from survey.priors import FOLDER, build_prior, ship
from survey.progress import step_bar


def main() -> None:
    config = load_config(DEMO_CONFIG)
    settings = config.prior
    size = next(stimuli.size for stimuli in config.stimuli if stimuli.name == settings.stimuli)
    recipe = settings.recipe()
    torch.set_num_threads(config.executor.threads_per_worker)
    with step_bar(recipe["steps"], "training the diffusion prior") as progress:
        built = build_prior(recipe, size, torch.device("cpu"), settings.check_samples, settings.check_steps,
                            progress)
    folder = FOLDER / f"{settings.stimuli}-{'rgb' if settings.channels == 3 else 'grey'}-{size}"
    ship(built, recipe, size, folder)
    print(f"{folder}: final loss {built.trained.losses[-100:].mean():.4f}, sample slope {built.sample_slope:.2f}, "
          f"patch slope {built.patch_slope:.2f}, {built.trained.seconds:.0f} s")


if __name__ == "__main__":
    main()
