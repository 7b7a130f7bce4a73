"""The `survey` command (Typer)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import duckdb
import typer
from pydantic import ValidationError
from rich.table import Table

from survey.catalog import TABLES, Warehouse, connect, query_catalog, read_only, with_condition
from survey.config import (
    DEMO_CONFIG,
    SMALL_DEMO_CONFIG,
    STAGE_NAMES,
    CatalogConfig,
    DistancesConfig,
    EggConfig,
    MeiConfig,
    PriorConfig,
    SpaceSpec,
    SurveyConfig,
    load_config,
)
from survey.display import OutputFormat, console, emit, print_table, rows_table
from survey.errors import SurveyError, one_line

DEFAULT_WAREHOUSE = "catalogs/warehouse"

app = typer.Typer(help="neurosurvey: survey neural representations of networks and recorded brain areas.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
zoo_app = typer.Typer(help="The generated model zoo.", no_args_is_help=True)
sessions_app = typer.Typer(help="Recording sessions (NWB).", no_args_is_help=True)
app.add_typer(zoo_app, name="zoo")
index_app = typer.Typer(help="Embedding spaces (landmark MDS + FAISS) for nearest-representation search.",
                        no_args_is_help=True)
app.add_typer(sessions_app, name="sessions")
prior_app = typer.Typer(help="Diffusion priors for energy-guided MEIs (EGG).", no_args_is_help=True)
app.add_typer(prior_app, name="prior")
app.add_typer(index_app, name="index")

WarehouseOption = Annotated[str, typer.Option(
    "--warehouse", "-w", envvar="SURVEY_WAREHOUSE", help="Warehouse root: a directory or a pyarrow.fs URI.",
)]


class ExecutorKind(StrEnum):
    local = "local"
    ray = "ray"


ExecutorOption = Annotated[ExecutorKind | None, typer.Option(help="Override the config's executor.")]


def with_executor(config: SurveyConfig, executor: ExecutorKind | None) -> SurveyConfig:
    if executor is None:
        return config
    return config.model_copy(update={"executor": config.executor.model_copy(update={"kind": executor.value})})


def execute(config: SurveyConfig, warehouse: str, stages: tuple[str, ...] | None = None) -> None:
    """Run `config` into `warehouse` and print what each stage did."""
    from survey.runtime.survey import run_survey

    start = time.perf_counter()
    store = Warehouse(warehouse)
    reports = run_survey(config, store, stages=stages)
    table = Table("stage", "units", "run now", "rows written", "seconds", title=f"survey {config.name!r}")
    for report in reports:
        rows = ", ".join(f"{name} {count}" for name, count in sorted(report.rows.items())) or "-"
        table.add_row(report.stage, str(report.units_total), str(report.units_run), rows, f"{report.seconds:.1f}")
    console.print(table)
    console.print(f"finished in {time.perf_counter() - start:.1f} s; warehouse: {store.uri}")


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="Survey config (YAML).")],
    warehouse: WarehouseOption = DEFAULT_WAREHOUSE,
    stages: Annotated[str | None, typer.Option(help=f"Comma-separated subset of {', '.join(STAGE_NAMES)}.")] = None,
    executor: ExecutorOption = None,
) -> None:
    """Run a survey config: every stage resumes where the catalog stands."""
    chosen = tuple(stages.split(",")) if stages else None
    unknown = sorted(set(chosen or ()) - set(STAGE_NAMES))
    if unknown:
        raise SurveyError(f"--stages: unknown stages {unknown}; choose from {', '.join(STAGE_NAMES)}")
    execute(with_executor(load_config(config), executor), warehouse, chosen)


@app.command()
def demo(
    warehouse: WarehouseOption = DEFAULT_WAREHOUSE,
    executor: ExecutorOption = None,
    small: Annotated[bool, typer.Option("--small", help=(
        "A smaller survey that still runs every stage (about 2 minutes): fewer networks, sessions, images."))] = False,
) -> None:
    """The whole survey on the embedded default config, then a summary and where to look next."""
    execute(with_executor(load_config(SMALL_DEMO_CONFIG if small else DEMO_CONFIG), executor), warehouse)
    store = Warehouse(warehouse)
    connection = connect(store)
    _print_query(connection, "rows per table", " UNION ALL ".join(
        f"SELECT '{table}' AS table_name, count(*) AS rows FROM {table}" for table in TABLES))
    _print_query(connection, "representations", """
        SELECT r.source_kind, s.name AS stimset, count(*) AS representations, count(DISTINCT r.source_id) AS sources,
               round(avg(r.n_units)) AS mean_units
        FROM representations r JOIN stimulus_sets s USING (stimset_id) GROUP BY ALL ORDER BY ALL""")
    _print_query(connection, "networks by objective", """
        SELECT objective, count(*) AS networks, round(avg(test_accuracy), 3) AS mean_test_accuracy,
               round(avg(n_params)) AS mean_params FROM networks GROUP BY 1 ORDER BY 1""")
    _print_query(connection, "mean shape distance (radians) from each recorded area to network layers by depth", """
        WITH pairs AS (
            SELECT d.metric, d.alpha, a.layer_or_area AS area, b.depth, d.distance
            FROM shape_distances d
            JOIN representations a ON a.rep_id IN (d.rep_a, d.rep_b) AND a.source_kind = 'session'
            JOIN representations b ON b.rep_id IN (d.rep_a, d.rep_b) AND b.source_kind = 'network'
            WHERE d.score_method = 'angular')
        SELECT metric, alpha, area,
               round(avg(distance) FILTER (WHERE depth < 1/3), 3) AS early_layers,
               round(avg(distance) FILTER (WHERE depth >= 1/3 AND depth < 2/3), 3) AS middle_layers,
               round(avg(distance) FILTER (WHERE depth >= 2/3), 3) AS late_layers
        FROM pairs GROUP BY ALL ORDER BY metric, alpha, area""")
    _print_query(connection, "object-manifold geometry by network depth and by recorded area", """
        SELECT CASE WHEN r.source_kind = 'session' THEN 'area ' || r.layer_or_area
                    WHEN r.depth < 1/3 THEN 'layers, early' WHEN r.depth < 2/3 THEN 'layers, middle'
                    ELSE 'layers, late' END AS "group",
               count(*) AS reps, round(avg(c.capacity), 3) AS capacity,
               round(avg(c.simulated_capacity), 3) AS simulated, round(avg(c.radius), 3) AS radius,
               round(avg(c.dimension), 2) AS dimension, round(avg(a.center_alignment), 3) AS center_align,
               round(avg(a.decodability), 3) AS decoding
        FROM capacity c JOIN alignment a USING (rep_id, manifold_set) JOIN representations r USING (rep_id)
        WHERE c.status = 'ok' GROUP BY ALL ORDER BY min(r.source_kind), min(r.depth)""")
    _print_query(connection, "tuning-landscape topology by network depth and by recorded area", """
        SELECT CASE WHEN r.source_kind = 'session' THEN 'area ' || r.layer_or_area
                    WHEN r.depth < 1/3 THEN 'layers, early' WHEN r.depth < 2/3 THEN 'layers, middle'
                    ELSE 'layers, late' END AS "group",
               count(*) AS maps, round(avg(t.auc_loop), 3) AS loops_auc, round(avg(t.auc_line), 3) AS lines_auc,
               round(avg(t.single_branch_level), 3) AS single_branch_level,
               round(avg(t.reliability_agreement), 3) AS split_half_agreement
        FROM topology t JOIN representations r USING (rep_id) WHERE NOT t.constant
        GROUP BY ALL ORDER BY min(r.source_kind), min(r.depth)""")
    _print_query(connection, "neural predictivity: best layer per network family and area (median over networks)", """
        WITH best AS (SELECT network_id, area, max(median_corrected) AS score, arg_max(depth, median_corrected) AS depth
                      FROM predictivity WHERE status = 'ok' GROUP BY ALL)
        SELECT n.objective, b.area, round(median(b.score), 3) AS corrected_r, round(median(b.depth), 2) AS best_depth
        FROM best b JOIN networks n USING (network_id) GROUP BY ALL ORDER BY ALL""")
    _print_nearest_networks(store)
    _print_mei_summary(store, None)
    console.print(
        "\nNext: query the catalogs with SQL, e.g.\n"
        f"  survey sql -w {warehouse} \"SELECT source_kind, count(*) FROM representations GROUP BY 1\"\n"
        f"  survey sql -w {warehouse} \"SELECT name, objective, test_accuracy FROM networks ORDER BY 3 DESC LIMIT 5\"\n"
        f"  survey sql -w {warehouse} --format csv \"SELECT * FROM sessions\"\n"
        f"  survey search -w {warehouse} REP_ID -k 10 --where \"n.objective = 'supervised'\"\n"
        f"  survey serve -w {warehouse}   # the search API on http://127.0.0.1:8000/docs\n"
        "Tables and columns: catalogs/README.md. Run your own survey: survey run jobs/configs/small.yaml",
        soft_wrap=True,
    )
    _write_report(store, None)


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


class PairsMode(StrEnum):
    all = "all"
    landmarks = "landmarks"


@app.command()
def distances(
    metric: Annotated[list[str], typer.Option(
        "--metric", "-m", help="metric[:alpha][:score], repeatable: linear:0.5, permutation, cka, stochastic:1, conv",
    )] = ["linear:1"],  # noqa: B006 - Typer reads the default, never mutates it
    stimset: Annotated[list[str] | None, typer.Option(help="Stimulus-set names (default: all in the catalog).")] = None,
    pairs: Annotated[PairsMode, typer.Option(help="all pairs, or only the rows of maxmin landmarks.")] = PairsMode.all,
    landmarks: Annotated[int, typer.Option(help="Landmarks mode: rows to compute.")] = DistancesConfig().landmarks,
    tile_size: Annotated[int, typer.Option(help="Representations per block (a tile pairs two blocks).")] = (
        DistancesConfig().tile_size),
    warehouse: WarehouseOption = DEFAULT_WAREHOUSE,
    executor: ExecutorOption = None,
) -> None:
    """Pairwise shape distances between the catalog's representations, per stimulus set and metric."""
    settings = {"metrics": [parse_metric(spec) for spec in metric], "stimuli": stimset or None, "pairs": pairs.value,
                "landmarks": landmarks, "tile_size": tile_size}
    try:
        config = SurveyConfig.model_validate({"name": "distances", "distances": settings, "stages": ["distances"]})
    except ValidationError as err:
        raise SurveyError(f"--metric: {one_line(err.errors()[0]['msg'])}") from None
    execute(with_executor(config, executor), warehouse)


def _mei_defaults(field: str) -> object:
    return MeiConfig.model_fields[field].default


@app.command()
def mei(
    network: Annotated[str | None, typer.Option(help="Network name or network_id (with --layer, --units).")] = None,
    layer: Annotated[str | None, typer.Option(help="Layer; `best` for neurons: the most predictive layer.")] = None,
    units: Annotated[str | None, typer.Option(help="Comma-separated units (conv: channels) or neurons.")] = None,
    session: Annotated[str | None, typer.Option(help="Neurons: the session_id (with --area).")] = None,
    area: Annotated[str | None, typer.Option(help="Neurons: the recorded area.")] = None,
    sql: Annotated[str | None, typer.Option(
        "--sql", help="Targets by a read-only query returning network, layer, unit (and session, area).")] = None,
    stimset: Annotated[str, typer.Option(help="Stimulus set giving the grey and the norm.")] = "natural",
    method: Annotated[str, typer.Option(
        help="Comma-separated methods: ga (gradient ascent), ga_grey (on grey images), egg (diffusion).")] = (
        ",".join(_mei_defaults("methods"))),
    steps: Annotated[int, typer.Option(help="Gradient-ascent steps.")] = _mei_defaults("steps"),
    egg_steps: Annotated[int, typer.Option(help="EGG: respaced diffusion steps.")] = EggConfig().steps,
    energy_scale: Annotated[float, typer.Option(help="EGG: guidance scale.")] = EggConfig().energy_scale,
    prior: Annotated[str | None, typer.Option(
        help="EGG: a local diffusers folder or module:callable (default: the warehouse's trained prior).")] = None,
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds (restarts).")] = ",".join(
        str(seed) for seed in _mei_defaults("seeds")),
    norm: Annotated[float | None, typer.Option(help="L2 norm of the contrast (default: the set's mean).")] = None,
    mlflow_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI (default: in the warehouse).")] = None,
    warehouse: WarehouseOption = DEFAULT_WAREHOUSE,
    executor: ExecutorOption = None,
) -> None:
    """Most exciting inputs by gradient ascent and energy-guided diffusion, for network units or recorded neurons,
    scored on other models and logged to MLflow."""
    store = _existing(warehouse)
    if (sql is None) == (network is None):
        raise SurveyError("pass either --sql QUERY or --network with --layer and --units")
    targets = []
    if sql is None:
        if layer is None or units is None:
            raise SurveyError("--network needs --layer and --units (e.g. --layer stack2.cell1 --units 0,1,2)")
        targets = [{"network": network, "layer": layer, "units": _integers("--units", units), "session": session,
                    "area": area}]
    settings = {"stimuli": stimset, "targets": targets, "targets_sql": sql, "steps": steps,
                "methods": [part.strip() for part in method.split(",") if part.strip()],
                "egg": {"steps": egg_steps, "energy_scale": energy_scale, "prior": prior},
                "seeds": _integers("--seeds", seeds), "norm": norm, "mlflow_uri": mlflow_uri}
    config = one_stage_config("mei", settings)
    execute(with_executor(config, executor), warehouse)
    _print_mei_summary(store, config.mei.mlflow_uri)


def one_stage_config(stage: str, section: dict) -> SurveyConfig:
    """A survey of one stage whose config section is `section`; a bad option is one line naming its field."""
    try:
        return SurveyConfig.model_validate({"name": stage, stage: section, "stages": [stage]})
    except ValidationError as err:
        first = err.errors()[0]
        raise SurveyError(f"{stage}: {'.'.join(str(p) for p in first['loc'])}: {one_line(first['msg'])}") from None


def _integers(option: str, text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise SurveyError(f"{option} {text!r}: pass comma-separated integers, e.g. 0,1,2") from None


def _print_mei_summary(store: Warehouse, mlflow_uri: str | None) -> None:
    from survey.mei.comparison import compare_methods
    from survey.mei.tracking import default_tracking_uri

    connection = connect(store)
    _print_query(connection, "most exciting inputs: best seed per target and method (mei_runs has the rest)", """
        SELECT n.name AS network, coalesce(m.area, 'unit') AS area, m.target, m.method,
               round(m.activation, 2) AS train, round(m.family_activation, 2) AS other_seed,
               round(m.cross_activation, 2) AS other_arch, round(m.natural_max, 2) AS natural,
               round(m.seconds, 2) AS seconds
        FROM mei_runs m JOIN networks n USING (network_id) WHERE m.is_best ORDER BY ALL""")
    comparison = compare_methods(connection)
    if comparison:
        columns = {"baseline": "vs", "energy_scale": "scale", "score": "score", "n": "n", "ga_mean": "base",
                   "egg_mean": "egg",
                   "median_ratio": "egg/base", "at_least_80pct": "≥0.8", "egg_wins": "wins", "wilcoxon_p": "p"}
        print_table(list(columns.values()), [
            {label: round(row[key], 3) if isinstance(row[key], float) else row[key] for key, label in columns.items()}
            for row in comparison],
            title="EGG against GA, paired by target: median ratio, share ≥ 80%, share EGG wins, Wilcoxon p")
    uri = mlflow_uri or default_tracking_uri(store)
    console.print(f"\nOpen the runs: mlflow ui --backend-store-uri {uri} --host 127.0.0.1", soft_wrap=True)


class IndexKind(StrEnum):
    flat = "flat"
    hnsw = "hnsw"


@index_app.command("build")
def index_build(
    metric: Annotated[str, typer.Option("--metric", "-m", help="metric[:alpha][:score], distances stored.")] = "linear",
    stimset: Annotated[str, typer.Option(help="Stimulus-set name.")] = SpaceSpec().stimuli,
    dim: Annotated[int, typer.Option(help="Embedding dimensions.")] = SpaceSpec().dim,
    landmarks: Annotated[int, typer.Option(help="Landmarks for out-of-sample queries.")] = SpaceSpec().landmarks,
    kind: Annotated[IndexKind, typer.Option(help="flat (exact) or hnsw.")] = IndexKind.flat,
    warehouse: WarehouseOption = DEFAULT_WAREHOUSE,
    executor: ExecutorOption = None,
) -> None:
    """Embed one stimulus set's representations under one metric and index them (the `spaces` stage)."""
    spec = {"metric": parse_metric(metric), "stimuli": stimset, "dim": dim, "landmarks": landmarks, "kind": kind.value}
    try:
        config = SurveyConfig.model_validate({"name": "spaces", "spaces": {"build": [spec]}, "stages": ["spaces"]})
    except ValidationError as err:
        raise SurveyError(f"--metric: {one_line(err.errors()[0]['msg'])}") from None
    execute(with_executor(config, executor), warehouse)
    from survey.search.space import SearchService

    rows = [row for row in SearchService(Warehouse(warehouse)).spaces() if row["name"] == config.spaces.build[0].label]
    print_table(["space_id", "name", "n_items", "dim", "n_landmarks", "landmarks_from", "negative_mass", "stress"],
                 rows[-1:], title="space")


FormatOption = Annotated[OutputFormat, typer.Option("--format", "-f", help="table, csv, json or parquet (a file).")]
OutputOption = Annotated[Path | None, typer.Option("--output", "-o", help="File to write (parquet: required).")]


@index_app.command("ls")
def index_ls(warehouse: WarehouseOption = DEFAULT_WAREHOUSE, format: FormatOption = OutputFormat.table,
             output: OutputOption = None) -> None:
    """List the embedding spaces."""
    from survey.search.space import SearchService

    _check_output(format, output)
    columns = ["space_id", "name", "n_items", "dim", "n_landmarks", "index_kind", "negative_mass", "stress", "created"]
    emit(rows_table(columns, SearchService(_existing(warehouse)).spaces()), format, output, "spaces")


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
    from survey.search.space import SearchService, check_k

    check_k(k, "-k")
    _check_output(format, output)
    store = _existing(warehouse)
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

    serve_api(_existing(warehouse).uri, host, port)


@app.command()
def sql(
    query: Annotated[str | None, typer.Argument(help="DuckDB SQL over the catalog views (one per table).")] = None,
    file: Annotated[Path | None, typer.Option(
        "--file", help="Read the query from this file ('-': standard input) instead of the argument.")] = None,
    warehouse: WarehouseOption = DEFAULT_WAREHOUSE,
    format: FormatOption = OutputFormat.table,
    output: OutputOption = None,
) -> None:
    """Query the catalogs with DuckDB: one read-only statement (SELECT, WITH, DESCRIBE, SUMMARIZE, EXPLAIN) over
    each table's current Delta snapshot, in memory; DuckDB may open no file."""
    if (query is None) == (file is None):
        given = "both a query and --file" if query is not None else "no query"
        raise SurveyError(f"{given}: pass the query as the argument or with --file QUERY.sql ('--file -': standard "
                          "input), one of the two")
    if file is not None:
        try:
            query = sys.stdin.read() if str(file) == "-" else file.read_text()
        except OSError as err:
            raise SurveyError(f"--file {file}: cannot be read ({one_line(err)}); pass a readable SQL file") from None
    _check_output(format, output)
    read_only(query)
    emit(query_catalog(_existing(warehouse), query), format, output)


def _check_output(output_format: OutputFormat, output: Path | None) -> None:
    """Refuse an output the format cannot be written to, before anything is read."""
    if output_format is OutputFormat.parquet and output is None:
        raise SurveyError("--format parquet writes a file; add --output PATH.parquet")
    if output is not None and output.is_dir():
        raise SurveyError(f"--output {output} is a directory; pass a file path")


@app.command()
def compact(
    table: Annotated[list[str] | None, typer.Option(help="Tables to compact (repeatable; default: all).")] = None,
    retention_hours: Annotated[int, typer.Option(help=(
        "Vacuum files superseded (or left by killed writers) longer ago than this. 0 frees space at once, but only "
        "when no query or survey is running on the warehouse."))] = CatalogConfig().vacuum_hours,
    warehouse: WarehouseOption = DEFAULT_WAREHOUSE,
) -> None:
    """Compact the catalog tables' small files into large ones and vacuum superseded files (no row changes)."""
    store = _existing(warehouse)
    chosen = table or list(TABLES)
    unknown = sorted(set(chosen) - set(TABLES))
    if unknown:
        raise SurveyError(f"--table: unknown tables {unknown}; choose from {', '.join(TABLES)}")
    print_table(["table", "files_removed", "files_added", "files_vacuumed"],
                 [{"table": name, **store.compact(name, retention_hours)} for name in chosen], title="compaction")


@app.command()
def migrate(warehouse: WarehouseOption = DEFAULT_WAREHOUSE) -> None:
    """Bring a warehouse written by an older version up to date, in place (run it while no survey writes to it):
    tables of the old layout (Parquet parts, no Delta log) become Delta tables (shape distances and spaces, keyed
    otherwise before, are dropped for `survey run` to recompute), and absolute paths to the warehouse's own files
    become paths relative to its root (one commit per table), so that a copy or a move of it stands alone."""
    from survey.mei.tracking import repoint_artifacts

    store = _existing(warehouse)
    rows = [{"table": name, "rows": converted} for name in TABLES
            if (converted := store.migrate_old_layout(name)) is not None]
    print_table(["table", "rows"], rows, title="converted to Delta tables (0: dropped, recomputed by its stage)")
    paths = [{"table": name, "paths": rewritten} for name in TABLES if (rewritten := store.relativize_paths(name))]
    print_table(["table", "paths"], paths, title="absolute paths made relative to the warehouse root")
    if store.is_local:
        repoint_artifacts(store)  # the default MLflow store's artifacts, at this warehouse


@app.command()
def report(
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Folder for index.html and its figures (default: "
                                                               "<warehouse>/report for a local warehouse).")] = None,
    warehouse: WarehouseOption = DEFAULT_WAREHOUSE,
) -> None:
    """A static HTML report of the catalogs (figures with their SQL) and the seed papers' findings, checked."""
    _write_report(_existing(warehouse), out)


def _write_report(store: Warehouse, out: Path | None) -> None:
    from survey.report.html import build_report

    if out is None:
        if not store.is_local:
            raise SurveyError(f"warehouse {store.uri} is not a local folder; pass --out DIR for the report")
        out = Path(store.root) / "report"
    if out.exists() and not out.is_dir():
        raise SurveyError(f"--out {out} is a file; the report is a folder (index.html and its figures): pass a folder "
                          "path, new or existing")
    index, results = build_report(store, out)
    print_table(["paper", "claim", "statistic", "value", "holds"], [
        {"paper": f.paper, "claim": f.claim, "statistic": f.statistic,
         "value": "" if f.value is None else f"{f.value:.3g}",
         "holds": {True: "yes", False: "no", None: f"not tested: {f.note}"}[f.holds]} for f in results],
        title="findings of the seed papers on this survey")
    console.print(f"report: {index.resolve()}  (open it in a browser; no server needed)", soft_wrap=True)


def _existing(warehouse: str) -> Warehouse:
    return Warehouse(warehouse).check_catalog()


@app.command()
def layers(
    network: Annotated[str, typer.Argument(help="A network's name in the catalog, or a --kind TARGET.")],
    kind: Annotated[str | None, typer.Option(help="torchvision, timm or callable: build TARGET instead.")] = None,
    every: Annotated[bool, typer.Option("--all", help=(
        "Every hookable submodule (what a config's `layers:` may name), not only the surveyed layers."))] = False,
    warehouse: WarehouseOption = DEFAULT_WAREHOUSE,
) -> None:
    """A catalog network's surveyed layers (what `survey mei --layer` takes); with --all or --kind, every hookable
    submodule of the network (what `layers:` in a config may name)."""
    from survey.sources.external import build_external, layer_names

    if kind:
        print("\n".join(layer_names(build_external(kind, network))))
        return
    store = _existing(warehouse)
    rows = [row for row in store.rows("networks") if network in (row["name"], row["network_id"])]
    if not rows:
        raise SurveyError(f"no network named {network!r} in {store.uri}; list them with "
                          "`survey sql \"SELECT name FROM networks\"` or pass --kind")
    if every:
        from survey.stages.networks import load_network

        print("\n".join(layer_names(load_network(rows[0], store)[0])))
    else:
        print("\n".join(rows[0]["layers"]))


@zoo_app.command("build")
def zoo_build(
    n: Annotated[int, typer.Option("--n", help="Architectures to sample; each is trained under every objective.")] = 8,
    steps: Annotated[int, typer.Option(help="Training steps per network.")] = 300,
    seed: int = 0,
    warehouse: WarehouseOption = DEFAULT_WAREHOUSE,
    executor: ExecutorOption = None,
) -> None:
    """Sample, train and register zoo networks (weights as safetensors in the warehouse)."""
    zoo = {"n_architectures": n, "seed": seed, "train": {"steps": steps}}
    config = SurveyConfig.model_validate({"name": "zoo", "zoo": zoo, "stages": ["networks"]})
    execute(with_executor(config, executor), warehouse)


@prior_app.command("train")
def prior_train(
    stimset: Annotated[str, typer.Option(help="Stimulus set whose image size the prior is trained at.")] = (
        PriorConfig().stimuli),
    channels: Annotated[int, typer.Option(help="1: grayscale patches; 3: RGB.")] = PriorConfig().channels,
    steps: Annotated[int, typer.Option(help="Training steps.")] = PriorConfig().steps,
    n_patches: Annotated[int, typer.Option(
        help="Natural patches to train on (grey or RGB, as --channels).")] = PriorConfig().n_patches,
    seed: int = PriorConfig().seed,
    out: Annotated[Path | None, typer.Option(help="Also write it as a diffusers folder (unet/, scheduler/).")] = None,
    mlflow_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI (default: in the warehouse).")] = None,
    warehouse: WarehouseOption = DEFAULT_WAREHOUSE,
    executor: ExecutorOption = None,
) -> None:
    """Train the diffusion prior EGG samples from (kept in the warehouse by its recipe; the loss goes to MLflow)."""
    store = _existing(warehouse)
    prior = {"stimuli": stimset, "channels": channels, "steps": steps, "n_patches": n_patches, "seed": seed,
             "mlflow_uri": mlflow_uri}
    config = one_stage_config("prior", prior)
    execute(with_executor(config, executor), warehouse)
    _print_query(connect(store), "diffusion priors", """
        SELECT prior_id, size, channels, n_params, round(final_loss, 4) AS final_loss, round(seconds, 1) AS seconds,
               round(sample_slope, 2) AS sample_slope, round(patch_slope, 2) AS patch_slope, mlflow_run_id
        FROM priors ORDER BY prior_id""")
    if out is not None:
        from survey.mei.prior import save_prior
        from survey.stages.prior import PriorStage, catalog_unet

        key = PriorStage(config).plan(store, None)[0].key
        row = next(row for row in store.rows("priors") if row["prior_id"] == key)
        save_prior(catalog_unet(store, row), json.loads(row["scheduler_config"]), out)
        console.print(f"Written to {out} (pass it as mei.egg.prior or --prior)", soft_wrap=True)


@sessions_app.command("synth")
def sessions_synth(
    n: Annotated[int, typer.Option("--n", help="Sessions to simulate (V1, V4, IT units each).")] = 6,
    subjects: int = 2,
    seed: int = 0,
    warehouse: WarehouseOption = DEFAULT_WAREHOUSE,
    executor: ExecutorOption = None,
) -> None:
    """Write synthetic NWB sessions shown the demo's stimulus sets, and register them."""
    demo_config = load_config(DEMO_CONFIG).model_dump(mode="json")
    synthetic = {**demo_config["sessions"]["synthetic"], "n": n, "subjects": subjects, "seed": seed}
    config = SurveyConfig.model_validate({
        "name": "sessions", "stimuli": demo_config["stimuli"], "sessions": {"synthetic": synthetic},
        "stages": ["stimuli", "sessions"],
    })
    execute(with_executor(config, executor), warehouse)


@app.command()
def submit(
    config: Annotated[Path, typer.Argument(help="Survey config (YAML) inside the working directory.")],
    address: Annotated[str, typer.Option(help="Ray dashboard address of the cluster.")] = "http://127.0.0.1:8265",
    warehouse: WarehouseOption = DEFAULT_WAREHOUSE,
    wait: Annotated[bool, typer.Option(help="Follow the job's logs until it ends.")] = True,
    working_dir: Annotated[Path | None, typer.Option(help="Directory uploaded with the job (default: here).")] = None,
    python: Annotated[str | None, typer.Option(help=(
        "The interpreter the job runs under, a path on the head (default: the first `python` on its PATH)."))] = None,
) -> None:
    """Submit a survey as a Ray job (`jobs/run_survey.py`); needs RAY_AUTH_MODE=token and the cluster's token."""
    from survey.runtime.jobs import submit_survey

    status = submit_survey(config, warehouse, address, follow=wait, working_dir=working_dir, python=python)
    if status not in ("SUCCEEDED", "PENDING", "RUNNING"):
        raise SurveyError(f"Ray job ended {status}; read its logs with `ray job logs` on {address}")


def _print_nearest_networks(store: Warehouse, area: str = "IT") -> None:
    """The five networks nearest to one recorded area in the newest embedding space."""
    from survey.search.space import SearchService

    service = SearchService(store)
    if not service.spaces():
        return
    space = service.space()
    recorded = sorted(rep for rep, row in service.metadata.items() if row["area"] == area and rep in space.item)
    if not recorded:
        return
    neighbours = service.neighbors(recorded[0], 5, space.row["space_id"], service.matching(source_kind="network"))
    print_table(["rank", "network", "layer", "objective", "distance", "exact"], [
        {"rank": i + 1, "network": n.metadata["source_name"], "layer": n.metadata["layer_or_area"],
         "objective": n.metadata["objective"], "distance": f"{n.distance:.3f}", "exact": n.exact}
        for i, n in enumerate(neighbours)
    ], title=f"five networks nearest to {area} of {service.metadata[recorded[0]]['source_name']} "
             f"({space.row['name']}, space {space.row['space_id']})")


def _print_query(connection: duckdb.DuckDBPyConnection, title: str, query: str) -> None:
    result = connection.sql(query)
    print_table(result.columns, [dict(zip(result.columns, row, strict=True)) for row in result.fetchall()], title)


def exit_on_user_error(command: Callable[[], None]) -> None:
    """Run `command`; a SurveyError becomes one line on stderr and exit status 2."""
    try:
        command()
    except SurveyError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    """The `survey` entry point."""
    exit_on_user_error(app)
