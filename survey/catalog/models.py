"""Fitted models in the catalog, loaded for the stages that use them: encoding readouts (what a neuron's MEI is
optimised through) and diffusion priors (EGG's), by `priors` row, diffusers folder or ``module:callable``."""

from __future__ import annotations

import json
import os
from functools import lru_cache
from typing import TYPE_CHECKING

import torch

from survey.catalog.stimuli import catalog_stimulus_sets
from survey.catalog.warehouse import Warehouse
from survey.errors import SurveyError
from survey.hashing import content_key, file_hash
from survey.mei.prior import DiffusionPrior, diffusers_prior, load_diffusers_prior, load_prior_callable
from survey.metrics.predictivity import Readout
from survey.sources.checkpoints import load_into

if TYPE_CHECKING:
    from survey.config import PriorConfig

PRIOR_VERSION = 1  # the prior stage's version: in every prior's key


def save_readout(warehouse: Warehouse, key: str, readout: Readout) -> str:
    """Store a fitted readout as ``arrays/readouts/<key>.npz``; returns its uri."""
    return warehouse.put_npz(f"arrays/readouts/{key}.npz", {
        "mean": readout.mean, "scale": readout.scale, "weights": readout.weights, "bias": readout.bias,
        "penalty": readout.penalty})


def load_readout(warehouse: Warehouse, uri: str) -> Readout:
    """A readout stored by `save_readout`."""
    return Readout(**warehouse.load_npz(uri))


def stimulus_size(warehouse: Warehouse, name: str, option: str) -> int:
    """The side of a stored stimulus set's square images."""
    stimset = next(iter(catalog_stimulus_sets(warehouse, (name,), option).values()))
    if stimset["height"] != stimset["width"]:
        raise SurveyError(f"{option} {name!r} has {stimset['height']} × {stimset['width']} images; diffusion priors "
                          "are square: pick a set of square images")
    return int(stimset["height"])


def prior_size(warehouse: Warehouse, settings: PriorConfig) -> int:
    """The image side of the prior a config's `prior:` section trains (that of its stimulus set)."""
    return stimulus_size(warehouse, settings.stimuli, "prior.stimuli")


def prior_id(settings: PriorConfig, size: int, version: int = PRIOR_VERSION) -> str:
    """The key (`priors.prior_id`) of the prior of `settings`' recipe at `size` pixels, made by the prior stage's
    `version`."""
    return content_key("prior", settings.recipe(), size, version)


def configured_prior(warehouse: Warehouse, settings: PriorConfig) -> str:
    """The key (`priors.prior_id`) of the prior a config's `prior:` section trains."""
    return prior_id(settings, prior_size(warehouse, settings))


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
def _load_prior(warehouse: Warehouse, kind: str, prior_id: str, device: str) -> DiffusionPrior:
    if kind == "folder":
        return load_diffusers_prior(prior_id, device)
    if kind == "callable":
        return load_prior_callable(prior_id)
    row = next(row for row in warehouse.rows("priors") if row["prior_id"] == prior_id)
    return diffusers_prior(catalog_unet(warehouse, row).to(device), json.loads(row["scheduler_config"]))


def load_prior(warehouse: Warehouse, identity: dict, device: torch.device) -> DiffusionPrior:
    """The prior `prior_identity` named (cached per process)."""
    return _load_prior(warehouse, identity["kind"], identity["prior_id"], str(device))
