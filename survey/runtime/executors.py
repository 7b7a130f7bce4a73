"""Executors run a stage's pending units: in this process, or on Ray actors (one place for the actor code)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Protocol

from survey.catalog import Warehouse
from survey.config import ExecutorConfig
from survey.errors import SurveyError
from survey.stages import RunInfo, Stage, WorkUnit, torch_threads


def run_unit(stage: Stage, unit: WorkUnit, warehouse_uri: str, info: RunInfo) -> dict[str, int]:
    """Run one unit with a fixed torch thread count (shared by both executors); a unit that another run (or this
    one, before an actor restart) committed since planning is skipped."""
    warehouse = Warehouse(warehouse_uri)
    if warehouse.committed(stage.table, unit.key):
        return {}
    with torch_threads(info.threads):
        return stage.run(unit, warehouse, info)


class Executor(Protocol):
    name: str

    def map(
        self, stage: Stage, units: list[WorkUnit], warehouse: Warehouse, info: RunInfo
    ) -> Iterator[dict[str, int]]: ...

    def close(self) -> None: ...


class LocalExecutor:
    """Runs units one after another in this process (tests, small runs, debugging)."""

    name = "local"

    def map(
        self, stage: Stage, units: list[WorkUnit], warehouse: Warehouse, info: RunInfo
    ) -> Iterator[dict[str, int]]:
        for unit in units:
            yield run_unit(stage, unit, warehouse.uri, info)

    def close(self) -> None:
        pass


class RayExecutor:
    """Runs units on a pool of Ray actors; each actor keeps its loaded models between units.

    Actors get explicit `num_cpus`/`num_gpus` (on a GPU cluster: one actor per GPU), are restarted when
    their process dies (`max_restarts`) and retry the units they were running (`max_task_retries`).
    Under ``ray job submit`` it joins the job's cluster; otherwise it starts a local one and stops it in
    `close` (never ``ray stop``, which would stop every cluster of the user on the machine).
    """

    name = "ray"

    def __init__(self, config: ExecutorConfig) -> None:
        self.config = config
        self._actors: list = []
        self._started_cluster = False

    def _pool(self) -> list:
        if self._actors:
            return self._actors
        import ray

        if not ray.is_initialized():
            address = self.config.address or os.environ.get("RAY_ADDRESS")
            if address:
                ray.init(address=address, logging_level="WARNING")
            else:
                total = self.config.num_workers * self.config.num_cpus_per_worker
                ray.init(
                    address="local", num_cpus=max(1, round(total)), include_dashboard=False,
                    logging_level="WARNING", dashboard_host="127.0.0.1",
                )
                self._started_cluster = True
        worker = ray.remote(StageWorker).options(
            num_cpus=self.config.num_cpus_per_worker,
            num_gpus=self.config.num_gpus_per_worker,
            max_restarts=self.config.max_restarts,
            max_task_retries=self.config.max_task_retries,
        )
        self._actors = [worker.remote() for _ in range(self.config.num_workers)]
        return self._actors

    def map(
        self, stage: Stage, units: list[WorkUnit], warehouse: Warehouse, info: RunInfo
    ) -> Iterator[dict[str, int]]:
        import ray
        from ray.util import ActorPool

        pool = ActorPool(self._pool())
        results = pool.map_unordered(lambda actor, unit: actor.run.remote(stage, unit, warehouse.uri, info), units)
        try:
            yield from results
        except ray.exceptions.RayTaskError as err:
            if isinstance(err.cause, SurveyError):
                raise SurveyError(str(err.cause)) from None
            raise

    def close(self) -> None:
        if self._started_cluster:
            import ray

            ray.shutdown()
        self._actors = []


class StageWorker:
    """The Ray actor: runs units of any stage; models stay cached in its process between units."""

    def run(self, stage: Stage, unit: WorkUnit, warehouse_uri: str, info: RunInfo) -> dict[str, int]:
        return run_unit(stage, unit, warehouse_uri, info)


def make_executor(config: ExecutorConfig) -> Executor:
    return RayExecutor(config) if config.kind == "ray" else LocalExecutor()
