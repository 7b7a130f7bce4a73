"""Stage `mei`: most exciting inputs of network units and recorded neurons by gradient ascent (GA; `ga_grey`: on grey
images, the like-for-like baseline of a grayscale prior) and energy-guided diffusion (EGG) → `mei_runs`, each (target,
method, seed) a nested MLflow run (DESIGN §5.5). One unit of work is one target group (a layer's units, or an area's
neurons through one encoding model) under one method, all its targets and seeds optimised in one batch, then scored
on the evaluation models (`evaluation_models`)."""

from __future__ import annotations

import dataclasses
import json
import math
from functools import lru_cache

import numpy as np
import pyarrow.dataset as pads
import torch

from survey.catalog import Warehouse, query_catalog, read_only
from survey.catalog.models import check_prior, configured_prior, load_prior, load_readout, prior_identity
from survey.catalog.networks import load_network
from survey.catalog.stimuli import catalog_stimulus_sets, load_images
from survey.catalog.tracking import Tracker, default_tracking_uri
from survey.config import ActivationsConfig, MeiTargets
from survey.errors import SurveyError, one_line
from survey.hashing import content_key
from survey.mei.ascent import best_of_seeds, gradient_ascent, project_to_norm
from survey.mei.egg import Adapter, NonFiniteEnergyError, energy_guided_diffusion
from survey.mei.targets import EncodingModel, LayerResponses, RowTargets, closest_units
from survey.progress import step_bar
from survey.stages import RunInfo, Stage, WorkUnit, torch_threads
from survey.stimuli import NaturalPatches
from survey.validation import resolve_device


@lru_cache(maxsize=2)
def _tracker(tracking_uri: str, experiment: str) -> Tracker:
    return Tracker(tracking_uri, experiment)


def grey_and_norm(images: np.ndarray) -> tuple[np.ndarray, float]:
    """The set's mean pixel per channel (the MEIs' grey) and the mean L2 norm of its images' contrast to it."""
    grey = images.mean(axis=(0, 2, 3))
    contrast = images - grey[None, :, None, None]
    return grey, float(np.linalg.norm(contrast.reshape(len(images), -1), axis=1).mean())


def natural_baseline(objective: torch.nn.Module, shape: tuple[int, int, int], grey: torch.Tensor, norm: float,
                     n_patches: int, device: torch.device, batch_size: int = 500) -> torch.Tensor:
    """Each column's best response over `n_patches` natural patches (bundled images) whose contrast to `grey` is
    rescaled to `norm`, the MEIs' own constraint (a B × K module → K maxima)."""
    patches = NaturalPatches(name="natural-baseline", n=n_patches, size=shape[-1], seed=0).generate().images
    best, grey = None, grey.to(device).view(1, -1, 1, 1)
    with torch.no_grad():
        for start in range(0, n_patches, batch_size):
            contrast = torch.from_numpy(patches[start:start + batch_size]).to(device) - grey
            batch = objective(project_to_norm(contrast, norm)).amax(dim=0)
            best = batch if best is None else torch.maximum(best, batch)
    return best.cpu()


def _responses(group: dict, warehouse: Warehouse, grey: list[float]) -> torch.nn.Module:
    """Images → the group's candidate targets: the layer's units, or the area's neurons through the readout."""
    module, preprocessing = load_network(group["network"], warehouse)
    offset = torch.tensor(grey, dtype=torch.float32)
    if group["readout_uri"] is None:
        return LayerResponses(module, group["layer"], preprocessing, offset)
    return EncodingModel(module, group["layer"], preprocessing, offset, group["spatial_pool"],
                         load_readout(warehouse, group["readout_uri"]))


def targets_from_sql(warehouse: Warehouse, query: str | None) -> list[MeiTargets]:
    """Target groups from a read-only query's rows (network, layer, unit, and session, area for neurons): one group
    per (network, layer, session, area)."""
    if query is None:
        return []
    rows = query_catalog(warehouse, read_only(query, "mei.targets_sql")).to_pylist()
    missing = {"network", "layer", "unit"} - set(rows[0] if rows else {"network", "layer", "unit"})
    if missing:
        raise SurveyError(f"mei.targets_sql returns no column {sorted(missing)}; return network, layer, unit (and "
                          "session, area for neurons), one target per row")
    groups: dict[tuple, list[int]] = {}
    for row in rows:
        groups.setdefault((row["network"], row["layer"], row.get("session"), row.get("area")), []).append(
            int(row["unit"]))
    return [MeiTargets(network=network, layer=layer, units=tuple(units), session=session, area=area)
            for (network, layer, session, area), units in groups.items()]


def resolve_targets(group: MeiTargets, catalog: dict[str, list[dict]]) -> dict:
    """A target group's network row, layer, readout and representation recipe from the catalog rows
    (`target_catalog`); a bad name fails here, before the stage writes anything."""
    network = next((row for row in catalog["networks"] if group.network in (row["name"], row["network_id"])), None)
    if network is None:
        raise SurveyError(f"mei.targets: network {group.network!r} is not in the catalog; pass a name or "
                          "network_id from `survey sql \"SELECT name, network_id FROM networks\"`")
    layer, readout_uri = group.layer, None
    if group.session is not None:
        fits = [row for row in catalog["predictivity"]
                if row["network_id"] == network["network_id"] and row["session_id"] == group.session
                and row["area"] == group.area and row["status"] == "ok"
                and (group.layer == "best" or row["layer"] == group.layer)]
        if not fits:
            raise SurveyError(f"mei.targets: session {group.session!r} area {group.area!r} has no encoding model "
                              f"from {network['name']} {group.layer}; run the predictivity stage on them first")
        best = max(fits, key=lambda row: row["median_corrected"] if row["median_corrected"] is not None else -1)
        layer, readout_uri = best["layer"], best["readout_uri"]
    elif layer not in network["layers"]:
        raise SurveyError(f"mei.targets: network {network['name']} has no layer {layer!r}; pick one of "
                          f"{', '.join(network['layers'])}")
    # the encoding model pools the layer as its representation was pooled
    recipe = next((json.loads(row["preprocessing"]) for row in catalog["representations"]
                   if row["source_id"] == network["network_id"] and row["layer_or_area"] == layer), {})
    return {"network": network, "layer": layer, "readout_uri": readout_uri, "targets": group.units,
            "session": group.session, "area": group.area,
            "spatial_pool": recipe.get("spatial_pool", ActivationsConfig().spatial_pool)}


def target_catalog(warehouse: Warehouse) -> dict[str, list[dict]]:
    """The catalog rows targets are resolved by (no per-neuron lists, no arrays)."""
    return {
        "networks": warehouse.rows("networks"),
        "representations": warehouse.rows("representations", ["source_id", "layer_or_area", "preprocessing"]),
        "predictivity": warehouse.rows("predictivity", ["network_id", "session_id", "area", "layer", "status",
                                                        "median_corrected", "readout_uri"]),
    }


def load_targets(warehouse: Warehouse, group: MeiTargets, grey: list[float]) -> torch.nn.Module:
    """Images (contrast to `grey`) → the responses a target group picks from, loaded from the catalog by id: a
    network layer's units, or an area's neurons through its encoding model."""
    return _responses(resolve_targets(group, target_catalog(warehouse)), warehouse, grey)


def _architecture(network: dict) -> str:
    """What makes two networks the same architecture: their spec (cell, or kind/target/kwargs)."""
    return network["spec"]


def evaluation_models(group: dict, catalog: dict[str, list[dict]]) -> dict[str, dict | None]:
    """The models a group's MEIs are also scored on (Pierzchlewicz et al. 2023, §4): `family`, another seed of the
    network's architecture with its objective, and `cross`, a network of another architecture. For neurons, each is
    the area's best encoding model on that network (cross: the best over all other architectures, its median
    corrected r as `match`); for units, the layer is left to the run, which picks each target's closest unit
    (`closest_units`). None where the catalog holds no such model."""
    network = group["network"]
    siblings = sorted((row for row in catalog["networks"] if row["network_id"] != network["network_id"]
                       and _architecture(row) == _architecture(network) and row["objective"] == network["objective"]),
                      key=lambda row: row["name"])
    others = {row["network_id"]: row for row in catalog["networks"] if _architecture(row) != _architecture(network)}
    if group["session"] is None:
        ranked = sorted(others.values(), key=lambda row: (row["objective"] != network["objective"],
                                                          -(row["test_accuracy"] or -1.0), row["name"]))
        return {"family": {"network": siblings[0], "layer": None} if siblings else None,
                "cross": {"network": ranked[0], "layer": None} if ranked else None}

    def encoding_model(network_id: str, layer: str = "best") -> dict | None:
        try:
            return resolve_targets(MeiTargets(network=network_id, layer=layer, units=group["targets"],
                                              session=group["session"], area=group["area"]), catalog)
        except SurveyError:  # no encoding model of this area on that network
            return None

    family = next((model for row in siblings if (model := encoding_model(row["network_id"])) is not None), None)
    fits = [row for row in catalog["predictivity"] if row["network_id"] in others and row["status"] == "ok"
            and row["session_id"] == group["session"] and row["area"] == group["area"]
            and row["median_corrected"] is not None]
    cross = None
    if fits:
        best = max(fits, key=lambda row: (row["median_corrected"], row["network_id"]))
        cross = {**encoding_model(best["network_id"], best["layer"]), "match": best["median_corrected"]}
    return {"family": family, "cross": cross}


def _evaluator_scores(evaluator: dict | None, images: torch.Tensor, targets: list[int],
                      target_responses: dict[int, np.ndarray], stimuli: torch.Tensor, warehouse: Warehouse,
                      grey: list[float], device: torch.device) -> dict[str, list]:
    """Per image (target `targets[b]`): the evaluator's network, layer, target and match, and the image's activation
    there. For units the target is the evaluator's closest unit over its layers (responses to `stimuli`, against each
    target's own `target_responses`)."""
    blank = [None] * len(images)
    if evaluator is None:
        return {"network_id": blank, "layer": blank, "target": blank, "match": blank, "activation": blank}
    network = evaluator["network"]
    if evaluator["layer"] is None:  # units: each target's closest unit over the evaluator's layers
        module, preprocessing = load_network(network, warehouse)
        offset = torch.tensor(grey, dtype=torch.float32)
        layers = {layer: LayerResponses(module, layer, preprocessing, offset).to(device)
                  for layer in network["layers"]}
        with torch.no_grad():
            candidates = {}
            for layer, responses in layers.items():
                try:
                    candidates[layer] = responses(stimuli).cpu().numpy()
                except SurveyError:  # neither units nor channel maps: not a layer a unit can be matched in
                    continue
        unique = sorted(target_responses)
        reference = np.stack([target_responses[target] for target in unique], axis=1)
        matches = dict(zip(unique, closest_units(reference, candidates), strict=True))
        chosen = [matches[target] for target in targets]
        activation = torch.empty(len(images))
        with torch.no_grad():
            for layer in {layer for layer, _, _ in chosen}:
                rows = [b for b, (name, _, _) in enumerate(chosen) if name == layer]
                output = layers[layer](images[rows])
                activation[rows] = output[torch.arange(len(rows)), [chosen[b][1] for b in rows]].cpu()
        return {"network_id": [network["network_id"]] * len(images), "layer": [layer for layer, _, _ in chosen],
                "target": [unit for _, unit, _ in chosen], "match": [r for _, _, r in chosen],
                "activation": activation.tolist()}
    with torch.no_grad():
        activation = RowTargets(_responses(evaluator, warehouse, grey), targets).to(device)(images).cpu()
    return {"network_id": [network["network_id"]] * len(images), "layer": [evaluator["layer"]] * len(images),
            "target": list(targets), "match": [evaluator.get("match")] * len(images),
            "activation": activation.tolist()}


class MeiStage(Stage):
    name = "mei"
    section = "mei"
    table = "mei_runs"
    reads = ("networks", "representations", "predictivity", "stimulus_sets", "priors")
    version = 2  # 2: methods, evaluation models
    _parent: str | None = None  # the run's MLflow parent, once planning made one

    def check(self) -> None:  # refused before any stage writes
        if self.options.targets_sql is not None:
            read_only(self.options.targets_sql, "mei.targets_sql")
        if "egg" in self.options.methods and self.options.egg.prior is not None:
            check_prior(self.options.egg.prior)

    def tracking_uri(self, warehouse: Warehouse) -> str:
        return self.options.mlflow_uri or default_tracking_uri(warehouse)

    def method_recipe(self, method: str) -> dict:
        """The settings one method's MEIs depend on."""
        settings = self.options
        common = settings.model_dump(mode="json", include={"seeds", "norm", "natural_patches", "evaluate"})
        if method == "egg":
            return {**common, **settings.egg.model_dump(mode="json", exclude={"prior"})}
        # ga and ga_grey
        return {**common, **settings.model_dump(mode="json", include={"steps", "lr", "blur_sigma", "jitter",
                                                                      "fourier"})}

    def plan(self, warehouse: Warehouse, info: RunInfo) -> list[WorkUnit]:
        settings = self.options
        stimset = next(iter(catalog_stimulus_sets(warehouse, (settings.stimuli,), "mei.stimuli").values()))
        images = load_images(warehouse, stimset["uri"])
        grey, norm = grey_and_norm(images)
        norm = settings.norm or norm
        catalog = target_catalog(warehouse)
        groups = [resolve_targets(group, catalog)
                  for group in (*settings.targets, *targets_from_sql(warehouse, settings.targets_sql))]
        shape = list(images.shape[1:])
        for group in groups:  # one forward pass of a grey image: a layer or unit the model lacks fails here
            with torch.no_grad():
                responses = _responses(group, warehouse, grey.tolist())(torch.zeros((1, *shape)))
            if min(group["targets"]) < 0 or max(group["targets"]) >= responses.shape[1]:
                raise SurveyError(f"mei.targets: {group['network']['name']} {group['layer']} has "
                                  f"{responses.shape[1]} {'neurons' if group['session'] else 'units'}; pick indices "
                                  f"from 0 to {responses.shape[1] - 1} (got {sorted(group['targets'])})")
        prior = None
        if "egg" in settings.methods:  # the config's own prior when it trains one, else the catalog's
            configured = configured_prior(warehouse, self.config.prior) if self.config.prior else None
            prior = prior_identity(warehouse, settings.egg.prior, shape[-1], configured)
        units = []
        for group in groups:
            evaluators = evaluation_models(group, catalog) if settings.evaluate else {"family": None, "cross": None}
            label = f"{group['network']['name']} {group['layer']}"
            if group["session"]:
                label = f"{group['session']} {group['area']} via {label}"
            for method in settings.methods:
                # the evaluators are left out: a survey that grows new networks keeps its MEIs (one row per target,
                # method and seed), each scored on the models the catalog held when it was made
                units.append(self.unit("mei", [
                    group["network"]["content_hash"], group["layer"], group["readout_uri"], list(group["targets"]),
                    stimset["content_hash"], method, self.method_recipe(method),
                    prior["content"] if method == "egg" else None], f"{method} · {label}", {
                    **group, **evaluators, "method": method, "prior": prior if method == "egg" else None,
                    "stimset_id": stimset["stimset_id"], "stimset_uri": stimset["uri"], "grey": grey.tolist(),
                    "norm": norm, "shape": shape}))
        if {unit.key for unit in units} - warehouse.done_keys(self.table):  # the run's MLflow parent, made once
            self._parent = _tracker(self.tracking_uri(warehouse), settings.experiment).parent(
                f"{info.run_id}-mei", f"mei · {info.run_id}", {"stage": "mei", "run_id": info.run_id})
            units = [dataclasses.replace(unit, payload={**unit.payload, "parent": self._parent}) for unit in units]
        return units

    def finish(self, warehouse: Warehouse, info: RunInfo, error: BaseException | None) -> None:
        """End the run's MLflow parent: FINISHED with the settings and a summary per method of the MEIs this run
        made (count, mean activation, mean activation over the best natural patch, seconds per MEI), or FAILED
        (KILLED when interrupted) with the error."""
        if self._parent is None:
            return
        settings = self.options
        params = {"methods": ",".join(settings.methods), "seeds": ",".join(map(str, settings.seeds)),
                  "stimuli": settings.stimuli, "norm": settings.norm or "set mean", "run_id": info.run_id}
        if {"ga", "ga_grey"} & set(settings.methods):
            params |= {"steps": settings.steps, "lr": settings.lr, "blur_sigma": settings.blur_sigma}
        if "egg" in settings.methods:
            params |= {"egg_steps": settings.egg.steps, "energy_scale": settings.egg.energy_scale}
        made = warehouse.dataset(self.table).to_table(
            columns=["method", "activation", "natural_max", "seconds"],
            filter=pads.field("run_id") == info.run_id).to_pylist()
        summary: dict[str, float] = {"meis": len(made)}
        for method in sorted({row["method"] for row in made}):
            rows = [row for row in made if row["method"] == method]
            ratios = [row["activation"] / row["natural_max"] for row in rows if row["natural_max"]]
            summary |= {f"{method}_meis": len(rows),
                        f"{method}_mean_activation": float(np.mean([row["activation"] for row in rows])),
                        f"{method}_seconds_per_mei": float(np.mean([row["seconds"] for row in rows]))}
            if ratios:
                summary[f"{method}_mean_activation_over_natural"] = float(np.mean(ratios))
        status = "FINISHED" if error is None else "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
        _tracker(self.tracking_uri(warehouse), settings.experiment).end_parent(
            self._parent, status, params, summary, None if error is None else one_line(error, 500))
        self._parent = None

    def optimise(self, objective: torch.nn.Module, unit: WorkUnit, warehouse: Warehouse, device: torch.device,
                 targets: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
        """Images, final activations, activation per step and seconds of one unit's MEIs by its method."""
        settings, payload = self.options, unit.payload
        generator = torch.Generator(device).manual_seed(int(unit.key.rsplit("-", 1)[-1][:15], 16))  # from the key
        shape, n_images = tuple(payload["shape"]), len(targets) * len(settings.seeds)
        if payload["method"] in ("ga", "ga_grey"):
            grey = payload["method"] == "ga_grey"  # one channel, replicated to the model's: the same total norm

            def seen(images: torch.Tensor) -> torch.Tensor:
                return images.expand(-1, shape[0], -1, -1) if grey else images

            with step_bar(settings.steps, unit.label) as step:
                result = gradient_ascent(lambda images: objective(seen(images)), n_images,
                                         (1, *shape[1:]) if grey else shape,
                                         norm=payload["norm"] / math.sqrt(shape[0]) if grey else payload["norm"],
                                         generator=generator, steps=settings.steps, lr=settings.lr,
                                         blur_sigma=settings.blur_sigma, jitter=settings.jitter,
                                         fourier=settings.fourier, device=device, progress=step)
            return seen(result.images), result.activation, result.history, result.seconds
        prior = load_prior(warehouse, payload["prior"], device)
        try:
            with step_bar(settings.egg.steps, unit.label) as step:
                result = energy_guided_diffusion(lambda images: -objective(images), prior, n_images,
                                                  adapt=Adapter(shape, payload["norm"]), generator=generator,
                                                  steps=settings.egg.steps, energy_scale=settings.egg.energy_scale,
                                                  device=device, progress=step)
        except NonFiniteEnergyError as error:
            seeds = len(settings.seeds)
            bad = sorted({targets[image // seeds] for image in error.images})
            raise SurveyError(f"mei: {unit.label}: targets {bad} get a non-finite energy at diffusion timestep "
                              f"{error.timestep}; their model returns NaN or inf there: check it (no row was "
                              "written for this group)") from None
        return result.images, -result.energy, -result.history, result.seconds

    def run(self, unit: WorkUnit, warehouse: Warehouse, info: RunInfo) -> dict[str, int]:
        settings = self.options
        payload = unit.payload
        device = resolve_device(settings.device)
        grey = torch.tensor(payload["grey"], dtype=torch.float32)
        responses = _responses(payload, warehouse, payload["grey"])
        seeds, targets = list(settings.seeds), list(payload["targets"])
        per_image = [t for t in targets for _ in seeds]
        objective = RowTargets(responses, per_image).to(device)
        shape = tuple(payload["shape"])
        with torch_threads(info.threads):
            images, activation, history, seconds = self.optimise(objective, unit, warehouse, device, targets)
            natural = (natural_baseline(responses.to(device), shape, grey, payload["norm"],
                                        settings.natural_patches, device) if settings.natural_patches else None)
            stimuli = torch.from_numpy(load_images(warehouse, payload["stimset_uri"])
                                       - grey.numpy()[None, :, None, None]).to(device)
            with torch.no_grad():
                target_responses = dict(zip(targets, responses(stimuli)[:, targets].T.cpu().numpy(), strict=True))
            scores = {name: _evaluator_scores(payload[name], images, per_image, target_responses, stimuli, warehouse,
                                              payload["grey"], device) for name in ("family", "cross")}
        best = set(best_of_seeds(activation, len(seeds)).tolist())
        tracker = _tracker(self.tracking_uri(warehouse), settings.experiment)
        kind = "unit" if payload["readout_uri"] is None else "neuron"
        method = payload["method"]
        egg = method == "egg"
        steps = settings.egg.steps if egg else settings.steps
        config = {**settings.model_dump(mode="json", exclude={"targets"}), "norm": payload["norm"], "method": method}
        params = ({"steps": steps, "energy_scale": settings.egg.energy_scale, "prior": payload["prior"]["prior_id"]}
                  if egg else {"steps": steps, "lr": settings.lr, "blur_sigma": settings.blur_sigma})
        rows = []
        for row, image in enumerate(images.detach().cpu().numpy()):
            target, seed = per_image[row], seeds[row % len(seeds)]
            evaluated = {f"{name}_{field}": values[row] for name, fields in scores.items()
                         for field, values in fields.items()}
            tags = {"network": payload["network"]["name"], "network_id": payload["network"]["network_id"],
                    "layer": payload["layer"], "target_kind": kind, "target": str(target), "method": method}
            if payload["session"]:
                tags |= {"session": payload["session"], "area": payload["area"]}
            run_id = tracker.log_mei(payload["parent"], content_key("mei-run", unit.key, target, method, seed),
                                     f"{method} · {kind} {target} · {payload['layer']} · seed {seed}", tags,
                                     {"method": method, "seed": seed, "norm": payload["norm"], **params}, config,
                                     history[:, row].numpy(), image,
                                     {"family_activation": evaluated["family_activation"],
                                      "cross_activation": evaluated["cross_activation"]})
            rows.append({
                "target_kind": kind, "network_id": payload["network"]["network_id"], "layer": payload["layer"],
                "session_id": payload["session"], "area": payload["area"], "target": target,
                "stimset_id": payload["stimset_id"], "method": method, "seed": seed, "is_best": row in best,
                "norm": payload["norm"], "steps": steps, "energy_scale": settings.egg.energy_scale if egg else None,
                "prior_id": payload["prior"]["prior_id"] if egg else None,
                "activation": float(activation[row]), **evaluated,
                "natural_max": float(natural[target]) if natural is not None else None,
                "natural_patches": settings.natural_patches,
                "seconds": seconds / len(images), "image_uri": warehouse.put_array(image)[0],
                "readout_uri": payload["readout_uri"], "mlflow_run_id": run_id, **info.provenance(),
            })
        return {self.table: self.commit(warehouse, self.table, unit, rows)}
