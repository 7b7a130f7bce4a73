"""Stage `networks`: build and train the model zoo, register users' networks; weights as safetensors."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import numpy as np
import torch
from torch import nn

from survey.catalog import Warehouse
from survey.config import ExternalNetwork
from survey.hashing import file_hash
from survey.sources.external import build_external, check_layers
from survey.sources.zoo import N_CLASSES, CellSpec, build_network, n_params, sample_spec, save_weights, train
from survey.stages import RunInfo, Stage, WorkUnit


class NetworksStage(Stage):
    name = "networks"
    table = "networks"
    _units: list[WorkUnit] | None = None

    def settings(self) -> dict[str, Any]:
        zoo = self.config.zoo.model_dump(mode="json") if self.config.zoo else None
        return {"zoo": zoo, "networks": [net.model_dump(mode="json") for net in self.config.networks]}

    def check(self) -> None:
        """Build every user network, load its weights and look up its layers before anything is written."""
        self.plan(None)

    def plan(self, warehouse: Warehouse | None, info: RunInfo | None = None) -> list[WorkUnit]:
        """The units depend on the config alone, so they are planned once (by `check`) and kept."""
        if self._units is None:
            self._units = self._zoo_units() + [self._external_unit(net) for net in self.config.networks]
        return self._units

    def _zoo_units(self) -> list[WorkUnit]:
        zoo = self.config.zoo
        if zoo is None:
            return []
        replicas = zoo.replicas
        units = []
        for index in range(zoo.n_architectures):
            spec = sample_spec(np.random.default_rng([zoo.seed, index]))
            layers = _zoo_layers(spec, zoo.layers, f"zoo{index:03d}")
            seed = zoo.seed * 100_003 + index
            runs = [(objective, 0) for objective in zoo.objectives]
            if replicas is not None and index < replicas.architectures:
                runs += [(objective, k) for objective in replicas.objectives for k in range(1, replicas.seeds + 1)]
            for objective, replica in runs:
                # replica k of an architecture trains from seed + k · 7,919 (a prime well past the architectures)
                replica_seed = seed + replica * 7_919
                # untrained nets depend on the training config too: their linear probe is fitted on the task
                payload = {"spec": spec, "objective": objective, "seed": replica_seed, "layers": layers}
                name = f"zoo{index:03d}-{objective}" + (f"-s{replica}" if replica else "")
                units.append(self.unit("net", [spec.model_dump(mode="json"), objective,
                                               zoo.train.model_dump(mode="json"), replica_seed], name, payload))
        return units

    def _external_unit(self, network: ExternalNetwork) -> WorkUnit:
        module = _build_external(network, network.weights)  # validates target, weights and layer names now
        check_layers(module, network.layers, network.name)
        weights = file_hash(network.weights) if network.weights else None
        return self.unit("net", [network.model_dump(mode="json", exclude={"name"}), weights], network.name,
                         {"network": network})

    def run(self, unit: WorkUnit, warehouse: Warehouse, info: RunInfo) -> dict[str, int]:
        if "network" in unit.payload:
            network: ExternalNetwork = unit.payload["network"]
            module = _build_external(network, network.weights)
            spec = {**network.model_dump(mode="json", include={"kind", "target", "kwargs", "input_size", "mean",
                                                                   "std"})}
            row = {"name": network.name, "family": network.kind, "layers": list(network.layers),
                   "seed": network.seed, "objective": "external" if network.weights else "untrained",
                   "train_accuracy": None, "test_accuracy": None, "train_seconds": None}
        else:
            zoo = self.config.zoo
            cell: CellSpec = unit.payload["spec"]
            module = build_network(cell, N_CLASSES, seed=unit.payload["seed"])
            metrics = train(module, unit.payload["objective"], zoo.train, unit.payload["seed"])
            spec = {"cell": cell.model_dump(mode="json"), "n_classes": N_CLASSES, "task_size": zoo.train.image_size}
            row = {"name": unit.label, "family": "zoo", "layers": list(unit.payload["layers"]),
                   "seed": unit.payload["seed"], "objective": unit.payload["objective"],
                   "train_accuracy": metrics["train_accuracy"], "test_accuracy": metrics["test_accuracy"],
                   "train_seconds": metrics["seconds"]}
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "weights.safetensors")
            digest = save_weights(module, path)
            weights_uri = warehouse.put_file(path, digest, ".safetensors")
        row.update(network_id=unit.key, spec=json.dumps(spec, sort_keys=True), n_params=n_params(module),
                   weights_uri=weights_uri, content_hash=digest, **info.provenance())
        return {self.table: self.commit(warehouse, self.table, unit, [row])}


def _zoo_layers(spec: CellSpec, wanted: str | tuple[str, ...], name: str) -> tuple[str, ...]:
    network = build_network(spec)
    if wanted == "all":
        return tuple(network.layer_names)
    check_layers(network, wanted, name)
    return tuple(wanted)


def _build_external(network: ExternalNetwork, weights: str | None) -> nn.Module:
    """Build a user network; without weights its random init comes from `network.seed` (global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(network.seed)
        return build_external(network.kind, network.target, dict(network.kwargs), weights)
