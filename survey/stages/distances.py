"""Stage `distances`: all pairwise shape distances per stimulus set and metric → `shape_distances`.

The N × N triangle of a stimulus set's representations (networks and sessions together) is cut into tiles of
`tile_size` a side; each tile is a unit of work that writes its own part, so a killed run resumes by tile.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from survey.activations import resolve_device
from survey.catalog import Warehouse
from survey.config import DistanceMetric
from survey.errors import SurveyError
from survey.hashing import content_key
from survey.metrics.shape import Prepared, ShapeMetric, all_pairs
from survey.stages import RunInfo, Stage, WorkUnit, torch_threads
from survey.stages.stimuli import catalog_stimulus_sets

_REP_COLUMNS = ["rep_id", "stimset_id", "n_stimuli", "array_uri", "spatial_uri", "repeats_uri", "content_hash"]


def eligible(metric: str, rep: dict) -> bool:
    """Whether a representation has what `metric` compares: repeats (stochastic), spatial maps (conv)."""
    if metric == "stochastic":
        return rep["repeats_uri"] is not None
    if metric == "conv":
        return rep["spatial_uri"] is not None
    return True


class DistancesStage(Stage):
    name = "distances"
    section = "distances"
    table = "shape_distances"

    def plan(self, warehouse: Warehouse) -> list[WorkUnit]:
        settings = self.options
        sets = catalog_stimulus_sets(warehouse, settings.stimuli or self.config.activations.stimuli,
                                     "distances.stimuli")
        reps = warehouse.rows("representations", _REP_COLUMNS)
        units = []
        for metric in settings.metrics:
            recipe = {**metric.model_dump(), "conv_size": settings.conv_size if metric.metric == "conv" else None}
            for stimset in sorted(sets.values(), key=lambda row: row["name"]):
                members = sorted((rep for rep in reps if rep["stimset_id"] == stimset["stimset_id"]
                                  and eligible(metric.metric, rep)), key=lambda rep: rep["rep_id"])
                blocks = [members[start:start + settings.tile_size]
                          for start in range(0, len(members), settings.tile_size)]
                for i, rows in enumerate(blocks):
                    for j in range(i, len(blocks)):
                        if i == j and len(rows) < 2:
                            continue
                        cols = blocks[j] if j > i else None
                        key = content_key("dist", recipe, [(r["rep_id"], r["content_hash"]) for r in rows],
                                          [(r["rep_id"], r["content_hash"]) for r in cols or ()], self.version)
                        units.append(WorkUnit(key, f"{metric.label} · {stimset['name']} · tile {i},{j}", {
                            "metric": recipe, "stimset_id": stimset["stimset_id"], "rows": rows, "cols": cols,
                        }))
        return units

    def run(self, unit: WorkUnit, warehouse: Warehouse, info: RunInfo) -> dict[str, int]:
        recipe = dict(unit.payload["metric"])
        conv_size = recipe.pop("conv_size")
        metric = DistanceMetric(**recipe)
        device = resolve_device(self.options.device)
        rows_meta, cols_meta = unit.payload["rows"], unit.payload["cols"]
        with torch_threads(info.threads):
            engine = ShapeMetric(metric.metric, metric.alpha, metric.score, metric.center, device)
            rows = [prepared(engine, warehouse.uri, rep, conv_size) for rep in rows_meta]
            if cols_meta is None:
                cols, cols_meta, pairs = rows, rows_meta, np.triu_indices(len(rows), k=1)
            else:
                cols = [prepared(engine, warehouse.uri, rep, conv_size) for rep in cols_meta]
                pairs = all_pairs(len(rows), len(cols))
            values = engine.distances(rows, cols, pairs)
        out = []
        for i, j, value in zip(*pairs, values, strict=True):
            rep_a, rep_b = sorted((rows_meta[i]["rep_id"], cols_meta[j]["rep_id"]))
            out.append({
                "rep_a": rep_a, "rep_b": rep_b, "stimset_id": unit.payload["stimset_id"], "metric": metric.metric,
                "alpha": metric.alpha, "score_method": metric.score, "center": metric.center,
                "distance": float(value), **info.provenance(),
            })
        return {self.table: warehouse.append_unit(self.table, unit.key, out)}


@lru_cache(maxsize=256)
def _prepared_cached(engine_key: tuple, device: str, warehouse_uri: str, uri: str, n_stimuli: int, rep_id: str,
                     conv_size: int | None) -> Prepared:
    metric, alpha, score, center = engine_key
    engine = ShapeMetric(metric, alpha, score, center, device)
    array = Warehouse(warehouse_uri).load_array(uri)
    if array.shape[0] != n_stimuli:
        raise SurveyError(f"representation {rep_id} has {array.shape[0]} stimuli in {uri} but its catalog row says "
                          f"{n_stimuli}; re-run the activations stage for it")
    if metric == "conv":
        array = pool_maps(array, conv_size)
    return engine.prepare(array, rep_id)


def pool_maps(maps: np.ndarray, size: int) -> np.ndarray:
    """Conv maps (m × C × H × W) average-pooled to at most `size` positions a side (the conv metric's grid)."""
    tensor = torch.from_numpy(np.ascontiguousarray(maps, np.float64))
    return torch.nn.functional.adaptive_avg_pool2d(tensor, (min(size, maps.shape[2]), min(size, maps.shape[3]))).numpy()


def prepared(engine: ShapeMetric, warehouse_uri: str, rep: dict, conv_size: int | None) -> Prepared:
    """A representation prepared for `engine`, loaded once per worker process (cached by metric and array)."""
    uri = {"stochastic": rep["repeats_uri"], "conv": rep["spatial_uri"]}.get(engine.metric, rep["array_uri"])
    key = (engine.metric, engine.alpha, engine.score, engine.center)
    return _prepared_cached(key, str(engine.device), warehouse_uri, uri, rep["n_stimuli"], rep["rep_id"], conv_size)
