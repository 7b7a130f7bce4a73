"""Gradient-ascent MEIs: the blur and the norm projection against plain formulas, and known answers (a linear unit's
MEI is its weights, a one-pixel unit's MEI is one-hot)."""

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from survey.errors import SurveyError
from survey.mei.ascent import best_of_seeds, blur, gradient_ascent, project_to_norm

SHAPE = (3, 24, 24)


def gabor(shape: tuple[int, int, int] = SHAPE, wavelength: float = 8.0, width: float = 5.0) -> torch.Tensor:
    _, height, breadth = shape
    y, x = torch.meshgrid(torch.arange(height) - (height - 1) / 2, torch.arange(breadth) - (breadth - 1) / 2,
                          indexing="ij")
    patch = torch.exp(-(x**2 + y**2) / (2 * width**2)) * torch.cos(2 * math.pi * x / wavelength)
    return patch.expand(shape).clone()


def linear_units(weights: torch.Tensor):
    """Row b of the batch is scored by weights[b]·image (B × C × H × W weights)."""
    return lambda images: (images * weights).flatten(1).sum(dim=1)


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.flatten(1), b.flatten(1), dim=1)


def test_blur_is_scipys_gaussian_filter_with_mirrored_edges():
    images = np.random.default_rng(0).standard_normal((2, 3, 17, 20))
    for sigma in (0.5, 1.0, 2.0):
        expected = ndimage.gaussian_filter(images, sigma=(0, 0, sigma, sigma), mode="mirror", truncate=4.0)
        np.testing.assert_allclose(blur(torch.from_numpy(images), sigma).numpy(), expected, rtol=0, atol=1e-12)
    assert blur(torch.from_numpy(images), 0.0).numpy() is not None
    np.testing.assert_array_equal(blur(torch.from_numpy(images), 0.0).numpy(), images)


def test_project_to_norm_is_the_plain_rescaling():
    images = torch.randn(4, *SHAPE, dtype=torch.float64)
    projected = project_to_norm(images, 7.5)
    for image, out in zip(images, projected, strict=True):
        torch.testing.assert_close(out, image * 7.5 / torch.sqrt((image**2).sum()), rtol=1e-12, atol=0)


@pytest.mark.parametrize(("norm", "fourier"), [(5.0, False), (25.0, True)])
def test_a_linear_units_mei_is_its_weights(norm, fourier):
    # smooth weights, so the σ = 1 blur of the gradient does not move the optimum (cos(blur(w), w) > 0.997)
    weights = torch.stack([gabor(), -gabor(wavelength=12.0), gabor(width=3.0)])
    result = gradient_ascent(linear_units(weights), 3, SHAPE, norm=norm, fourier=fourier,
                             generator=torch.Generator().manual_seed(0))
    assert (cosine(result.images, weights) >= 0.99).all()
    torch.testing.assert_close(result.images.flatten(1).norm(dim=1), torch.full((3,), norm), rtol=1e-5, atol=0)
    assert result.history.shape == (1000, 3) and (result.history[-1] > result.history[0]).all()


def test_without_blur_a_rough_linear_unit_is_found_too():
    weights = torch.randn((2, *SHAPE), generator=torch.Generator().manual_seed(1))
    result = gradient_ascent(linear_units(weights), 2, SHAPE, norm=10.0, blur_sigma=0.0,
                             generator=torch.Generator().manual_seed(2))
    assert (cosine(result.images, weights) >= 0.99).all()


def test_a_unit_that_reads_one_pixel_gets_a_one_hot_mei():
    pixels = [(0, 5, 7), (2, 12, 12), (1, 0, 23)]

    def one_pixel(images: torch.Tensor) -> torch.Tensor:
        return torch.stack([images[b, c, y, x] for b, (c, y, x) in enumerate(pixels)])

    hot = torch.zeros((len(pixels), *SHAPE))
    for b, (c, y, x) in enumerate(pixels):
        hot[b, c, y, x] = 1.0
    sharp = gradient_ascent(one_pixel, len(pixels), SHAPE, norm=3.0, blur_sigma=0.0,
                            generator=torch.Generator().manual_seed(3))
    assert (cosine(sharp.images, hot) >= 0.99).all()
    torch.testing.assert_close(sharp.activation, torch.full((3,), 3.0), rtol=1e-3, atol=0)
    # the σ = 1 blur of the gradient is a smoothness prior: the MEI becomes a blob, still brightest at the pixel
    blurred = gradient_ascent(one_pixel, len(pixels), SHAPE, norm=3.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(blurred.images.flatten(1).argmax(dim=1), hot.flatten(1).argmax(dim=1))


def test_one_generator_makes_the_run_reproducible_and_rows_do_not_interact():
    weights = torch.stack([gabor(), gabor(wavelength=5.0)])

    def run(w: torch.Tensor, seed: int):
        return gradient_ascent(linear_units(w), 2, SHAPE, norm=5.0, steps=50, jitter=2,
                               generator=torch.Generator().manual_seed(seed)).images

    first = run(weights, 4)
    torch.testing.assert_close(run(weights, 4), first, rtol=0, atol=0)
    assert not torch.allclose(run(weights, 5), first)
    other = weights.clone()
    other[1] = -other[1]
    torch.testing.assert_close(run(other, 4)[0], first[0], rtol=0, atol=0)  # row 0 never saw row 1's target


def test_best_of_seeds_picks_each_targets_best_row():
    activation = torch.tensor([0.1, 0.9, 0.3, 5.0, 4.0, 4.5])  # 2 targets × 3 seeds, target-major
    assert best_of_seeds(activation, 3).tolist() == [1, 3]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"norm": 0.0}, "norm=0.0"),
    ({"norm": 1.0, "steps": 0}, "steps"),
    ({"norm": 1.0, "lr": -1.0}, "lr=-1.0"),
    ({"norm": 1.0, "blur_sigma": 9.0}, "blur sigma=9.0"),
])
def test_bad_settings_are_named(kwargs, message):
    with pytest.raises(SurveyError, match=message) as error:
        gradient_ascent(linear_units(torch.ones(1, *SHAPE)), 1, SHAPE, generator=torch.Generator(), **kwargs)
    assert "\n" not in str(error.value)
