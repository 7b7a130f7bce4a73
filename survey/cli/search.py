"""Commands over the embedding spaces: `index build`, `index ls`, `search`, `serve`."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer

from survey.cli.common import (
    CONFIG_DEFAULT,
    DEFAULT_WAREHOUSE,
    ExecutorOption,
    FormatOption,
    OutputOption,
    WarehouseOption,
    app,
    check_output,
    existing,
    given,
    index_app,
    one_stage_config,
)
from survey.display import OutputFormat
from survey.errors import SurveyError, one_line


def parse_metric(spec: str) -> dict:
    """`metric[:alpha][:score][:uncentered]`, e.g. ``linear:0.5``, ``cka:euclidean``, ``permutation``."""
    metric, *options = spec.split(":")
    parsed: dict = {"metric": metric}
    for option in options:
        if option in ("angular", "euclidean"):
            parsed["score"] = option
        elif option == "uncentered":
            parsed["center"] = False
        else:
            try:
                parsed["alpha"] = float(option)
            except ValueError:
                raise SurveyError(f"--metric {spec!r}: {option!r} is not an alpha, a score or 'uncentered'; "
                                  "write metric[:alpha][:score], e.g. linear:0.5:angular") from None
    return parsed


class IndexKind(StrEnum):
    flat = "flat"
    hnsw = "hnsw"


@index_app.command("build")
def index_build(
    metric: Annotated[str, typer.Option("--metric", "-m", help="metric[:alpha][:score], distances stored.")] = "linear",
    stimset: Annotated[str | None, typer.Option(help=f"Stimulus-set name. {CONFIG_DEFAULT}")] = None,
    dim: Annotated[int | None, typer.Option(help=f"Embedding dimensions. {CONFIG_DEFAULT}")] = None,
    landmarks: Annotated[int | None, typer.Option(help=f"Landmarks for out-of-sample queries. {CONFIG_DEFAULT}")] = (
        None),
    kind: Annotated[IndexKind, typer.Option(help="flat (exact) or hnsw.")] = IndexKind.flat,
    warehouse: WarehouseOption = DEFAULT_WAREHOUSE,
    executor: ExecutorOption = None,
) -> None:
    """Embed one stimulus set's representations under one metric and index them (the `spaces` stage)."""
    from survey.catalog import Warehouse
    from survey.display import print_table
    from survey.search.space import SearchService

    spec = {"metric": parse_metric(metric), "kind": kind.value, **given(stimuli=stimset, dim=dim, landmarks=landmarks)}
    config = one_stage_config("spaces", {"build": [spec]}, "--metric")
    from survey.runtime.survey import execute

    execute(config, warehouse, executor=executor)
    rows = [row for row in SearchService(Warehouse(warehouse)).spaces() if row["name"] == config.spaces.build[0].label]
    print_table(["space_id", "name", "n_items", "dim", "n_landmarks", "landmarks_from", "negative_mass", "stress"],
                rows[-1:], title="space")


@index_app.command("ls")
def index_ls(warehouse: WarehouseOption = DEFAULT_WAREHOUSE, format: FormatOption = OutputFormat.table,
             output: OutputOption = None) -> None:
    """List the embedding spaces."""
    from survey.display import emit, rows_table
    from survey.search.space import SearchService

    check_output(format, output)
    columns = ["space_id", "name", "n_items", "dim", "n_landmarks", "index_kind", "negative_mass", "stress", "created"]
    emit(rows_table(columns, SearchService(existing(warehouse)).spaces()), format, output, "spaces")


@app.command()
def search(
    rep_id: Annotated[str, typer.Argument(help="A representation id in the catalog.")],
    k: Annotated[int, typer.Option("-k", help="Neighbours to return (1 to 1,000).")] = 10,
    space: Annotated[str | None, typer.Option(help="Space id (default: the newest of the rep's stimulus set).")] = None,
    where: Annotated[str | None, typer.Option(
        help="SQL condition on representations r / networks n / sessions s, e.g. \"r.layer_or_area = 'IT'\".",
    )] = None,
    warehouse: WarehouseOption = DEFAULT_WAREHOUSE,
    format: FormatOption = OutputFormat.table,
    output: OutputOption = None,
) -> None:
    """The k nearest representations to REP_ID: FAISS shortlist, exact rerank."""
    import duckdb

    from survey.catalog import connect, with_condition
    from survey.display import emit, rows_table
    from survey.search.space import SearchService, check_k

    check_k(k, "-k")
    check_output(format, output)
    store = existing(warehouse)
    service = SearchService(store)
    keep = None
    if where:
        query = with_condition("SELECT r.rep_id FROM representations r LEFT JOIN networks n ON r.source_id = "
                               "n.network_id LEFT JOIN sessions s ON r.source_id = s.session_id", where, "--where")
        try:
            with connect(store, ("representations", "networks", "sessions")) as connection:
                keep = {row[0] for row in connection.execute(query).fetchall()}
        except duckdb.Error as err:
            raise SurveyError(f"--where: {one_line(err, 300)}; write a SQL condition over r, n and s") from None
    results = service.neighbors(rep_id, k, space, keep)
    columns = ["rank", "rep_id", "distance", "exact", "source_name", "layer_or_area", "objective"]
    emit(rows_table(columns, [{"rank": i + 1, "rep_id": n.rep_id, "distance": round(n.distance, 6), "exact": n.exact,
                               **n.metadata} for i, n in enumerate(results)]), format, output, f"nearest to {rep_id}")


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind; loopback unless you mean to expose it.")] = "127.0.0.1",
    port: int = 8000,
    warehouse: WarehouseOption = DEFAULT_WAREHOUSE,
) -> None:
    """Serve the search API (FastAPI under uvicorn); OpenAPI docs at /docs."""
    from survey.search.api import serve as serve_api

    serve_api(existing(warehouse).uri, host, port)
