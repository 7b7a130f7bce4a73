"""Stage `capacity`: manifold capacity and geometry (MFTMA), alignment and decodability → `capacity`, `alignment`.

Every representation of a manifold set is split by stimulus label into P manifolds (N units × M points): the
objects under their transformations for networks and recorded areas alike (Kuoch et al. 2023). A representation
the theory cannot handle (e.g. a dead layer) gets NULL estimates and a `status` that says why, so one bad layer
does not stop a survey of thousands.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from survey.catalog import Warehouse
from survey.catalog.stimuli import catalog_stimulus_sets, load_labels
from survey.errors import NotApplicable
from survey.metrics.alignment import decodability, manifold_alignment
from survey.metrics.capacity import manifold_capacity, simulated_capacity
from survey.stages import RunInfo, Stage, WorkUnit, finite_or_none, torch_threads


def split_manifolds(responses: np.ndarray, labels: np.ndarray) -> list[np.ndarray]:
    """n_stimuli × n_units responses → one N × M array per label (features × points), in label order."""
    return [np.ascontiguousarray(responses[labels == label].T, np.float64) for label in np.unique(labels)]


class CapacityStage(Stage):
    name = "capacity"
    section = "capacity"
    table = "capacity"
    version = 2  # 2: the capacity search restarts from 50 random starts (rows of version 1 are superseded)
    writes_also = ("alignment",)
    reads = ("representations", "stimulus_sets")

    def plan(self, warehouse: Warehouse, info: RunInfo) -> list[WorkUnit]:
        settings = self.options
        # any labelled stimulus set may be named; by default the object manifolds
        sets = catalog_stimulus_sets(warehouse, settings.stimuli, "capacity.stimuli",
                                     kind=None if settings.stimuli else "object_manifolds")
        recipe = settings.model_dump(exclude={"stimuli"})
        units = []
        for rep in sorted(warehouse.rows("representations"), key=lambda row: row["rep_id"]):
            stimset = sets.get(rep["stimset_id"])
            if stimset is not None:
                units.append(self.unit("cap", [rep["rep_id"], rep["content_hash"], stimset["content_hash"], recipe],
                                       f"{rep['source_name']} {rep['layer_or_area']} × {stimset['name']}",
                                       {"rep": rep, "stimset_uri": stimset["uri"]}))
        return units

    def run(self, unit: WorkUnit, warehouse: Warehouse, info: RunInfo) -> dict[str, int]:
        settings = self.config.capacity
        rep = unit.payload["rep"]
        labels = load_labels(warehouse, unit.payload["stimset_uri"])
        manifolds = split_manifolds(warehouse.load_array(rep["array_uri"]), labels)
        base = {"rep_id": rep["rep_id"], "manifold_set": rep["stimset_id"], **info.provenance()}
        with torch_threads(info.threads):
            geometry = _estimates(manifolds, settings.kappa, settings.n_t, settings.seed)
            if not settings.simulate:
                simulated, simulated_status = None, "not run (capacity.simulate: false)"
            elif geometry["status"] != "ok":
                simulated, simulated_status = None, "not run: the theory does not apply (see status)"
            else:
                simulated, simulated_status = _or_reason(simulated_capacity, manifolds, n_reps=settings.n_reps,
                                                         seed=settings.seed)
        alignment, alignment_status = _or_reason(manifold_alignment, manifolds)
        decoding, decoding_status = _or_reason(decodability, manifolds, seed=settings.seed)
        aligned = {
            **base, **{field: finite_or_none(getattr(alignment, field)) if alignment else None
                       for field in ("center_alignment", "axis_alignment", "center_axis_alignment")},
            "decodability": decoding, "chance": 1.0 / len(manifolds),
            "status": "; ".join(dict.fromkeys(s for s in (alignment_status, decoding_status) if s != "ok")) or "ok",
        }
        written = {"alignment": self.commit(warehouse, "alignment", unit, [aligned])}
        row = {
            **base, "source_kind": rep["source_kind"], "n_manifolds": len(manifolds),
            "n_points": min(m.shape[1] for m in manifolds), "n_features": manifolds[0].shape[0],
            "kappa": settings.kappa, "n_t": settings.n_t, "simulated_capacity": simulated,
            "simulated_status": simulated_status, **geometry,
        }
        written[self.table] = self.commit(warehouse, self.table, unit, [row])
        return written


def _estimates(manifolds: list[np.ndarray], kappa: float, n_t: int, seed: int) -> dict:
    try:
        result = manifold_capacity(manifolds, kappa=kappa, n_t=n_t, seed=seed)
    except NotApplicable as err:
        return {"capacity": None, "radius": None, "dimension": None, "center_correlation": None, "K": None,
                "capacities": None, "radii": None, "dimensions": None, "status": str(err)}
    return {
        "capacity": result.capacity, "radius": result.radius, "dimension": result.dimension,
        "center_correlation": result.center_correlation, "K": result.K, "capacities": result.capacities.tolist(),
        "radii": result.radii.tolist(), "dimensions": result.dimensions.tolist(), "status": "ok",
    }


def _or_reason(method: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, str]:
    """(`method(...)`, "ok"), or (None, why) where it does not apply (NotApplicable): e.g. simulated capacity when
    even all N features do not separate the manifolds, decodability with fewer points than folds, a center at the
    origin. Any other error is the input's and stops the unit."""
    try:
        return method(*args, **kwargs), "ok"
    except NotApplicable as err:
        return None, str(err)
