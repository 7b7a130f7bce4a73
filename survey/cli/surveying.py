"""Commands that run stages into a warehouse: `run`, `distances`, `mei`, `zoo build`, `prior train`,
`sessions synth`, `submit`. An option left unset takes its config section's default (survey.config)."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from survey.cli.common import (
    CONFIG_DEFAULT,
    DEFAULT_WAREHOUSE,
    ExecutorOption,
    WarehouseOption,
    app,
    existing,
    given,
    integers,
    one_stage_config,
    print_query,
    prior_app,
    sessions_app,
    zoo_app,
)
from survey.cli.search import parse_metric
from survey.errors import SurveyError

if TYPE_CHECKING:
    from survey.catalog import Warehouse


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="Survey config (YAML).")],
    warehouse: WarehouseOption = DEFAULT_WAREHOUSE,
    stages: Annotated[str | None, typer.Option(help="Comma-separated subset of the stages, e.g. capacity,topology "
                                                    "(default: every stage the config configures).")] = None,
    executor: ExecutorOption = None,
) -> None:
    """Run a survey config: every stage resumes where the catalog stands."""
    from survey.config import STAGE_NAMES, load_config

    chosen = tuple(stages.split(",")) if stages else None
    unknown = sorted(set(chosen or ()) - set(STAGE_NAMES))
    if unknown:
        raise SurveyError(f"--stages: unknown stages {unknown}; choose from {', '.join(STAGE_NAMES)}")
    from survey.runtime.survey import execute

    execute(load_config(config), warehouse, chosen, executor=executor)


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
    landmarks: Annotated[int | None, typer.Option(help=f"Landmarks mode: rows to compute. {CONFIG_DEFAULT}")] = None,
    tile_size: Annotated[int | None, typer.Option(
        help=f"Representations per block (a tile pairs two blocks). {CONFIG_DEFAULT}")] = None,
    warehouse: WarehouseOption = DEFAULT_WAREHOUSE,
    executor: ExecutorOption = None,
) -> None:
    """Pairwise shape distances between the catalog's representations, per stimulus set and metric."""
    settings = {"metrics": [parse_metric(spec) for spec in metric], "stimuli": stimset or None, "pairs": pairs.value,
                **given(landmarks=landmarks, tile_size=tile_size)}
    from survey.runtime.survey import execute

    execute(one_stage_config("distances", settings, "--metric"), warehouse, executor=executor)


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
    method: Annotated[str | None, typer.Option(help=(
        f"Comma-separated methods: ga (gradient ascent), ga_grey (on grey images), egg (diffusion). {CONFIG_DEFAULT}"
    ))] = None,
    steps: Annotated[int | None, typer.Option(help=f"Gradient-ascent steps. {CONFIG_DEFAULT}")] = None,
    egg_steps: Annotated[int | None, typer.Option(help=f"EGG: respaced diffusion steps. {CONFIG_DEFAULT}")] = None,
    energy_scale: Annotated[float | None, typer.Option(help=f"EGG: guidance scale. {CONFIG_DEFAULT}")] = None,
    prior: Annotated[str | None, typer.Option(
        help="EGG: a local diffusers folder or module:callable (default: the warehouse's trained prior).")] = None,
    seeds: Annotated[str | None, typer.Option(help=f"Comma-separated seeds (restarts). {CONFIG_DEFAULT}")] = None,
    norm: Annotated[float | None, typer.Option(help="L2 norm of the contrast (default: the set's mean).")] = None,
    mlflow_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI (default: in the warehouse).")] = None,
    warehouse: WarehouseOption = DEFAULT_WAREHOUSE,
    executor: ExecutorOption = None,
) -> None:
    """Most exciting inputs by gradient ascent and energy-guided diffusion, for network units or recorded neurons,
    scored on other models and logged to MLflow."""
    store = existing(warehouse)
    if (sql is None) == (network is None):
        raise SurveyError("pass either --sql QUERY or --network with --layer and --units")
    targets = []
    if sql is None:
        if layer is None or units is None:
            raise SurveyError("--network needs --layer and --units (e.g. --layer stack2.cell1 --units 0,1,2)")
        targets = [{"network": network, "layer": layer, "units": integers("--units", units), "session": session,
                    "area": area}]
    settings = {"stimuli": stimset, "targets": targets, "targets_sql": sql, "norm": norm, "mlflow_uri": mlflow_uri,
                "egg": {"prior": prior, **given(steps=egg_steps, energy_scale=energy_scale)},
                **given(steps=steps, seeds=None if seeds is None else integers("--seeds", seeds),
                        methods=None if method is None else [part.strip() for part in method.split(",")
                                                             if part.strip()])}
    config = one_stage_config("mei", settings)
    from survey.runtime.survey import execute

    execute(config, warehouse, executor=executor)
    print_mei_summary(store, config.mei.mlflow_uri)


def print_mei_summary(store: Warehouse, mlflow_uri: str | None) -> None:
    """The best MEI per target and method, EGG against GA, and where the MLflow runs are."""
    from survey.catalog import connect
    from survey.catalog.tracking import default_tracking_uri
    from survey.display import console, print_table
    from survey.mei.comparison import compare_methods

    connection = connect(store)
    print_query(connection, "most exciting inputs: best seed per target and method (mei_runs has the rest)", """
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


@zoo_app.command("build")
def zoo_build(
    n: Annotated[int, typer.Option("--n", help="Architectures to sample; each is trained under every objective.")] = 8,
    steps: Annotated[int, typer.Option(help="Training steps per network.")] = 300,
    seed: int = 0,
    warehouse: WarehouseOption = DEFAULT_WAREHOUSE,
    executor: ExecutorOption = None,
) -> None:
    """Sample, train and register zoo networks (weights as safetensors in the warehouse)."""
    from survey.config import SurveyConfig

    zoo = {"n_architectures": n, "seed": seed, "train": {"steps": steps}}
    config = SurveyConfig.model_validate({"name": "zoo", "zoo": zoo, "stages": ["networks"]})
    from survey.runtime.survey import execute

    execute(config, warehouse, executor=executor)


@prior_app.command("train")
def prior_train(
    stimset: Annotated[str | None, typer.Option(
        help=f"Stimulus set whose image size the prior is trained at. {CONFIG_DEFAULT}")] = None,
    channels: Annotated[int | None, typer.Option(help=f"1: grayscale patches; 3: RGB. {CONFIG_DEFAULT}")] = None,
    steps: Annotated[int | None, typer.Option(help=f"Training steps. {CONFIG_DEFAULT}")] = None,
    n_patches: Annotated[int | None, typer.Option(
        help=f"Natural patches to train on (grey or RGB, as --channels). {CONFIG_DEFAULT}")] = None,
    seed: Annotated[int | None, typer.Option(help=f"Seed of the patches and the training. {CONFIG_DEFAULT}")] = None,
    check_samples: Annotated[int | None, typer.Option(
        help=f"Unguided samples drawn after training to check the prior's spectrum. {CONFIG_DEFAULT}")] = None,
    check_steps: Annotated[int | None, typer.Option(help=f"Respaced steps of those samples. {CONFIG_DEFAULT}")] = None,
    out: Annotated[Path | None, typer.Option(help="Also write it as a diffusers folder (unet/, scheduler/).")] = None,
    mlflow_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI (default: in the warehouse).")] = None,
    warehouse: WarehouseOption = DEFAULT_WAREHOUSE,
    executor: ExecutorOption = None,
) -> None:
    """Train the diffusion prior EGG samples from (kept in the warehouse by its recipe; the loss goes to MLflow)."""
    from survey.catalog import connect
    from survey.display import console

    store = existing(warehouse)
    prior = given(stimuli=stimset, channels=channels, steps=steps, n_patches=n_patches, seed=seed,
                  check_samples=check_samples, check_steps=check_steps, mlflow_uri=mlflow_uri)
    config = one_stage_config("prior", prior)
    from survey.runtime.survey import execute

    execute(config, warehouse, executor=executor)
    print_query(connect(store), "diffusion priors", """
        SELECT prior_id, size, channels, n_params, round(final_loss, 4) AS final_loss, round(seconds, 1) AS seconds,
               round(sample_slope, 2) AS sample_slope, round(patch_slope, 2) AS patch_slope, mlflow_run_id
        FROM priors ORDER BY prior_id""")
    if out is not None:
        from survey.catalog.models import catalog_unet, configured_prior
        from survey.mei.prior import save_prior

        key = configured_prior(store, config.prior)
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
    from survey.config import DEMO_CONFIG, SurveyConfig, load_config

    demo_config = load_config(DEMO_CONFIG).model_dump(mode="json")
    synthetic = {**demo_config["sessions"]["synthetic"], "n": n, "subjects": subjects, "seed": seed}
    config = SurveyConfig.model_validate({
        "name": "sessions", "stimuli": demo_config["stimuli"], "sessions": {"synthetic": synthetic},
        "stages": ["stimuli", "sessions"],
    })
    from survey.runtime.survey import execute

    execute(config, warehouse, executor=executor)


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
