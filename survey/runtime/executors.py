"""Executors run a stage's pending units: in this process, or on Ray actors (one place for the actor code)."""

from __future__ import annotations

import contextlib
import os
import time
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

    def check(self) -> None:
        """Refuse, before any stage writes, resources the executor can never have."""

    def map(
        self, stage: Stage, units: list[WorkUnit], warehouse: Warehouse, info: RunInfo
    ) -> Iterator[dict[str, int]]: ...

    def close(self) -> None: ...


class LocalExecutor:
    """Runs units one after another in this process (tests, small runs, debugging)."""

    name = "local"

    def check(self) -> None:
        pass

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
    their process dies (`max_restarts`) and retry the units they were running (`max_task_retries`); one that
    stays down (its node died and no other has room) is replaced and its unit runs on another actor.
    Under ``ray job submit`` it joins the job's cluster; otherwise it starts a local one and stops it in
    `close` (never ``ray stop``, which would stop every cluster of the user on the machine).
    """

    name = "ray"
    POLL_S = 1.0  # seconds between checks of the pool while units run

    def __init__(self, config: ExecutorConfig) -> None:
        self.config = config
        self._actors: list = []  # every actor of the pool, placed or not
        self._ready: list = []  # the placed ones, which get units
        self._starting: dict = {}  # first ping's ObjectRef -> actor not yet placed
        self._pings: dict = {}  # ObjectRef of a ping not answered yet -> the actor pinged
        self._heard: dict[int, float] = {}  # id(actor) -> when it last answered a ping (or was handed a unit)
        self._started_cluster = False

    def _address(self) -> str | None:
        return self.config.address or os.environ.get("RAY_ADDRESS")

    def check(self) -> None:
        """GPUs asked of the local cluster this executor would start, on a machine without them (a cluster it joins
        is checked when it joins)."""
        import ray
        import torch

        if self._address() is None and not ray.is_initialized():
            self._check_gpus(torch.cuda.device_count(), "this machine")

    def _check_gpus(self, available: float, where: str) -> None:
        needed = self.config.num_gpus_per_worker
        if needed > available:
            raise SurveyError(f"executor.num_gpus_per_worker={needed:g} but {where} has {available:g} GPUs; set it to "
                              "0 to run on CPUs, or pass executor.address of a Ray cluster with GPUs")

    def _pool(self) -> list:
        if self._actors:
            return self._actors
        import ray

        if not ray.is_initialized():
            address = self._address()
            if address:
                ray.init(address=address, logging_level="WARNING")
            else:
                total = self.config.num_workers * self.config.num_cpus_per_worker
                ray.init(
                    address="local", num_cpus=max(1, round(total)), include_dashboard=False,
                    logging_level="WARNING", dashboard_host="127.0.0.1",
                )
                self._started_cluster = True
        self._check_gpus(ray.cluster_resources().get("GPU", 0.0), "the Ray cluster")
        self._worker = ray.remote(StageWorker).options(
            num_cpus=self.config.num_cpus_per_worker,
            num_gpus=self.config.num_gpus_per_worker,
            max_restarts=self.config.max_restarts,
            max_task_retries=self.config.max_task_retries,
            max_concurrency=2,  # a ping is answered while a unit runs (one unit at a time is handed to an actor)
        )
        for _ in range(self.config.num_workers):
            self._start_actor()
        return self._actors

    def map(
        self, stage: Stage, units: list[WorkUnit], warehouse: Warehouse, info: RunInfo
    ) -> Iterator[dict[str, int]]:
        """Run `units` one at a time per actor, handing each actor its next unit as it finishes one.

        An actor whose process dies is restarted by Ray and re-runs its unit (`max_restarts`, `max_task_retries`).
        An actor that is dead for good (restarts spent), or has not come back within `restart_timeout_s` (its node
        died and no node has room for it), leaves the pool and its unit goes to another actor; a replacement is
        started, and gets units once Ray has placed it. Units are idempotent (`run_unit` skips a committed one)."""
        import ray

        self._pool()
        shipped = ray.put(stage)  # sent once, not with every unit
        queue = list(reversed(units))  # popped from the end: units run in the planned order
        running: dict = {}  # ObjectRef -> (actor, unit)
        next_check = time.monotonic() + self.POLL_S
        while queue or running:
            self._admit_ready()
            busy = {id(actor) for actor, _ in running.values()}
            idle = [(slot, actor) for slot, actor in enumerate(self._ready) if id(actor) not in busy]
            while queue and idle:
                slot, actor = idle.pop(0)
                unit = next_unit(queue, slot, len(self._ready))
                running[actor.run.remote(shipped, unit, warehouse.uri, info)] = (actor, unit)
                self._heard[id(actor)] = time.monotonic()  # its clock starts with the unit
            if not running:  # no actor placed yet (the cluster may be scaling up): wait, as Ray itself would
                if self._starting:
                    ray.wait(list(self._starting), num_returns=1, timeout=self.POLL_S, fetch_local=False)
                else:
                    time.sleep(self.POLL_S)
                continue
            done, _ = ray.wait(list(running), num_returns=1, timeout=self.POLL_S, fetch_local=False)
            for ref in done:
                actor, unit = running.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayTaskError as err:
                    if isinstance(err.cause, SurveyError):
                        raise SurveyError(str(err.cause)) from None
                    raise
                except ray.exceptions.RayActorError:  # dead for good: run its unit elsewhere
                    self._replace(actor)
                    queue.append(unit)
                    continue
                yield result
            if time.monotonic() < next_check:
                continue
            next_check = time.monotonic() + self.POLL_S
            for actor in {id(actor): actor for actor, _ in running.values()}.values():
                if self._lost(actor):
                    ray.kill(actor, no_restart=True)  # its running unit fails with RayActorError, handled above

    def _start_actor(self) -> object:
        actor = self._worker.remote()
        self._actors.append(actor)
        self._starting[actor.ping.remote()] = actor
        return actor

    def _admit_ready(self) -> None:
        """Actors that Ray has placed join the pool that gets units; an unplaced one gets none (no unit waits on it)."""
        import ray

        if self._starting:
            placed, _ = ray.wait(list(self._starting), num_returns=len(self._starting), timeout=0,
                                 fetch_local=False)
            for ref in placed:
                actor = self._starting.pop(ref)
                if any(actor is other for other in self._actors):
                    self._ready.append(actor)

    def _replace(self, actor) -> None:
        self._actors = [other for other in self._actors if other is not actor]
        self._ready = [other for other in self._ready if other is not actor]
        self._heard.pop(id(actor), None)
        self._pings = {ref: other for ref, other in self._pings.items() if other is not actor}
        self._start_actor()

    def _lost(self, actor) -> bool:
        """Whether `actor` has answered no ping for over `restart_timeout_s` (it is restarting and no node has room
        for it, or its node is gone). Pings go to the actor's second thread, so one running a unit answers."""
        import ray

        answered, _ = ray.wait(list(self._pings), num_returns=len(self._pings), timeout=0, fetch_local=False)
        for ref in answered:
            pinged = self._pings.pop(ref)
            with contextlib.suppress(ray.exceptions.RayError):  # a dead actor's own unit reports its death
                ray.get(ref)
                self._heard[id(pinged)] = time.monotonic()
        if not any(pinged is actor for pinged in self._pings.values()):
            self._pings[actor.ping.remote()] = actor
        return time.monotonic() - self._heard.get(id(actor), time.monotonic()) > self.config.restart_timeout_s

    def close(self) -> None:
        """Stop the actors (on a cluster we joined, their CPUs/GPUs are free at once, not when their handles are
        collected: a caller holding a traceback holds them) and the local cluster we started, if any."""
        if self._actors or self._started_cluster:
            import ray

            if ray.is_initialized():
                for actor in self._actors:
                    ray.kill(actor)
            if self._started_cluster:
                ray.shutdown()
        self._actors, self._ready, self._starting, self._pings, self._heard = [], [], {}, {}, {}


def next_unit(queue: list[WorkUnit], slot: int, slots: int) -> WorkUnit:
    """Take from `queue` (next unit last) the unit for the worker in `slot` of `slots`: the next whose affinity is
    `slot` mod `slots`, else the next of any (a worker with nothing of its own left takes another's: none idles
    while units wait)."""
    for position in range(len(queue) - 1, -1, -1):
        affinity = queue[position].affinity
        if affinity is not None and affinity % slots == slot:
            return queue.pop(position)
    return queue.pop()


class StageWorker:
    """The Ray actor: runs units of any stage; models stay cached in its process between units."""

    def run(self, stage: Stage, unit: WorkUnit, warehouse_uri: str, info: RunInfo) -> dict[str, int]:
        return run_unit(stage, unit, warehouse_uri, info)

    def ping(self) -> int:
        """This actor's process id: an answer says it is placed and alive."""
        return os.getpid()

    def placement(self) -> tuple[list, str]:
        """The GPUs Ray gave this actor and the device its units compute on (`device: auto`): its GPU where CUDA is
        present (Ray sets CUDA_VISIBLE_DEVICES), else the CPU."""
        import ray

        from survey.validation import resolve_device

        return [str(gpu) for gpu in ray.get_gpu_ids()], str(resolve_device("auto"))


def make_executor(config: ExecutorConfig) -> Executor:
    return RayExecutor(config) if config.kind == "ray" else LocalExecutor()
