"""Networks in the catalog: a `networks` row's module with its stored weights (cached per process)."""

from __future__ import annotations

import json
from functools import lru_cache

from torch import nn

from survey.catalog.warehouse import Warehouse
from survey.sources.checkpoints import load_into
from survey.sources.external import build_external
from survey.sources.zoo import CellSpec, build_network


def load_network(row: dict, warehouse: Warehouse) -> tuple[nn.Module, dict]:
    """The module of a `networks` row with its stored weights, and its preprocessing (cached per process)."""
    return _load_network(warehouse, row["family"], row["spec"], row["weights_uri"], row["content_hash"])


@lru_cache(maxsize=4)  # an MEI unit holds its network and its two evaluation networks
def _load_network(
    warehouse: Warehouse, family: str, spec_json: str, weights_uri: str, content_hash: str
) -> tuple[nn.Module, dict]:
    spec = json.loads(spec_json)
    with warehouse.local_copy(weights_uri) as weights:
        if family == "zoo":
            module = build_network(CellSpec.model_validate(spec["cell"]), spec["n_classes"])
            load_into(module, weights)
            return module, {"input_size": spec["task_size"], "mean": None, "std": None}
        module = build_external(spec["kind"], spec["target"], spec["kwargs"], weights)
        return module, {name: spec[name] for name in ("input_size", "mean", "std")}
