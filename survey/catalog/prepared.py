"""What each shape metric compares, read from a representation's catalog row (the array its kind names; who is
eligible), for the distances stage and search alike, and prepared representations: stored in the warehouse once
made, and cached per process, bounded in bytes."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping

from survey.catalog.warehouse import Warehouse
from survey.errors import SurveyError
from survey.hashing import content_key
from survey.metrics.configuration import metric_kind
from survey.metrics.shape import Prepared, ShapeMetric

REP_COLUMNS = ["rep_id", "stimset_id", "n_stimuli", "array_uri", "spatial_uri", "repeats_uri"]  # what the rules read
PREPARED_CACHE_BYTES = 1 << 30  # prepared representations kept per process (a worker, the search server)
PREPARED_FORMAT = 1  # in a stored factor's name: bump when ShapeMetric.prepare changes, so that none is reused


def metric_array_uri(metric: str, rep: Mapping) -> str | None:
    """The array `metric` compares (its kind's `array_column`: the stimuli × units responses, the trials of a
    recording, or full conv maps); None when the representation has no such array."""
    return rep[metric_kind(metric).array_column]


def eligible(metric: str, rep: Mapping) -> bool:
    """Whether a representation has what `metric` compares (repeats for the stochastic metric, maps for conv)."""
    return metric_array_uri(metric, rep) is not None


class PreparedCache:
    """Least-recently-used prepared representations, bounded by the bytes of their factors (thread-safe)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes, self.bytes = max_bytes, 0
        self._items: OrderedDict[tuple, Prepared] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple) -> Prepared | None:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
            return self._items.get(key)

    def put(self, key: tuple, prepared: Prepared) -> None:
        with self._lock:
            if key not in self._items:
                self._items[key] = prepared
                self.bytes += _nbytes(prepared)
            while self.bytes > self.max_bytes and len(self._items) > 1:
                self.bytes -= _nbytes(self._items.popitem(last=False)[1])


def _nbytes(prepared: Prepared) -> int:
    tensors = prepared.data if isinstance(prepared.data, tuple) else (prepared.data,)
    return sum(tensor.element_size() * tensor.nelement() for tensor in tensors)


_CACHE = PreparedCache(PREPARED_CACHE_BYTES)


def load_prepared(engine: ShapeMetric, warehouse: Warehouse, rep: Mapping, conv_size: int | None, *,
                  store: bool = True) -> Prepared:
    """A representation prepared for `engine`: kept in this process's cache (keyed by metric configuration and
    array), else read from the factors stored in the warehouse, else prepared, and (with `store`) stored there, so
    that each representation is whitened once for all workers and runs (DESIGN §5.1)."""
    uri = metric_array_uri(engine.metric, rep)
    key = (engine.metric, engine.alpha, engine.score, engine.center, str(engine.device), warehouse, uri, conv_size)
    prepared = _CACHE.get(key)
    if prepared is None:
        path = prepared_path(engine, uri, conv_size)
        if (stored := warehouse.stored(path)) is not None:
            prepared = Prepared.from_arrays(warehouse.load_npz(stored), engine.device)
        else:
            array = warehouse.load_array(uri)
            if array.shape[0] != rep["n_stimuli"]:
                raise SurveyError(f"representation {rep['rep_id']} has {array.shape[0]} stimuli in {uri} but its "
                                  f"catalog row says {rep['n_stimuli']}; re-run the activations stage for it")
            prepared = engine.prepare(engine.metric_input(array, conv_size), rep["rep_id"])
            if store:
                warehouse.put_npz(path, prepared.to_arrays())
        _CACHE.put(key, prepared)
    return prepared


def prepared_path(engine: ShapeMetric, array_uri: str, conv_size: int | None) -> str:
    """Where the warehouse keeps an array's factors for `engine`: named by what `ShapeMetric.prepare` reads (the
    metric, alpha, centering, conv pooling, the array's content-hashed file name) and PREPARED_FORMAT."""
    name = content_key("prepared", engine.metric, engine.alpha, engine.center, conv_size,
                       array_uri.rsplit("/", 1)[-1], PREPARED_FORMAT)
    return f"arrays/prepared/{name}.npz"
