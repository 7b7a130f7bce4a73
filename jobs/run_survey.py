"""Ray job entrypoint: run a survey config on the cluster the job was submitted to.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python -m jobs.run_survey --config jobs/configs/small.yaml --warehouse s3://bucket/warehouse

The job runs under the interpreter its entrypoint names (`python`: the first on the head's PATH). One that lacks the
project's packages (a head started outside the project's environment) ends the job at once with one `error:` line
naming that interpreter and the fix, which `survey submit` prints.
"""

from __future__ import annotations

import platform
import sys
from pathlib import Path
from typing import Annotated

try:
    import typer

    from survey.cli import DEFAULT_WAREHOUSE, exit_on_user_error
    from survey.config import load_config
    from survey.runtime.survey import execute
except ImportError as missing:
    print(f"error: the job runs under {sys.executable} (Python {platform.python_version()}), which lacks the "
          f"project's packages ({missing}); start the Ray head from the project's environment (`.venv/bin/ray start "
          "--head …`, or activate .venv first), or submit with `survey submit --python /path/to/env/bin/python`",
          file=sys.stderr)
    sys.exit(2)


def main(
    config: Annotated[Path, typer.Option(help="Survey config (YAML).")],
    warehouse: Annotated[str, typer.Option(help="Warehouse root reachable from every node.")] = DEFAULT_WAREHOUSE,
) -> None:
    """Run every stage of `config` on Ray actors of the job's cluster."""
    execute(load_config(config), warehouse, executor="ray")


if __name__ == "__main__":
    exit_on_user_error(lambda: typer.run(main))
