"""What the `survey` commands share: the Typer apps, the common options, running a config and printing a query.

Nothing heavy is imported here or at the top of a command module: each command imports what it runs when it runs,
so that `survey sql` and `survey --help` start without torch, Ray, MLflow, pandas or the config models.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from survey.display import OutputFormat
from survey.errors import SurveyError, one_line

if TYPE_CHECKING:
    import duckdb

    from survey.catalog import Warehouse
    from survey.config import SurveyConfig

DEFAULT_WAREHOUSE = "catalogs/warehouse"

app = typer.Typer(help="neurosurvey: survey neural representations of networks and recorded brain areas.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
zoo_app = typer.Typer(help="The generated model zoo.", no_args_is_help=True)
sessions_app = typer.Typer(help="Recording sessions (NWB).", no_args_is_help=True)
prior_app = typer.Typer(help="Diffusion priors for energy-guided MEIs (EGG).", no_args_is_help=True)
index_app = typer.Typer(help="Embedding spaces (landmark MDS + FAISS) for nearest-representation search.",
                        no_args_is_help=True)
app.add_typer(zoo_app, name="zoo")
app.add_typer(sessions_app, name="sessions")
app.add_typer(prior_app, name="prior")
app.add_typer(index_app, name="index")

WarehouseOption = Annotated[str, typer.Option(
    "--warehouse", "-w", envvar="SURVEY_WAREHOUSE", help="Warehouse root: a directory or a pyarrow.fs URI.",
)]
FormatOption = Annotated[OutputFormat, typer.Option("--format", "-f", help="table, csv, json or parquet (a file).")]
OutputOption = Annotated[Path | None, typer.Option("--output", "-o", help="File to write (parquet: required).")]
CONFIG_DEFAULT = "(default: the config section's)"  # help of an option left to that default


class ExecutorKind(StrEnum):
    local = "local"
    ray = "ray"


ExecutorOption = Annotated[ExecutorKind | None, typer.Option(help="Override the config's executor.")]


def given(**options: object) -> dict:
    """The options the user set: those left at None take the config section's own defaults."""
    return {name: value for name, value in options.items() if value is not None}


def existing(warehouse: str) -> Warehouse:
    """The warehouse at `warehouse`, which must hold catalog tables (Warehouse.check_catalog)."""
    from survey.catalog import Warehouse

    return Warehouse(warehouse).check_catalog()


def one_stage_config(stage: str, section: dict, option: str | None = None) -> SurveyConfig:
    """A survey of one stage whose config section is `section`; a bad option is one line naming its field (or
    `option`, the command-line option it came from)."""
    from pydantic import ValidationError

    from survey.config import SurveyConfig

    try:
        return SurveyConfig.model_validate({"name": stage, stage: section, "stages": [stage]})
    except ValidationError as err:
        first = err.errors()[0]
        where = option or f"{stage}: {'.'.join(str(p) for p in first['loc'])}"
        raise SurveyError(f"{where}: {one_line(first['msg'])}") from None


def check_output(output_format: OutputFormat, output: Path | None) -> None:
    """Refuse an output the format cannot be written to, before anything is read."""
    if output_format is OutputFormat.parquet and output is None:
        raise SurveyError("--format parquet writes a file; add --output PATH.parquet")
    if output is not None and output.is_dir():
        raise SurveyError(f"--output {output} is a directory; pass a file path")


def print_query(connection: duckdb.DuckDBPyConnection, title: str, query: str) -> None:
    from survey.display import print_table

    result = connection.sql(query)
    print_table(result.columns, [dict(zip(result.columns, row, strict=True)) for row in result.fetchall()], title)


def integers(option: str, text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise SurveyError(f"{option} {text!r}: pass comma-separated integers, e.g. 0,1,2") from None


def exit_on_user_error(command: Callable[[], None]) -> None:
    """Run `command`; a SurveyError becomes one line on stderr and exit status 2."""
    try:
        command()
    except SurveyError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
