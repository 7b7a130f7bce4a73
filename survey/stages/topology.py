"""Stage `topology`: the level-set signature of every unit's and neuron's tuning map → `topology`.

Tuning grids are θ-major (row = i_θ · n + i_φ), so a unit's n² responses reshape to its n × n map. Conv layers
contribute the channel at the spatially central position (Wang & Ponce 2022); recorded neurons are smoothed at
their noise level before counting and get a split-half reliability from their repeats.
"""

from __future__ import annotations

import math

import numpy as np

from survey.catalog import Warehouse
from survey.catalog.stimuli import catalog_stimulus_sets
from survey.metrics.topology import level_isotropy, noise_sigma, signature, signature_reliability, smooth_to_noise
from survey.stages import RunInfo, Stage, WorkUnit, finite_or_none


def tuning_maps(responses: np.ndarray, side: int) -> np.ndarray:
    """n_stimuli × n_units responses over a θ-major side × side grid → n_units × side × side maps."""
    return np.ascontiguousarray(responses.T.reshape(-1, side, side))


class TopologyStage(Stage):
    name = "topology"
    section = "topology"
    table = "topology"
    reads = ("representations", "stimulus_sets")

    def plan(self, warehouse: Warehouse, info: RunInfo) -> list[WorkUnit]:
        settings = self.options
        grids = catalog_stimulus_sets(warehouse, settings.stimuli, "topology.stimuli", kind="tuning_grid")
        recipe = settings.model_dump(exclude={"stimuli"})
        units = []
        for rep in sorted(warehouse.rows("representations"), key=lambda row: row["rep_id"]):
            grid = grids.get(rep["stimset_id"])
            if grid is None:
                continue
            label = f"{rep['source_name']} {rep['layer_or_area']} × {grid['name']}"
            units.append(self.unit("topo", [rep["rep_id"], rep["content_hash"], recipe], label,
                                   {"rep": rep, "side": math.isqrt(grid["n_images"])}))
        return units

    def run(self, unit: WorkUnit, warehouse: Warehouse, info: RunInfo) -> dict[str, int]:
        settings = self.config.topology
        rep, side = unit.payload["rep"], unit.payload["side"]
        if rep["spatial_uri"] is not None:
            spatial = warehouse.load_array(rep["spatial_uri"])
            responses = spatial[:, :, spatial.shape[2] // 2, spatial.shape[3] // 2]
        else:
            responses = warehouse.load_array(rep["array_uri"])
        maps = tuning_maps(responses.astype(np.float64), side)
        sigma = correlation = agreement = None
        if rep["repeats_uri"] is not None:
            repeats = warehouse.load_array(rep["repeats_uri"]).astype(np.float64)  # stimuli × repeats × units
            trials = np.stack([tuning_maps(repeats[:, r], side) for r in range(repeats.shape[1])], axis=1)
            if settings.smooth:
                sem = trials.std(axis=1, ddof=1) / np.sqrt(trials.shape[1])
                sigma = noise_sigma(maps, sem)
                maps = smooth_to_noise(maps, sem)
            reliability = signature_reliability(trials, settings.n_levels, settings.n_splits, seed=0,
                                                smooth=settings.smooth)
            correlation, agreement = reliability.correlation, reliability.agreement
        result = signature(maps, settings.n_levels)
        isotropy = level_isotropy(maps, settings.n_levels)
        rows = []
        for i in range(len(maps)):
            rows.append({
                "rep_id": rep["rep_id"], "unit": i, "grid_id": rep["stimset_id"], "source_kind": rep["source_kind"],
                "n_levels": settings.n_levels, "n_loop": result.n_loop[i].tolist(),
                "n_line": result.n_line[i].tolist(), "betti0": result.betti0[i].tolist(),
                "betti1": result.betti1[i].tolist(), "euler": result.euler[i].tolist(),
                "isotropy": isotropy[i].tolist(), "constant": bool(result.constant[i]),
                "auc_loop": finite_or_none(result.auc_loop[i]), "auc_line": finite_or_none(result.auc_line[i]),
                "single_branch_level": finite_or_none(result.single_branch_level[i]),
                "smoothing_sigma": None if sigma is None else float(sigma[i]),
                "reliability_correlation": None if correlation is None else finite_or_none(correlation[i]),
                "reliability_agreement": None if agreement is None else float(agreement[i]),
                **info.provenance(),
            })
        return {self.table: self.commit(warehouse, self.table, unit, rows)}
