"""The `mei` and `prior` stages on a tiny survey: rows and MLflow runs one for one, MEIs that beat natural patches,
GA and EGG scored on another seed and another architecture, a rerun after a kill that adds no run, and bad targets,
priors and energies refused with nothing written."""

import copy
import json
import shutil

import numpy as np
import pytest
import torch

from survey.catalog import Warehouse, connect
from survey.catalog.models import load_prior, load_readout
from survey.catalog.networks import load_network
from survey.catalog.stimuli import load_images
from survey.catalog.tracking import KEY_TAG, Tracker, default_tracking_uri
from survey.config import MeiTargets, parse_config
from survey.errors import SurveyError
from survey.mei.prior import load_diffusers_prior
from survey.mei.targets import LayerResponses
from survey.runtime.survey import run_survey
from survey.stages.mei import grey_and_norm, load_targets
from survey.stimuli import NaturalPatches

from .conftest import TINY, survey_cli

BEFORE = ("stimuli", "networks", "sessions", "activations", "predictivity", "prior")


def mei_dict(targets: list[dict], steps: int = 150, methods: tuple[str, ...] = ("ga",)) -> dict:
    config = copy.deepcopy(TINY)
    config["zoo"]["replicas"] = {"architectures": 1, "objectives": ["supervised"], "seeds": 1}
    config["predictivity"] = {"stimuli": ["natural"]}
    config["prior"] = {"stimuli": "natural", "steps": 60, "n_patches": 500, "widths": [8, 16],  # mechanics only
                       "check_samples": 8, "check_steps": 20}
    config["mei"] = {"stimuli": "natural", "targets": targets, "seeds": [0, 1], "steps": steps,
                     "methods": list(methods), "egg": {"steps": 10}}
    return config


@pytest.fixture(scope="module")
def surveyed(tmp_path_factory) -> Warehouse:
    warehouse = Warehouse(tmp_path_factory.mktemp("mei") / "wh")
    run_survey(parse_config(mei_dict([{"network": "x", "layer": "pool", "units": [0]}])), warehouse, stages=BEFORE,
               progress=False)
    return warehouse


@pytest.fixture
def warehouse(surveyed, tmp_path) -> Warehouse:
    return Warehouse(shutil.copytree(surveyed.root, tmp_path / "wh"))


def supervised(warehouse: Warehouse) -> dict:
    """The supervised network of the first architecture (it has a replica: another seed)."""
    return next(row for row in warehouse.rows("networks") if row["name"] == "zoo000-supervised")


def targets(warehouse: Warehouse) -> list[dict]:
    network = supervised(warehouse)
    session = warehouse.rows("sessions")[0]["session_id"]
    return [{"network": network["name"], "layer": network["layers"][-2], "units": [0, 1, 2]},
            {"network": network["network_id"], "layer": "best", "session": session, "area": "IT", "units": [0, 1]}]


def test_every_row_has_its_mlflow_run_and_the_meis_beat_natural_patches(warehouse, monkeypatch):
    import mlflow

    config = parse_config(mei_dict(targets(warehouse)))
    report = run_survey(config, warehouse, stages=("mei",), progress=False)[0]
    assert report.units_run == 2 and report.rows["mei_runs"] == (3 + 2) * 2
    rows = warehouse.rows("mei_runs")
    per_target = connect(warehouse).execute("""SELECT target_kind, target, count(*), sum(is_best::INT)
                                               FROM mei_runs GROUP BY ALL""").fetchall()
    assert sorted((kind, n, best) for kind, _, n, best in per_target) == [("neuron", 2, 1)] * 2 + [("unit", 2, 1)] * 3
    monkeypatch.setenv("MLFLOW_TRACKING_URI", default_tracking_uri(warehouse))
    runs = mlflow.search_runs(experiment_names=["neurosurvey-mei"], filter_string="tags.target_kind != ''",
                              output_format="list")
    assert sorted(run.info.run_id for run in runs) == sorted(row["mlflow_run_id"] for row in rows)
    tracker = Tracker(default_tracking_uri(warehouse))
    history = tracker.client.get_metric_history(rows[0]["mlflow_run_id"], "activation")
    assert len(history) == 150
    parent = tracker.client.get_run(tracker.client.get_run(rows[0]["mlflow_run_id"]).data.tags["mlflow.parentRunId"])
    assert parent.info.status == "FINISHED" and parent.info.end_time is not None  # the run's parent ends with it
    assert parent.data.params["methods"] == "ga" and parent.data.params["steps"] == "150"
    assert parent.data.metrics["meis"] == len(rows) == parent.data.metrics["ga_meis"]
    assert parent.data.metrics["ga_mean_activation"] == pytest.approx(np.mean([row["activation"] for row in rows]))

    # the units' best MEIs against the best of 10,000 natural patches at the same contrast norm, recomputed here
    network = supervised(warehouse)
    module, preprocessing = load_network(network, warehouse)
    stimuli = next(r for r in warehouse.rows("stimulus_sets") if r["name"] == "natural")
    grey, norm = grey_and_norm(load_images(warehouse, stimuli["uri"]))
    patches = NaturalPatches(name="natural-baseline", n=10_000, size=32, seed=0).generate().images
    contrast = torch.from_numpy(patches - grey[None, :, None, None].astype(np.float32))
    contrast = contrast * norm / contrast.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    responses = LayerResponses(module, network["layers"][-2], preprocessing, torch.tensor(grey, dtype=torch.float32))
    with torch.no_grad():
        natural_best = torch.cat([responses(batch) for batch in contrast.split(1000)]).max(dim=0).values
    units = [row for row in rows if row["target_kind"] == "unit"]
    np.testing.assert_allclose([row["natural_max"] for row in units],
                               [float(natural_best[row["target"]]) for row in units], rtol=1e-4)
    best = [row for row in rows if row["is_best"]]
    assert all(row["natural_patches"] == 10_000 for row in rows)
    assert sum(row["activation"] > row["natural_max"] for row in best) >= 0.9 * len(best)


def test_a_rerun_after_a_kill_adds_no_mlflow_run(warehouse, monkeypatch):
    config = parse_config(mei_dict(targets(warehouse)[:1], steps=20))
    original = Warehouse.append_unit

    def killed(self, table, key, rows, **options):
        if table == "mei_runs":
            raise KeyboardInterrupt  # after the MLflow runs were logged, before the rows landed
        return original(self, table, key, rows, **options)

    monkeypatch.setattr(Warehouse, "append_unit", killed)
    with pytest.raises(KeyboardInterrupt):
        run_survey(config, warehouse, stages=("mei",), progress=False)
    monkeypatch.setattr(Warehouse, "append_unit", original)
    assert run_survey(config, warehouse, stages=("mei",), progress=False)[0].units_run == 1
    tracker = Tracker(default_tracking_uri(warehouse))
    children = [run for run in tracker.client.search_runs([tracker.experiment_id])
                if "mlflow.parentRunId" in run.data.tags]
    parents = {run.data.tags["mlflow.parentRunId"] for run in children} | {
        run.info.run_id for run in tracker.client.search_runs([tracker.experiment_id], "tags.stage = 'mei'")}
    statuses = {tracker.client.get_run(run_id).info.status for run_id in parents}
    assert statuses == {"FINISHED", "KILLED"}  # the interrupted run's parent is KILLED; none stays RUNNING
    assert len(children) == 3 * 2 == len(warehouse.rows("mei_runs"))
    assert len({run.data.tags[KEY_TAG] for run in children}) == len(children)


@pytest.mark.parametrize(("change", "message"), [
    ({"network": "no-such-net"}, "network 'no-such-net' is not in the catalog"),
    ({"layer": "stack9.cell9"}, "has no layer 'stack9.cell9'"),
    ({"layer": "best", "session": "ses-none", "area": "IT"}, "has no encoding model"),
    ({"units": [0, 100_000]}, "units; pick indices from 0 to"),
])
def test_bad_targets_are_refused_before_anything_is_written(warehouse, change, message):
    target = {**targets(warehouse)[0], **change}
    with pytest.raises(SurveyError, match=message) as error:
        run_survey(parse_config(mei_dict([target])), warehouse, stages=("mei",), progress=False)
    assert "\n" not in str(error.value)
    assert warehouse.delta("mei_runs") is None


def test_survey_mei_takes_targets_by_sql_and_points_to_mlflow(warehouse):
    query = """SELECT n.name AS network, p.layer, 1 AS unit, p.session_id AS session, p.area
               FROM predictivity p JOIN networks n USING (network_id)
               WHERE p.area = 'IT' AND p.status = 'ok' ORDER BY p.median_corrected DESC LIMIT 1"""
    result = survey_cli("mei", "-w", str(warehouse.root), "--sql", query, "--steps", "20", "--seeds", "0,1",
                        "--executor", "local")
    assert result.returncode == 0, result.stderr
    assert "most exciting inputs" in result.stdout
    assert f"mlflow ui --backend-store-uri {default_tracking_uri(warehouse)}" in result.stdout
    assert connect(warehouse).execute("SELECT count(*), count(DISTINCT mlflow_run_id) FROM mei_runs WHERE area = 'IT'"
                                      ).fetchone() == (2, 2)
    refused = survey_cli("mei", "-w", str(warehouse.root), "--network", "x")
    assert refused.returncode != 0 and "--network needs --layer and --units" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


def test_a_targets_query_that_writes_is_refused_before_any_stage_runs(tmp_path):
    config = mei_dict([])
    config["mei"]["targets_sql"] = "COPY (SELECT 1) TO 'x.csv'"
    warehouse = Warehouse(tmp_path / "wh")
    with pytest.raises(SurveyError, match=r"mei\.targets_sql is a COPY statement") as error:
        run_survey(parse_config(config), warehouse, progress=False)
    assert "\n" not in str(error.value) and not (tmp_path / "wh").exists()


def test_a_rerun_with_nothing_to_do_opens_no_mlflow_run(warehouse):
    config = parse_config(mei_dict(targets(warehouse)[:1], steps=10))
    run_survey(config, warehouse, stages=("mei",), progress=False)
    tracker = Tracker(default_tracking_uri(warehouse))
    before = len(tracker.client.search_runs([tracker.experiment_id]))
    assert run_survey(config, warehouse, stages=("mei",), progress=False)[0].units_run == 0
    assert len(tracker.client.search_runs([tracker.experiment_id])) == before


def test_a_neurons_encoding_model_loads_by_id_and_predicts_what_its_readout_does(warehouse):
    network = supervised(warehouse)
    fit = next(row for row in warehouse.rows("predictivity")
               if row["network_id"] == network["network_id"] and row["area"] == "IT" and row["status"] == "ok")
    stimuli = next(r for r in warehouse.rows("stimulus_sets") if r["name"] == "natural")
    images = load_images(warehouse, stimuli["uri"])
    grey, _ = grey_and_norm(images)
    model = load_targets(warehouse, MeiTargets(network=network["network_id"], layer=fit["layer"],
                                               session=fit["session_id"], area="IT", units=(0,)), grey.tolist())
    with torch.no_grad():
        predicted = model(torch.from_numpy(images - grey[None, :, None, None].astype(np.float32))).numpy()
    features = warehouse.load_array(fit_rep(warehouse, fit)["array_uri"]).astype(np.float64)
    expected = load_readout(warehouse, fit["readout_uri"]).predict(features)
    np.testing.assert_allclose(predicted, expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max())


def fit_rep(warehouse: Warehouse, fit: dict) -> dict:
    return next(row for row in warehouse.rows("representations") if row["rep_id"] == fit["network_rep_id"])


def test_egg_and_ga_meis_are_scored_on_another_seed_and_another_architecture(warehouse):
    config = parse_config(mei_dict(targets(warehouse), steps=30, methods=("ga", "egg")))
    report = run_survey(config, warehouse, stages=("mei",), progress=False)[0]
    assert report.units_run == 4 and report.rows["mei_runs"] == (3 + 2) * 2 * 2
    rows = warehouse.rows("mei_runs")
    networks = {row["network_id"]: row for row in warehouse.rows("networks")}
    prior = warehouse.rows("priors")[0]
    assert {row["prior_id"] for row in rows if row["method"] == "egg"} == {prior["prior_id"]}
    assert {(row["method"], row["steps"]) for row in rows} == {("ga", 30), ("egg", 10)}
    target = supervised(warehouse)
    grey = next(r for r in warehouse.rows("stimulus_sets") if r["name"] == "natural")
    grey, _ = grey_and_norm(load_images(warehouse, grey["uri"]))
    offset = torch.tensor(grey, dtype=torch.float32)
    for row in rows:
        family, cross = networks[row["family_network_id"]], networks[row["cross_network_id"]]
        assert family["name"] == "zoo000-supervised-s1" and family["spec"] == target["spec"]
        assert cross["spec"] != target["spec"]
        image = torch.from_numpy(warehouse.load_array(row["image_uri"]))[None]
        assert float(image.norm()) == pytest.approx(row["norm"], rel=1e-4)
        if row["target_kind"] == "unit":  # the closest unit by response correlation, its activation recomputed
            assert -1 <= row["family_match"] <= 1 and -1 <= row["cross_match"] <= 1
            for prefix in ("family", "cross"):
                module, preprocessing = load_network(networks[row[f"{prefix}_network_id"]], warehouse)
                with torch.no_grad():
                    output = LayerResponses(module, row[f"{prefix}_layer"], preprocessing, offset)(image)
                assert float(output[0, row[f"{prefix}_target"]]) == pytest.approx(row[f"{prefix}_activation"],
                                                                                  rel=1e-4, abs=1e-5)
        else:  # the same neuron through the area's encoding model on the other network
            assert row["family_target"] == row["cross_target"] == row["target"]
            group = MeiTargets(network=row["cross_network_id"], layer=row["cross_layer"], session=row["session_id"],
                               area=row["area"], units=(row["target"],))
            with torch.no_grad():
                output = load_targets(warehouse, group, grey.tolist())(image)
            assert float(output[0, row["target"]]) == pytest.approx(row["cross_activation"], rel=1e-4, abs=1e-5)
    tracker = Tracker(default_tracking_uri(warehouse))
    egg_run = tracker.client.get_run(next(r["mlflow_run_id"] for r in rows if r["method"] == "egg"))
    assert egg_run.data.params["method"] == "egg" and egg_run.data.params["prior"] == prior["prior_id"]
    assert {"activation", "family_activation", "cross_activation"} <= set(egg_run.data.metrics)
    assert len(tracker.client.get_metric_history(egg_run.info.run_id, "activation")) == 10
    prior_run = tracker.client.get_run(prior["mlflow_run_id"])
    assert len(tracker.client.get_metric_history(prior_run.info.run_id, "loss")) == 60


def test_a_nan_response_stops_egg_naming_the_target_and_writes_no_row(warehouse, monkeypatch):
    original = LayerResponses.forward

    def broken(self, images):
        output = original(self, images)
        return torch.cat([output[:, :1], output[:, 1:2] * torch.nan, output[:, 2:]], dim=1)

    monkeypatch.setattr(LayerResponses, "forward", broken)
    config = parse_config(mei_dict(targets(warehouse)[:1], methods=("egg",)))
    with pytest.raises(SurveyError, match=r"targets \[1\] get a non-finite energy") as error:
        run_survey(config, warehouse, stages=("mei",), progress=False)
    assert "\n" not in str(error.value)
    assert warehouse.rows("mei_runs") == []


def test_a_prior_folder_missing_files_is_refused_before_anything_is_written(warehouse, tmp_path):
    (tmp_path / "prior" / "unet").mkdir(parents=True)
    (tmp_path / "prior" / "unet" / "config.json").write_text("{}")
    config = mei_dict(targets(warehouse)[:1], methods=("ga", "egg"))
    config["mei"]["egg"]["prior"] = str(tmp_path / "prior")
    with pytest.raises(SurveyError, match=r"lacks unet/diffusion_pytorch_model\.safetensors, "
                                          r"scheduler/scheduler_config\.json") as error:
        run_survey(parse_config(config), warehouse, stages=("mei",), progress=False)
    assert "\n" not in str(error.value) and warehouse.delta("mei_runs") is None


def test_survey_prior_train_writes_a_diffusers_folder_that_egg_samples_from(warehouse, tmp_path):
    folder = tmp_path / "prior"
    result = survey_cli("prior", "train", "-w", str(warehouse.root), "--steps", "20", "--n-patches", "200",
                        "--check-samples", "4", "--check-steps", "10", "--out", str(folder), "--executor", "local")
    assert result.returncode == 0, result.stderr
    assert "diffusion priors" in result.stdout and f"Written to {folder}" in result.stdout
    trained = next(row for row in warehouse.rows("priors") if json.loads(row["recipe"])["steps"] == 20)
    assert len(warehouse.rows("priors")) == 2 and trained["size"] == 32
    loaded = load_diffusers_prior(folder)
    x, t = torch.randn(2, 1, 32, 32), torch.tensor([3, 700])
    torch.testing.assert_close(loaded.denoiser(x, t), load_prior(warehouse, {"kind": "catalog", "prior_id":
                                                                            trained["prior_id"]}, "cpu").denoiser(x, t))
    network = supervised(warehouse)
    result = survey_cli("mei", "-w", str(warehouse.root), "--network", network["name"], "--layer",
                        network["layers"][-2], "--units", "0", "--seeds", "0", "--method", "egg", "--egg-steps", "5",
                        "--prior", str(folder), "--executor", "local")
    assert result.returncode == 0, result.stderr
    assert [(row["method"], row["prior_id"], row["steps"]) for row in warehouse.rows("mei_runs")] == [
        ("egg", str(folder), 5)]


def test_ga_grey_meis_are_one_channel_replicated_at_the_same_norm(warehouse):
    config = parse_config(mei_dict(targets(warehouse)[:1], steps=20, methods=("ga_grey",)))
    assert run_survey(config, warehouse, stages=("mei",), progress=False)[0].units_run == 1
    rows = warehouse.rows("mei_runs")
    assert len(rows) == 3 * 2 and {row["method"] for row in rows} == {"ga_grey"}
    for row in rows:
        image = warehouse.load_array(row["image_uri"])
        assert image.shape[0] == 3 and np.array_equal(image[0], image[1]) and np.array_equal(image[0], image[2])
        assert float(np.linalg.norm(image)) == pytest.approx(row["norm"], rel=1e-4)
