"""The generated model zoo, safe checkpoint loading and user-brought networks."""

from __future__ import annotations

import hashlib
import sys

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch import nn

from survey.errors import SurveyError
from survey.sources.checkpoints import load_into, load_state_dict
from survey.sources.external import build_external, check_layers, layer_names
from survey.sources.zoo import (
    N_CLASSES,
    CellSpec,
    TrainConfig,
    build_network,
    builtin_task,
    n_params,
    prune_cell,
    sample_spec,
    save_weights,
    train,
)

from .nets import small_cnn

SPEC = CellSpec(
    matrix=((0, 1, 1, 0, 0), (0, 0, 0, 1, 0), (0, 0, 0, 0, 1), (0, 0, 0, 0, 1), (0, 0, 0, 0, 0)),
    ops=("conv3x3", "maxpool3x3", "conv1x1"), stacks=2, cells_per_stack=2, width=16, activation="relu",
)
SMALL = SPEC.model_copy(update={"width": 8, "cells_per_stack": 1})
QUICK = TrainConfig(steps=12, batch_size=16, probe_steps=10, n_train_per_class=16, n_test_per_class=8)


def one_line_error(excinfo: pytest.ExceptionInfo, *expected: str) -> str:
    message = str(excinfo.value)
    assert "\n" not in message, message
    for text in expected:
        assert text in message, message
    return message


# ------------------------------------------------------------------------------------------- specs and nets


def test_sampled_specs_are_valid_varied_and_run():
    specs = [sample_spec(np.random.default_rng([7, i])) for i in range(20)]
    assert len(set(specs)) >= 5
    assert len({s.activation for s in specs}) > 1 and len({s.stacks for s in specs}) > 1
    for spec in specs:
        assert CellSpec.model_validate(spec.model_dump(mode="json")) == spec  # survives a JSON round trip
        net = build_network(spec, N_CLASSES).eval()
        modules = dict(net.named_modules())
        assert all(name in modules for name in net.layer_names)
        assert net.layer_names[0] == "stem" and net.layer_names[-1] == "pool"
        assert isinstance(modules["pool"][0], nn.AdaptiveAvgPool2d)
        with torch.no_grad():
            for size in (16, 32, 48):
                assert net(torch.rand(2, 3, size, size)).shape == (2, N_CLASSES)


def test_cell_names_and_sizes():
    net = build_network(SPEC)
    assert net.layer_names == ("stem", "stack0.cell0", "stack0.cell1", "stack1.cell0", "stack1.cell1", "pool")
    assert "stack0.cell1" in dict(net.named_modules())
    assert n_params(net) == sum(p.numel() for p in net.parameters()) > 0
    assert {"norm.mean", "norm.std"} <= set(net.state_dict())  # input normalisation travels with the weights


def test_spec_validation_and_pruning():
    good = SPEC.model_dump()
    for bad in (
        {"matrix": ((0, 1, 0), (1, 0, 1), (0, 0, 0)), "ops": ("conv3x3",)},  # not upper triangular
        {"matrix": ((0, 1, 0), (0, 0, 0), (0, 0, 0)), "ops": ("conv3x3",)},  # node 1 never reaches output
        {"ops": ("conv3x3", "conv5x5", "conv1x1")},
        {"ops": ("conv3x3",)},
        {"stacks": 4},
        {"activation": "sigmoid"},
        {"depth": 3},
    ):
        with pytest.raises(ValidationError):
            CellSpec.model_validate({**good, **bad})
    with pytest.raises(ValidationError):
        SPEC.width = 3  # frozen
    dangling = np.array([[0, 1, 1, 0], [0, 0, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0]])
    assert prune_cell(dangling, ("conv1x1", "conv3x3")) == (((0, 1, 0), (0, 0, 1), (0, 0, 0)), ("conv3x3",))
    assert prune_cell(np.array([[0, 1, 0], [0, 0, 0], [0, 0, 0]]), ("conv3x3",)) is None


def test_builtin_task_splits():
    x_train, y_train, x_test, y_test = builtin_task(n_train_per_class=5, n_test_per_class=3)
    assert x_train.shape == (5 * N_CLASSES, 3, 32, 32) and x_test.shape == (3 * N_CLASSES, 3, 32, 32)
    assert torch.equal(torch.bincount(y_test), torch.full((N_CLASSES,), 3))
    assert x_train.min() >= 0 and x_train.max() <= 1
    again = builtin_task(n_train_per_class=5, n_test_per_class=3)
    assert all(torch.equal(a, b) for a, b in zip((x_train, y_train, x_test, y_test), again, strict=True))


# ------------------------------------------------------------------------------------------------ training


def test_training_is_deterministic_per_seed():
    states = []
    for seed in (3, 3, 4):
        net = build_network(SMALL)
        train(net, "supervised", QUICK, seed=seed)
        states.append(net.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not all(torch.equal(states[0][k], states[2][k]) for k in states[0])
    threads = torch.get_num_threads()
    train(build_network(SMALL), "contrastive", QUICK, seed=3)
    assert torch.get_num_threads() == threads


def test_supervised_training_beats_chance():
    net = build_network(SPEC)
    result = train(net, "supervised", TrainConfig(steps=150), seed=0)
    assert set(result) == {"train_accuracy", "test_accuracy", "seconds"}
    assert result["test_accuracy"] > 0.4 > 3 / N_CLASSES  # chance is 1/14
    _, _, x_test, y_test = builtin_task()
    with torch.no_grad():
        accuracy = (net.eval()(x_test).argmax(1) == y_test).double().mean().item()
    assert accuracy == pytest.approx(result["test_accuracy"])
    assert net.norm.std.min() > 0 and not torch.equal(net.norm.mean, torch.zeros(3))


def test_contrastive_and_untrained_get_a_linear_probe():
    config = TrainConfig(steps=40, batch_size=32, n_train_per_class=60, n_test_per_class=30)
    net = build_network(SMALL)
    contrastive = train(net, "contrastive", config, seed=1)
    assert contrastive["test_accuracy"] > 2 / N_CLASSES and contrastive["train_accuracy"] > 2 / N_CLASSES
    untrained_net = build_network(SMALL, seed=1)
    untrained = train(untrained_net, "untrained", config, seed=1)
    assert untrained["test_accuracy"] > 1.5 / N_CLASSES
    fresh = build_network(SMALL, seed=1).state_dict()
    backbone = [k for k in fresh if not k.startswith(("head.", "norm."))]
    trained = untrained_net.state_dict()
    assert all(torch.equal(fresh[k], trained[k]) for k in backbone)  # only the probe head is fitted
    assert not torch.equal(fresh["head.weight"], untrained_net.head.weight)
    with pytest.raises(ValueError, match="objective"):
        train(net, "reinforcement", config)


# ------------------------------------------------------------------------------------------ weights on disk


def test_safetensors_round_trip(tmp_path):
    net = build_network(SMALL, seed=5)
    train(net, "supervised", QUICK, seed=5)
    path = tmp_path / "nets" / "net.safetensors"
    digest = save_weights(net, path)
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert [p.name for p in path.parent.iterdir()] == ["net.safetensors"]  # no temp file left behind
    state = load_state_dict(path)
    assert state.keys() == net.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    copy = build_network(SMALL, seed=6)
    load_into(copy, path)
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(copy.eval()(x), net.eval()(x))
    assert save_weights(net, tmp_path / "again.safetensors") == digest


def test_wrapped_state_dicts_load(tmp_path):
    state = small_cnn().state_dict()
    for wrapper in ("state_dict", "model"):
        torch.save({wrapper: state, "epoch": 3}, tmp_path / "ckpt.pt")
        loaded = load_state_dict(tmp_path / "ckpt.pt")
        assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_unsafe_or_broken_checkpoints_are_refused(tmp_path):
    module_path = tmp_path / "whole-module.pt"
    torch.save(small_cnn(), module_path)
    with pytest.raises(SurveyError) as excinfo:
        load_state_dict(module_path)
    one_line_error(excinfo, str(module_path), "not a plain state dict", "weights_only", "state_dict()")

    ints = tmp_path / "ints.pt"
    torch.save([1, 2, 3], ints)
    with pytest.raises(SurveyError) as excinfo:
        load_state_dict(ints)
    one_line_error(excinfo, str(ints), "list")

    strings = tmp_path / "strings.pt"
    torch.save({"weight": torch.zeros(2), "note": "hi"}, strings)
    with pytest.raises(SurveyError) as excinfo:
        load_state_dict(strings)
    one_line_error(excinfo, str(strings), "'note'")

    for name in ("good.pt", "good.safetensors"):
        path = tmp_path / name
        if name.endswith(".pt"):
            torch.save(small_cnn().state_dict(), path)
        else:
            save_weights(small_cnn(), path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        with pytest.raises(SurveyError) as excinfo:
            load_state_dict(path)
        one_line_error(excinfo, str(path))

    with pytest.raises(SurveyError) as excinfo:
        load_state_dict(tmp_path / "absent.pt")
    one_line_error(excinfo, "absent.pt", "does not exist")


def test_load_into_reports_mismatches(tmp_path):
    path = tmp_path / "cnn.pt"
    torch.save(small_cnn(width=4).state_dict(), path)
    with pytest.raises(SurveyError) as excinfo:
        load_into(small_cnn(width=5), path)
    one_line_error(excinfo, str(path), "shape mismatch", "0.weight")
    with pytest.raises(SurveyError) as excinfo:
        load_into(build_network(SMALL), path)
    one_line_error(excinfo, "missing", "unexpected", "more")


# ---------------------------------------------------------------------------------------- external networks


def test_callable_network_with_kwargs_and_weights(tmp_path):
    source = small_cnn(width=6)
    path = tmp_path / "cnn.safetensors"
    save_weights(source, path)
    module = build_external("callable", "tests.nets:small_cnn", {"width": 6}, weights=str(path))
    assert not module.training
    loaded, saved = module.state_dict(), source.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in saved.items())
    assert layer_names(module) == ("0", "1", "2", "3", "4")
    check_layers(module, ["0", "4"], "mine")
    assert isinstance(build_external("callable", "torch.nn:Identity"), nn.Identity)


@pytest.mark.parametrize(
    ("target", "kwargs", "expected"),
    [
        ("tests.nets", None, "package.module:callable"),
        ("tests.not_there:net", None, "cannot import"),
        ("tests.nets:missing", None, "has no 'missing'"),
        ("tests.nets:small_cnn", {"depth": 2}, "kwargs"),
        ("torch:zeros", {"size": [2]}, "not a torch.nn.Module"),
    ],
)
def test_bad_callable_targets(target, kwargs, expected):
    with pytest.raises(SurveyError) as excinfo:
        build_external("callable", target, kwargs)
    one_line_error(excinfo, repr(target), expected)


def test_unknown_kind_and_missing_optional_dependency(monkeypatch):
    with pytest.raises(SurveyError) as excinfo:
        build_external("keras", "resnet")
    one_line_error(excinfo, "'keras'")
    for kind, package in (("torchvision", "torchvision.models"), ("timm", "timm")):
        monkeypatch.setitem(sys.modules, package, None)  # makes the import fail as if not installed
        with pytest.raises(SurveyError) as excinfo:
            build_external(kind, "resnet18")
        one_line_error(excinfo, f"{kind} is not installed", "pip install 'neurosurvey[vision]'")


def test_check_layers_names_the_unknown_layer():
    net = build_network(SPEC)
    with pytest.raises(SurveyError) as excinfo:
        check_layers(net, ["stem", "stack0.cel1"], "zoo007")
    message = one_line_error(excinfo, "'zoo007'", "'stack0.cel1'", "survey layers")
    listed = message.split("known layers include: ")[1]
    assert listed.startswith("stack0.cell1") and listed.count(",") <= 12


def test_torchvision_network():
    pytest.importorskip("torchvision")
    module = build_external("torchvision", "resnet18", {"num_classes": 10})
    check_layers(module, ["layer1.0.conv1", "avgpool"], "resnet18")
    with pytest.raises(SurveyError) as excinfo:
        build_external("torchvision", "resnet_nope")
    one_line_error(excinfo, "'resnet_nope'")


def test_timm_network():
    pytest.importorskip("timm")
    module = build_external("timm", "resnet18", {"num_classes": 10})
    check_layers(module, ["layer1.0.conv1"], "resnet18")
    with pytest.raises(SurveyError) as excinfo:
        build_external("timm", "resnet_nope")
    one_line_error(excinfo, "'resnet_nope'")


def test_replicas_train_more_seeds_of_the_first_architectures_under_their_own_names():
    from survey.config import parse_config
    from survey.stages.networks import NetworksStage

    zoo = {"n_architectures": 3, "objectives": ["supervised", "untrained"],
           "replicas": {"architectures": 2, "objectives": ["supervised"], "seeds": 2}}
    units = NetworksStage(parse_config({"zoo": zoo, "stages": ["networks"]})).plan(None)
    names = [unit.label for unit in units]
    assert names == ["zoo000-supervised", "zoo000-untrained", "zoo000-supervised-s1", "zoo000-supervised-s2",
                     "zoo001-supervised", "zoo001-untrained", "zoo001-supervised-s1", "zoo001-supervised-s2",
                     "zoo002-supervised", "zoo002-untrained"]
    by_name = {unit.label: unit for unit in units}
    assert len({unit.key for unit in units}) == len(units)
    assert len({(unit.payload["objective"], unit.payload["seed"]) for unit in units}) == len(units)
    assert by_name["zoo000-supervised-s1"].payload["spec"] == by_name["zoo000-supervised"].payload["spec"]
    plain = NetworksStage(parse_config({"zoo": {**zoo, "replicas": None}, "stages": ["networks"]})).plan(None)
    assert {unit.key for unit in plain} < {unit.key for unit in units}  # replicas leave the other networks' keys
