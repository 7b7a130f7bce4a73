"""Stage `stimuli`: generate every configured stimulus set, store it, list it in `stimulus_sets`."""

from __future__ import annotations

import os
import tempfile
from typing import Any

import numpy as np

from survey.catalog import Warehouse
from survey.catalog.stimuli import STIMULI_VERSION, stimset_id
from survey.stages import RunInfo, Stage, WorkUnit


class StimuliStage(Stage):
    name = "stimuli"
    table = "stimulus_sets"
    version = STIMULI_VERSION

    def settings(self) -> dict[str, Any]:
        return {"stimuli": [spec.model_dump(mode="json") for spec in self.config.stimuli]}

    def check(self) -> None:
        """Load and validate every user array file (shape, dtype, range) before anything is written."""
        for spec in self.config.stimuli:
            if spec.kind == "array":
                spec.generate()

    def plan(self, warehouse: Warehouse, info: RunInfo) -> list[WorkUnit]:
        return [self.versioned_unit(lambda version, spec=spec: stimset_id(spec, version), f"stimuli {spec.name}",
                                    {"spec": spec}) for spec in self.config.stimuli]

    def run(self, unit: WorkUnit, warehouse: Warehouse, info: RunInfo) -> dict[str, int]:
        spec = unit.payload["spec"]
        stimuli = spec.generate()
        digest = stimuli.content_hash()
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "stimuli.npz")
            np.savez(path, images=stimuli.images, labels=stimuli.labels, coords=stimuli.coords)
            uri = warehouse.put_file(path, digest, ".npz")
        n, channels, height, width = stimuli.images.shape
        row = {
            "stimset_id": unit.key, "name": spec.name, "kind": spec.kind, "n_images": n, "height": height,
            "width": width, "channels": channels, "params": spec.model_dump_json(), "content_hash": digest,
            "uri": uri, **info.provenance(),
        }
        return {self.table: self.commit(warehouse, self.table, unit, [row])}
