"""Synthetic representation families (`survey.sources.families`) written to the catalog, as an activations stage
would write a network's layers: for tests and benchmarks at any scale."""

from __future__ import annotations

import numpy as np

from survey.catalog.provenance import RunInfo
from survey.catalog.warehouse import Warehouse
from survey.hashing import array_hash, canonical_json, content_key
from survey.sources.families import Synthetic


def write_representations(warehouse: Warehouse, synthetic: Synthetic, population: list[tuple[np.ndarray, dict]],
                          info: RunInfo, stimset: str = "synthetic") -> dict[str, np.ndarray]:
    """The stimulus-set row (once) and one `representations` row + stored array per member, in one commit;
    returns {rep_id: array}. Member ids are content keys of the family, index and array."""
    features = synthetic.features.astype(np.float32)
    m, p = features.shape
    digest = array_hash(features)
    uri = warehouse.put_npz(f"arrays/{digest[:32]}.npz", {
        "images": features.reshape(m, p, 1, 1), "labels": np.zeros(m, np.int64),
        "coords": np.zeros((m, 0), np.float32), "features": features})
    params = {"name": stimset, "kind": "synthetic", "n": m, "n_features": p, "distribution": "standard normal"}
    stimset_id = content_key("stim", params, digest)
    warehouse.append_unit("stimulus_sets", stimset_id, [{
        "stimset_id": stimset_id, "name": stimset, "kind": "synthetic", "n_images": m, "height": 1, "width": 1,
        "channels": p, "params": canonical_json(params), "content_hash": digest, "uri": uri, **info.provenance(),
    }])
    rows, arrays, counters = [], {}, {}
    for array, meta in population:
        index = counters[meta["family"]] = counters.get(meta["family"], -1) + 1
        array_uri, content_hash = warehouse.put_array(array)
        rep_id = content_key("rep", meta["family"], index, content_hash)
        arrays[rep_id] = array
        rows.append({
            "rep_id": rep_id, "source_kind": "network", "source_id": meta["family"], "source_name": meta["family"],
            "layer_or_area": f"member{index:03d}", "layer_index": index, "depth": meta["level"],
            "stimset_id": stimset_id, "n_stimuli": m, "n_units": array.shape[1], "array_uri": array_uri,
            "spatial_uri": None, "repeats_uri": None, "n_repeats": None, "preprocessing": canonical_json(meta),
            "content_hash": content_hash, **info.provenance(),
        })
    warehouse.append_unit("representations", content_key("reps", [r["rep_id"] for r in rows]), rows)
    return arrays


