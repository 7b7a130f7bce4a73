"""MEI targets: a network unit and a recorded neuron's encoding model reproduce what the survey stored for the same
images (the representation's features, the readout's prediction), and a batch scores each row by its own target."""

import numpy as np
import pytest
import torch

from survey.activations import extract
from survey.errors import SurveyError
from survey.mei.targets import EncodingModel, LayerResponses, RowTargets, closest_units
from survey.metrics.predictivity import fit_readout
from survey.sources.zoo import build_network, sample_spec

PREPROCESSING = {"input_size": 32, "mean": None, "std": None}


@pytest.fixture(scope="module")
def network() -> torch.nn.Module:
    return build_network(sample_spec(np.random.default_rng(0))).eval()


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(1).random((12, 3, 32, 32), dtype=np.float32)


OFFSET = torch.tensor([0.4, 0.5, 0.6])


def contrast(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images) - OFFSET.view(1, 3, 1, 1)


def test_a_conv_layers_units_are_its_channels_at_the_spatial_centre(network, images):
    layer = network.layer_names[1]
    stored = extract(network, images, [layer], **PREPROCESSING)[layer].spatial
    with torch.no_grad():
        responses = LayerResponses(network, layer, PREPROCESSING, OFFSET)(contrast(images)).numpy()
    height, width = stored.shape[2:]
    np.testing.assert_allclose(responses, stored[:, :, height // 2, width // 2], rtol=1e-5, atol=1e-5)


def test_the_encoding_model_predicts_what_the_readout_predicts_from_the_stored_features(network, images):
    layer = network.layer_names[2]
    features = extract(network, images, [layer], spatial_pool=2, **PREPROCESSING)[layer].flat
    responses = np.random.default_rng(2).standard_normal((len(images), 3))
    readout = fit_readout(features.astype(np.float64), responses)
    model = EncodingModel(network, layer, PREPROCESSING, OFFSET, spatial_pool=2, readout=readout)
    with torch.no_grad():
        predicted = model(contrast(images)).numpy()
    np.testing.assert_allclose(predicted, readout.predict(features.astype(np.float64)), rtol=1e-4, atol=1e-4)


def test_each_row_is_scored_by_its_own_target_and_gets_only_its_own_gradient(network, images):
    targets = RowTargets(LayerResponses(network, network.layer_names[-1], PREPROCESSING, OFFSET), [3, 0, 3, 7])
    batch = contrast(images[:4]).requires_grad_(True)
    activation = targets(batch)
    with torch.no_grad():
        everything = LayerResponses(network, network.layer_names[-1], PREPROCESSING, OFFSET)(batch)
    torch.testing.assert_close(activation, everything[torch.arange(4), torch.tensor([3, 0, 3, 7])])
    activation[1].backward()
    assert batch.grad[1].abs().sum() > 0
    assert batch.grad[[0, 2, 3]].abs().sum() == 0  # eval mode: no image sees another's statistics


def test_a_layer_with_neither_units_nor_channel_maps_is_named():
    odd = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(start_dim=2))  # B × C × (H·W)
    with pytest.raises(SurveyError, match=r"neither units .* nor channel maps") as error:
        LayerResponses(odd, "1", PREPROCESSING, OFFSET)(torch.zeros(1, 3, 32, 32))
    assert "\n" not in str(error.value)


def test_bad_targets_are_named(network, images):
    wide = RowTargets(LayerResponses(network, "pool", PREPROCESSING, OFFSET), [10_000])
    with pytest.raises(SurveyError, match="target index 10000 is out of range") as error:
        wide(contrast(images[:1]))
    assert "\n" not in str(error.value)
    readout = fit_readout(np.random.default_rng(0).standard_normal((12, 5)), np.ones((12, 2)))
    with pytest.raises(SurveyError, match="refit the encoding model"):
        EncodingModel(network, "pool", PREPROCESSING, OFFSET, 2, readout)(contrast(images[:1]))


def test_closest_units_agree_with_a_brute_force_search_of_correlations():
    rng = np.random.default_rng(5)
    reference = rng.standard_normal((40, 3))
    candidates = {"a": rng.standard_normal((40, 6)), "b": rng.standard_normal((40, 4))}
    candidates["b"][:, 2] = 3 * reference[:, 1] + 0.1 * rng.standard_normal(40)  # a near copy of target 1
    candidates["a"][:, 0] = 1.0  # constant: never a match
    expected = []
    for column in range(3):
        scores = [(layer, unit, np.corrcoef(reference[:, column], responses[:, unit])[0, 1])
                  for layer, responses in candidates.items() for unit in range(responses.shape[1])
                  if responses[:, unit].std() > 0]
        expected.append(max(scores, key=lambda score: score[2]))
    found = closest_units(reference, candidates)
    assert [(layer, unit) for layer, unit, _ in found] == [(layer, unit) for layer, unit, _ in expected]
    np.testing.assert_allclose([r for *_, r in found], [r for *_, r in expected], rtol=1e-12)
    assert found[1][:2] == ("b", 2) and found[1][2] > 0.99
