"""Stage `mei`: most exciting inputs of network units and recorded neurons by gradient ascent → `mei_runs`, each
(target, seed) a nested MLflow run (DESIGN §5.5). One unit of work is one target group (a layer's units, or an
area's neurons through one encoding model), all its targets and seeds optimised in one batch."""

from __future__ import annotations

import json
from functools import lru_cache

import numpy as np
import torch

from survey.catalog import Warehouse, query_catalog, read_only
from survey.config import ActivationsConfig, MeiTargets
from survey.errors import SurveyError
from survey.hashing import content_key
from survey.mei.ascent import best_of_seeds, gradient_ascent, project_to_norm
from survey.mei.targets import EncodingModel, LayerResponses, RowTargets
from survey.mei.tracking import MeiTracker, default_tracking_uri
from survey.stages import RunInfo, Stage, WorkUnit, torch_threads
from survey.stages.networks import load_network
from survey.stages.predictivity import load_readout
from survey.stages.stimuli import catalog_stimulus_sets, load_images
from survey.stimuli import NaturalPatches
from survey.validation import resolve_device

METHOD = "ga"


@lru_cache(maxsize=2)
def _tracker(tracking_uri: str, experiment: str) -> MeiTracker:
    return MeiTracker(tracking_uri, experiment)


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


class MeiStage(Stage):
    name = "mei"
    section = "mei"
    table = "mei_runs"
    reads = ("networks", "representations", "predictivity", "stimulus_sets")

    def check(self) -> None:
        if self.options.targets_sql is not None:
            read_only(self.options.targets_sql, "mei.targets_sql")  # refused before any stage writes

    def tracking_uri(self, warehouse: Warehouse) -> str:
        return self.options.mlflow_uri or default_tracking_uri(warehouse.uri)

    def plan(self, warehouse: Warehouse, info: RunInfo) -> list[WorkUnit]:
        settings = self.options
        stimset = next(iter(catalog_stimulus_sets(warehouse, (settings.stimuli,), "mei.stimuli").values()))
        images = load_images(warehouse.uri, stimset["uri"])
        grey, norm = grey_and_norm(images)
        norm = settings.norm or norm
        catalog = target_catalog(warehouse)
        recipe = settings.model_dump(exclude={"targets", "mlflow_uri", "experiment", "device"})
        groups = [resolve_targets(group, catalog)
                  for group in (*settings.targets, *targets_from_sql(warehouse, settings.targets_sql))]
        shape = list(images.shape[1:])
        for group in groups:  # one forward pass of a grey image: a layer or unit the model lacks fails here
            with torch.no_grad():
                responses = _responses(group, warehouse, grey.tolist())(torch.zeros((1, *shape)))
            if max(group["targets"]) >= responses.shape[1]:
                raise SurveyError(f"mei.targets: {group['network']['name']} {group['layer']} has "
                                  f"{responses.shape[1]} {'neurons' if group['session'] else 'units'}; pick indices "
                                  f"below {responses.shape[1]}")
        keys = [content_key("mei", group["network"]["content_hash"], group["layer"], group["readout_uri"],
                            list(group["targets"]), stimset["content_hash"], recipe, self.version) for group in groups]
        parent = None  # the stage run's MLflow parent, made here (once) only when something will run under it
        if set(keys) - warehouse.done_keys(self.table):
            parent = _tracker(self.tracking_uri(warehouse), settings.experiment).parent(
                f"{info.run_id}-mei", f"mei · {info.run_id}", {"stage": "mei", "run_id": info.run_id})
        units = []
        for key, group in zip(keys, groups, strict=True):
            label = f"{group['network']['name']} {group['layer']}"
            if group["session"]:
                label = f"{group['session']} {group['area']} via {label}"
            units.append(WorkUnit(key, label, {**group, "stimset_id": stimset["stimset_id"], "grey": grey.tolist(),
                                               "norm": norm, "shape": shape, "parent": parent}))
        return units

    def run(self, unit: WorkUnit, warehouse: Warehouse, info: RunInfo) -> dict[str, int]:
        settings = self.config.mei
        payload = unit.payload
        device = resolve_device(settings.device)
        grey = torch.tensor(payload["grey"], dtype=torch.float32)
        responses = _responses(payload, warehouse, payload["grey"])
        seeds, targets = list(settings.seeds), list(payload["targets"])
        objective = RowTargets(responses, [t for t in targets for _ in seeds]).to(device)
        generator = torch.Generator(device).manual_seed(int(unit.key.rsplit("-", 1)[-1][:15], 16))  # from the key
        with torch_threads(info.threads):
            result = gradient_ascent(objective, len(targets) * len(seeds), tuple(payload["shape"]),
                                     norm=payload["norm"], generator=generator, steps=settings.steps, lr=settings.lr,
                                     blur_sigma=settings.blur_sigma, jitter=settings.jitter,
                                     fourier=settings.fourier, device=device)
            natural = (natural_baseline(responses.to(device), tuple(payload["shape"]), grey, payload["norm"],
                                        settings.natural_patches, device) if settings.natural_patches else None)
        best = set(best_of_seeds(result.activation, len(seeds)).tolist())
        tracker = _tracker(self.tracking_uri(warehouse), settings.experiment)
        kind = "unit" if payload["readout_uri"] is None else "neuron"
        config = {**settings.model_dump(mode="json", exclude={"targets"}), "norm": payload["norm"]}
        rows = []
        for row, image in enumerate(result.images.cpu().numpy()):
            target, seed = targets[row // len(seeds)], seeds[row % len(seeds)]
            tags = {"network": payload["network"]["name"], "network_id": payload["network"]["network_id"],
                    "layer": payload["layer"], "target_kind": kind, "target": str(target)}
            if payload["session"]:
                tags |= {"session": payload["session"], "area": payload["area"]}
            run_id = tracker.log_child(payload["parent"], content_key("mei-run", unit.key, target, METHOD, seed),
                                       f"{kind} {target} · {payload['layer']} · seed {seed}", tags,
                                       {"method": METHOD, "seed": seed, "steps": settings.steps, "lr": settings.lr,
                                        "blur_sigma": settings.blur_sigma, "norm": payload["norm"]},
                                       config, result.history[:, row].numpy(), image)
            rows.append({
                "target_kind": kind, "network_id": payload["network"]["network_id"], "layer": payload["layer"],
                "session_id": payload["session"], "area": payload["area"], "target": target,
                "stimset_id": payload["stimset_id"], "method": METHOD, "seed": seed, "is_best": row in best,
                "norm": payload["norm"], "steps": settings.steps, "activation": float(result.activation[row]),
                "natural_max": float(natural[target]) if natural is not None else None,
                "natural_patches": settings.natural_patches,
                "seconds": result.seconds / len(result.images), "image_uri": warehouse.put_array(image)[0],
                "readout_uri": payload["readout_uri"], "mlflow_run_id": run_id, **info.provenance(),
            })
        return {self.table: warehouse.append_unit(self.table, unit.key, rows)}

