"""What each shape metric compares, read from a representation's catalog row: the one home of the input rules that
the distances stage and search share (which array a metric reads, who is eligible, how conv maps are pooled), and a
per-process cache of prepared representations."""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache

import numpy as np
import torch

from survey.activations import pool_positions
from survey.catalog import Warehouse
from survey.errors import SurveyError
from survey.metrics.shape import Prepared, ShapeMetric

REP_COLUMNS = ["rep_id", "stimset_id", "n_stimuli", "array_uri", "spatial_uri", "repeats_uri"]  # what the rules read
PREPARED_CACHE = 512  # prepared representations kept per process (two tiles; a search shortlist)


def metric_array_uri(metric: str, rep: Mapping) -> str | None:
    """The array `metric` compares: trials (stimuli × repeats × units) for the stochastic metric, full conv maps
    for the conv metric, the stimuli × units responses otherwise; None when the representation has no such array."""
    return {"stochastic": rep["repeats_uri"], "conv": rep["spatial_uri"]}.get(metric, rep["array_uri"])


def eligible(metric: str, rep: Mapping) -> bool:
    """Whether a representation has what `metric` compares: repeats (stochastic), spatial maps (conv)."""
    return metric_array_uri(metric, rep) is not None


def metric_input(metric: str, array: np.ndarray, conv_size: int | None) -> np.ndarray:
    """The array as `metric` takes it: conv maps average-pooled to at most `conv_size` positions a side."""
    if metric != "conv":
        return array
    maps = torch.from_numpy(np.ascontiguousarray(array, np.float64))
    return pool_positions(maps, conv_size).numpy()


def load_prepared(engine: ShapeMetric, warehouse_uri: str, rep: Mapping, conv_size: int | None) -> Prepared:
    """A representation prepared for `engine`, loaded once per process (cached by metric configuration and array)."""
    key = (engine.metric, engine.alpha, engine.score, engine.center)
    uri = metric_array_uri(engine.metric, rep)
    return _prepared(key, str(engine.device), warehouse_uri, uri, rep["n_stimuli"], rep["rep_id"], conv_size)


@lru_cache(maxsize=PREPARED_CACHE)
def _prepared(engine_key: tuple, device: str, warehouse_uri: str, uri: str, n_stimuli: int, rep_id: str,
              conv_size: int | None) -> Prepared:
    engine = ShapeMetric(*engine_key, device)
    array = Warehouse(warehouse_uri).load_array(uri)
    if array.shape[0] != n_stimuli:
        raise SurveyError(f"representation {rep_id} has {array.shape[0]} stimuli in {uri} but its catalog row says "
                          f"{n_stimuli}; re-run the activations stage for it")
    return engine.prepare(metric_input(engine.metric, array, conv_size), rep_id)
