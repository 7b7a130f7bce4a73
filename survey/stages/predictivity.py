"""Stage `predictivity`: every network layer × recorded area on a shared stimulus set → `predictivity`, plus each
pair's fitted readout (the encoding model a neuron's MEI is optimised through). DESIGN §3, §5.5."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from survey.catalog import Warehouse
from survey.catalog.models import save_readout
from survey.catalog.stimuli import catalog_stimulus_sets
from survey.errors import NotApplicable
from survey.hashing import content_key
from survey.metrics.predictivity import Readout, fit_readout, neural_predictivity, split_half_reliability
from survey.stages import RunInfo, Stage, WorkUnit, finite_or_none


class PredictivityStage(Stage):
    name = "predictivity"
    section = "predictivity"
    table = "predictivity"
    reads = ("representations", "stimulus_sets")

    def plan(self, warehouse: Warehouse, info: RunInfo) -> list[WorkUnit]:
        settings = self.options
        sets = catalog_stimulus_sets(warehouse, settings.stimuli, "predictivity.stimuli")
        recipe = settings.model_dump(exclude={"stimuli"})
        # per stimulus set: network → its layers, session → its areas
        layers: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
        areas: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
        for rep in warehouse.rows("representations"):
            if rep["stimset_id"] not in sets:
                continue
            if rep["source_kind"] == "network":
                layers[rep["stimset_id"]][rep["source_id"]].append(rep)
            elif rep["repeats_uri"] is not None:
                areas[rep["stimset_id"]][rep["source_id"]].append(rep)
        units = []
        for stimset in sorted(layers.keys() & areas.keys()):
            by_session = {session: sorted(reps, key=lambda rep: rep["layer_or_area"])
                          for session, reps in sorted(areas[stimset].items())}
            for _, network_reps in sorted(layers[stimset].items()):
                network_reps.sort(key=lambda rep: rep["layer_index"])
                for session, session_reps in by_session.items():
                    units.append(self.unit("pred", [[r["content_hash"] for r in network_reps],
                                                    [r["content_hash"] for r in session_reps], recipe],
                                           f"{network_reps[0]['source_name']} × {session} · {sets[stimset]['name']}",
                                           {"layers": network_reps, "areas": session_reps}))
        return units

    def run(self, unit: WorkUnit, warehouse: Warehouse, info: RunInfo) -> dict[str, int]:
        """Each layer is fitted to all the session's neurons at once (its areas side by side: every neuron's
        penalty, folds and repeat splits are its own, so this equals one fit per area), then split by area."""
        settings = self.config.predictivity
        areas = unit.payload["areas"]
        repeats = np.concatenate([warehouse.load_array(rep["repeats_uri"]).astype(np.float64) for rep in areas],
                                 axis=2)  # one session: the same stimuli and repeats in every area
        bounds = np.cumsum([0] + [rep["n_units"] for rep in areas])
        try:  # the noise ceiling is the session's, the same for every layer
            reliability = split_half_reliability(repeats, seed=settings.seed)
        except NotApplicable:
            reliability = None  # neural_predictivity names the reason below
        rows = []
        for layer in unit.payload["layers"]:
            features = warehouse.load_array(layer["array_uri"]).astype(np.float64)
            try:
                result = neural_predictivity(features, repeats, settings.n_folds, settings.seed,
                                             reliability=reliability)
                reason = "ok"
                readout = fit_readout(features, repeats.mean(axis=1))
            except NotApplicable as error:
                result, reason = None, str(error)
            for area, start, stop in zip(areas, bounds[:-1], bounds[1:], strict=True):
                row = {
                    "network_rep_id": layer["rep_id"], "session_rep_id": area["rep_id"],
                    "stimset_id": layer["stimset_id"], "network_id": layer["source_id"],
                    "layer": layer["layer_or_area"], "depth": layer["depth"], "session_id": area["source_id"],
                    "area": area["layer_or_area"], "n_stimuli": int(repeats.shape[0]),
                    "n_repeats": int(repeats.shape[1]), "n_neurons": int(stop - start),
                    "n_features": int(features.shape[1]), "n_folds": settings.n_folds, "seed": settings.seed,
                    "status": reason, **info.provenance(),
                }
                if result is None:
                    rows.append({**row, "median_corrected": None, "median_r": None, "r": None, "reliability": None,
                                 "corrected": None, "readout_uri": None})
                    continue
                r, corrected = result.r[start:stop], result.corrected[start:stop]
                area_readout = Readout(readout.mean, readout.scale, readout.weights[:, start:stop],
                                       readout.bias[start:stop], readout.penalty[start:stop])
                rows.append({
                    **row, "median_corrected": _median(corrected), "median_r": _median(r),
                    "r": [finite_or_none(v) for v in r],
                    "reliability": [finite_or_none(v) for v in result.reliability[start:stop]],
                    "corrected": [finite_or_none(v) for v in corrected],
                    "readout_uri": save_readout(warehouse, content_key("readout", unit.key, layer["rep_id"],
                                                                       area["rep_id"]), area_readout),
                })
        return {self.table: self.commit(warehouse, self.table, unit, rows)}


def _median(values: np.ndarray) -> float | None:
    """Median of the finite values, None when there is none."""
    finite = values[np.isfinite(values)]
    return float(np.median(finite)) if finite.size else None
