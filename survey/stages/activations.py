"""Stage `activations`: every network in the catalog × every chosen stimulus set → `representations`."""

from __future__ import annotations

from survey.activations import extract
from survey.catalog import Warehouse
from survey.catalog.networks import load_network
from survey.catalog.stimuli import load_images, stimset_rows
from survey.hashing import canonical_json, content_key
from survey.stages import RunInfo, Stage, WorkUnit
from survey.validation import resolve_device


class ActivationsStage(Stage):
    name = "activations"
    section = "activations"
    table = "representations"
    reads = ("networks", "stimulus_sets")

    def plan(self, warehouse: Warehouse, info: RunInfo) -> list[WorkUnit]:
        names = self.config.stimset_names()
        networks = warehouse.rows("networks")
        if not networks or not names:
            return []
        sets = stimset_rows(self.config, warehouse, names)
        keep = self.config.activations.model_dump(include={"spatial_pool", "keep_spatial"})
        units = []
        for network in sorted(networks, key=lambda row: row["name"]):
            for name, stimset in sets.items():
                units.append(self.unit("act", [network["content_hash"], network["spec"], network["layers"],
                                               stimset["stimset_id"], keep],
                                       f"{network['name']} × {name}", {"network": network, "stimset": stimset}))
        return units

    def run(self, unit: WorkUnit, warehouse: Warehouse, info: RunInfo) -> dict[str, int]:
        settings = self.config.activations
        network, stimset = unit.payload["network"], unit.payload["stimset"]
        module, preprocessing = load_network(network, warehouse)
        layers = network["layers"]
        outputs = extract(
            module, load_images(warehouse, stimset["uri"]), layers, batch_size=settings.batch_size,
            device=resolve_device(settings.device), spatial_pool=settings.spatial_pool,
            keep_spatial=settings.keep_spatial, **preprocessing,
        )
        recipe = {**preprocessing, "spatial_pool": settings.spatial_pool}
        rows = []
        for index, layer in enumerate(layers):
            output = outputs[layer]
            array_uri, digest = warehouse.put_array(output.flat)
            spatial_uri = warehouse.put_array(output.spatial)[0] if output.spatial is not None else None
            rows.append({
                "rep_id": content_key("rep", unit.key, layer), "source_kind": "network",
                "source_id": network["network_id"], "source_name": network["name"], "layer_or_area": layer,
                "layer_index": index, "depth": index / max(len(layers) - 1, 1),
                "stimset_id": stimset["stimset_id"], "n_stimuli": output.flat.shape[0],
                "n_units": output.flat.shape[1], "array_uri": array_uri, "spatial_uri": spatial_uri,
                "repeats_uri": None, "n_repeats": None, "preprocessing": canonical_json(recipe), "content_hash": digest,
                **info.provenance(),
            })
        return {self.table: self.commit(warehouse, self.table, unit, rows)}
