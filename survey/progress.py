"""Progress of the steps inside one unit of work (a prior's training, an MEI's ascent), shown beside the stage's bar
of units: a nested tqdm bar in this process, or Ray's `tqdm_ray` bar inside a Ray actor (the driver draws it)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

from tqdm.auto import tqdm


@contextlib.contextmanager
def step_bar(total: int, desc: str) -> Iterator[Callable[[], object]]:
    """A bar of `total` steps; yields the function to call once per step."""
    if _in_ray_actor():
        from ray.experimental import tqdm_ray

        bar = tqdm_ray.tqdm(total=total, desc=desc, unit="step")
    else:
        bar = tqdm(total=total, desc=desc, unit="step", leave=False, position=1)
    try:
        yield bar.update
    finally:
        bar.close()


def _in_ray_actor() -> bool:
    if "ray" not in sys.modules:  # never imports Ray for a local run
        return False
    import ray

    return ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None
