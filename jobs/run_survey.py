"""Ray job entrypoint: run a survey config on the cluster the job was submitted to.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python -m jobs.run_survey --config jobs/configs/small.yaml --warehouse s3://bucket/warehouse
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from survey.cli import DEFAULT_WAREHOUSE, ExecutorKind, execute, exit_on_user_error, with_executor
from survey.config import load_config


def main(
    config: Annotated[Path, typer.Option(help="Survey config (YAML).")],
    warehouse: Annotated[str, typer.Option(help="Warehouse root reachable from every node.")] = DEFAULT_WAREHOUSE,
) -> None:
    """Run every stage of `config` on Ray actors of the job's cluster."""
    execute(with_executor(load_config(config), ExecutorKind.ray), warehouse)


if __name__ == "__main__":
    exit_on_user_error(lambda: typer.run(main))
