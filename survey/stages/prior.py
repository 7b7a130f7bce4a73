"""Stage `prior`: the project's diffusion prior for EGG, trained once per recipe and image size → `priors` (weights
in the warehouse as safetensors, the training loss in MLflow). DESIGN §5.5; the math is in survey.mei.prior."""

from __future__ import annotations

import json
import os
import tempfile
from functools import lru_cache

import numpy as np
import torch
from safetensors.torch import save_file

from survey.catalog import Warehouse
from survey.errors import SurveyError
from survey.hashing import content_key, file_hash
from survey.mei.egg import energy_guided_diffusion
from survey.mei.prior import (
    DiffusionPrior,
    diffusers_prior,
    load_diffusers_prior,
    load_prior_callable,
    prior_patches,
    radial_power_slope,
    train_prior,
)
from survey.mei.tracking import Tracker, default_tracking_uri, png_bytes
from survey.sources.checkpoints import load_into
from survey.stages import RunInfo, Stage, WorkUnit, torch_threads
from survey.stages.stimuli import catalog_stimulus_sets
from survey.validation import resolve_device

N_SAMPLES = 64  # prior samples drawn after training: their spectrum slope is stored, their grid logged
SAMPLE_STEPS = 250  # … with this many respaced steps (at 100, a small prior's samples come out smoother)


def stimulus_size(warehouse: Warehouse, name: str, option: str) -> int:
    """The side of a stored stimulus set's square images."""
    stimset = next(iter(catalog_stimulus_sets(warehouse, (name,), option).values()))
    if stimset["height"] != stimset["width"]:
        raise SurveyError(f"{option} {name!r} has {stimset['height']} × {stimset['width']} images; diffusion priors "
                          "are square: pick a set of square images")
    return int(stimset["height"])


def tile(images: np.ndarray, columns: int = 8) -> np.ndarray:
    """n × C × H × W images as one C × rows·H × columns·W grid (blank cells at the end)."""
    n, channels, height, width = images.shape
    rows = -(-n // columns)
    grid = np.zeros((channels, rows * height, columns * width), dtype=images.dtype)
    for index, image in enumerate(images):
        row, column = divmod(index, columns)
        grid[:, row * height:(row + 1) * height, column * width:(column + 1) * width] = image
    return grid


class PriorStage(Stage):
    name = "prior"
    section = "prior"
    table = "priors"
    reads = ("stimulus_sets",)

    def recipe(self) -> dict:
        return self.options.model_dump(mode="json", exclude={"stimuli", "device", "mlflow_uri", "experiment"})

    def plan(self, warehouse: Warehouse, info: RunInfo) -> list[WorkUnit]:
        size = stimulus_size(warehouse, self.options.stimuli, "prior.stimuli")
        key = content_key("prior", self.recipe(), size, self.version)
        return [WorkUnit(key, f"diffusion prior {size} × {size}", {"size": size})]

    def run(self, unit: WorkUnit, warehouse: Warehouse, info: RunInfo) -> dict[str, int]:
        settings = self.options
        device = resolve_device(settings.device)
        patches = prior_patches(settings.n_patches, unit.payload["size"], settings.seed, settings.channels)
        with torch_threads(info.threads):
            trained = train_prior(patches, widths=settings.widths, steps=settings.steps,
                                  batch_size=settings.batch_size, lr=settings.lr, timesteps=settings.timesteps,
                                  seed=settings.seed, device=device)
            samples = energy_guided_diffusion(lambda images: images.new_zeros(len(images)), trained.prior(),
                                              N_SAMPLES, adapt=lambda images: images, energy_scale=0.0,
                                              steps=SAMPLE_STEPS,
                                              generator=torch.Generator(device).manual_seed(settings.seed),
                                              device=device).images.cpu().numpy()
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "prior.safetensors")
            save_file({k: v.detach().cpu().contiguous() for k, v in trained.unet.state_dict().items()}, path)
            digest = file_hash(path)
            weights_uri = warehouse.put_file(path, digest, ".safetensors")
        unet_config = {k: v for k, v in dict(trained.unet.config).items() if not k.startswith("_")}
        row = {"prior_id": unit.key, "size": unit.payload["size"], "channels": patches.shape[1],
               "recipe": json.dumps(self.recipe(), sort_keys=True),
               "unet_config": json.dumps(unet_config, sort_keys=True, default=list),
               "scheduler_config": json.dumps(trained.scheduler_config, sort_keys=True, default=list),
               "n_params": sum(p.numel() for p in trained.unet.parameters()),
               "final_loss": float(trained.losses[-100:].mean()), "seconds": trained.seconds,
               "sample_slope": radial_power_slope(samples.mean(axis=1)),  # of the luminance (channel mean)
               "patch_slope": radial_power_slope(patches[::max(1, len(patches) // 1024)].mean(axis=1)),
               "weights_uri": weights_uri, "content_hash": digest}
        tracker = Tracker(settings.mlflow_uri or default_tracking_uri(warehouse), settings.experiment)
        row["mlflow_run_id"] = tracker.log_run(
            unit.key, unit.label, {"size": str(row["size"])}, {**self.recipe(), "size": row["size"]},
            {**self.recipe(), "unet": unet_config}, {"loss": trained.losses},
            {"samples.png": png_bytes(tile(samples)), "patches.png": png_bytes(tile(patches[:N_SAMPLES]))})
        return {self.table: warehouse.append_unit(self.table, unit.key, [{**row, **info.provenance()}])}


def catalog_prior(warehouse: Warehouse, size: int, prior_id: str | None = None) -> dict:
    """The `priors` row of `prior_id` (the config's `prior:` section), else for `size`-pixel stimuli: one trained at
    that size, else the largest (first by id)."""
    rows = [row for row in warehouse.rows("priors") if prior_id in (None, row["prior_id"])]
    if not rows:
        raise SurveyError(f"mei.methods has egg but warehouse {warehouse.uri} holds no diffusion prior"
                          f"{' of the prior: section' if prior_id else ''}; train one (`survey prior train`, or a "
                          "`prior:` section in the config) or set mei.egg.prior to a diffusers folder")
    return min(rows, key=lambda row: (row["size"] != size, -row["size"], row["prior_id"]))


def check_prior(spec: str) -> dict:
    """A prior given by the user, loaded once to check it (before anything runs), and its identity: a local diffusers
    folder (content: its weights' hash) or ``module:callable`` (its name). A prior of another size than the stimuli
    is fine (EGG resizes x̂₀)."""
    if os.path.isdir(os.path.expanduser(spec)):
        load_diffusers_prior(spec)  # fails now on missing files
        weights = os.path.join(os.path.expanduser(spec), "unet", "diffusion_pytorch_model.safetensors")
        return {"kind": "folder", "prior_id": spec, "content": file_hash(weights)}
    if ":" in spec:
        load_prior_callable(spec)
        return {"kind": "callable", "prior_id": spec, "content": spec}
    raise SurveyError(f"mei.egg.prior {spec!r} is neither a folder nor module:callable; pass a local diffusers "
                      "folder (unet/ and scheduler/), module:callable, or leave it unset for the trained prior")


def prior_identity(warehouse: Warehouse, spec: str | None, size: int, prior_id: str | None = None) -> dict:
    """Where an EGG prior comes from, with a content id for unit keys: the `priors` row (`catalog_prior`) when `spec`
    is None, else the user's (`check_prior`)."""
    if spec is None:
        row = catalog_prior(warehouse, size, prior_id)
        return {"kind": "catalog", "prior_id": row["prior_id"], "content": row["content_hash"]}
    return check_prior(spec)


def catalog_unet(warehouse: Warehouse, row: dict) -> torch.nn.Module:
    """The trained `UNet2DModel` of a `priors` row, its stored weights loaded (safetensors)."""
    from diffusers import UNet2DModel

    unet = UNet2DModel.from_config(json.loads(row["unet_config"]))
    with warehouse.local_copy(row["weights_uri"]) as weights:
        load_into(unet, weights)
    return unet.eval().requires_grad_(False)


@lru_cache(maxsize=2)
def _load_prior(warehouse_uri: str, kind: str, prior_id: str, device: str) -> DiffusionPrior:
    if kind == "folder":
        return load_diffusers_prior(prior_id, device)
    if kind == "callable":
        return load_prior_callable(prior_id)
    warehouse = Warehouse(warehouse_uri)
    row = next(row for row in warehouse.rows("priors") if row["prior_id"] == prior_id)
    return diffusers_prior(catalog_unet(warehouse, row).to(device), json.loads(row["scheduler_config"]))


def load_prior(warehouse: Warehouse, identity: dict, device: torch.device) -> DiffusionPrior:
    """The prior `prior_identity` named (cached per process)."""
    return _load_prior(warehouse.uri, identity["kind"], identity["prior_id"], str(device))
