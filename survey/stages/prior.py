"""Stage `prior`: the project's diffusion prior for EGG, trained once per recipe and image size (or registered from
the package when it ships that recipe's prior) → `priors` (weights in the warehouse as safetensors, the training loss
in MLflow). DESIGN §5.5; the math is in survey.mei.prior, the building and shipped priors in survey.priors."""

from __future__ import annotations

import json
import os
import tempfile

from survey.catalog import Warehouse
from survey.catalog.models import PRIOR_VERSION, prior_id, prior_size
from survey.catalog.tracking import Tracker, default_tracking_uri
from survey.hashing import file_hash
from survey.priors import build_prior, save_weights, shipped_prior, unet_settings
from survey.progress import step_bar
from survey.stages import RunInfo, Stage, WorkUnit
from survey.validation import resolve_device


class PriorStage(Stage):
    """Trains the prior of the config's recipe at the stimulus set's size, or registers the one the package ships
    for exactly that recipe (`survey.priors`: built by this same recipe, so the result is the same prior)."""

    name = "prior"
    section = "prior"
    table = "priors"
    version = PRIOR_VERSION
    reads = ("stimulus_sets",)

    def plan(self, warehouse: Warehouse, info: RunInfo) -> list[WorkUnit]:
        size = prior_size(warehouse, self.options)
        return [self.versioned_unit(lambda version: prior_id(self.options, size, version),
                                    f"diffusion prior {size} × {size}", {"size": size})]

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
        return {self.table: self.commit(warehouse, self.table, unit, [{**row, **info.provenance()}])}
