"""Stage `prior`: the project's diffusion prior for EGG, trained once per recipe and image size (or registered from
the package when it ships that recipe's prior) → `priors` (weights in the warehouse as safetensors, the training loss
in MLflow). DESIGN §5.5; the math is in survey.mei.prior, the building and shipped priors in survey.priors."""

from __future__ import annotations

import json
import os
import tempfile
from functools import lru_cache

import torch

from survey.catalog import Warehouse
from survey.errors import SurveyError
from survey.hashing import content_key, file_hash
from survey.mei.prior import DiffusionPrior, diffusers_prior, load_diffusers_prior, load_prior_callable
from survey.mei.tracking import Tracker, default_tracking_uri
from survey.priors import build_prior, save_weights, shipped_prior, unet_settings
from survey.progress import step_bar
from survey.sources.checkpoints import load_into
from survey.stages import RunInfo, Stage, WorkUnit
from survey.stages.stimuli import catalog_stimulus_sets
from survey.validation import resolve_device


def stimulus_size(warehouse: Warehouse, name: str, option: str) -> int:
    """The side of a stored stimulus set's square images."""
    stimset = next(iter(catalog_stimulus_sets(warehouse, (name,), option).values()))
    if stimset["height"] != stimset["width"]:
        raise SurveyError(f"{option} {name!r} has {stimset['height']} × {stimset['width']} images; diffusion priors "
                          "are square: pick a set of square images")
    return int(stimset["height"])


class PriorStage(Stage):
    """Trains the prior of the config's recipe at the stimulus set's size, or registers the one the package ships
    for exactly that recipe (`survey.priors`: built by this same recipe, so the result is the same prior)."""

    name = "prior"
    section = "prior"
    table = "priors"
    reads = ("stimulus_sets",)

    def plan(self, warehouse: Warehouse, info: RunInfo) -> list[WorkUnit]:
        size = stimulus_size(warehouse, self.options.stimuli, "prior.stimuli")
        key = content_key("prior", self.options.recipe(), size, self.version)
        return [WorkUnit(key, f"diffusion prior {size} × {size}", {"size": size})]

    def run(self, unit: WorkUnit, warehouse: Warehouse, info: RunInfo) -> dict[str, int]:
        settings, size = self.options, unit.payload["size"]
        recipe = settings.recipe()
        shipped = shipped_prior(recipe, size)
        with tempfile.TemporaryDirectory() as folder:
            if shipped is not None:
                built, path = shipped
            else:
                with step_bar(settings.steps, "training the diffusion prior") as step:
                    built = build_prior(recipe, size, resolve_device(settings.device), settings.check_samples,
                                        settings.check_steps, step)
                path = os.path.join(folder, "prior.safetensors")
                save_weights(built.trained, path)
            digest = file_hash(path)
            weights_uri = warehouse.put_file(path, digest, ".safetensors")
        trained = built.trained
        unet_config = unet_settings(trained)
        row = {"prior_id": unit.key, "size": size, "channels": settings.channels,
               "recipe": json.dumps(recipe, sort_keys=True),
               "unet_config": json.dumps(unet_config, sort_keys=True, default=list),
               "scheduler_config": json.dumps(trained.scheduler_config, sort_keys=True, default=list),
               "n_params": sum(p.numel() for p in trained.unet.parameters()),
               "final_loss": float(trained.losses[-100:].mean()), "seconds": trained.seconds,
               "sample_slope": built.sample_slope, "patch_slope": built.patch_slope,
               "weights_uri": weights_uri, "content_hash": digest}
        tracker = Tracker(settings.mlflow_uri or default_tracking_uri(warehouse), settings.experiment)
        source = "shipped with the package" if shipped is not None else "trained in this run"
        row["mlflow_run_id"] = tracker.log_run(
            unit.key, unit.label, {"size": str(size), "source": source}, {**recipe, "size": size},
            {**recipe, "unet": unet_config}, {"loss": trained.losses},
            {"samples.png": built.samples_png, "patches.png": built.patches_png})
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
